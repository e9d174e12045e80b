/**
 * Concentrator selection for the CPE: the configured order, minus those known not to be converters (no or
 * wrong echo: the capability cache) and those that could not be reached a moment ago. The capability cache
 * is flushed on TTL expiry, on an uplink or address change, and on a configuration change.
 *
 * Only "could not reach the concentrator" (no handshake: refused SYN, timeout, no route) holds a concentrator
 * off, and then briefly: the hold starts at `unreachableHoldMinMs` and doubles with each further failure up to
 * `unreachableHoldMs`; while held, the owner probes it (`onUnreachable`) and `markWorking` ends the hold as
 * soon as it answers. A concentrator that refused one connection after the handshake (reset, Error TLV) is
 * reachable: nothing is held.
 */
import type { ConcentratorTarget } from './config.js';

export interface ConcentratorState {
  address: string;
  format: string;
  notCapableUntil?: number;
  unreachableUntil?: number;
}

export interface SelectorOptions {
  capabilityTtlMs: number;
  /** The longest hold of an unreachable concentrator; 0 = never hold. */
  unreachableHoldMs: number;
  /** The first hold (default 1 s, at most unreachableHoldMs). */
  unreachableHoldMinMs?: number;
  now?: () => number;
  /** Called each time a concentrator is marked unreachable (start probing it). */
  onUnreachable?: (target: ConcentratorTarget) => void;
}

interface Hold {
  until: number;
  ms: number;
}

export class ConcentratorSelector {
  #targets: readonly ConcentratorTarget[];
  readonly #notCapable = new Map<string, number>();
  readonly #unreachable = new Map<string, Hold>();
  readonly opts: SelectorOptions;

  constructor(targets: readonly ConcentratorTarget[], opts: SelectorOptions) {
    this.#targets = targets;
    this.opts = opts;
  }

  #now(): number {
    return (this.opts.now ?? Date.now)();
  }

  #notCapableNow(key: string): boolean {
    const until = this.#notCapable.get(key);
    if (until === undefined) return false;
    if (until > this.#now()) return true;
    this.#notCapable.delete(key);
    return false;
  }

  /** Held off now; an expired hold is kept (its length is the base of the next one) until markWorking. */
  #unreachableNow(key: string): boolean {
    const h = this.#unreachable.get(key);
    return h !== undefined && h.until > this.#now();
  }

  /** Usable concentrators, best first. */
  candidates(): ConcentratorTarget[] {
    return this.#targets.filter((t) => !this.#notCapableNow(t.address) && !this.#unreachableNow(t.address));
  }

  /** Held off as unreachable right now. */
  isHeld(t: ConcentratorTarget): boolean {
    return this.#unreachableNow(t.address);
  }

  markNotCapable(t: ConcentratorTarget): void {
    this.#notCapable.set(t.address, this.#now() + this.opts.capabilityTtlMs);
  }

  /** No handshake with it: hold it off, longer with each failure in a row. */
  markUnreachable(t: ConcentratorTarget): void {
    const max = this.opts.unreachableHoldMs;
    if (max <= 0) return;
    const min = Math.min(this.opts.unreachableHoldMinMs ?? 1_000, max);
    const prev = this.#unreachable.get(t.address);
    const ms = prev ? Math.min(max, prev.ms * 2) : min;
    this.#unreachable.set(t.address, { until: this.#now() + ms, ms });
    this.opts.onUnreachable?.(t);
  }

  /** It answered (a handshake completed): no hold, and the next failure starts from the shortest hold. */
  markWorking(t: ConcentratorTarget): void {
    this.#unreachable.delete(t.address);
  }

  /** Whether the last attempts failed to reach it (a probe is due). */
  isFailing(t: ConcentratorTarget): boolean {
    return this.#unreachable.has(t.address);
  }

  /** Forget what was learnt (new uplink or address, new configuration). */
  flush(): void {
    this.#notCapable.clear();
    this.#unreachable.clear();
  }

  get targets(): readonly ConcentratorTarget[] {
    return this.#targets;
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
      if (un !== undefined) s.unreachableUntil = un.until;
      return s;
    });
  }
}
