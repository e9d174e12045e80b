/**
 * Source-address strategies: which local address the server leg of a connection uses (seed: "the behavior to
 * adopt with regards to the processing of source addresses", draft-nam-mptcp-deployment-considerations
 * section 5.4). Today: the kernel's choice (no pool), or the CPE's paired address from the source pool (N:1
 * shared or 1:1 dedicated). Transparent modes, port blocks and NPTv6 plug in here.
 */
import type { ConnectionContext } from './context.js';
import { refuse, type Refusal } from '../policy/refusals.js';
import { SourcePool, type PoolMode } from './source-pool.js';

export interface SourceAddressStrategy {
  readonly name: string;
  /** Sets ctx.external and registers its release, or refuses. Needs ctx.destination. */
  acquire(ctx: ConnectionContext): Refusal | undefined;
}

/** No pool: the kernel picks the source address by routing. */
export const kernelSourceAddress: SourceAddressStrategy = {
  name: 'kernel',
  acquire: () => undefined,
};

/** The CPE's paired pool address of the destination's family (a family without pool addresses: the kernel's). */
export class PoolSourceAddress implements SourceAddressStrategy {
  readonly name = 'pool';
  readonly #pool: SourcePool;

  constructor(addresses: readonly string[], mode: PoolMode) {
    this.#pool = new SourcePool([...addresses], mode);
  }

  acquire(ctx: ConnectionContext): Refusal | undefined {
    const family = ctx.destination?.family ?? 4;
    const external = this.#pool.acquire(ctx.identity, family);
    if (external === null) return refuse('pool-exhausted');
    if (external !== undefined) {
      ctx.external = external;
      ctx.own(() => this.#pool.release(ctx.identity, family));
    }
    return undefined;
  }
}

export function sourceAddressStrategy(pool: { addresses: readonly string[]; mode: PoolMode }): SourceAddressStrategy {
  return pool.addresses.length === 0 ? kernelSourceAddress : new PoolSourceAddress(pool.addresses, pool.mode);
}
