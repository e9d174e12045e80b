import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConnectionLimits } from '../../../src/policy/limits.js';

test('per-CPE concurrency limit refuses the next connection and frees on release', () => {
  const l = new ConnectionLimits({ maxConnections: 100, maxConnectionsPerCpe: 2, newConnectionsPerSecondPerCpe: 0 });
  assert.deepEqual(l.admit('a'), { admitted: true });
  assert.deepEqual(l.admit('a'), { admitted: true });
  assert.deepEqual(l.admit('a'), { admitted: false, reason: 'max-connections-per-cpe' });
  assert.deepEqual(l.admit('b'), { admitted: true }, 'another CPE is not affected');
  l.release('a');
  assert.deepEqual(l.admit('a'), { admitted: true });
  assert.equal(l.total, 3);
});

test('total limit across CPEs', () => {
  const l = new ConnectionLimits({ maxConnections: 2, maxConnectionsPerCpe: 10, newConnectionsPerSecondPerCpe: 0 });
  l.admit('a');
  l.admit('b');
  assert.deepEqual(l.admit('c'), { admitted: false, reason: 'max-connections' });
});

test('new connections per second per CPE: token bucket refills with time', () => {
  let now = 1_000_000;
  const l = new ConnectionLimits({ maxConnections: 100, maxConnectionsPerCpe: 100, newConnectionsPerSecondPerCpe: 3 }, () => now);
  for (let i = 0; i < 3; i++) assert.equal(l.admit('a').admitted, true);
  assert.deepEqual(l.admit('a'), { admitted: false, reason: 'rate-per-cpe' });
  now += 340; // one token back
  assert.equal(l.admit('a').admitted, true);
  assert.equal(l.admit('a').admitted, false);
});

test('release of an unknown CPE or twice never goes negative', () => {
  const l = new ConnectionLimits({ maxConnections: 1, maxConnectionsPerCpe: 1, newConnectionsPerSecondPerCpe: 0 });
  l.release('x');
  l.admit('a');
  l.release('a');
  l.release('a');
  assert.equal(l.total, 0);
  assert.equal(l.admit('a').admitted, true);
});

test('memory stays bounded: idle CPEs are forgotten by sweep', () => {
  let now = 0;
  const l = new ConnectionLimits({ maxConnections: 1e9, maxConnectionsPerCpe: 10, newConnectionsPerSecondPerCpe: 10 }, () => now);
  for (let i = 0; i < 10_000; i++) {
    l.admit(`cpe${i}`);
    l.release(`cpe${i}`);
  }
  now += 2_000;
  l.sweep();
  assert.equal(l.trackedCpes, 0);
});
