/**
 * The warm pool: a few MPTCP connections the CPE keeps open to each concentrator that has `warmPool` set,
 * their extra subflows already joined on the other uplinks. A new LAN connection takes one and sends its
 * signalling and first bytes at once: no handshake, no SYN-window clamp and no MP_JOIN wait on its critical
 * path, so a short transfer uses every uplink from its first byte (docs/performance.md, "Warm pool").
 *
 * A warm connection sends the warm IE (docs/protocol.md section 1.5) right after its handshake, so the
 * concentrator waits for the rest with its warm idle time instead of the signalling timeout. Entries are
 * retired (closed, replaced) after `warmIdleS`, below the concentrator's `signalling.warmIdleS`, and all
 * at once on an uplink or address change (their subflows belong to the old paths). Bounded: at most
 * `warmPool` ready or opening per concentrator; a concentrator that cannot be reached is retried with a
 * backoff up to 30 s, and not while the selector holds it off.
 */
import type { Socket } from 'node:net';
import { RefillBackoff } from './refill-backoff.js';
import type { Logger } from '../log.js';
import type { Sockets } from '../platform/types.js';
import { parseEndpoint } from '../control/address.js';
import { WARM_IE } from '../protocol/index.js';
import type { ConcentratorSelector } from './concentrators.js';
import type { ConcentratorTarget } from './config.js';

export interface WarmPoolDeps {
  sockets: Sockets;
  logger: Logger;
  selector: ConcentratorSelector;
  connectTimeoutMs: () => number;
  /** TCP_MAXSEG for the connections (the CPE's `mss`). */
  maxSeg?: () => number | undefined;
  /** Extra subflows a connection should have before it is handed out (usable uplinks - 1). */
  expectedSubflows: () => number;
  /** Counts what happens to entries: opened, used, retired, died, failed. */
  count?: (event: WarmEvent) => void;
}

export type WarmEvent = 'opened' | 'used' | 'retired' | 'died' | 'failed' | 'flushed';

interface Entry {
  socket: Socket;
  ready: boolean;
  timer: NodeJS.Timeout | undefined;
  openedAt: number;
}

interface Slot {
  target: ConcentratorTarget;
  entries: Set<Entry>;
  backoff: RefillBackoff;
}

/** How long a new entry waits for its extra subflows before it is handed out anyway. */
const JOIN_WAIT_MS = 2_000;
const JOIN_POLL_MS = 25;

export class WarmPool {
  readonly #deps: WarmPoolDeps;
  readonly #slots = new Map<string, Slot>();
  #stopped = false;

  constructor(deps: WarmPoolDeps) {
    this.#deps = deps;
  }

  /** Keeps a pool for every target with `warmPool` > 0 (and drops the others'). */
  configure(targets: readonly ConcentratorTarget[]): void {
    const wanted = new Map(targets.filter((t) => t.warmPool > 0).map((t) => [t.address, t]));
    for (const [address, slot] of this.#slots) {
      if (!wanted.has(address)) {
        this.#drain(slot, 'flushed');
        this.#slots.delete(address);
      }
    }
    for (const [address, target] of wanted) {
      const slot = this.#slots.get(address);
      if (slot) {
        slot.target = target;
        while (slot.entries.size > target.warmPool) this.#close([...slot.entries][0] as Entry, slot, 'flushed');
      } else {
        this.#slots.set(address, { target, entries: new Set(), backoff: new RefillBackoff() });
      }
    }
    for (const slot of this.#slots.values()) this.#fill(slot);
  }

  /** A ready connection to `target`, taken out of the pool (refilled behind it); undefined if none. */
  take(target: ConcentratorTarget): Socket | undefined {
    const slot = this.#slots.get(target.address);
    if (!slot) return undefined;
    for (const e of slot.entries) {
      if (!e.ready || e.socket.destroyed) continue;
      this.#release(e, slot);
      e.socket.removeAllListeners('data');
      e.socket.removeAllListeners('end');
      e.socket.pause();
      this.#deps.count?.('used');
      this.#fill(slot);
      return e.socket;
    }
    return undefined;
  }

  /** Closes every entry (their subflows follow the old uplinks and addresses) and opens new ones. */
  flush(): void {
    for (const slot of this.#slots.values()) {
      this.#drain(slot, 'flushed');
      slot.backoff.reset();
      this.#fill(slot);
    }
  }

  snapshot(): Array<{ concentrator: string; size: number; ready: number; opening: number }> {
    return [...this.#slots.values()].map((s) => {
      const ready = [...s.entries].filter((e) => e.ready).length;
      return { concentrator: s.target.address, size: s.target.warmPool, ready, opening: s.entries.size - ready };
    });
  }

  stop(): void {
    this.#stopped = true;
    for (const slot of this.#slots.values()) this.#drain(slot, 'flushed');
    this.#slots.clear();
  }

  #drain(slot: Slot, why: WarmEvent): void {
    slot.backoff.cancel();
    for (const e of [...slot.entries]) this.#close(e, slot, why);
  }

  #release(e: Entry, slot: Slot): void {
    clearTimeout(e.timer);
    slot.entries.delete(e);
  }

  #close(e: Entry, slot: Slot, why: WarmEvent): void {
    this.#release(e, slot);
    this.#deps.count?.(why);
    // A FIN, not a reset: the concentrator counts it as a retired warm connection (warm-unused).
    e.socket.destroySoon();
  }

  #fill(slot: Slot): void {
    if (this.#stopped || slot.backoff.pending) return;
    const t = slot.target;
    if (!this.#deps.selector.candidates().some((c) => c.address === t.address)) {
      // Held off or not capable: look again later.
      this.#retryLater(slot);
      return;
    }
    while (slot.entries.size < t.warmPool) this.#open(slot);
  }

  #retryLater(slot: Slot): void {
    if (this.#stopped) return;
    slot.backoff.schedule(() => this.#fill(slot));
  }

  #open(slot: Slot): void {
    const { sockets, logger } = this.#deps;
    const target = slot.target;
    const ep = parseEndpoint(target.address);
    const abort = new AbortController();
    const entry: Entry = { socket: undefined as unknown as Socket, ready: false, timer: undefined, openedAt: Date.now() };
    slot.entries.add(entry);
    // Until the dial settles, `timer` is the abort of the dial (a flush or stop ends it).
    entry.timer = setTimeout(() => abort.abort(), this.#deps.connectTimeoutMs());
    const maxSeg = this.#deps.maxSeg?.();
    sockets
      .dial({ family: ep.family, protocol: 'mptcp', host: ep.host, port: ep.port, timeoutMs: this.#deps.connectTimeoutMs(), signal: abort.signal, ...(maxSeg ? { maxSeg } : {}) })
      .then(
        (socket) => {
          socket.on('error', () => {});
          if (!slot.entries.has(entry) || this.#stopped) {
            socket.destroy();
            return;
          }
          clearTimeout(entry.timer);
          entry.openedAt = Date.now();
          if (!sockets.isMptcp(socket)) {
            this.#release(entry, slot);
            socket.destroy();
            this.#deps.count?.('failed');
            this.#retryLater(slot);
            return;
          }
          entry.socket = socket;
          socket.write(WARM_IE);
          // The concentrator sends nothing on a warm connection before its use: anything is a fault.
          socket.on('data', () => this.#gone(entry, slot));
          socket.once('end', () => this.#gone(entry, slot));
          socket.once('close', () => this.#gone(entry, slot));
          this.#deps.count?.('opened');
          slot.backoff.reset();
          this.#awaitJoins(entry, slot, Date.now() + JOIN_WAIT_MS);
        },
        (err: unknown) => {
          if (!slot.entries.has(entry)) return;
          this.#release(entry, slot);
          this.#deps.count?.('failed');
          logger.debug({ concentrator: target.address, err: (err as Error).message }, 'warm pool: could not open a connection');
          this.#retryLater(slot);
        },
      );
  }

  /** Ready once the extra subflows have joined (or after JOIN_WAIT_MS); then retired after warmIdleS. */
  #awaitJoins(entry: Entry, slot: Slot, deadline: number): void {
    if (!slot.entries.has(entry)) return;
    const info = this.#deps.sockets.mptcpInfo(entry.socket);
    const joined = info ? info.subflows >= this.#deps.expectedSubflows() : true;
    if (!joined && Date.now() < deadline) {
      entry.timer = setTimeout(() => this.#awaitJoins(entry, slot, deadline), JOIN_POLL_MS);
      return;
    }
    entry.ready = true;
    entry.timer = setTimeout(() => {
      this.#close(entry, slot, 'retired');
      this.#fill(slot);
    }, slot.target.warmIdleS * 1000);
    entry.timer.unref();
  }

  /** The concentrator closed or reset an idle entry (restart, its idle time): replace it. */
  #gone(entry: Entry, slot: Slot): void {
    if (!slot.entries.has(entry)) return;
    this.#release(entry, slot);
    entry.socket.destroy();
    this.#deps.count?.('died');
    // Closed soon after it opened (the concentrator refuses warm connections, or is restarting): back off.
    if (Date.now() - entry.openedAt < 5_000) this.#retryLater(slot);
    else this.#fill(slot);
  }
}
