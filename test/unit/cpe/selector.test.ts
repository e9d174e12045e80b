import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConcentratorSelector } from '../../../src/cpe/concentrators.js';

const targets = [
  { address: '198.18.200.1:5000', format: 'mp-convert' as const, sourceIe: false, zeroRtt: false, synWindowClamp: false },
  { address: '198.18.201.1:5000', format: 'rfc8803' as const, sourceIe: false, zeroRtt: false, synWindowClamp: false },
];

test('order is kept; not-capable and unreachable ones are skipped until they expire or a flush', () => {
  let now = 0;
  const s = new ConcentratorSelector(targets, { capabilityTtlMs: 1000, unreachableHoldMs: 100, now: () => now });
  assert.deepEqual(s.candidates().map((t) => t.address), ['198.18.200.1:5000', '198.18.201.1:5000']);
  s.markNotCapable(targets[0]!);
  assert.deepEqual(s.candidates().map((t) => t.address), ['198.18.201.1:5000']);
  s.markUnreachable(targets[1]!);
  assert.deepEqual(s.candidates(), []);
  now = 150;
  assert.deepEqual(s.candidates().map((t) => t.address), ['198.18.201.1:5000']);
  s.flush();
  assert.equal(s.candidates().length, 2);
  s.markNotCapable(targets[0]!);
  now = 1200;
  assert.equal(s.candidates().length, 2, 'TTL expiry');
});
