/**
 * The concentrator (downstream MCP): terminates MPTCP connections from CPEs (and from MPTCP hosts that speak
 * the signalling themselves), reads the signalling from the first bytes (in the SYN, through TFO), dials the
 * server, confirms, and relays. Checkpoints, in order, each a named gate:
 *   accept -> customerGate (source prefix) -> mptcpGate (no TCP fallback) -> signalling (bounded in time and
 *   size) -> limits -> destinationGate -> source address -> dial -> confirm (echo / Convert reply) -> relay.
 * Anything refused before the confirmation never causes a byte to be sent to any server.
 */
import { networkInterfaces } from 'node:os';
import { isIP, type Server, type Socket } from 'node:net';
import { parseEndpoint, formatEndpoint, type Endpoint } from '../control/address.js';
import type { ConcentratorConfig } from './config.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../control/metrics.js';
import type { KernelConfig, Sockets, SpliceEngine } from '../platform/types.js';
import { ConnectionLimits } from '../policy/limits.js';
import { convertErrorCodeForRefusal, destinationGate } from '../policy/destination.js';
import { cidrContains } from '../policy/cidr.js';
import { createRelay, type RelayHandle, type RelayStats } from '../relay/index.js';
import { SourcePool } from './source-pool.js';
import { ServerDialer, type ServerTransport } from './server-dialer.js';
import { readSignalling, confirmation, refusal, type Refusal, type ReadSignalling } from './signalling.js';
import { ConfigError } from '../control/config-file.js';
import { ListenerRules } from './listener-rules.js';

export interface ConcentratorDeps {
  sockets: Sockets;
  kernel: KernelConfig;
  logger: Logger;
  metrics: Metrics;
  /** Structured session log (one line at open and at close); undefined = off. */
  sessionLog?: Logger | undefined;
  now?: () => number;
  /** Zero-copy relaying when the configuration asks for it ('splice'); absent: the stream relay. */
  splice?: SpliceEngine | undefined;
}

interface Session {
  id: number;
  cpe: string;
  relay?: RelayHandle;
  socket: Socket;
}

const stripMapped = (a: string): string => (a.startsWith('::ffff:') && isIP(a.slice(7)) === 4 ? a.slice(7) : a);

export class Concentrator {
  #config: ConcentratorConfig;
  readonly #deps: ConcentratorDeps;
  readonly #limits: ConnectionLimits;
  /** Endpoint ids of the announce addresses this instance added (removed at stop). */
  readonly #announced: number[] = [];
  #pool: SourcePool;
  readonly #dialer: ServerDialer;
  readonly #listeners = new Map<string, Server>();
  readonly #sessions = new Set<Session>();
  #nextId = 1;
  #stopping = false;
  #sweeper: NodeJS.Timeout | undefined;
  readonly #rules: ListenerRules;

  constructor(config: ConcentratorConfig, deps: ConcentratorDeps) {
    this.#config = config;
    this.#deps = deps;
    this.#rules = new ListenerRules({ kernel: deps.kernel, logger: deps.logger });
    const now = deps.now ?? Date.now;
    this.#limits = new ConnectionLimits(config.limits, now);
    this.#pool = new SourcePool(config.sourcePool.addresses, config.sourcePool.mode);
    this.#dialer = new ServerDialer({
      sockets: deps.sockets,
      logger: deps.logger,
      mptcp: config.server.mptcp,
      connectTimeoutMs: config.server.connectTimeoutMs,
      cacheTtlMs: config.server.fallbackCacheTtlS * 1000,
      cacheSize: config.server.fallbackCacheSize,
      slowFallbackMs: config.server.slowFallbackMs,
      now,
    });
  }

  get config(): ConcentratorConfig {
    return this.#config;
  }

  get addresses(): Endpoint[] {
    return [...this.#listeners.values()].map((s) => {
      const a = s.address() as { address: string; port: number; family: string };
      return { host: a.address, port: a.port, family: a.family === 'IPv6' ? 6 : 4 };
    });
  }

  /** Servers currently in the MPTCP fallback cache. */
  get fallbackCache(): string[] {
    return this.#dialer.brokenMptcp.keys();
  }

  async start(): Promise<void> {
    await this.#prepareKernel();
    for (const text of this.#config.listen) await this.#openListener(text);
    // After the listeners are bound: the rules name their actual ports (port 0 resolved).
    await this.#rules.apply(this.#config, this.addresses);
    this.#sweeper = setInterval(() => this.#limits.sweep(), 10_000);
    this.#sweeper.unref();
    this.#deps.logger.info({ listen: this.#config.listen, allow: this.#config.allow }, 'concentrator started');
  }

  async #prepareKernel(): Promise<void> {
    const { kernel, logger } = this.#deps;
    const tfo = Number(await kernel.sysctl.get('net.ipv4.tcp_fastopen'));
    if ((tfo & 0x2) === 0) {
      if (!this.#config.manageSysctls) {
        throw new ConfigError(
          `net.ipv4.tcp_fastopen is ${tfo}: the server bit 0x2 is needed to read the signalling in the SYN. ` +
            `Try 'sysctl -w net.ipv4.tcp_fastopen=${tfo | 0x2}' or set manageSysctls: true`,
        );
      }
      await kernel.sysctl.set('net.ipv4.tcp_fastopen', String(tfo | 0x2));
      logger.info({ from: tfo, to: tfo | 0x2 }, 'set net.ipv4.tcp_fastopen server bit (0x2) so signalling is accepted in the SYN');
    }
    if (this.#config.preserveDscp) {
      const reflect = (await kernel.sysctl.get('net.ipv4.tcp_reflect_tos')).trim();
      if (reflect !== '1') {
        if (this.#config.manageSysctls) {
          await kernel.sysctl.set('net.ipv4.tcp_reflect_tos', '1');
          logger.info('set net.ipv4.tcp_reflect_tos=1 so accepted connections carry the DSCP of their SYN (used towards servers)');
        } else {
          logger.warn("preserveDscp needs net.ipv4.tcp_reflect_tos=1 ('sysctl -w net.ipv4.tcp_reflect_tos=1'): DSCP is not carried to servers");
        }
      }
    }
    if (this.#config.manageSysctls) {
      await kernel.mptcp.setLimits({ subflows: this.#config.limits.maxSubflows, addAddrAccepted: this.#config.limits.maxAddAddrAccepted });
    }
    await this.#announce();
  }

  /** One `signal` endpoint per announced address; only the ones added here are removed at stop. */
  async #announce(): Promise<void> {
    const { kernel, logger } = this.#deps;
    if (this.#config.announce.length === 0) return;
    const existing = await kernel.mptcp.endpoints();
    for (const address of this.#config.announce) {
      const same = existing.find((e) => e.address === address);
      if (same) {
        if (!same.flags.includes('signal')) logger.warn({ address, flags: same.flags }, 'announce: an endpoint for this address exists without the signal flag; left as it is');
        continue;
      }
      await kernel.mptcp.addEndpoint({ address, flags: ['signal'] });
      const added = (await kernel.mptcp.endpoints()).find((e) => e.address === address);
      if (added) this.#announced.push(added.id);
      logger.info({ address }, 'announcing address to CPEs (ADD_ADDR)');
    }
  }

  async #openListener(text: string): Promise<void> {
    const ep = parseEndpoint(text, { allowPortZero: true });
    const server = await this.#deps.sockets.listen({
      family: ep.family,
      protocol: 'mptcp',
      host: ep.host,
      port: ep.port,
      backlog: 4096,
      fastOpenQueue: 4096,
      fastOpenNoCookie: true,
      reuseAddr: true,
    });
    server.allowHalfOpen = true;
    server.on('connection', (socket: Socket) => this.#onConnection(socket, ep));
    server.on('error', (err) => this.#deps.logger.error({ err, listen: text }, 'listener error'));
    this.#listeners.set(text, server);
  }

  #onConnection(socket: Socket, listener: Endpoint): void {
    socket.on('error', () => {}); // every path below destroys the socket; errors are accounted there
    if (this.#stopping) {
      socket.resetAndDestroy();
      return;
    }
    const session: Session = { id: this.#nextId++, cpe: stripMapped(socket.remoteAddress ?? ''), socket };
    this.#sessions.add(session);
    socket.once('close', () => {
      if (!session.relay) this.#sessions.delete(session);
    });
    this.#handle(session, listener).catch((err: unknown) => {
      this.#deps.logger.error({ err, session: session.id }, 'unexpected error in session');
      socket.resetAndDestroy();
    });
  }

  #refuse(session: Session, reason: string, r: Refusal, detail?: Record<string, unknown>): void {
    this.#deps.metrics.refused.inc({ reason });
    this.#deps.logger.debug({ session: session.id, cpe: session.cpe, reason, ...detail }, 'connection refused');
    this.#sessionLog({ event: 'refused', session: session.id, cpe: session.cpe, reason, ...detail });
    refusal(session.socket, r);
  }

  #sessionLog(line: Record<string, unknown>): void {
    this.#deps.sessionLog?.info(line);
  }

  async #handle(session: Session, listener: Endpoint): Promise<void> {
    const { socket } = session;
    const cfg = this.#config;
    const started = (this.#deps.now ?? Date.now)();
    // customerGate: only customer prefixes, and nothing is read from anybody else.
    if (!cfg.allow.some((p) => cidrContains(p, session.cpe))) {
      this.#refuse(session, 'not-customer', { kind: 'abort' });
      return;
    }
    // mptcpGate: the seeds ignore signalling on a connection that fell back to TCP.
    if (!cfg.acceptFallback && !this.#deps.sockets.isMptcp(socket)) {
      this.#refuse(session, 'tcp-fallback', { kind: 'abort' });
      return;
    }
    let read: ReadSignalling;
    try {
      read = await readSignalling(socket, cfg.signalling.timeoutMs);
    } catch (err) {
      const code = (err as { code?: string }).code ?? 'MPC_ERR_SIGNALLING';
      this.#refuse(session, `signalling:${code}`, refusalFor(err), { error: (err as Error).message });
      return;
    }
    const format = read.format;
    const admit = this.#limits.admit(session.cpe);
    if (!admit.admitted) {
      this.#refuse(session, admit.reason, { kind: format === 'rfc8803' ? 'convert-error' : 'abort', errorCode: 64 });
      return;
    }
    let released = false;
    const releaseLimits = () => {
      if (!released) this.#limits.release(session.cpe);
      released = true;
    };
    const dest = read.destination;
    if (!dest) {
      releaseLimits();
      this.#refuse(session, 'no-destination', { kind: format === 'rfc8803' ? 'convert-error' : 'abort', errorCode: 1 });
      return;
    }
    const destPort = dest.port ?? listener.port;
    const destAddr = stripMapped(dest.address);
    const gate = destinationGate(destAddr, { deny: cfg.deny, own: this.#ownAddresses() });
    if (!gate.allowed) {
      releaseLimits();
      this.#refuse(session, 'destination', { kind: format === 'rfc8803' ? 'convert-error' : 'abort', errorCode: convertErrorCodeForRefusal(gate.reason) }, { destination: destAddr, why: gate.reason });
      return;
    }
    if (read.source) {
      const srcGate = destinationGate(stripMapped(read.source.address), {});
      if (!srcGate.allowed) {
        releaseLimits();
        this.#refuse(session, 'source', { kind: format === 'rfc8803' ? 'convert-error' : 'abort', errorCode: 1 }, { why: srcGate.reason });
        return;
      }
    }
    const family = isIP(destAddr) as 4 | 6;
    const pool = this.#pool;
    const external = pool.acquire(session.cpe, family);
    if (external === null) {
      releaseLimits();
      this.#refuse(session, 'pool-exhausted', { kind: format === 'rfc8803' ? 'convert-error' : 'abort', errorCode: 64 });
      return;
    }
    const releaseAll = () => {
      releaseLimits();
      if (external !== undefined) pool.release(session.cpe, family);
    };
    const abort = new AbortController();
    const onEarlyClose = () => abort.abort();
    socket.once('close', onEarlyClose);
    let server: Socket;
    let transport: ServerTransport;
    try {
      const tos = cfg.preserveDscp ? this.#deps.sockets.getTos(socket) & 0xfc : 0;
      ({ socket: server, transport } = await this.#dialer.dial({
        host: destAddr,
        port: destPort,
        family,
        localAddress: external,
        tos: tos > 0 ? tos : undefined,
        signal: abort.signal,
      }));
    } catch (err) {
      socket.off('close', onEarlyClose);
      releaseAll();
      const code = (err as { code?: string }).code ?? 'EUNKNOWN';
      if (socket.destroyed) {
        this.#deps.metrics.refused.inc({ reason: 'client-gone' });
        return;
      }
      this.#refuse(session, `dial:${code}`, { kind: format === 'rfc8803' ? 'convert-error' : 'abort', errorCode: dialErrorCode(code) }, { destination: formatEndpoint(destAddr, destPort) });
      return;
    }
    socket.off('close', onEarlyClose);
    if (socket.destroyed || this.#stopping) {
      server.resetAndDestroy();
      releaseAll();
      return;
    }
    this.#deps.metrics.serverLeg.inc({ transport });
    // Confirm (echo the IEs byte for byte / Convert reply), then what the client sent after its signalling.
    socket.write(confirmation(read));
    if (read.rest.length > 0) server.write(read.rest);
    const upPre = read.rest.length;
    const ext = server.localAddress ? formatEndpoint(stripMapped(server.localAddress), server.localPort ?? 0) : undefined;
    this.#deps.metrics.setup.observe(((this.#deps.now ?? Date.now)() - started) / 1000);
    this.#sessionLog({
      event: 'open',
      session: session.id,
      cpe: session.cpe,
      external: ext,
      destination: formatEndpoint(destAddr, destPort),
      format,
      transport,
      ...(read.source ? { source: read.source.address } : {}),
    });
    this.#deps.metrics.active.inc();
    const relay = createRelay(socket, server, { idleTimeoutMs: cfg.idleTimeoutS * 1000 }, cfg.relayEngine === 'splice' ? this.#deps.splice : undefined);
    session.relay = relay;
    relay.once('close', (stats: RelayStats) => {
      this.#sessions.delete(session);
      releaseAll();
      const up = stats.aToB + upPre;
      this.#deps.metrics.active.dec();
      this.#deps.metrics.connections.inc({ outcome: stats.outcome });
      this.#deps.metrics.relayed.inc({ engine: relay.mode });
      this.#deps.metrics.bytes.inc({ direction: 'up' }, up);
      this.#deps.metrics.bytes.inc({ direction: 'down' }, stats.bToA);
      this.#sessionLog({
        event: 'close',
        session: session.id,
        cpe: session.cpe,
        external: ext,
        destination: formatEndpoint(destAddr, destPort),
        bytesUp: up,
        bytesDown: stats.bToA,
        durationMs: stats.durationMs,
        outcome: stats.outcome,
        relay: relay.mode,
      });
    });
  }

  #ownCache: { at: number; list: string[] } | undefined;
  #ownAddresses(): string[] {
    const now = Date.now();
    if (this.#ownCache && now - this.#ownCache.at < 5_000) return this.#ownCache.list;
    const list = Object.values(networkInterfaces())
      .flatMap((l) => l ?? [])
      .map((i) => i.address.split('%')[0] as string);
    for (const text of this.#config.listen) list.push(parseEndpoint(text, { allowPortZero: true }).host);
    list.push(...this.#config.sourcePool.addresses);
    this.#ownCache = { at: now, list };
    return list;
  }

  status() {
    return {
      listeners: [...this.#listeners.keys()],
      activeSessions: this.#sessions.size,
      connections: this.#limits.total,
      fallbackCache: this.fallbackCache,
      stopping: this.#stopping,
    };
  }

  /** SIGHUP: apply a new configuration; established connections are kept. */
  async reload(next: ConcentratorConfig): Promise<void> {
    const old = this.#config;
    this.#config = next;
    this.#ownCache = undefined;
    this.#limits.reconfigure(next.limits);
    this.#dialer.setMptcp(next.server.mptcp);
    if (JSON.stringify(old.sourcePool) !== JSON.stringify(next.sourcePool)) this.#pool = new SourcePool(next.sourcePool.addresses, next.sourcePool.mode);
    for (const [text, server] of this.#listeners) {
      if (!next.listen.includes(text)) {
        server.close();
        this.#listeners.delete(text);
      }
    }
    for (const text of next.listen) if (!this.#listeners.has(text)) await this.#openListener(text);
    await this.#rules.apply(next, this.addresses);
    this.#deps.logger.info({ listen: next.listen }, 'configuration reloaded');
  }

  /** Stop accepting; let relayed connections drain for `drainMs`, then abort what is left. Idempotent. */
  async stop(drainMs = this.#config.shutdownDrainS * 1000): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    if (this.#sweeper) clearInterval(this.#sweeper);
    // close() stops accepting at once; its callback would wait for every connection, which the drain handles.
    for (const s of this.#listeners.values()) s.close();
    this.#listeners.clear();
    // Sessions still in signalling or dialing have nothing to drain.
    for (const s of this.#sessions) if (!s.relay) s.socket.resetAndDestroy();
    const deadline = Date.now() + drainMs;
    while (this.#sessions.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const s of [...this.#sessions]) {
      if (s.relay) s.relay.destroy();
      else s.socket.resetAndDestroy();
    }
    this.#sessions.clear();
    await this.#rules.remove().catch((err: unknown) => this.#deps.logger.warn({ err }, 'could not remove the nft table of the listeners'));
    for (const id of this.#announced.splice(0)) {
      await this.#deps.kernel.mptcp.deleteEndpoint(id).catch((err: unknown) => this.#deps.logger.warn({ err, id }, 'could not remove an announce endpoint'));
    }
    this.#deps.logger.info('concentrator stopped');
  }
}

function refusalFor(err: unknown): Refusal {
  const reaction = (err as { reaction?: { kind: string; errorCode?: number; value?: number; extra?: Buffer } }).reaction;
  if (reaction?.kind === 'convert-error' && reaction.errorCode !== undefined) {
    return {
      kind: 'convert-error',
      errorCode: reaction.errorCode,
      ...(reaction.value !== undefined ? { value: reaction.value } : {}),
      ...(reaction.extra !== undefined ? { extra: reaction.extra } : {}),
    };
  }
  return { kind: 'abort' };
}

/** RFC 8803 section 6 error codes for a failed server connection. */
export function dialErrorCode(errno: string): number {
  switch (errno) {
    case 'ECONNREFUSED':
    case 'ECONNRESET':
      return 96; // Connection Reset
    case 'ETIMEDOUT':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'EHOSTDOWN':
      return 97; // Destination Unreachable
    case 'EMFILE':
    case 'ENFILE':
    case 'ENOBUFS':
    case 'ENOMEM':
    case 'EADDRNOTAVAIL':
      return 64; // Resource Exceeded
    default:
      return 65; // Network Failure
  }
}
