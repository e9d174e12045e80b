/**
 * Non-transparent source addresses (draft-nam-mptcp-deployment-considerations section 5.4.2): connections towards servers leave from a pool
 * of external addresses. Paired pooling: a CPE keeps the same external address for as long as it has
 * connections. `shared` (N:1, default) lets several CPEs use one address, spreading CPEs over the least
 * used; `dedicated` (1:1) gives each CPE an address of its own and refuses when none is free.
 */
import { isIPv4 } from 'node:net';

export type PoolMode = 'shared' | 'dedicated';

interface Assignment {
  address: string;
  refs: number;
}

class FamilyPool {
  readonly #addresses: readonly string[];
  readonly #mode: PoolMode;
  readonly #byCpe = new Map<string, Assignment>();
  readonly #load = new Map<string, number>();

  constructor(addresses: readonly string[], mode: PoolMode) {
    this.#addresses = addresses;
    this.#mode = mode;
    for (const a of addresses) this.#load.set(a, 0);
  }

  acquire(cpe: string): string | null {
    const held = this.#byCpe.get(cpe);
    if (held) {
      held.refs += 1;
      return held.address;
    }
    let best: string | undefined;
    let bestLoad = Infinity;
    for (const a of this.#addresses) {
      const load = this.#load.get(a) ?? 0;
      if (this.#mode === 'dedicated' && load > 0) continue;
      if (load < bestLoad) {
        best = a;
        bestLoad = load;
      }
    }
    if (best === undefined) return null;
    this.#load.set(best, bestLoad + 1);
    this.#byCpe.set(cpe, { address: best, refs: 1 });
    return best;
  }

  release(cpe: string): void {
    const held = this.#byCpe.get(cpe);
    if (!held) return;
    held.refs -= 1;
    if (held.refs > 0) return;
    this.#byCpe.delete(cpe);
    this.#load.set(held.address, Math.max(0, (this.#load.get(held.address) ?? 1) - 1));
  }

  assigned(cpe: string): string | undefined {
    return this.#byCpe.get(cpe)?.address;
  }

  get size(): number {
    return this.#addresses.length;
  }
}

export class SourcePool {
  readonly #v4: FamilyPool;
  readonly #v6: FamilyPool;

  constructor(addresses: readonly string[], mode: PoolMode = 'shared') {
    this.#v4 = new FamilyPool(addresses.filter((a) => isIPv4(a)), mode);
    this.#v6 = new FamilyPool(addresses.filter((a) => !isIPv4(a)), mode);
  }

  #pool(family: 4 | 6): FamilyPool {
    return family === 4 ? this.#v4 : this.#v6;
  }

  /**
   * The external address for a new connection of `cpe` towards a server of `family`: undefined when no pool
   * is configured for that family (the kernel picks the source), null when the pool is exhausted.
   */
  acquire(cpe: string, family: 4 | 6): string | null | undefined {
    const pool = this.#pool(family);
    if (pool.size === 0) return undefined;
    return pool.acquire(`${family}|${cpe}`);
  }

  release(cpe: string, family: 4 | 6): void {
    this.#pool(family).release(`${family}|${cpe}`);
  }

  assigned(cpe: string, family: 4 | 6): string | undefined {
    return this.#pool(family).assigned(`${family}|${cpe}`);
  }
}
