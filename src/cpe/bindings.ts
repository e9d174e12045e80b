/**
 * Inbound bindings, CPE side (docs/protocol.md section 1.6, docs/cpe.md "Inbound bindings"). For each
 * configured binding the CPE keeps `pool` idle reverse connections to its concentrator: MPTCP connections it
 * opens itself (so they pass a CGN, and the path manager gives them a subflow on every uplink) whose signalling
 * is a binding IE (plus the authenticator). The concentrator echoes the claim; later it writes a source IE
 * naming an internet client, followed by the client's bytes: the CPE dials the binding's LAN host, relays,
 * and opens a replacement at once. Entries are retired (FIN, replaced) after `idleS`, and all at once on an
 * uplink or address change (their subflows belong to the old paths). A refused claim (reset before the echo)
 * or an unreachable concentrator is retried with a backoff up to 30 s.
 */
import { randomBytes } from 'node:crypto';
import { RefillBackoff } from './refill-backoff.js';
import type { Socket } from 'node:net';
import type { Logger } from '../log.js';
import type { Metrics } from '../control/metrics.js';
import type { Sockets, SpliceEngine } from '../platform/types.js';
import { parseEndpoint } from '../control/address.js';
import { IE_TYPE_AUTHENTICATOR, encodeAuthenticator, signAuthenticator } from '../protocol/auth.js';
import { IE_TYPE_BINDING, encodeMpConvert, parseMpConvert, type Ie } from '../protocol/index.js';
import { RESET_ON_CLOSE, createRelay, type RelayHandle, type RelayStats } from '../relay/index.js';
import type { BindingConfig, ConcentratorTarget, Credentials } from './config.js';

export interface ReverseBindingsDeps {
  sockets: Sockets;
  logger: Logger;
  metrics: Metrics;
  splice?: SpliceEngine | undefined;
  connectTimeoutMs: () => number;
  maxSeg?: () => number | undefined;
  credentials: (target: ConcentratorTarget) => Credentials | undefined;
  relaySettings: () => { idleTimeoutS: number; relayEngine: 'splice' | 'streams' };
  now?: () => number;
  /** A relayed inbound connection (the CPE tracks it with its other relays). */
  track?: (relay: RelayHandle, info: { lan: string; client: string; port: number }) => void;
}

export type ReverseEvent = 'opened' | 'used' | 'retired' | 'died' | 'failed';

type State = 'opening' | 'echo' | 'idle' | 'used';

interface Entry {
  socket: Socket | undefined;
  state: State;
  timer: NodeJS.Timeout | undefined;
  openedAt: number;
}

interface Slot {
  binding: BindingConfig;
  target: ConcentratorTarget;
  entries: Set<Entry>;
  relayed: number;
  backoff: RefillBackoff;
}

export interface BindingSnapshot {
  port: number;
  to: string;
  concentrator: string;
  pool: number;
  ready: number;
  opening: number;
  relayed: number;
}


/** The claim of one reverse connection: the binding IE, then the authenticator when the target has a key. */
export function claimFor(port: number, creds?: Credentials & { timestamp: number; nonce: Buffer }): Buffer {
  const ies: Ie[] = [{ type: IE_TYPE_BINDING, port }];
  if (creds) ies.push({ type: IE_TYPE_AUTHENTICATOR, direction: 'destination', body: encodeAuthenticator({ keyId: creds.keyId, timestamp: creds.timestamp, nonce: creds.nonce }) });
  const encoded = encodeMpConvert(ies);
  return creds ? signAuthenticator('mp-convert', encoded, creds.secret) : encoded;
}

export class ReverseBindings {
  readonly #deps: ReverseBindingsDeps;
  readonly #slots = new Map<string, Slot>();
  #stopped = false;

  constructor(deps: ReverseBindingsDeps) {
    this.#deps = deps;
  }

  /** Keeps a pool for every binding (and drops the pools of bindings no longer configured). */
  configure(bindings: readonly BindingConfig[], concentrators: readonly ConcentratorTarget[]): void {
    const wanted = new Map<string, { binding: BindingConfig; target: ConcentratorTarget }>();
    for (const b of bindings) {
      const target = b.concentrator === undefined ? concentrators[0] : concentrators.find((c) => c.address === b.concentrator);
      if (target) wanted.set(`${target.address}|${b.port}`, { binding: b, target });
    }
    for (const [key, slot] of this.#slots) {
      const w = wanted.get(key);
      if (!w || w.binding.to !== slot.binding.to) {
        this.#drain(slot);
        this.#slots.delete(key);
      }
    }
    for (const [key, { binding, target }] of wanted) {
      const slot = this.#slots.get(key);
      if (slot) {
        slot.binding = binding;
        slot.target = target;
      } else {
        this.#slots.set(key, { binding, target, entries: new Set(), relayed: 0, backoff: new RefillBackoff() });
      }
    }
    for (const slot of this.#slots.values()) this.#fill(slot);
  }

  /** Retires every idle entry (an uplink or address changed) and opens new ones. */
  flush(): void {
    for (const slot of this.#slots.values()) {
      this.#drain(slot);
      slot.backoff.reset();
      this.#fill(slot);
    }
  }

  snapshot(): BindingSnapshot[] {
    return [...this.#slots.values()].map((s) => {
      const ready = [...s.entries].filter((e) => e.state === 'idle').length;
      return { port: s.binding.port, to: s.binding.to, concentrator: s.target.address, pool: s.binding.pool, ready, opening: s.entries.size - ready, relayed: s.relayed };
    });
  }

  stop(): void {
    this.#stopped = true;
    for (const slot of this.#slots.values()) this.#drain(slot);
    this.#slots.clear();
  }

  #count(event: ReverseEvent): void {
    this.#deps.metrics.bindingReverse.inc({ event });
  }

  #drain(slot: Slot): void {
    slot.backoff.cancel();
    for (const e of [...slot.entries]) this.#close(e, slot, 'retired');
  }

  #release(e: Entry, slot: Slot): void {
    clearTimeout(e.timer);
    e.timer = undefined;
    slot.entries.delete(e);
  }

  /** A FIN, not a reset: the concentrator counts it as a reverse connection its CPE closed. */
  #close(e: Entry, slot: Slot, why: ReverseEvent): void {
    this.#release(e, slot);
    this.#count(why);
    if (e.socket) {
      try {
        this.#deps.sockets.setLinger(e.socket, null);
      } catch {
        /* closed meanwhile */
      }
      e.socket.end();
      const s = e.socket;
      const t = setTimeout(() => s.destroy(), 2_000);
      t.unref();
      s.once('close', () => clearTimeout(t));
    }
  }

  #fill(slot: Slot): void {
    if (this.#stopped || slot.backoff.pending) return;
    while (slot.entries.size < slot.binding.pool) this.#open(slot);
  }

  #retryLater(slot: Slot): void {
    if (this.#stopped) return;
    slot.backoff.schedule(() => this.#fill(slot));
  }

  /** Closed soon after it opened (refused, or the concentrator is restarting): back off; else refill now. */
  #lost(entry: Entry, slot: Slot, why: ReverseEvent): void {
    if (!slot.entries.has(entry)) return;
    this.#release(entry, slot);
    entry.socket?.destroy();
    this.#count(why);
    const now = (this.#deps.now ?? Date.now)();
    if (why === 'failed' || now - entry.openedAt < 5_000) this.#retryLater(slot);
    else this.#fill(slot);
  }

  #open(slot: Slot): void {
    const { sockets, logger } = this.#deps;
    const target = slot.target;
    const port = slot.binding.port;
    const ep = parseEndpoint(target.address);
    const now = this.#deps.now ?? Date.now;
    const abort = new AbortController();
    const entry: Entry = { socket: undefined, state: 'opening', timer: undefined, openedAt: now() };
    slot.entries.add(entry);
    entry.timer = setTimeout(() => abort.abort(), this.#deps.connectTimeoutMs());
    const creds = this.#deps.credentials(target);
    const claim = claimFor(port, creds ? { ...creds, timestamp: Math.floor(now() / 1000), nonce: randomBytes(16) } : undefined);
    const maxSeg = this.#deps.maxSeg?.();
    sockets
      .dial({
        family: ep.family,
        protocol: 'mptcp',
        host: ep.host,
        port: ep.port,
        timeoutMs: this.#deps.connectTimeoutMs(),
        signal: abort.signal,
        data: claim,
        // If this process dies, the concentrator (and the internet client) sees MP_FASTCLOSE, not DATA_FIN.
        linger: RESET_ON_CLOSE,
        ...(maxSeg ? { maxSeg } : {}),
      })
      .then(
        (socket) => {
          socket.on('error', () => {});
          if (!slot.entries.has(entry) || this.#stopped) {
            socket.destroy();
            return;
          }
          clearTimeout(entry.timer);
          entry.socket = socket;
          entry.state = 'echo';
          this.#count('opened');
          // The echo must arrive within the connect timeout; a refusal is a reset.
          entry.timer = setTimeout(() => this.#lost(entry, slot, 'failed'), this.#deps.connectTimeoutMs());
          this.#read(entry, slot, claim);
        },
        (err: unknown) => {
          if (!slot.entries.has(entry)) return;
          logger.debug({ concentrator: target.address, port, err: (err as Error).message }, 'binding: could not open a reverse connection');
          this.#lost(entry, slot, 'failed');
        },
      );
  }

  /** The echo of the claim, then (idle) the header naming the internet client, then the client's bytes. */
  #read(entry: Entry, slot: Slot, claim: Buffer): void {
    const socket = entry.socket as Socket;
    let buf: Buffer = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      if (entry.state === 'echo') {
        const n = Math.min(buf.length, claim.length);
        if (!buf.subarray(0, n).equals(claim.subarray(0, n))) {
          this.#deps.logger.warn({ concentrator: slot.target.address, port: slot.binding.port }, 'binding: the concentrator did not echo the claim');
          socket.resetAndDestroy();
          this.#lost(entry, slot, 'failed');
          return;
        }
        if (buf.length < claim.length) return;
        buf = buf.subarray(claim.length);
        clearTimeout(entry.timer);
        entry.state = 'idle';
        slot.backoff.reset();
        entry.timer = setTimeout(() => {
          this.#close(entry, slot, 'retired');
          this.#fill(slot);
        }, slot.binding.idleS * 1000);
        entry.timer.unref();
        if (buf.length === 0) return;
      }
      let header: ReturnType<typeof parseMpConvert>;
      try {
        header = parseMpConvert(buf);
      } catch (err) {
        this.#deps.logger.warn({ port: slot.binding.port, err: (err as Error).message }, 'binding: bad header from the concentrator');
        socket.resetAndDestroy();
        this.#lost(entry, slot, 'died');
        return;
      }
      if (header.status === 'need-more') return;
      const src = header.signalling.source;
      if (!src || src.port === undefined || header.signalling.ies.length !== 1) {
        this.#deps.logger.warn({ port: slot.binding.port }, 'binding: the header is not one source IE with a port');
        socket.resetAndDestroy();
        this.#lost(entry, slot, 'died');
        return;
      }
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      socket.pause();
      this.#release(entry, slot);
      entry.state = 'used';
      this.#count('used');
      this.#fill(slot);
      void this.#relay(slot, socket, { address: src.address, port: src.port }, buf.subarray(header.length));
    };
    // Before the echo: the claim was refused (a reset: docs/concentrator.md, the binding-* refusals). After:
    // the concentrator closed it before use (its idle time, the binding removed, a restart). Replaced either way.
    const onEnd = () => this.#lost(entry, slot, entry.state === 'echo' ? 'failed' : 'died');
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('close', onEnd);
  }

  async #relay(slot: Slot, reverse: Socket, client: { address: string; port: number }, first: Buffer): Promise<void> {
    const { sockets, logger } = this.#deps;
    const lan = parseEndpoint(slot.binding.to);
    const abort = new AbortController();
    const onGone = () => abort.abort();
    reverse.once('close', onGone);
    let host: Socket;
    try {
      host = await sockets.dial({
        family: lan.family,
        protocol: 'tcp',
        host: lan.host,
        port: lan.port,
        timeoutMs: this.#deps.connectTimeoutMs(),
        signal: abort.signal,
        linger: RESET_ON_CLOSE,
        ...(first.length > 0 ? { data: first } : {}),
      });
    } catch (err) {
      logger.info({ port: slot.binding.port, to: slot.binding.to, client: `${client.address}:${client.port}`, err: (err as Error).message }, 'binding: the LAN host did not answer');
      reverse.resetAndDestroy();
      return;
    } finally {
      reverse.off('close', onGone);
    }
    if (reverse.destroyed) {
      host.resetAndDestroy();
      return;
    }
    host.on('error', () => {});
    const rs = this.#deps.relaySettings();
    const relay = createRelay(host, reverse, { idleTimeoutMs: rs.idleTimeoutS * 1000, sockets }, rs.relayEngine === 'splice' ? this.#deps.splice : undefined);
    slot.relayed++;
    const m = this.#deps.metrics;
    m.active.inc();
    this.#deps.track?.(relay, { lan: slot.binding.to, client: `${client.address}:${client.port}`, port: slot.binding.port });
    logger.debug({ port: slot.binding.port, to: slot.binding.to, client: `${client.address}:${client.port}` }, 'binding: inbound connection relayed');
    relay.once('close', (stats: RelayStats) => {
      slot.relayed--;
      m.active.dec();
      m.connections.inc({ outcome: stats.outcome });
      m.relayed.inc({ engine: relay.mode });
      // CPE bytes: up = towards the concentrator (here from the LAN host to the internet client).
      m.bytes.inc({ direction: 'up' }, stats.aToB);
      m.bytes.inc({ direction: 'down' }, stats.bToA + first.length);
    });
  }
}
