/**
 * Inbound bindings, concentrator side (docs/protocol.md section 1.6, docs/concentrator.md "Inbound bindings").
 * A CPE claims an external port with reverse connections: MPTCP connections it opens (so they work behind a
 * CGN and have subflows on every uplink) whose signalling is a binding IE. The first accepted claim opens the
 * binding's TCP listener on the concentrator's binding addresses (or the CPE's paired pool address); each
 * reverse connection is echoed and kept idle. An internet connection to the binding takes the oldest idle
 * reverse connection: the concentrator writes a source IE naming the internet client and relays the pair; no
 * round trip over the uplinks is added. A binding whose reverse connections are all gone is closed after
 * `graceS` (its CPE went away): the port is free again.
 */
import { isIP, isIPv4, type Socket } from 'node:net';
import { formatEndpoint } from '../control/address.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../control/metrics.js';
import type { ListeningServer, Sockets, SpliceEngine } from '../platform/types.js';
import { bindingGate, bindingKey } from '../policy/bindings.js';
import { refuse, type Refusal } from '../policy/refusals.js';
import { encodeMpConvert, unmapAddress } from '../protocol/index.js';
import { RESET_ON_CLOSE, createRelay, type RelayHandle, type RelayStats } from '../relay/index.js';
import type { ConnectionContext } from './context.js';

export interface BindingSettings {
  /** Addresses external ports open on; empty: the CPE's paired source-pool address. */
  addresses: string[];
  ports: { from: number; to: number };
  maxPerCpe: number;
  idlePerBinding: number;
  idleS: number;
  graceS: number;
  waitMs: number;
}

export interface BindingsDeps {
  sockets: Sockets;
  logger: Logger;
  metrics: Metrics;
  splice?: SpliceEngine | undefined;
  /** Read per claim / connection, so a reload applies to what comes next. */
  settings: () => BindingSettings | undefined;
  relaySettings: () => { idleTimeoutS: number; relayEngine: 'splice' | 'streams' };
  /** The concentrator's own services (listeners, admin), for the binding gate. */
  ownServices: () => Array<{ host: string; port: number }>;
  /** Transparent mode: the CPE's preserved address (its own), where its bindings open; undefined: other modes. */
  preservedAddress: (ctx: ConnectionContext) => string | undefined;
  /** The CPE's paired pool address held for the binding's life (pool mode); undefined: no pool. */
  pinPoolAddress: (identity: string) => { address: string; release: () => void } | null | undefined;
  /** One line at open and at close of each inbound connection (the session log). */
  sessionLog: (line: Record<string, unknown>) => void;
  /** A reverse connection was handed an internet client: the session is relayed from now on. */
  onRelay: (ctx: ConnectionContext, relay: RelayHandle) => void;
}

interface Reverse {
  ctx: ConnectionContext;
  timer: NodeJS.Timeout;
  detach: () => void;
}

interface Waiter {
  socket: Socket;
  timer: NodeJS.Timeout;
}

interface Binding {
  key: string;
  owner: string;
  addresses: string[];
  port: number;
  servers: ListeningServer[];
  idle: Reverse[];
  active: number;
  waiting: Waiter[];
  grace: NodeJS.Timeout | undefined;
  release: (() => void) | undefined;
}

export interface BindingView {
  addresses: string[];
  port: number;
  owner: string;
  idle: number;
  active: number;
}

/** What a claim that passed leaves the pipeline with: the binding owns the connection now. */
export const HANDED_OFF = 'handed-off' as const;

/** Internet connections that wait for a reverse connection, per binding, beyond which they are reset at once. */
const MAX_WAITING = 64;

export class Bindings {
  readonly #deps: BindingsDeps;
  readonly #bindings = new Map<string, Binding>();
  /** Claims in flight (listener being opened), so two racing claims of one port share it. */
  readonly #opening = new Map<string, Promise<Binding | Refusal>>();
  #stopped = false;

  constructor(deps: BindingsDeps) {
    this.#deps = deps;
  }

  get size(): number {
    return this.#bindings.size;
  }

  snapshot(): BindingView[] {
    return [...this.#bindings.values()].map((b) => ({ addresses: b.addresses, port: b.port, owner: b.owner, idle: b.idle.length, active: b.active }));
  }

  /** The binding step: gates, then the reverse connection is echoed and kept idle (HANDED_OFF), or refused. */
  async claim(ctx: ConnectionContext): Promise<Refusal | typeof HANDED_OFF | undefined> {
    const port = ctx.signalling?.binding;
    if (port === undefined) return undefined;
    const settings = this.#deps.settings();
    if (!settings || this.#stopped) return refuse('binding-off');
    // Nothing may follow a claim before the concentrator's header (docs/protocol.md section 1.6).
    if ((ctx.signalling?.rest.length ?? 0) > 0) return refuse('binding-data', { detail: { port, bytes: ctx.signalling?.rest.length } });
    // The address: configured ones, else the CPE's own (transparent: not this host's, IP_TRANSPARENT), else its pool address.
    const preserved = settings.addresses.length === 0 ? this.#deps.preservedAddress(ctx) : undefined;
    const pin = settings.addresses.length === 0 && preserved === undefined ? this.#deps.pinPoolAddress(ctx.identity) : undefined;
    const addresses = settings.addresses.length > 0 ? settings.addresses : preserved !== undefined ? [preserved] : pin ? [pin.address] : [];
    if (addresses.length === 0) return refuse('binding-no-address');
    const key = bindingKey(addresses, port);
    const gate = bindingGate(
      { cpe: ctx.identity, addresses, port },
      { owner: (k) => this.#bindings.get(k)?.owner, count: (cpe) => [...this.#bindings.values()].filter((b) => b.owner === cpe).length },
      { ports: settings.ports, maxPerCpe: settings.maxPerCpe, own: this.#deps.ownServices() },
    );
    if (gate) {
      pin?.release();
      return gate;
    }
    let binding = this.#bindings.get(key);
    if (binding) {
      pin?.release(); // the binding holds its own pin
    } else {
      let opening = this.#opening.get(key);
      if (!opening) {
        opening = this.#open(key, ctx.identity, addresses, port, preserved !== undefined, pin?.release);
        this.#opening.set(key, opening);
        void opening.finally(() => this.#opening.delete(key));
      } else {
        pin?.release();
      }
      const opened = await opening;
      if ('code' in opened) return opened;
      if (opened.owner !== ctx.identity) return refuse('binding-taken', { detail: { port, owner: opened.owner } });
      binding = opened;
    }
    if (binding.idle.length >= settings.idlePerBinding) return refuse('binding-idle-limit', { detail: { port, max: settings.idlePerBinding } });
    if (ctx.socket.destroyed) return refuse('client-gone');
    this.#park(binding, ctx, settings);
    return HANDED_OFF;
  }

  async #open(key: string, owner: string, addresses: string[], port: number, transparent: boolean, release: (() => void) | undefined): Promise<Binding | Refusal> {
    const binding: Binding = { key, owner, addresses, port, servers: [], idle: [], active: 0, waiting: [], grace: undefined, release };
    try {
      for (const host of addresses) {
        const server = await this.#deps.sockets.listen({
          family: isIP(host) === 6 ? 6 : 4,
          protocol: 'tcp',
          host,
          port,
          backlog: 1024,
          reuseAddr: true,
          // The CPE's own address: the return path (src/concentrator/return-path.ts) delivers its SYNs here.
          ...(transparent ? { transparent: true } : {}),
          // Inherited by the internet connections: if this process dies, the internet clients see a reset.
          linger: RESET_ON_CLOSE,
        });
        server.allowHalfOpen = true;
        server.on('connection', (socket: Socket) => this.#inbound(binding, socket));
        server.on('error', (err) => this.#deps.logger.error({ err, port }, 'binding listener error'));
        binding.servers.push(server);
      }
    } catch (err) {
      for (const s of binding.servers) s.close();
      release?.();
      const errno = (err as { code?: string }).code ?? 'EUNKNOWN';
      return refuse('binding-listen', { qualifier: errno, detail: { port, addresses, error: (err as Error).message } });
    }
    if (this.#stopped) {
      this.#remove(binding);
      return refuse('binding-off');
    }
    this.#bindings.set(key, binding);
    this.#deps.metrics.bindingsOpen.set(this.#bindings.size);
    this.#deps.logger.info({ cpe: owner, addresses, port }, 'inbound binding opened');
    return binding;
  }

  #park(binding: Binding, ctx: ConnectionContext, settings: BindingSettings): void {
    const { socket } = ctx;
    clearTimeout(binding.grace);
    binding.grace = undefined;
    // The claim is confirmed like a conversion: its signalling back, byte for byte (docs/protocol.md 1.6).
    socket.write(ctx.signalling?.raw ?? Buffer.alloc(0));
    this.#deps.metrics.bindingReverse.inc({ event: 'claimed' });
    const gone = (event: 'closed' | 'idle') => {
      const i = binding.idle.indexOf(entry);
      if (i < 0) return;
      binding.idle.splice(i, 1);
      entry.detach();
      this.#deps.metrics.bindingReverse.inc({ event });
      // The CPE retires an entry with a FIN: answered with a FIN. Anything else (data, a reset): reset.
      if (event === 'idle') {
        socket.end();
        // A CPE that vanished never answers the FIN: do not keep its socket for the kernel's retransmissions.
        const t = setTimeout(() => socket.destroy(), 5_000);
        t.unref();
        socket.once('close', () => clearTimeout(t));
      }
      this.#maybeRemove(binding);
    };
    const onData = () => {
      socket.resetAndDestroy();
      gone('closed');
    };
    const onEnd = () => {
      try {
        this.#deps.sockets.setLinger(socket, null);
      } catch {
        /* closed meanwhile */
      }
      socket.end();
      gone('closed');
    };
    const onClose = () => gone('closed');
    const entry: Reverse = {
      ctx,
      timer: setTimeout(() => gone('idle'), settings.idleS * 1000),
      detach: () => {
        clearTimeout(entry.timer);
        socket.off('data', onData);
        socket.off('end', onEnd);
        socket.off('close', onClose);
      },
    };
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('close', onClose);
    socket.resume();
    binding.idle.push(entry);
    // An internet client already waiting takes it at once.
    const waiter = binding.waiting.shift();
    if (waiter) {
      clearTimeout(waiter.timer);
      this.#use(binding, waiter.socket);
    }
  }

  /** An internet connection to the binding. */
  #inbound(binding: Binding, socket: Socket): void {
    socket.on('error', () => {});
    const m = this.#deps.metrics;
    if (this.#stopped) {
      m.bindingInbound.inc({ outcome: 'stopping' });
      socket.resetAndDestroy();
      return;
    }
    if (binding.idle.length > 0) {
      this.#use(binding, socket);
      return;
    }
    const waitMs = this.#deps.settings()?.waitMs ?? 0;
    if (binding.waiting.length >= MAX_WAITING || waitMs === 0) {
      m.bindingInbound.inc({ outcome: 'no-reverse' });
      socket.resetAndDestroy();
      return;
    }
    const waiter: Waiter = {
      socket,
      timer: setTimeout(() => {
        const i = binding.waiting.indexOf(waiter);
        if (i >= 0) binding.waiting.splice(i, 1);
        m.bindingInbound.inc({ outcome: 'no-reverse' });
        socket.resetAndDestroy();
      }, waitMs),
    };
    socket.once('close', () => {
      const i = binding.waiting.indexOf(waiter);
      if (i < 0) return;
      binding.waiting.splice(i, 1);
      clearTimeout(waiter.timer);
    });
    binding.waiting.push(waiter);
  }

  #use(binding: Binding, client: Socket): void {
    const address = unmapAddress(client.remoteAddress ?? '');
    const port = client.remotePort ?? 0;
    if (!isIP(address) || port === 0) {
      // Closed before its address could be read: nothing to hand over, the reverse connection stays idle.
      client.destroy();
      return;
    }
    const entry = binding.idle.shift();
    if (!entry) throw new Error('Bindings: #use without an idle reverse connection');
    entry.detach();
    const reverse = entry.ctx.socket;
    reverse.pause();
    // The header: the internet client as a source IE (D = 1, M = 1); its bytes follow through the relay.
    reverse.write(encodeMpConvert([{ type: 0, direction: 'source', address, port }]));
    const rs = this.#deps.relaySettings();
    const relay = createRelay(reverse, client, { idleTimeoutMs: rs.idleTimeoutS * 1000, sockets: this.#deps.sockets }, rs.relayEngine === 'splice' ? this.#deps.splice : undefined);
    entry.ctx.relay = relay;
    entry.ctx.destination = { address, port, family: isIPv4(address) ? 4 : 6 };
    binding.active++;
    const ctx = entry.ctx;
    const line = {
      kind: 'inbound',
      session: ctx.id,
      cpe: ctx.cpe,
      ...(ctx.keyId ? { keyId: ctx.keyId } : {}),
      binding: formatEndpoint(unmapAddress(client.localAddress ?? ''), binding.port),
      client: formatEndpoint(address, port),
    };
    this.#deps.sessionLog({ event: 'open', ...line });
    const m = this.#deps.metrics;
    m.bindingReverse.inc({ event: 'used' });
    m.bindingInbound.inc({ outcome: 'relayed' });
    m.active.inc();
    this.#deps.onRelay(entry.ctx, relay);
    relay.once('close', (stats: RelayStats) => {
      m.active.dec();
      m.connections.inc({ outcome: stats.outcome });
      m.relayed.inc({ engine: relay.mode });
      m.bytes.inc({ direction: 'up' }, stats.aToB);
      m.bytes.inc({ direction: 'down' }, stats.bToA);
      // up = from the CPE (the LAN server's bytes towards the internet client), as for conversions.
      this.#deps.sessionLog({ event: 'close', ...line, bytesUp: stats.aToB, bytesDown: stats.bToA, durationMs: stats.durationMs, outcome: stats.outcome, relay: relay.mode });
      binding.active--;
      this.#maybeRemove(binding);
    });
  }

  /** No reverse connection and nothing relayed: the CPE is gone (or restarting); closed after graceS. */
  #maybeRemove(binding: Binding): void {
    if (binding.idle.length > 0 || binding.active > 0 || binding.grace || this.#bindings.get(binding.key) !== binding) return;
    const graceS = this.#deps.settings()?.graceS ?? 0;
    binding.grace = setTimeout(() => this.#remove(binding), graceS * 1000);
    binding.grace.unref();
  }

  #remove(binding: Binding): void {
    clearTimeout(binding.grace);
    binding.grace = undefined;
    if (this.#bindings.get(binding.key) === binding) this.#bindings.delete(binding.key);
    for (const s of binding.servers) s.close();
    binding.servers = [];
    for (const w of binding.waiting.splice(0)) {
      clearTimeout(w.timer);
      this.#deps.metrics.bindingInbound.inc({ outcome: 'no-reverse' });
      w.socket.resetAndDestroy();
    }
    for (const e of binding.idle.splice(0)) {
      e.detach();
      e.ctx.socket.resetAndDestroy();
    }
    binding.release?.();
    binding.release = undefined;
    this.#deps.metrics.bindingsOpen.set(this.#bindings.size);
    this.#deps.logger.info({ cpe: binding.owner, addresses: binding.addresses, port: binding.port }, 'inbound binding closed');
  }

  /** A reload that turned bindings off closes them all (relayed connections live on). */
  reconfigure(): void {
    if (this.#deps.settings()) return;
    for (const b of [...this.#bindings.values()]) this.#remove(b);
  }

  /** Stop: listeners closed, idle reverse connections and waiting clients reset; relays are the sessions' drain. */
  stop(): void {
    this.#stopped = true;
    for (const b of [...this.#bindings.values()]) this.#remove(b);
  }
}
