import { test } from 'node:test';
import assert from 'node:assert/strict';
import { OVERFLOW_IDLE, overflowModes, overflowStep, type OverflowPolicy } from '../../../src/policy/distribution.js';

const p: OverflowPolicy = { primary: 'up1', capacityMbit: 50, joinAbove: 0.8, leaveBelow: 0.5, holdS: 5 };
const mbit = (m: number) => (m * 1e6) / 8;

test('overflow: the others join above joinAbove of the primary capacity, leave only after holdS under leaveBelow (hysteresis)', () => {
  let s = OVERFLOW_IDLE;
  s = overflowStep(s, mbit(39), 0, p);
  assert.equal(s.joined, false, '39 of 50 Mbit/s: under 80 %');
  s = overflowStep(s, mbit(41), 1000, p);
  assert.equal(s.joined, true);
  s = overflowStep(s, mbit(30), 2000, p);
  assert.deepEqual(s, { joined: true, belowSince: null }, 'between the thresholds: stays joined');
  s = overflowStep(s, mbit(10), 3000, p);
  assert.deepEqual(s, { joined: true, belowSince: 3000 });
  s = overflowStep(s, mbit(30), 4000, p);
  assert.deepEqual(s, { joined: true, belowSince: null }, 'back above leaveBelow: the hold starts again');
  s = overflowStep(s, mbit(10), 5000, p);
  s = overflowStep(s, mbit(10), 9999, p);
  assert.equal(s.joined, true, '4.999 s under');
  s = overflowStep(s, mbit(10), 10_000, p);
  assert.deepEqual(s, OVERFLOW_IDLE, '5 s under leaveBelow: back to the primary only');
  assert.deepEqual([...overflowModes(['up1', 'up2', 'up3'], s, p)], [['up1', 'subflow'], ['up2', 'backup'], ['up3', 'backup']]);
  assert.deepEqual([...overflowModes(['up1', 'up2'], { joined: true, belowSince: null }, p)], [['up1', 'subflow'], ['up2', 'subflow']]);
});
