/**
 * Source-address strategies: which local address the server leg of a connection uses ("the behavior to adopt
 * with regards to the processing of source addresses", draft-nam-mptcp-deployment-considerations section
 * 5.4): the kernel's choice (no pool); the CPE's paired address from the source pool (N:1 shared or 1:1
 * dedicated, 5.4.2.1 / 5.4.2.2); transparent (5.4.1: the CPE's WAN address, the end host's address, or an
 * address in its IPv6 prefix); NPTv6 (5.4.2.3, RFC 6296). Transparent and NPTv6 addresses are not the
 * concentrator's own: they are bound with IP_TRANSPARENT, and their return traffic is taken by the return
 * path (./return-path.ts). Both refuse a source IE outside the CPE's prefixes (`source-spoofed`).
 */
import { refuse, type Refusal } from '../policy/refusals.js';
import { SourcePool, type PoolMode } from './source-pool.js';
import { unmapAddress } from '../protocol/address.js';
import {
  CustomerPrefixes,
  claimedSourceGate,
  nptv6Mappings,
  nptv6Source,
  transparentSource,
  type SourceChoiceInput,
  type TransparentOptions,
} from '../policy/transparent.js';
import type { Nptv6Mapping } from '../policy/nptv6.js';
import { sourceAddressMode, type ConcentratorConfig } from './config.js';
import { PortBlockAllocator, type BlockEvent, type PortBlockOptions, type PortLease } from './port-blocks.js';

/**
 * What a strategy reads and sets of a connection: a ConnectionContext, or the primary's stand-in for a
 * connection a worker process accepted (./shared-state.ts).
 */
export interface SourceContext {
  readonly cpe: string;
  readonly identity: string;
  readonly keyId?: string | undefined;
  readonly destination?: { readonly family: 4 | 6 } | undefined;
  readonly signalling?: { readonly source?: { readonly address: string } | undefined } | undefined;
  external?: string | undefined;
  externalTransparent?: boolean;
  ports?: PortLease | undefined;
  own(release: () => void): void;
}

export interface SourceAddressStrategy {
  readonly name: string;
  /** Sets ctx.external and registers its release, or refuses. Needs ctx.destination. */
  acquire(ctx: SourceContext): Refusal | undefined;
  /** The strategy is no longer used for new connections (stop, or a reload replaced it). */
  close?(reason: string): void;
  /**
   * For a UDP mapping (no connection context, a family of its own): the local address for this CPE, held
   * until `release`. Absent: the strategy cannot source UDP (transparent and NPTv6 modes).
   */
  acquireFor?(identity: string, family: 4 | 6): SourceHold | Refusal;
}

export interface SourceHold {
  /** undefined: the kernel picks. */
  address: string | undefined;
  release: () => void;
}

/** No pool: the kernel picks the source address by routing. */
export const kernelSourceAddress: SourceAddressStrategy = {
  name: 'kernel',
  acquire: () => undefined,
  acquireFor: () => ({ address: undefined, release: () => {} }),
};

/** The CPE's paired pool address of the destination's family (a family without pool addresses: the kernel's). */
export class PoolSourceAddress implements SourceAddressStrategy {
  readonly name = 'pool';
  readonly #pool: SourcePool;

  constructor(addresses: readonly string[], mode: PoolMode) {
    this.#pool = new SourcePool([...addresses], mode);
  }

  acquire(ctx: SourceContext): Refusal | undefined {
    const family = ctx.destination?.family ?? 4;
    const external = this.#pool.acquire(ctx.identity, family);
    if (external === null) return refuse('pool-exhausted');
    if (external !== undefined) {
      ctx.external = external;
      ctx.own(() => this.#pool.release(ctx.identity, family));
    }
    return undefined;
  }

  /** Holds the CPE's paired address of `family` outside any connection (an inbound binding opens on it). */
  pin(identity: string, family: 4 | 6): { address: string; release: () => void } | null | undefined {
    const address = this.#pool.acquire(identity, family);
    if (address === null || address === undefined) return address;
    return { address, release: () => this.#pool.release(identity, family) };
  }

  acquireFor(identity: string, family: 4 | 6): SourceHold | Refusal {
    const external = this.#pool.acquire(identity, family);
    if (external === null) return refuse('pool-exhausted');
    if (external === undefined) return { address: undefined, release: () => {} };
    let held = true;
    return {
      address: external,
      release: () => {
        if (held) this.#pool.release(identity, family);
        held = false;
      },
    };
  }
}

/**
 * The paired pool address, and a source port from the CPE's port blocks on it (./port-blocks.ts): one
 * session-log line per block instead of one per connection (RFC 6888 section 4). A family without pool
 * addresses is left to the kernel, as in `pool`.
 */
export class PortBlockSourceAddress implements SourceAddressStrategy {
  readonly name = 'pool+port-blocks';
  readonly #pool: PoolSourceAddress;
  readonly allocator: PortBlockAllocator;

  constructor(pool: PoolSourceAddress, allocator: PortBlockAllocator) {
    this.#pool = pool;
    this.allocator = allocator;
  }

  acquire(ctx: SourceContext): Refusal | undefined {
    const refused = this.#pool.acquire(ctx);
    if (refused || ctx.external === undefined) return refused;
    const lease = this.allocator.lease({ identity: ctx.identity, cpe: ctx.cpe, keyId: ctx.keyId }, ctx.external);
    if (typeof lease === 'string') return refuse(lease);
    ctx.ports = lease;
    ctx.own(() => lease.release());
    return undefined;
  }

  /** UDP mappings take the CPE's paired address only: their ports are the kernel's, outside the blocks. */
  acquireFor(identity: string, family: 4 | 6): SourceHold | Refusal {
    return this.#pool.acquireFor(identity, family);
  }

  close(reason: string): void {
    this.allocator.close(reason);
  }
}

/** The port-block settings of a configuration, in the allocator's terms (undefined: no port blocks). */
export function portBlockOptions(config: Pick<ConcentratorConfig, 'portBlocks'>): PortBlockOptions | undefined {
  const pb = config.portBlocks;
  if (!pb) return undefined;
  return { size: pb.size, first: pb.first, last: pb.last, maxBlocksPerCpe: pb.maxBlocksPerCpe, releaseAfterMs: pb.releaseAfterS * 1000 };
}

/** The anti-spoofing gate, then the choice input: what both non-local strategies start from. */
function claim(ctx: SourceContext, customers: CustomerPrefixes): SourceChoiceInput | Refusal {
  const owned = customers.owned(ctx.cpe);
  const src = ctx.signalling?.source;
  const claimed = src ? unmapAddress(src.address) : undefined;
  const spoofed = claimedSourceGate(claimed, owned);
  if (spoofed) return spoofed;
  return { cpe: ctx.cpe, claimed, family: ctx.destination?.family ?? 4, owned };
}

const isRefusal = (x: unknown): x is Refusal => typeof x === 'object' && x !== null && 'code' in x;

/** Transparent MCP (5.4.1): the server sees the CPE's or the end host's own address, or one in its prefix. */
export class TransparentSourceAddress implements SourceAddressStrategy {
  readonly name = 'transparent';
  constructor(
    private readonly customers: CustomerPrefixes,
    private readonly options: TransparentOptions,
  ) {}

  acquire(ctx: SourceContext): Refusal | undefined {
    const input = claim(ctx, this.customers);
    if (isRefusal(input)) return input;
    const address = transparentSource(input, this.options);
    if (isRefusal(address)) return address;
    ctx.external = address;
    ctx.externalTransparent = true;
    return undefined;
  }
}

/** NPTv6 (5.4.2.3): IPv6 sources translated to the CPE prefix's external prefix; IPv4 goes to `ipv4`. */
export class Nptv6SourceAddress implements SourceAddressStrategy {
  readonly name = 'nptv6';
  readonly #mappings: readonly Nptv6Mapping[];
  constructor(
    private readonly customers: CustomerPrefixes,
    externalPrefixes: readonly string[],
    private readonly ipv4: SourceAddressStrategy,
  ) {
    this.#mappings = nptv6Mappings(customers, externalPrefixes);
  }

  get mappings(): readonly Nptv6Mapping[] {
    return this.#mappings;
  }

  acquire(ctx: SourceContext): Refusal | undefined {
    const input = claim(ctx, this.customers);
    if (isRefusal(input)) return input;
    if (input.family === 4) return this.ipv4.acquire(ctx);
    const address = nptv6Source(input, this.#mappings);
    if (isRefusal(address)) return address;
    ctx.external = address;
    ctx.externalTransparent = true;
    return undefined;
  }
}

function poolOrKernel(pool: { addresses: readonly string[]; mode: PoolMode }): SourceAddressStrategy {
  return pool.addresses.length === 0 ? kernelSourceAddress : new PoolSourceAddress(pool.addresses, pool.mode);
}

export interface StrategyOptions {
  /** Where port-block allocations and releases are logged (the session log). */
  blockLog?: (e: BlockEvent) => void;
  /** The strategy this one replaces (a reload): its port-block allocator is kept, so blocks never overlap. */
  previous?: SourceAddressStrategy | undefined;
}

/** The strategy of a configuration (an absent `sourceAddress` keeps the `sourcePool` behaviour). */
export function sourceAddressStrategy(
  config: Pick<ConcentratorConfig, 'sourceAddress' | 'sourcePool' | 'portBlocks'>,
  options: StrategyOptions = {},
): SourceAddressStrategy {
  const next = build(config, options);
  // Port blocks turned off (or the mode changed): the old blocks go back as their connections end.
  const old = options.previous;
  if (old instanceof PortBlockSourceAddress && !(next instanceof PortBlockSourceAddress && next.allocator === old.allocator)) old.close('reload');
  return next;
}

function build(config: Pick<ConcentratorConfig, 'sourceAddress' | 'sourcePool' | 'portBlocks'>, options: StrategyOptions): SourceAddressStrategy {
  const sa = config.sourceAddress;
  switch (sourceAddressMode(config)) {
    case 'kernel':
      return kernelSourceAddress;
    case 'pool': {
      const blocks = portBlockOptions(config);
      if (!blocks || config.sourcePool.addresses.length === 0) return poolOrKernel(config.sourcePool);
      let allocator: PortBlockAllocator;
      if (options.previous instanceof PortBlockSourceAddress) {
        allocator = options.previous.allocator;
        allocator.reconfigure(blocks);
      } else {
        allocator = new PortBlockAllocator(blocks, { log: options.blockLog ?? (() => {}) });
      }
      return new PortBlockSourceAddress(new PoolSourceAddress(config.sourcePool.addresses, config.sourcePool.mode), allocator);
    }
    case 'transparent':
      return new TransparentSourceAddress(new CustomerPrefixes(sa?.customers ?? []), {
        ipv4: sa?.ipv4 ?? 'cpe',
        ipv6: sa?.ipv6 ?? 'host',
        prefixHost: sa?.prefixHost ?? '::100:0:0:1',
      });
    case 'nptv6':
      return new Nptv6SourceAddress(new CustomerPrefixes(sa?.customers ?? []), sa?.nptv6?.prefixes ?? [], poolOrKernel(config.sourcePool));
  }
}

/** Whether the strategy sources server legs from addresses that are not local (the return path is needed). */
export function needsReturnPath(config: Pick<ConcentratorConfig, 'sourceAddress' | 'sourcePool'>): boolean {
  const mode = sourceAddressMode(config);
  return mode === 'transparent' || mode === 'nptv6';
}
