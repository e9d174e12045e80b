/** Counts held per key, bounded per key by the caller's limit (pure state; the caller releases what it admitted). */
export class CountPerKey {
  readonly #counts = new Map<string, number>();
  #total = 0;

  get total(): number {
    return this.#total;
  }

  count(key: string): number {
    return this.#counts.get(key) ?? 0;
  }

  /** One more for `key`, unless it already holds `max` or all keys together hold `maxTotal`. */
  admit(key: string, max: number, maxTotal = Infinity): boolean {
    const n = this.#counts.get(key) ?? 0;
    if (n >= max || this.#total >= maxTotal) return false;
    this.#counts.set(key, n + 1);
    this.#total++;
    return true;
  }

  release(key: string): void {
    const n = this.#counts.get(key);
    if (n === undefined) return;
    this.#total--;
    if (n <= 1) this.#counts.delete(key);
    else this.#counts.set(key, n - 1);
  }
}
