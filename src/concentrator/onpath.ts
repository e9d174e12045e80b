/**
 * Implicit (on-path) mode (draft-boucadair-mptcp-plain-mode section 5.2.2; docs/implicit.md): the concentrator
 * is on the forwarding path of MPTCP hosts that run no mpconvert software. Its nft table (./onpath-ruleset.ts)
 * sends their MP_CAPABLE SYNs to a transparent MPTCP listener (IP_TRANSPARENT, 127.0.0.1 / [::1]:port) that
 * answers as the destination; the accepted socket's local address is the server the host asked for. The server
 * leg is explicit mode's (the server dialer: MPTCP first, the fallback cache), relayed as explicit mode relays.
 *
 * Self-advertisement: the host's extra subflows must come here, not to the server. `announce` (kernel `signal`
 * endpoints) sends ADD_ADDR of this box's addresses on every connection; `denyJoinInitial` sets
 * net.mptcp.allow_join_initial_addr_port=0, so the MP_CAPABLE this box returns carries the C bit (RFC 8684
 * section 3.1): the host never tries to join the address it connected to (the server's).
 *
 * Withdrawal (section 5.6.1): with `withdrawal: withdraw`, a server whose leg came up with MPTCP is added to
 * the table's set of native servers (address . port, `learnTtlS`), and later MPTCP SYNs to it are routed
 * untouched: end-to-end MPTCP. Reloading the table empties the set; the learned entries are added back.
 */
import { isIP, type Socket } from 'node:net';
import type { Logger } from '../log.js';
import type { Metrics } from '../control/metrics.js';
import { formatEndpoint } from '../control/address.js';
import type { KernelConfig, ListeningServer, Sockets, SpliceEngine } from '../platform/types.js';
import type { ConnectionLimits } from '../policy/limits.js';
import type { AddressSet, DestinationPolicy } from '../policy/destination.js';
import { PrefixSet } from '../policy/destination.js';
import { destinationRefusal, limitsGate } from '../policy/gates.js';
import { onPathSourceGate } from '../policy/onpath.js';
import { refuse, refusalLabel, type Refusal } from '../policy/refusals.js';
import { unmapAddress } from '../protocol/address.js';
import { RESET_ON_CLOSE, createRelay, type RelayHandle, type RelayStats } from '../relay/index.js';
import type { ConcentratorConfig } from './config.js';
import { nativeElement, type OnPathRuleOptions } from './onpath-ruleset.js';
import { concentratorTableName } from './ruleset.js';
import { returnPathOptions } from './return-path.js';
import { ConfigError } from '../control/config-file.js';
import type { ServerDialer, ServerTransport } from './server-dialer.js';

export type OnPathConfig = NonNullable<ConcentratorConfig['onPath']>;

/** The mark intercepted SYNs and their packets carry: the return path's (one `fwmark -> local` routing). */
export function onPathMark(config: Pick<ConcentratorConfig, 'sourceAddress'>): number {
  return returnPathOptions(config).mark;
}

/** What the concentrator's nft table needs of the on-path settings (undefined: the mode is off). */
export function onPathRuleOptions(config: ConcentratorConfig): OnPathRuleOptions | undefined {
  const o = config.onPath;
  if (!o) return undefined;
  return { sources: o.sources, port: o.port, mark: onPathMark(config), withdrawal: o.withdrawal, nativeServers: o.nativeServers, synRateLimit: o.synRateLimit };
}

const JOIN_SYSCTL = 'net.mptcp.allow_join_initial_addr_port';
/** Learned servers kept (the oldest is forgotten beyond). */
const LEARNED_MAX = 65_536;

export interface OnPathDeps {
  sockets: Sockets;
  kernel: KernelConfig;
  logger: Logger;
  metrics: Metrics;
  dialer: ServerDialer;
  limits: ConnectionLimits;
  now: () => number;
  splice?: SpliceEngine | undefined;
  /** Read per connection, so a reload applies to new connections. */
  config: () => ConcentratorConfig;
  own: () => AddressSet;
  destinations: () => DestinationPolicy;
  stopping: () => boolean;
  /** One line at open and at close, as explicit connections (the concentrator's session log). */
  sessionLog: (line: Record<string, unknown>) => void;
}

interface OnPathSession {
  socket: Socket;
  relay?: RelayHandle;
}

export class OnPath {
  readonly #deps: OnPathDeps;
  readonly #listeners: ListeningServer[] = [];
  readonly #sessions = new Set<OnPathSession>();
  /** Servers learned as MPTCP-capable: `address|port` -> expiry (ms, the deps' clock). */
  readonly #learned = new Map<string, number>();
  #sources: PrefixSet;
  /** The sysctl's value before start (restored at stop); undefined: not changed. */
  #joinBefore: string | undefined;
  #intercepted = 0;
  /** Endpoint ids this instance added (removed at stop). */
  readonly #endpoints: number[] = [];

  constructor(deps: OnPathDeps) {
    this.#deps = deps;
    this.#sources = PrefixSet.from(this.#settings().sources);
  }

  #settings(): OnPathConfig {
    const o = this.#deps.config().onPath;
    if (!o) throw new Error('OnPath used without onPath settings');
    return o;
  }

  get port(): number {
    return this.#settings().port;
  }

  async start(): Promise<void> {
    const { kernel, logger, sockets } = this.#deps;
    const o = this.#settings();
    if (o.denyJoinInitial) {
      const before = (await kernel.sysctl.get(JOIN_SYSCTL)).trim();
      if (before !== '0') {
        try {
          await kernel.sysctl.set(JOIN_SYSCTL, '0');
        } catch (err) {
          throw new ConfigError(`onPath.denyJoinInitial: cannot set ${JOIN_SYSCTL}=0 (${(err as Error).message}). Try 'sysctl -w ${JOIN_SYSCTL}=0' as root, or 'mpconvert concentrator --prepare'`);
        }
        this.#joinBefore = before;
        logger.info(`set ${JOIN_SYSCTL}=0: the MP_CAPABLE this box returns carries the C bit (hosts join the announced addresses only)`);
      }
    }
    for (const fwd of ['net.ipv4.ip_forward', 'net.ipv6.conf.all.forwarding']) {
      const v = (await kernel.sysctl.get(fwd).catch(() => '1')).trim();
      if (v !== '1') logger.warn(`onPath: ${fwd} is ${v}: this box must route what it does not take (native MPTCP, plain TCP). Try 'sysctl -w ${fwd}=1'`);
    }
    if (o.announce.length === 0) {
      logger.warn('onPath.announce is empty: hosts are never told an address of this box, so their extra subflows have nowhere to go (one path only)');
    }
    await this.#announce(o);
    for (const [family, host] of [[4, '127.0.0.1'], [6, '::1']] as const) {
      const server = await sockets.listen({ family, protocol: 'mptcp', host, port: o.port, transparent: true, reuseAddr: true, backlog: 4096, linger: RESET_ON_CLOSE });
      server.allowHalfOpen = true;
      server.on('connection', (socket: Socket) => this.#onConnection(socket));
      server.on('error', (err) => logger.error({ err, port: o.port }, 'on-path listener error'));
      this.#listeners.push(server);
    }
    logger.info({ port: o.port, sources: o.sources, withdrawal: o.withdrawal }, 'on-path interception listening');
  }

  /**
   * One `signal` endpoint with `joinPort` per announced address: the ADD_ADDR carries the port, and the kernel
   * listens there for MP_JOINs (an intercepted connection's own port, the server's, has no listener here).
   */
  async #announce(o: OnPathConfig): Promise<void> {
    const { kernel, logger } = this.#deps;
    const existing = await kernel.mptcp.endpoints();
    for (const address of o.announce) {
      const same = existing.find((e) => e.address === address);
      if (same) {
        logger.warn({ address, port: same.port, flags: same.flags }, 'onPath.announce: an endpoint for this address exists already; left as it is');
        continue;
      }
      await kernel.mptcp.addEndpoint({ address, port: o.joinPort, flags: ['signal'] });
      const added = (await kernel.mptcp.endpoints()).find((e) => e.address === address);
      if (added) this.#endpoints.push(added.id);
      logger.info({ address, joinPort: o.joinPort }, 'on-path: announcing this address to MPTCP hosts (ADD_ADDR with port)');
    }
  }

  /** SIGHUP: the source prefixes (the rules are replaced by the concentrator's table). */
  reconfigure(config: ConcentratorConfig): void {
    if (config.onPath) this.#sources = PrefixSet.from(config.onPath.sources);
  }

  /** After the concentrator's table was (re)applied: its learned set is empty, put the live entries back. */
  async resync(): Promise<void> {
    const now = this.#deps.now();
    for (const [key, until] of this.#learned) {
      if (until <= now) {
        this.#learned.delete(key);
        continue;
      }
      const [address, port] = key.split('|') as [string, string];
      await this.#addNative(address, Number(port), Math.ceil((until - now) / 1000)).catch(() => {});
    }
  }

  status() {
    return { port: this.#settings().port, active: this.#sessions.size, intercepted: this.#intercepted, learned: this.learnedServers() };
  }

  learnedServers(): string[] {
    const now = this.#deps.now();
    return [...this.#learned].filter(([, until]) => until > now).map(([k]) => k.replace('|', ' port '));
  }

  /** Relayed or in setup now. */
  get active(): number {
    return this.#sessions.size;
  }

  /** Stop taking connections (the drain at stop); those in setup are reset, relayed ones go on. */
  closeListeners(): void {
    for (const s of this.#listeners.splice(0)) s.close();
    for (const s of [...this.#sessions]) if (!s.relay) s.socket.resetAndDestroy();
  }

  /** Resets what is left, removes the endpoints, restores the sysctl. */
  async stop(): Promise<void> {
    this.closeListeners();
    for (const s of [...this.#sessions]) {
      if (s.relay) s.relay.destroy();
      else s.socket.resetAndDestroy();
    }
    for (const id of this.#endpoints.splice(0)) {
      await this.#deps.kernel.mptcp.deleteEndpoint(id).catch((err: unknown) => this.#deps.logger.warn({ err, id }, 'could not remove an on-path announce endpoint'));
    }
    if (this.#joinBefore !== undefined) {
      await this.#deps.kernel.sysctl.set(JOIN_SYSCTL, this.#joinBefore).catch((err: unknown) => this.#deps.logger.warn({ err }, `could not restore ${JOIN_SYSCTL}`));
      this.#joinBefore = undefined;
    }
  }

  #onConnection(socket: Socket): void {
    socket.on('error', () => {});
    const session: OnPathSession = { socket };
    this.#sessions.add(session);
    const releases: Array<() => void> = [];
    let ended = false;
    const end = () => {
      if (ended) return;
      ended = true;
      this.#sessions.delete(session);
      for (const r of releases.reverse()) r();
    };
    socket.once('close', () => {
      if (!session.relay) end();
    });
    this.#intercepted++;
    this.#run(socket, session, (r) => releases.push(r)).then(
      (refusal) => {
        if (refusal) {
          this.#refuse(socket, refusal);
          end();
        } else session.relay?.once('close', end);
      },
      (err: unknown) => {
        this.#deps.logger.error({ err }, 'unexpected error in an on-path session');
        socket.resetAndDestroy();
        end();
      },
    );
  }

  /** The on-path pipeline: source -> limits -> destination -> dial -> relay. */
  async #run(socket: Socket, session: OnPathSession, own: (release: () => void) => void): Promise<Refusal | undefined> {
    const deps = this.#deps;
    const source = unmapAddress(socket.remoteAddress ?? '');
    const address = unmapAddress(socket.localAddress ?? '');
    const port = socket.localPort ?? 0;
    const refusedSource = onPathSourceGate(source, this.#sources);
    if (refusedSource) return refusedSource;
    const admitted = deps.limits.admit(source);
    const refusedLimits = limitsGate(admitted);
    if (refusedLimits) return refusedLimits;
    own(() => deps.limits.release(source));
    const refusedDestination = destinationRefusal(address, { deny: deps.destinations().deny, own: deps.own() });
    if (refusedDestination) return refusedDestination;
    if (this.#deps.stopping()) return refuse('stopping');
    const abort = new AbortController();
    const onClose = () => abort.abort();
    socket.once('close', onClose);
    let server: Socket;
    let transport: ServerTransport;
    try {
      ({ socket: server, transport } = await deps.dialer.dial({ host: address, port, family: isIP(address) as 4 | 6, signal: abort.signal }));
    } catch (err) {
      if (socket.destroyed) return refuse('client-gone');
      return refuse('dial', { qualifier: (err as { code?: string }).code ?? 'EUNKNOWN', detail: { destination: formatEndpoint(address, port) } });
    } finally {
      socket.off('close', onClose);
    }
    if (socket.destroyed || deps.stopping()) {
      server.resetAndDestroy();
      return refuse(socket.destroyed ? 'client-gone' : 'stopping');
    }
    deps.metrics.serverLeg.inc({ transport });
    deps.metrics.onPath.inc({ server: transport === 'mptcp' ? 'mptcp' : 'tcp' });
    if (transport === 'mptcp') this.#learn(address, port);
    const settings = deps.config();
    deps.metrics.active.inc();
    const relay = createRelay(socket, server, { idleTimeoutMs: settings.idleTimeoutS * 1000, sockets: deps.sockets }, settings.relayEngine === 'splice' ? deps.splice : undefined);
    session.relay = relay;
    const destination = formatEndpoint(address, port);
    const external = server.localAddress ? formatEndpoint(unmapAddress(server.localAddress), server.localPort ?? 0) : undefined;
    deps.sessionLog({ event: 'open', mode: 'onpath', host: source, external, destination, transport });
    relay.once('close', (stats: RelayStats) => {
      deps.sessionLog({ event: 'close', mode: 'onpath', host: source, external, destination, bytesUp: stats.aToB, bytesDown: stats.bToA, durationMs: stats.durationMs, outcome: stats.outcome, relay: relay.mode });
      deps.metrics.active.dec();
      deps.metrics.connections.inc({ outcome: stats.outcome });
      deps.metrics.relayed.inc({ engine: relay.mode });
      deps.metrics.bytes.inc({ direction: 'up' }, stats.aToB);
      deps.metrics.bytes.inc({ direction: 'down' }, stats.bToA);
    });
    return undefined;
  }

  #refuse(socket: Socket, r: Refusal): void {
    const reason = refusalLabel(r);
    this.#deps.metrics.refused.inc({ reason });
    this.#deps.logger.debug({ reason, ...r.detail }, 'on-path connection refused');
    if (r.code === 'client-gone') socket.destroy();
    else socket.resetAndDestroy();
  }

  /** withdraw: remember a server whose leg came up with MPTCP; its next connections are routed end to end. */
  #learn(address: string, port: number): void {
    const o = this.#settings();
    if (o.withdrawal !== 'withdraw') return;
    const key = `${address}|${port}`;
    const now = this.#deps.now();
    const until = this.#learned.get(key);
    // Re-added only when half its lifetime is gone (one nft call per server, not per connection).
    if (until !== undefined && until - now > (o.learnTtlS * 1000) / 2) return;
    this.#learned.delete(key);
    this.#learned.set(key, now + o.learnTtlS * 1000);
    if (this.#learned.size > LEARNED_MAX) this.#learned.delete(this.#learned.keys().next().value as string);
    this.#addNative(address, port, o.learnTtlS).then(
      () => this.#deps.logger.info({ server: formatEndpoint(address, port) }, 'on-path: server speaks MPTCP, its next connections are end to end (withdrawal)'),
      (err: unknown) => this.#deps.logger.warn({ err, server: formatEndpoint(address, port) }, 'on-path: could not add a learned server to the nft set'),
    );
  }

  async #addNative(address: string, port: number, ttlS: number): Promise<void> {
    const add = this.#deps.kernel.nft.addSetElements;
    if (!add) return;
    const { set, element } = nativeElement(address, port, ttlS);
    await add.call(this.#deps.kernel.nft, 'inet', concentratorTableName(this.#deps.config().instance), set, [element]);
  }
}
