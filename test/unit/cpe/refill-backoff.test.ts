import { test, mock } from 'node:test';
import assert from 'node:assert/strict';
import { RefillBackoff, REFILL_BACKOFF_MAX_MS, REFILL_BACKOFF_MIN_MS } from '../../../src/cpe/refill-backoff.js';

test('refill backoff: one retry at a time, the delay doubles up to 30 s, reset and cancel', () => {
  mock.timers.enable({ apis: ['setTimeout'] });
  try {
    const b = new RefillBackoff();
    let fired = 0;
    const refill = () => void fired++;
    b.schedule(refill);
    b.schedule(refill); // already pending: not a second timer
    assert.equal(b.pending, true);
    mock.timers.tick(REFILL_BACKOFF_MIN_MS - 1);
    assert.equal(fired, 0);
    mock.timers.tick(1);
    assert.equal(fired, 1, 'fired once, after the minimum');
    assert.equal(b.pending, false);
    // The delay doubled: 2 s, then 4 s ... capped at the maximum.
    const delays: number[] = [];
    for (let i = 0; i < 8; i++) {
      b.schedule(refill);
      let waited = 0;
      while (fired === i + 1) {
        mock.timers.tick(500);
        waited += 500;
      }
      delays.push(waited);
    }
    assert.deepEqual(delays, [2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000, 30_000]);
    assert.equal(REFILL_BACKOFF_MAX_MS, 30_000);
    b.reset();
    b.schedule(refill);
    b.cancel();
    assert.equal(b.pending, false);
    mock.timers.tick(60_000);
    assert.equal(fired, 9, 'a cancelled retry never fires');
    b.reset();
    b.schedule(refill);
    mock.timers.tick(REFILL_BACKOFF_MIN_MS);
    assert.equal(fired, 10, 'after reset the wait is the minimum again');
  } finally {
    mock.timers.reset();
  }
});
