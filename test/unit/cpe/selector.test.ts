import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConcentratorSelector } from '../../../src/cpe/concentrators.js';

const targets = [
  { address: '198.18.200.1:5000', format: 'mp-convert' as const, sourceIe: false, zeroRtt: false, synWindowClamp: false, warmPool: 0, warmIdleS: 60 },
  { address: '198.18.201.1:5000', format: 'rfc8803' as const, sourceIe: false, zeroRtt: false, synWindowClamp: false, warmPool: 0, warmIdleS: 60 },
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

test('the unreachable hold starts short and doubles with each failure in a row, up to the maximum; working resets it', () => {
  let now = 0;
  const seen: string[] = [];
  const s = new ConcentratorSelector(targets, { capabilityTtlMs: 1000, unreachableHoldMs: 5_000, now: () => now, onUnreachable: (t) => seen.push(t.address) });
  const t = targets[0]!;
  const holds: number[] = [];
  for (let i = 0; i < 5; i++) {
    s.markUnreachable(t);
    holds.push((s.snapshot()[0]!.unreachableUntil ?? 0) - now);
    assert.equal(s.isHeld(t), true);
    now = s.snapshot()[0]!.unreachableUntil ?? now;
    assert.equal(s.isHeld(t), false, 'usable again once the hold ran out');
    assert.equal(s.isFailing(t), true, 'still failing until it answers');
  }
  assert.deepEqual(holds, [1_000, 2_000, 4_000, 5_000, 5_000]);
  assert.equal(seen.length, 5, 'each failure tells the prober');
  s.markWorking(t);
  assert.equal(s.isFailing(t), false);
  s.markUnreachable(t);
  assert.equal((s.snapshot()[0]!.unreachableUntil ?? 0) - now, 1_000, 'after a success the next hold is the shortest again');
});
