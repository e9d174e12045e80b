/**
 * Port-block allocation for address sharing (RFC 6888 sections 4 and 5, logging and port allocation; dynamic blocks as RFC
 * 7422 section 1 and RFC 7753 describe them): each CPE gets blocks of `size` consecutive source ports on its
 * paired external address, and its server legs bind explicit ports from them. The session log then needs
 * one line per block allocation and release instead of one per connection, and still names, for any
 * external address, port and time, the CPE that used it.
 *
 * Dynamic blocks: a CPE gets its first block with its first connection, another one when every port of its
 * blocks is in use (up to `maxBlocksPerCpe`), and gives a block back once no connection has used it for
 * `releaseAfterMs`. Block positions and ports inside the CPE's blocks are chosen at random (RFC 6056's
 * reason: ports that are hard to guess). Blocks never overlap on one address, even across a change of size
 * (a reload): the address keeps a map of the ports that belong to some block.
 *
 * Pure bookkeeping and timers; the binding itself (and EADDRINUSE) is the dialer's (./server-dialer.ts).
 */
import { randomInt } from 'node:crypto';

export interface PortBlockOptions {
  /** Ports per block. */
  size: number;
  /** The range the blocks are cut from, inclusive. */
  first: number;
  last: number;
  maxBlocksPerCpe: number;
  /** How long an unused block stays with its CPE (0 = released as soon as its last connection ends). */
  releaseAfterMs: number;
  /** A port the kernel refused (in use by another socket, TIME_WAIT): skipped for this long. */
  coolDownMs?: number;
}

/** Who a block is for, as the log names it. */
export interface BlockHolder {
  /** The CPE identity (limits, the pool): its address, or key:<cpe> with authentication. */
  identity: string;
  /** The source address of the connection that asked for the block. */
  cpe: string;
  keyId?: string | undefined;
}

export interface BlockEvent {
  event: 'block-allocate' | 'block-release';
  cpe: string;
  identity?: string;
  keyId?: string;
  external: string;
  /** "first-last", inclusive. */
  ports: string;
  /** Blocks the CPE holds on this address after the event. */
  blocks: number;
  /** release: why (idle, unusable: the kernel refused every port of it, stop, reload). */
  reason?: string;
  /** release: how long the block was held. */
  heldS?: number;
}

export type PortBlockRefusal = 'port-block-limit' | 'port-blocks-exhausted';

interface Block {
  readonly first: number;
  readonly last: number;
  readonly holder: BlockHolder;
  readonly allocatedAt: number;
  /** Ports bound (or about to be) by this concentrator's connections. */
  readonly inUse: Set<number>;
  timer?: NodeJS.Timeout | undefined;
}

interface AddressState {
  /** 1 for each port inside some block. */
  readonly taken: Uint8Array;
  readonly byCpe: Map<string, Block[]>;
  /** Ports the kernel refused, until when. */
  readonly cooling: Map<number, number>;
}

/** One port of a CPE's blocks, held by one connection until `release()`. */
export interface PortLease {
  /** The port to bind now. */
  readonly port: number;
  /**
   * The kernel refused `port` (EADDRINUSE, EADDRNOTAVAIL): give it back, cool it down, and take another one
   * (from a new block if need be). Undefined when none is left; `refusal` then says why.
   */
  next(): number | undefined;
  readonly refusal: PortBlockRefusal | undefined;
  /** The connection ended: the port is free again (idempotent). */
  release(): void;
}

export interface PortBlockDeps {
  log: (e: BlockEvent) => void;
  now?: () => number;
  /** A random integer in [0, n). */
  random?: (n: number) => number;
}

const DEFAULT_COOL_DOWN_MS = 60_000;
const PORTS = 65_536;

export class PortBlockAllocator {
  #o: PortBlockOptions;
  readonly #deps: PortBlockDeps;
  readonly #now: () => number;
  readonly #random: (n: number) => number;
  readonly #addresses = new Map<string, AddressState>();
  /** After close(): blocks go back as soon as they are empty. */
  #closing: string | undefined;

  constructor(options: PortBlockOptions, deps: PortBlockDeps) {
    checkOptions(options);
    this.#o = { ...options };
    this.#deps = deps;
    this.#now = deps.now ?? Date.now;
    this.#random = deps.random ?? ((n) => (n <= 1 ? 0 : randomInt(n)));
  }

  /** New options apply to blocks allocated from now on; blocks held keep their ports. */
  reconfigure(options: PortBlockOptions): void {
    checkOptions(options);
    this.#o = { ...options };
    this.#closing = undefined;
  }

  /** A port for a new connection of `holder` from `address`, or why there is none. */
  lease(holder: BlockHolder, address: string): PortLease | PortBlockRefusal {
    const first = this.#take(holder, address);
    if (typeof first === 'string') return first;
    let port: number | undefined = first;
    let refusal: PortBlockRefusal | undefined;
    return {
      get port() {
        return port ?? 0;
      },
      get refusal() {
        return refusal;
      },
      next: () => {
        if (port === undefined) return undefined;
        const refused = port;
        this.#cool(address, refused);
        // Another port first, then the refused one back: its block must not be released (and reallocated) between.
        const again = this.#take(holder, address);
        this.#free(holder.identity, address, refused);
        if (typeof again === 'string') {
          refusal = again;
          port = undefined;
          return undefined;
        }
        port = again;
        return port;
      },
      release: () => {
        if (port === undefined) return;
        this.#free(holder.identity, address, port);
        port = undefined;
      },
    };
  }

  /** Blocks held now, per address (status, tests). */
  blocks(): Array<{ external: string; identity: string; ports: string; inUse: number }> {
    const out: Array<{ external: string; identity: string; ports: string; inUse: number }> = [];
    for (const [external, a] of this.#addresses) {
      for (const list of a.byCpe.values()) for (const b of list) out.push({ external, identity: b.holder.identity, ports: `${b.first}-${b.last}`, inUse: b.inUse.size });
    }
    return out;
  }

  /** Totals for /status: blocks held, CPEs holding them, ports in use. */
  summary(): { blocks: number; cpes: number; portsInUse: number } {
    let blocks = 0;
    let portsInUse = 0;
    const cpes = new Set<string>();
    for (const a of this.#addresses.values()) {
      for (const [identity, list] of a.byCpe) {
        cpes.add(identity);
        blocks += list.length;
        for (const b of list) portsInUse += b.inUse.size;
      }
    }
    return { blocks, cpes: cpes.size, portsInUse };
  }

  /**
   * Gives back every block without a connection now (logged with `reason`); the others go back as soon as
   * their last connection ends. For stop, and for a strategy that a reload replaced.
   */
  close(reason = 'stop'): void {
    this.#closing = reason;
    for (const [address, a] of this.#addresses) {
      for (const list of [...a.byCpe.values()]) for (const b of [...list]) if (b.inUse.size === 0) this.#releaseBlock(address, b, reason);
    }
  }

  #state(address: string): AddressState {
    let a = this.#addresses.get(address);
    if (!a) {
      a = { taken: new Uint8Array(PORTS), byCpe: new Map(), cooling: new Map() };
      this.#addresses.set(address, a);
    }
    return a;
  }

  /** A free port of the holder's blocks (a new block when they are full), marked in use. */
  #take(holder: BlockHolder, address: string): number | PortBlockRefusal {
    const a = this.#state(address);
    const list = a.byCpe.get(holder.identity) ?? [];
    const now = this.#now();
    const port = this.#pick(list, a, now);
    if (port !== undefined) return port;
    if (list.length >= this.#o.maxBlocksPerCpe) return 'port-block-limit';
    const block = this.#allocate(holder, address, a, now);
    if (!block) return 'port-blocks-exhausted';
    return this.#pick([block], a, now) ?? 'port-blocks-exhausted';
  }

  /** A random port of these blocks that no connection uses and the kernel did not refuse lately. */
  #pick(blocks: readonly Block[], a: AddressState, now: number): number | undefined {
    const total = blocks.reduce((n, b) => n + (b.last - b.first + 1), 0);
    if (total === 0) return undefined;
    const start = this.#random(total);
    for (let i = 0; i < total; i++) {
      let k = (start + i) % total;
      for (const b of blocks) {
        const n = b.last - b.first + 1;
        if (k >= n) {
          k -= n;
          continue;
        }
        const port = b.first + k;
        if (b.inUse.has(port)) break;
        const until = a.cooling.get(port);
        if (until !== undefined) {
          if (until > now) break;
          a.cooling.delete(port);
        }
        b.inUse.add(port);
        if (b.timer) {
          clearTimeout(b.timer);
          b.timer = undefined;
        }
        return port;
      }
    }
    return undefined;
  }

  /** A block at a random free aligned position of the range, or undefined when the address has none left. */
  #allocate(holder: BlockHolder, address: string, a: AddressState, now: number): Block | undefined {
    const { size, first, last } = this.#o;
    const count = Math.floor((last - first + 1) / size);
    if (count === 0) return undefined;
    const start = this.#random(count);
    for (let i = 0; i < count; i++) {
      const lo = first + ((start + i) % count) * size;
      const hi = lo + size - 1;
      if (!free(a.taken, lo, hi) || allCooling(a.cooling, lo, hi, now)) continue;
      a.taken.fill(1, lo, hi + 1);
      const block: Block = { first: lo, last: hi, holder: { ...holder }, allocatedAt: now, inUse: new Set() };
      const list = a.byCpe.get(holder.identity) ?? [];
      list.push(block);
      a.byCpe.set(holder.identity, list);
      this.#deps.log({ event: 'block-allocate', ...who(block.holder), external: address, ports: `${lo}-${hi}`, blocks: list.length });
      return block;
    }
    return undefined;
  }

  #cool(address: string, port: number): void {
    const a = this.#state(address);
    a.cooling.set(port, this.#now() + (this.#o.coolDownMs ?? DEFAULT_COOL_DOWN_MS));
  }

  #free(identity: string, address: string, port: number): void {
    const a = this.#addresses.get(address);
    const block = a?.byCpe.get(identity)?.find((b) => port >= b.first && port <= b.last);
    if (!a || !block) return;
    block.inUse.delete(port);
    if (block.inUse.size > 0) return;
    // A block whose every port the kernel refused is of no use to its CPE: back at once (it counts to its limit).
    const unusable = allCooling(a.cooling, block.first, block.last, this.#now());
    if (this.#closing !== undefined || this.#o.releaseAfterMs === 0 || unusable) {
      this.#releaseBlock(address, block, this.#closing ?? (unusable ? 'unusable' : 'idle'));
      return;
    }
    block.timer = setTimeout(() => {
      block.timer = undefined;
      if (block.inUse.size === 0) this.#releaseBlock(address, block, 'idle');
    }, this.#o.releaseAfterMs);
    block.timer.unref();
  }

  #releaseBlock(address: string, block: Block, reason: string): void {
    const a = this.#addresses.get(address);
    const list = a?.byCpe.get(block.holder.identity);
    if (!a || !list) return;
    const i = list.indexOf(block);
    if (i < 0) return;
    if (block.timer) clearTimeout(block.timer);
    block.timer = undefined;
    list.splice(i, 1);
    if (list.length === 0) a.byCpe.delete(block.holder.identity);
    // The cooled ports stay cooled: what the kernel refused does not depend on who holds the block.
    a.taken.fill(0, block.first, block.last + 1);
    this.#deps.log({
      event: 'block-release',
      ...who(block.holder),
      external: address,
      ports: `${block.first}-${block.last}`,
      blocks: list.length,
      reason,
      heldS: Math.round((this.#now() - block.allocatedAt) / 1000),
    });
  }
}

function who(h: BlockHolder): { cpe: string; identity?: string; keyId?: string } {
  return { cpe: h.cpe, ...(h.identity !== h.cpe ? { identity: h.identity } : {}), ...(h.keyId !== undefined ? { keyId: h.keyId } : {}) };
}

/** Every port of lo-hi was refused by the kernel lately: a block there would have nothing to offer. */
function allCooling(cooling: Map<number, number>, lo: number, hi: number, now: number): boolean {
  if (cooling.size < hi - lo + 1) return false;
  for (let p = lo; p <= hi; p++) if ((cooling.get(p) ?? 0) <= now) return false;
  return true;
}

function free(taken: Uint8Array, lo: number, hi: number): boolean {
  for (let p = lo; p <= hi; p++) if (taken[p] !== 0) return false;
  return true;
}

function checkOptions(o: PortBlockOptions): void {
  if (!(Number.isInteger(o.first) && Number.isInteger(o.last) && o.first >= 1 && o.last <= 65_535 && o.first <= o.last)) {
    throw new RangeError(`Cannot use port range ${o.first}-${o.last}: expected 1 <= first <= last <= 65535`);
  }
  if (!(Number.isInteger(o.size) && o.size >= 1 && o.size <= o.last - o.first + 1)) {
    throw new RangeError(`Cannot use port blocks of ${o.size}: expected 1..${o.last - o.first + 1} (the range's length)`);
  }
}
