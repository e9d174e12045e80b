/**
 * Admission limits of draft-nam-mptcp-deployment-considerations section 7.2, as a pure gate: concurrent connections in total and per CPE,
 * and new connections per second per CPE (a token bucket). Memory is bounded by the number of CPEs that
 * currently hold connections or tokens below the bucket's size.
 */
export interface LimitsConfig {
  maxConnections: number;
  maxConnectionsPerCpe: number;
  /** New connections per second per CPE (sustained); 0 = unlimited. */
  newConnectionsPerSecondPerCpe: number;
  /** Bucket size for the rate above; defaults to the rate (one second's worth). */
  burstPerCpe?: number;
}

export type AdmitDecision = { admitted: true } | { admitted: false; reason: 'max-connections' | 'max-connections-per-cpe' | 'rate-per-cpe' };

interface CpeState {
  active: number;
  tokens: number;
  at: number;
}

export class ConnectionLimits {
  #config: LimitsConfig;
  readonly #now: () => number;
  readonly #cpes = new Map<string, CpeState>();
  #total = 0;

  constructor(config: LimitsConfig, now: () => number = Date.now) {
    this.#config = config;
    this.#now = now;
  }

  get total(): number {
    return this.#total;
  }

  activeFor(cpe: string): number {
    return this.#cpes.get(cpe)?.active ?? 0;
  }

  /** Tracked CPEs (for tests of the memory bound). */
  get trackedCpes(): number {
    return this.#cpes.size;
  }

  reconfigure(config: LimitsConfig): void {
    this.#config = config;
  }

  admit(cpe: string): AdmitDecision {
    const c = this.#config;
    if (this.#total >= c.maxConnections) return { admitted: false, reason: 'max-connections' };
    const now = this.#now();
    const burst = c.burstPerCpe ?? c.newConnectionsPerSecondPerCpe;
    let state = this.#cpes.get(cpe);
    if (!state) {
      if (this.#cpes.size >= 65_536) this.sweep();
      state = { active: 0, tokens: burst, at: now };
      this.#cpes.set(cpe, state);
    }
    if (state.active >= c.maxConnectionsPerCpe) return this.#refuse(cpe, state, 'max-connections-per-cpe');
    if (c.newConnectionsPerSecondPerCpe > 0) {
      state.tokens = Math.min(burst, state.tokens + ((now - state.at) / 1000) * c.newConnectionsPerSecondPerCpe);
      state.at = now;
      if (state.tokens < 1) return this.#refuse(cpe, state, 'rate-per-cpe');
      state.tokens -= 1;
    }
    state.active += 1;
    this.#total += 1;
    return { admitted: true };
  }

  release(cpe: string): void {
    const state = this.#cpes.get(cpe);
    if (!state || state.active === 0) return;
    state.active -= 1;
    this.#total -= 1;
    this.#forgetIfIdle(cpe, state);
  }

  #refuse(cpe: string, state: CpeState, reason: 'max-connections-per-cpe' | 'rate-per-cpe'): AdmitDecision {
    this.#forgetIfIdle(cpe, state);
    return { admitted: false, reason };
  }

  #forgetIfIdle(cpe: string, state: CpeState): void {
    // Without a rate limit there is nothing to remember about a CPE that holds no connection.
    if (state.active === 0 && this.#config.newConnectionsPerSecondPerCpe === 0) this.#cpes.delete(cpe);
  }

  /** Drops CPEs without connections whose bucket has refilled: call periodically. */
  sweep(): void {
    const now = this.#now();
    const c = this.#config;
    const burst = c.burstPerCpe ?? c.newConnectionsPerSecondPerCpe;
    for (const [cpe, s] of this.#cpes) {
      if (s.active === 0 && (c.newConnectionsPerSecondPerCpe === 0 || s.tokens + ((now - s.at) / 1000) * c.newConnectionsPerSecondPerCpe >= burst)) {
        this.#cpes.delete(cpe);
      }
    }
  }
}
