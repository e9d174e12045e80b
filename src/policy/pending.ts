/**
 * Connections still in the signalling phase (accepted, signalling not read yet), bounded per CPE and in total,
 * so that one CPE holding connections open without signalling cannot starve the others (slowloris), and
 * the daemon never runs into its descriptor limit (where the event loop's accept would drop connections
 * without a trace). Pure state: the caller owns the sockets and acts on the decision.
 *
 * admit(): refused when the CPE is at `maxPendingPerCpe` or the total at `maxPending`; admitted otherwise,
 * and, when the caller says descriptors are short, the oldest pending entry is named for shedding (it has
 * waited longest: legitimate signalling arrives in the SYN or one round trip after the handshake).
 */
import { refuse, type Refusal } from './refusals.js';

export interface PendingLimits {
  maxPendingPerCpe: number;
  maxPending: number;
}

export type PendingDecision<T> = { admitted: true; shed?: T } | { admitted: false; refusal: Refusal };

export class SignallingAdmission<T> {
  #limits: PendingLimits;
  readonly #perCpe = new Map<string, number>();
  /** Insertion order = age: the first entry is the oldest. */
  readonly #entries = new Map<T, string>();

  constructor(limits: PendingLimits) {
    this.#limits = limits;
  }

  get size(): number {
    return this.#entries.size;
  }

  pendingFor(cpe: string): number {
    return this.#perCpe.get(cpe) ?? 0;
  }

  /** CPEs with pending connections (bounded by `maxPending`). */
  get trackedCpes(): number {
    return this.#perCpe.size;
  }

  reconfigure(limits: PendingLimits): void {
    this.#limits = limits;
  }

  /** `short`: descriptors are nearly exhausted; the oldest pending entry is returned for shedding. */
  admit(cpe: string, entry: T, short = false): PendingDecision<T> {
    const n = this.#perCpe.get(cpe) ?? 0;
    if (n >= this.#limits.maxPendingPerCpe) return { admitted: false, refusal: refuse('signalling-per-cpe') };
    if (this.#entries.size >= this.#limits.maxPending) return { admitted: false, refusal: refuse('signalling-total') };
    let shed: T | undefined;
    if (short) {
      const oldest = this.#entries.keys().next();
      if (!oldest.done) {
        shed = oldest.value;
        this.release(shed);
      }
    }
    this.#perCpe.set(cpe, n + 1);
    this.#entries.set(entry, cpe);
    return shed === undefined ? { admitted: true } : { admitted: true, shed };
  }

  /** The entry left the signalling phase (read, refused or closed). Idempotent. */
  release(entry: T): void {
    const cpe = this.#entries.get(entry);
    if (cpe === undefined) return;
    this.#entries.delete(entry);
    const n = (this.#perCpe.get(cpe) ?? 1) - 1;
    if (n <= 0) this.#perCpe.delete(cpe);
    else this.#perCpe.set(cpe, n);
  }
}
