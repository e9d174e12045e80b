/**
 * Concentrator selection for the CPE: the configured order, minus those known not to be converters (no or
 * wrong echo: the capability cache) and those that were unreachable a moment ago. The capability cache is
 * flushed on TTL expiry, on an uplink or address change, and on a configuration change.
 */
import type { ConcentratorTarget } from './config.js';

export interface ConcentratorState {
  address: string;
  format: string;
  notCapableUntil?: number;
  unreachableUntil?: number;
}

export class ConcentratorSelector {
  #targets: readonly ConcentratorTarget[];
  readonly #notCapable = new Map<string, number>();
  readonly #unreachable = new Map<string, number>();

  constructor(
    targets: readonly ConcentratorTarget[],
    private readonly opts: { capabilityTtlMs: number; unreachableHoldMs: number; now?: () => number },
  ) {
    this.#targets = targets;
  }

  #now(): number {
    return (this.opts.now ?? Date.now)();
  }

  #held(map: Map<string, number>, key: string): boolean {
    const until = map.get(key);
    if (until === undefined) return false;
    if (until > this.#now()) return true;
    map.delete(key);
    return false;
  }

  /** Usable concentrators, best first. */
  candidates(): ConcentratorTarget[] {
    return this.#targets.filter((t) => !this.#held(this.#notCapable, t.address) && !this.#held(this.#unreachable, t.address));
  }

  markNotCapable(t: ConcentratorTarget): void {
    this.#notCapable.set(t.address, this.#now() + this.opts.capabilityTtlMs);
  }

  markUnreachable(t: ConcentratorTarget): void {
    if (this.opts.unreachableHoldMs > 0) this.#unreachable.set(t.address, this.#now() + this.opts.unreachableHoldMs);
  }

  markWorking(t: ConcentratorTarget): void {
    this.#unreachable.delete(t.address);
  }

  /** Forget what was learnt (new uplink or address, new configuration). */
  flush(): void {
    this.#notCapable.clear();
    this.#unreachable.clear();
  }

  reconfigure(targets: readonly ConcentratorTarget[]): void {
    this.#targets = targets;
    this.flush();
  }

  snapshot(): ConcentratorState[] {
    return this.#targets.map((t) => {
      const s: ConcentratorState = { address: t.address, format: t.format };
      const nc = this.#notCapable.get(t.address);
      const un = this.#unreachable.get(t.address);
      if (nc !== undefined) s.notCapableUntil = nc;
      if (un !== undefined) s.unreachableUntil = un;
      return s;
    });
  }
}
