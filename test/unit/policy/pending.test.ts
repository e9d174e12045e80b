import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SignallingAdmission } from '../../../src/policy/pending.js';

test('signalling admission: per-CPE cap, total cap, releases, and the oldest shed when descriptors are short', () => {
  const a = new SignallingAdmission<string>({ maxPendingPerCpe: 2, maxPending: 3 });
  assert.deepEqual(a.admit('cpe1', 'a'), { admitted: true });
  assert.deepEqual(a.admit('cpe1', 'b'), { admitted: true });
  const third = a.admit('cpe1', 'c');
  assert.equal(third.admitted, false);
  assert.equal(!third.admitted && third.refusal.code, 'signalling-per-cpe');
  assert.deepEqual(a.admit('cpe2', 'd'), { admitted: true });
  const over = a.admit('cpe3', 'e');
  assert.equal(!over.admitted && over.refusal.code, 'signalling-total');
  a.release('a');
  a.release('a');
  assert.equal(a.size, 2, 'release is idempotent');
  assert.equal(a.pendingFor('cpe1'), 1);
  const shed = a.admit('cpe3', 'f', true);
  assert.deepEqual(shed, { admitted: true, shed: 'b' }, 'the oldest pending entry is shed');
  assert.equal(a.pendingFor('cpe1'), 0);
  assert.equal(a.trackedCpes, 2, 'a CPE without pending entries is forgotten');
  a.release('d');
  a.release('f');
  assert.equal(a.size, 0);
  assert.equal(a.trackedCpes, 0);
});
