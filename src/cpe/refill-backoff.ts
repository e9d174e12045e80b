/**
 * The retry timer of a pool of pre-opened connections (the warm pool, an inbound binding's reverse
 * connections): after a failure the refill waits, 1 s doubling up to 30 s; a success resets the wait. One timer
 * at most; it never holds the process open.
 */
export const REFILL_BACKOFF_MIN_MS = 1_000;
export const REFILL_BACKOFF_MAX_MS = 30_000;

export class RefillBackoff {
  #delayMs = REFILL_BACKOFF_MIN_MS;
  #timer: NodeJS.Timeout | undefined;

  /** A retry is scheduled: the owner does not refill before it fires. */
  get pending(): boolean {
    return this.#timer !== undefined;
  }

  /** Runs `refill` after the current delay (unless a retry is already scheduled), then doubles the delay. */
  schedule(refill: () => void): void {
    if (this.#timer) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      refill();
    }, this.#delayMs);
    this.#timer.unref();
    this.#delayMs = Math.min(REFILL_BACKOFF_MAX_MS, this.#delayMs * 2);
  }

  /** A connection worked (or everything is replaced anyway): the next failure waits the minimum again. */
  reset(): void {
    this.#delayMs = REFILL_BACKOFF_MIN_MS;
  }

  /** Drops a scheduled retry (the pool is drained or stopped). */
  cancel(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}
