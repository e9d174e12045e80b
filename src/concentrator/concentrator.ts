/**
 * The concentrator (downstream MCP): terminates MPTCP connections from CPEs (and from MPTCP hosts that speak
 * the signalling themselves), reads the signalling from the first bytes (in the SYN, through TFO), dials the
 * server, confirms, and relays. Each accepted connection runs the pipeline (src/concentrator/pipeline.ts):
 *   customer -> mptcp -> signalling-admission -> signalling -> authenticate -> limits -> radius -> binding -> transport ->
 *   destination -> source -> source-address (strategy) -> convert (strategy: dial, confirm, relay; or a UDP channel,
 *   whose datagrams pass the destination gate one by one and take a source address per mapping: udp-channel.ts).
 * A refusal at any step is counted, logged and answered on the wire through one table (src/policy/refusals.ts).
 * Anything refused before the confirmation never causes a byte to be sent to any server.
 */
import { networkInterfaces } from 'node:os';
import { isIP, type Socket } from 'node:net';
import { parseEndpoint, type Endpoint } from '../control/address.js';
import { sourceAddressMode, type ConcentratorConfig } from './config.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../control/metrics.js';
import { diffConfig, effectiveConfig, logReload, type ReloadReport } from '../control/reload.js';
import type { KernelConfig, ListeningServer, ProcessResources, Sockets, SpliceEngine } from '../platform/types.js';
import { ConnectionLimits } from '../policy/limits.js';
import { AddressSet, PrefixSet, compileDestinationPolicy, type DestinationPolicy } from '../policy/destination.js';
import { customerGate, destinationRefusal, mptcpGate, sourceGate } from '../policy/gates.js';
import { SignallingAdmission } from '../policy/pending.js';
import { compileProxyProtocolTargets, type ProxyProtocolTargets } from '../policy/proxy-protocol.js';
import { refuse, refusalLabel, refusalReaction, type Refusal } from '../policy/refusals.js';
import { ReplayCache, openAllowProblem, type KeyRing } from '../policy/auth.js';
import { loadKeysFile } from './keys.js';
import { unmapAddress } from '../protocol/address.js';
import { MpconvertError } from '../errors.js';
import { RESET_ON_CLOSE, type RelayStats } from '../relay/index.js';
import { ServerDialer } from './server-dialer.js';
import { readSignalling, refusal as sendRefusal, SignallingEmptyError, WarmRefusedError, WarmUnusedError } from './signalling.js';
import { CountPerKey } from '../policy/count-per-key.js';
import { ConfigError } from '../control/config-file.js';
import { ListenerRules } from './listener-rules.js';
import type { ConnectionContext } from './context.js';
import { runPipeline, step, type Step } from './pipeline.js';
import { PoolSourceAddress, PortBlockSourceAddress, needsReturnPath, sourceAddressStrategy, type SourceAddressStrategy } from './source-address.js';
import { ReturnPath, returnPathOptions } from './return-path.js';
import { ExplicitTcpConversion, established, type ConversionStrategy } from './conversion.js';
import { RadiusService } from './radius.js';
import { Bindings } from './bindings.js';
import { OnPath } from './onpath.js';
import { UdpChannelService } from './udp-channel.js';
import { IPPROTO_UDP } from '../protocol/mp-convert.js';
import { LocalSharedState, type SharedState } from './shared-state.js';

export { dialErrorCode } from './conversion.js';

export interface ConcentratorDeps {
  sockets: Sockets;
  kernel: KernelConfig;
  logger: Logger;
  metrics: Metrics;
  /** The session log (src/concentrator/session-log.ts, or any logger): connections, refusals, port blocks; undefined = off. */
  sessionLog?: { info(line: Record<string, unknown>): void } | undefined;
  now?: () => number;
  /** Zero-copy relaying when the configuration asks for it ('splice'); absent: the stream relay. */
  splice?: SpliceEngine | undefined;
  /** Descriptor budget; absent: no shedding near the descriptor limit. */
  resources?: ProcessResources | undefined;
  /**
   * Set in a worker process (`workers` > 1, ./workers.ts): the primary's shared state over IPC. A worker only
   * accepts and converts explicit TCP; the kernel configuration, the nft table and the state shared per CPE
   * stay with the primary.
   */
  worker?: { index: number; shared: SharedState } | undefined;
}

/**
 * One accepted connection: its pipeline context and its session bookkeeping in one object, with its methods
 * on the prototype (an idle relayed connection lives for hours, and a busy box holds tens of thousands).
 */
class Session implements ConnectionContext {
  identity: string;
  conversion?: NonNullable<ConnectionContext['conversion']>;
  serverLocal?: string | undefined;
  keyId?: string | undefined;
  format?: NonNullable<ConnectionContext['format']>;
  signalling?: ConnectionContext['signalling'];
  destination?: NonNullable<ConnectionContext['destination']>;
  external?: string | undefined;
  externalTransparent?: boolean;
  ports?: ConnectionContext['ports'];
  relay?: NonNullable<ConnectionContext['relay']>;
  earlyUp?: number;
  /** Counted and answered already (shed while its pipeline still runs): the pipeline's outcome is moot. */
  refused = false;
  #releases: Array<() => void> | undefined;
  #ended = false;

  constructor(
    readonly id: number,
    readonly socket: Socket,
    readonly cpe: string,
    readonly listener: Endpoint,
    readonly started: number,
    /** The concentrator's part of the end (one function for all sessions). */
    private readonly onEnd: (s: Session) => void,
  ) {
    this.identity = cpe;
  }

  get ctx(): this {
    return this;
  }

  /** Registers a release; acquired after the connection ended (an answer that came after the close): released at once. */
  own(release: () => void): void {
    if (this.#ended) release();
    else (this.#releases ??= []).push(release);
  }

  /** Runs the releases (idempotent), newest first. */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    this.onEnd(this);
    const list = this.#releases;
    this.#releases = undefined;
    if (list) for (let i = list.length - 1; i >= 0; i--) list[i]!();
  }
}

/** The session of a context (every context the concentrator makes is one). */
function sessionOf(ctx: ConnectionContext): Session {
  if (!(ctx instanceof Session)) throw new Error('session of a context that is not tracked');
  return ctx;
}

/** Before the relay takes the pair, a close of the CPE's socket ends its session; after, the relay's close does. */
const kSession = Symbol('mpconvert.session');
function preRelayClose(this: Socket & { [kSession]?: Session }): void {
  const s = this[kSession];
  if (s && !s.relay) s.end();
}

function ignoreError(): void {
  // Every path destroys the socket; errors are accounted there.
}

/** CPE identities whose closed-connection byte totals are kept (the oldest is forgotten beyond). */
const CPE_TOTALS_MAX = 10_000;
/** Sessions whose MPTCP subflow count is read per figure (getsockopt each); beyond, the count is left out. */
const SUBFLOW_SAMPLE_MAX = 4_096;
/** Keys a SIGHUP cannot apply (the rest it does, see reload()). */
const RESTART_KEYS = new Set(['workers', 'onPath', 'announce', 'manageSysctls', 'preserveDscp', 'sessionLog', 'sessionLogging', 'admin', 'adminTokenFile', 'metrics']);

export interface CpeFigures {
  cpe: string;
  connections: number;
  subflows: number;
  bytesUp: number;
  bytesDown: number;
}

/** Near the descriptor limit: at this share of it, each new connection sheds the oldest one in signalling. */
const DESCRIPTOR_HIGH_WATER = 0.9;

export class Concentrator {
  #config: ConcentratorConfig;
  readonly #deps: ConcentratorDeps;
  readonly #now: () => number;
  readonly #limits: ConnectionLimits;
  readonly #pending: SignallingAdmission<Session>;
  /** Warm connections (CPE pool entries) waiting for their use, per CPE. */
  readonly #warm = new CountPerKey();
  /** Endpoint ids of the announce addresses this instance added (removed at stop). */
  readonly #announced: number[] = [];
  /** The configuration's prefix lists, compiled once (constructor, reload), never per connection. */
  #allow: PrefixSet;
  /** `deny` plus, in NPTv6 mode, the external prefixes: they are this concentrator's, never a server. */
  #destinations: DestinationPolicy;
  #sourceAddress: SourceAddressStrategy;
  #proxyProtocol: ProxyProtocolTargets;
  /** Installed once a transparent or NPTv6 source-address mode is configured; removed at stop. */
  #returnPath: ReturnPath | undefined;
  /** The keys file's keys (start, reload); undefined while authentication is off. */
  #keys: KeyRing | undefined;
  readonly #replay = new ReplayCache(1);
  /** The replay cache, limits and source pool as one state (./shared-state.ts): this pipeline's and the workers'. */
  readonly #shared: LocalSharedState;
  /** RADIUS authorization and accounting (start, reload); undefined without `radius`. */
  #radius: RadiusService | undefined;
  readonly #conversion: ConversionStrategy;
  readonly #udp: UdpChannelService;
  readonly #dialer: ServerDialer;
  readonly #steps: readonly Step[];
  /** Inbound bindings: reverse connections from CPEs and the external ports they claim. */
  readonly #bindings: Bindings;
  /** Implicit (on-path) mode (./onpath.ts): created at start when `onPath` is configured. */
  #onPath: OnPath | undefined;
  /** The nft table of the listeners (SYN window clamp, SYN-flood guards). */
  readonly #rules: ListenerRules;
  readonly #listeners = new Map<string, ListeningServer>();
  readonly #sessions = new Set<Session>();
  readonly #endSession = (s: Session): void => {
    this.#sessions.delete(s);
    this.#pending.release(s);
  };
  #nextId = 1;
  /** Bytes of closed connections per CPE identity (bounded, oldest first out). */
  readonly #closedTotals = new Map<string, { up: number; down: number }>();
  #lastReload: ReloadReport | undefined;
  #stopping = false;
  #sweeper: NodeJS.Timeout | undefined;
  /** Descriptors open besides the sessions' sockets (sampled), and the limit. */
  #fdBaseline = 0;
  #fdLimit = Infinity;

  constructor(config: ConcentratorConfig, deps: ConcentratorDeps) {
    this.#config = config;
    this.#deps = deps;
    this.#now = deps.now ?? Date.now;
    const open = openAllowProblem(config.allow, config.auth);
    if (open) throw new ConfigError(open);
    this.#rules = new ListenerRules({ kernel: deps.kernel, logger: deps.logger });
    this.#limits = new ConnectionLimits(config.limits, this.#now);
    this.#shared = new LocalSharedState({
      limits: this.#limits,
      replay: this.#replay,
      auth: () => {
        const auth = this.#config.auth;
        return auth && this.#keys ? { keys: this.#keys, clockSkewS: auth.clockSkewS, required: auth.required } : undefined;
      },
      sourceAddress: () => this.#sourceAddress,
      now: this.#now,
    });
    this.#pending = new SignallingAdmission(config.signalling);
    this.#allow = PrefixSet.from(config.allow);
    this.#destinations = compileDestinationPolicy({ deny: denyPrefixes(config) });
    this.#sourceAddress = sourceAddressStrategy(config, { blockLog: (e) => this.#sessionLog({ ...e }) });
    this.#proxyProtocol = compileProxyProtocolTargets(config.server.proxyProtocol);
    this.#dialer = new ServerDialer({
      sockets: deps.sockets,
      logger: deps.logger,
      mptcp: config.server.mptcp,
      connectTimeoutMs: config.server.connectTimeoutMs,
      cacheTtlMs: config.server.fallbackCacheTtlS * 1000,
      cacheSize: config.server.fallbackCacheSize,
      slowFallbackMs: config.server.slowFallbackMs,
      tcpServersTtlMs: config.server.tcpServersTtlS * 1000,
      now: this.#now,
    });
    this.#conversion = new ExplicitTcpConversion({
      sockets: deps.sockets,
      dialer: this.#dialer,
      metrics: deps.metrics,
      sessionLog: (line) => this.#sessionLog(line),
      now: this.#now,
      splice: deps.splice,
      settings: () => this.#config,
      stopping: () => this.#stopping,
      proxyProtocol: () => this.#proxyProtocol,
    });
    this.#bindings = new Bindings({
      sockets: deps.sockets,
      logger: deps.logger,
      metrics: deps.metrics,
      splice: deps.splice,
      settings: () => this.#config.bindings,
      relaySettings: () => this.#config,
      sessionLog: (line) => this.#sessionLog(line),
      ownServices: () => [...this.addresses.map((a) => ({ host: a.host, port: a.port })), ...(this.#config.admin ? [parseEndpoint(this.#config.admin)] : [])],
      preservedAddress: (ctx) => (sourceAddressMode(this.#config) === 'transparent' ? unmapAddress(ctx.cpe) : undefined),
      pinPoolAddress: (identity) => {
        const pool = this.#sourceAddress;
        if (!(pool instanceof PoolSourceAddress)) return undefined;
        return pool.pin(identity, 4) ?? pool.pin(identity, 6);
      },
      onRelay: (ctx, relay) => relay.on('close', (stats: RelayStats) => {
        this.#countClosed(ctx.identity, stats.aToB, stats.bToA);
        if (ctx instanceof Session) ctx.end();
      }),
    });
    this.#udp = new UdpChannelService({
      sockets: deps.sockets,
      metrics: deps.metrics,
      logger: deps.logger,
      now: this.#now,
      settings: () => this.#config.udp,
      destination: (address) => destinationRefusal(address, { deny: this.#destinations.deny, own: this.#ownAddresses() }),
      source: () => this.#sourceAddress,
      sessionLog: (line) => this.#sessionLog(line),
      established: (socket) => established(deps.sockets, socket, this.#now),
      stopping: () => this.#stopping,
    });
    this.#steps = this.#pipeline();
  }

  /** The steps every accepted connection goes through, in order (docs/architecture.md shows them). */
  #pipeline(): Step[] {
    return this.#deps.worker ? this.#workerPipeline(this.#deps.worker.shared) : this.#primarySteps();
  }

  #primarySteps(): Step[] {
    return [
      step('customer', (ctx) => customerGate(ctx.cpe, this.#allow)),
      step('mptcp', (ctx) => mptcpGate(this.#deps.sockets.isMptcp(ctx.socket), this.#config.acceptFallback)),
      step('signalling', (ctx) => this.#readSignalling(ctx)),
      step('authenticate', (ctx) => this.#authenticate(ctx)),
      step('limits', (ctx) => this.#shared.admitLimits(ctx.identity, (release) => ctx.own(release))),
      // After limits: a CPE's connections waiting for its RADIUS answer hold its limits slots (bounded per CPE).
      step('radius', (ctx) => this.#radius?.authorize(ctx)),
      // A reverse connection (binding IE) is parked here for an inbound binding; the steps below are for conversions.
      step('binding', (ctx) => this.#bindings.claim(ctx)),
      // A UDP channel has no destination of its own: each datagram passes the destination gate (udp-channel.ts).
      step('transport', (ctx) => {
        const protocol = ctx.signalling?.protocol;
        if (protocol === undefined) return this.#config.transports.includes('tcp') ? undefined : refuse('tcp-not-offered');
        return protocol === IPPROTO_UDP && this.#config.transports.includes('udp') ? undefined : refuse('udp-not-offered');
      }),
      step('destination', (ctx) => {
        if (isChannel(ctx)) return undefined;
        const dest = ctx.signalling?.destination;
        const address = dest ? unmapAddress(dest.address) : undefined;
        const refused = destinationRefusal(address, { deny: this.#destinations.deny, own: this.#ownAddresses() });
        if (!refused && dest && address) ctx.destination = { address, port: dest.port ?? ctx.listener.port, family: isIP(address) as 4 | 6 };
        return refused;
      }),
      step('source', (ctx) => {
        const src = ctx.signalling?.source;
        return sourceGate(src ? unmapAddress(src.address) : undefined);
      }),
      // A channel takes a source address per mapping and family (udp-channel.ts), not one per connection.
      step('source-address', (ctx) => (isChannel(ctx) ? undefined : this.#shared.acquireSource(ctx))),
      step('convert', (ctx) => (isChannel(ctx) ? this.#udp.conversion : this.#conversion).convert(ctx)),
    ];
  }

  /**
   * A worker process's steps: explicit TCP only (config.ts refuses UDP, bindings, RADIUS with workers). The
   * pure gates run here; authenticate, limits and source-address are one request to the primary, after the
   * destination and source gates (it carries the destination's family).
   */
  #workerPipeline(shared: SharedState): Step[] {
    const all = new Map(this.#primarySteps().map((s) => [s.name, s]));
    const take = (name: string): Step => all.get(name) as Step;
    return [
      take('customer'),
      take('mptcp'),
      take('signalling'),
      // Reverse connections and UDP channels are served by one process only (config.ts refuses bindings and udp with workers).
      step('transport', (ctx) => {
        if (ctx.signalling?.binding !== undefined) return refuse('binding-off');
        return ctx.signalling?.protocol === undefined ? undefined : refuse('udp-not-offered');
      }),
      take('destination'),
      take('source'),
      step('shared-state', async (ctx) => {
        const sig = ctx.signalling;
        if (!sig || !ctx.format || !ctx.destination) return refuse('no-destination');
        const a = await shared.admit({ cpe: ctx.cpe, format: ctx.format, raw: sig.raw, family: ctx.destination.family, ...(sig.source ? { source: sig.source.address } : {}) });
        if (!a.ok) return { ...a.refusal, detail: { ...a.refusal.detail, sharedStep: a.step } };
        ctx.own(() => shared.release(a.lease));
        ctx.identity = a.identity;
        ctx.keyId = a.keyId;
        ctx.external = a.external;
        if (a.externalTransparent) ctx.externalTransparent = true;
        return undefined;
      }),
      step('convert', (ctx) => this.#conversion.convert(ctx)),
    ];
  }

  /** signalling-admission and signalling: bounded per CPE and in total while it is read, then read it. */
  async #readSignalling(ctx: ConnectionContext): Promise<Refusal | undefined> {
    const session = sessionOf(ctx);
    const decision = this.#pending.admit(ctx.cpe, session, this.#descriptorsShort());
    if (!decision.admitted) return decision.refusal;
    if (decision.shed) {
      decision.shed.refused = true;
      this.#refuse(decision.shed.ctx, refuse('shed-fd-limit'), 'signalling-admission');
    }
    try {
      const sig = this.#config.signalling;
      const read = await readSignalling(ctx.socket, sig.timeoutMs, {
        idleMs: sig.warmIdleS * 1000,
        // A warm connection leaves the signalling admission (its bound is for signalling in flight) for its own.
        admit: () => this.#warm.admit(ctx.cpe, sig.warmMaxPerCpe, sig.warmMax) && (this.#pending.release(session), true),
        release: () => this.#warm.release(ctx.cpe),
      });
      ctx.signalling = read;
      ctx.format = read.format;
      return undefined;
    } catch (err) {
      if (ctx.socket.destroyed && !(err instanceof MpconvertError)) return refuse('client-gone');
      if (err instanceof SignallingEmptyError) return refuse('signalling-empty');
      if (err instanceof WarmUnusedError) return refuse('warm-unused');
      if (err instanceof WarmRefusedError) return refuse(err.why === 'idle' ? 'warm-idle' : 'warm-limit');
      const code = err instanceof MpconvertError ? err.code : 'MPC_ERR_SIGNALLING';
      const reaction = (err as { reaction?: Refusal['reaction'] }).reaction;
      return refuse('signalling', { qualifier: code, reaction, detail: { error: (err as Error).message } });
    } finally {
      this.#pending.release(session);
    }
  }

  /** authenticate: the authenticator in the signalling, checked before any dial; sets the CPE identity. */
  #authenticate(ctx: ConnectionContext): Refusal | undefined {
    if (!ctx.signalling || !ctx.format) return undefined;
    const v = this.#shared.authenticate({ format: ctx.format, raw: ctx.signalling.raw, cpe: ctx.cpe });
    if (!v.ok) return v.refusal;
    ctx.identity = v.identity;
    ctx.keyId = v.keyId;
    return undefined;
  }

  /** Estimated descriptors in use (the sampled baseline plus two per session) against the limit. */
  #descriptorsShort(): boolean {
    if (this.#fdLimit === Infinity) return false;
    return this.#fdBaseline + 2 * this.#sessions.size >= this.#fdLimit * DESCRIPTOR_HIGH_WATER;
  }

  #sampleDescriptors(): void {
    const r = this.#deps.resources;
    if (!r) return;
    try {
      const d = r.descriptors();
      this.#fdLimit = d.limit;
      this.#fdBaseline = Math.max(0, d.open - 2 * this.#sessions.size);
    } catch (err) {
      this.#deps.logger.debug({ err }, 'could not read the descriptor count');
    }
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

  /** Connections this process accepted since it started (per-worker counts in /status). */
  get accepted(): number {
    return this.#nextId - 1;
  }

  /** Connections of this process open now. */
  get activeSessions(): number {
    return this.#sessions.size;
  }

  /** The state the worker processes ask for (./workers.ts serves their requests with it). */
  get shared(): LocalSharedState {
    return this.#shared;
  }

  async start(): Promise<void> {
    if (this.#deps.worker) return this.#startWorker();
    await this.#loadKeys(this.#config);
    await this.#setRadius(this.#config);
    await this.#prepareKernel();
    for (const text of this.#config.listen) await this.#openListener(text);
    // After the listeners are bound: the rules name their actual ports (port 0 resolved).
    await this.#startOnPath();
    await this.#rules.apply(this.#config, this.addresses);
    await this.#onPath?.resync();
    this.#sampleDescriptors();
    this.#sweeper = setInterval(() => {
      this.#limits.sweep();
      this.#replay.sweep(Math.floor(this.#now() / 1000));
      this.#sampleDescriptors();
    }, 10_000);
    this.#sweeper.unref();
    // The active-CPE and per-CPE gauges are computed when /metrics is scraped, not on a timer.
    this.#deps.metrics.onScrape.figures = () => this.#updateFigures();
    this.#udp.start();
    this.#deps.logger.info({ listen: this.#config.listen, allow: this.#config.allow }, 'concentrator started');
  }

  /** A worker process: listeners only (the primary configured the kernel and owns the shared state). */
  async #startWorker(): Promise<void> {
    for (const text of this.#config.listen) await this.#openListener(text);
    this.#sampleDescriptors();
    this.#sweeper = setInterval(() => this.#sampleDescriptors(), 10_000);
    this.#sweeper.unref();
    this.#deps.logger.info({ listen: this.#config.listen }, 'concentrator worker started');
  }

  /** The on-path listener before the rules that send it SYNs (./onpath.ts); a change of `onPath` needs a restart. */
  async #startOnPath(): Promise<void> {
    if (!this.#config.onPath || this.#onPath) return;
    const onPath = new OnPath({
      sockets: this.#deps.sockets,
      kernel: this.#deps.kernel,
      logger: this.#deps.logger,
      metrics: this.#deps.metrics,
      dialer: this.#dialer,
      limits: this.#limits,
      now: this.#now,
      splice: this.#deps.splice,
      config: () => this.#config,
      own: () => this.#ownAddresses(),
      destinations: () => this.#destinations,
      stopping: () => this.#stopping,
      sessionLog: (line) => this.#sessionLog(line),
    });
    this.#onPath = onPath;
    await onPath.start();
  }

  /** Reads the keys file (start, SIGHUP) before anything changes: a file that does not load keeps the running keys. */
  async #loadKeys(config: ConcentratorConfig): Promise<void> {
    if (!config.auth) {
      this.#keys = undefined;
      return;
    }
    const keys = await loadKeysFile(config.auth.keysFile);
    if (keys.size === 0) this.#deps.logger.warn({ keysFile: config.auth.keysFile }, 'the keys file has no key: every authenticated connection is refused');
    this.#keys = keys;
    this.#replay.resize(config.auth.replayCacheSize);
    this.#deps.logger.info({ keysFile: config.auth.keysFile, keys: keys.size, required: config.auth.required }, 'CPE keys loaded');
  }

  /** Starts, reconfigures or stops RADIUS as the configuration says (start, SIGHUP); secret files are read first. */
  async #setRadius(config: ConcentratorConfig): Promise<void> {
    if (!config.radius) {
      const old = this.#radius;
      this.#radius = undefined;
      await old?.stop();
      return;
    }
    if (this.#radius) await this.#radius.reload(config.radius);
    else {
      this.#radius = await RadiusService.create(config.radius, {
        logger: this.#deps.logger,
        metrics: this.#deps.metrics,
        now: this.#now,
        instance: config.instance,
        liveBytes: (identity) => this.#liveBytes(identity),
      });
    }
    this.#deps.logger.info({ servers: config.radius.servers.map((s) => s.host), failMode: config.radius.failMode, accounting: config.radius.accounting.enabled }, 'RADIUS configured');
  }

  /** Bytes of one CPE identity's relayed connections open now (up = from the CPE). */
  #liveBytes(identity: string): { up: number; down: number } {
    let up = 0;
    let down = 0;
    for (const s of this.#sessions) {
      if (s.ctx.identity !== identity || !s.ctx.relay) continue;
      up += s.ctx.relay.bytesAToB + (s.ctx.earlyUp ?? s.ctx.signalling?.rest.length ?? 0);
      down += s.ctx.relay.bytesBToA;
    }
    return { up, down };
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
    await this.#ensureReturnPath(this.#config);
  }

  /**
   * Installs the return path when the source-address mode needs it (start, reload). Once installed it stays
   * until stop: relayed connections of a transparent mode outlive a reload to another mode and still need it,
   * and it touches nothing but the packets of transparent sockets.
   */
  async #ensureReturnPath(config: ConcentratorConfig): Promise<void> {
    if ((!needsReturnPath(config) && !config.onPath) || this.#returnPath) return;
    const rp = new ReturnPath(this.#deps, returnPathOptions(config));
    await rp.start();
    this.#returnPath = rp;
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
    let server: ListeningServer;
    try {
      server = await this.#deps.sockets.listen({
        family: ep.family,
        protocol: 'mptcp',
        host: ep.host,
        port: ep.port,
        backlog: 4096,
        fastOpenQueue: 4096,
        fastOpenNoCookie: true,
        reuseAddr: true,
        // Every process of the group (the primary and its workers) opens the same listener; the kernel spreads the SYNs.
        reusePort: this.#config.workers > 1,
        // Inherited by every accepted connection: if this process dies, the CPEs see MP_FASTCLOSE, not DATA_FIN.
        linger: RESET_ON_CLOSE,
      });
    } catch (err) {
      throw listenError(text, err);
    }
    server.allowHalfOpen = true;
    server.on('connection', (socket: Socket) => this.#onConnection(socket, ep));
    server.on('error', (err) => this.#deps.logger.error({ err, listen: text }, 'listener error'));
    this.#listeners.set(text, server);
  }

  #onConnection(socket: Socket, listener: Endpoint): void {
    socket.on('error', ignoreError);
    const session = new Session(this.#nextId++, socket, unmapAddress(socket.remoteAddress ?? ''), listener, this.#now(), this.#endSession);
    const ctx: ConnectionContext = session;
    if (this.#stopping) {
      this.#refuse(ctx, refuse('stopping'));
      return;
    }
    this.#sessions.add(session);
    (socket as Socket & { [kSession]?: Session })[kSession] = session;
    socket.on('close', preRelayClose);
    runPipeline(this.#steps, ctx).then(
      (r) => {
        if (!r.passed) {
          if (!session.refused) this.#refuse(ctx, r.refusal, r.step);
          session.end();
        } else if (ctx.relay) {
          this.#radius?.opened(ctx);
          // From here the relay owns the socket: its listeners replace the session's.
          socket.off('close', preRelayClose);
          socket.off('error', ignoreError);
          ctx.relay.on('close', (stats: RelayStats) => this.#relayClosed(session, stats));
        }
      },
      (err: unknown) => {
        this.#deps.logger.error({ err, session: ctx.id }, 'unexpected error in session');
        socket.resetAndDestroy();
        session.end();
      },
    );
  }

  #relayClosed(session: Session, stats: RelayStats): void {
    session.conversion?.closed?.(session, stats);
    // The client's bytes that came with the signalling went to the server outside the relay.
    const up = stats.aToB + (session.earlyUp ?? session.signalling?.rest.length ?? 0);
    this.#countClosed(session.identity, up, stats.bToA);
    this.#radius?.closed(session, up, stats.bToA);
    session.end();
  }

  /** Counts, logs and answers a refusal (the reaction from src/policy/refusals.ts for the signalling's format). */
  #refuse(ctx: ConnectionContext, r: Refusal, at?: string): void {
    const reason = refusalLabel(r);
    this.#deps.metrics.refused.inc({ reason });
    this.#deps.logger.debug({ session: ctx.id, cpe: ctx.cpe, reason, step: at, ...r.detail }, 'connection refused');
    this.#sessionLog({ event: 'refused', session: ctx.id, cpe: ctx.cpe, reason, ...r.detail });
    if (r.code === 'client-gone') {
      ctx.socket.destroy();
      return;
    }
    sendRefusal(ctx.socket, refusalReaction(r, ctx.format), this.#deps.sockets);
  }

  #sessionLog(line: Record<string, unknown>): void {
    this.#deps.sessionLog?.info(line);
  }

  #ownCache: { at: number; set: AddressSet } | undefined;
  #ownAddresses(): AddressSet {
    const now = Date.now();
    if (this.#ownCache && now - this.#ownCache.at < 5_000) return this.#ownCache.set;
    const list = Object.values(networkInterfaces())
      .flatMap((l) => l ?? [])
      .map((i) => i.address.split('%')[0] as string);
    for (const text of this.#config.listen) list.push(parseEndpoint(text, { allowPortZero: true }).host);
    list.push(...this.#config.sourcePool.addresses);
    this.#ownCache = { at: now, set: AddressSet.from(list) };
    return this.#ownCache.set;
  }

  #countClosed(cpe: string, up: number, down: number): void {
    const t = this.#closedTotals.get(cpe) ?? { up: 0, down: 0 };
    t.up += up;
    t.down += down;
    this.#closedTotals.delete(cpe); // re-insert: most recent last
    this.#closedTotals.set(cpe, t);
    if (this.#closedTotals.size > CPE_TOTALS_MAX) this.#closedTotals.delete(this.#closedTotals.keys().next().value as string);
    if (this.#deps.metrics.perCpe) {
      this.#deps.metrics.cpeBytes.inc({ cpe, direction: 'up' }, up);
      this.#deps.metrics.cpeBytes.inc({ cpe, direction: 'down' }, down);
    }
  }

  /** Per CPE with open connections: connections, subflows (MPTCP_INFO of each), bytes (closed + live). */
  cpeFigures(): CpeFigures[] {
    const by = new Map<string, CpeFigures>();
    let sampled = 0;
    for (const s of this.#sessions) {
      const id = s.ctx.identity;
      const f = by.get(id) ?? { cpe: id, connections: 0, subflows: 0, bytesUp: this.#closedTotals.get(id)?.up ?? 0, bytesDown: this.#closedTotals.get(id)?.down ?? 0 };
      f.connections++;
      if (s.ctx.relay) {
        f.bytesUp += s.ctx.relay.bytesAToB;
        f.bytesDown += s.ctx.relay.bytesBToA;
      }
      if (sampled++ < SUBFLOW_SAMPLE_MAX && !s.ctx.socket.destroyed) {
        try {
          const info = this.#deps.sockets.mptcpInfo(s.ctx.socket);
          // subflowsTotal counts the initial subflow (6.10+); mptcpi_subflows does not.
          if (info) f.subflows += info.subflowsTotal ?? info.subflows + 1;
        } catch {
          /* closed meanwhile */
        }
      }
      by.set(id, f);
    }
    return [...by.values()].sort((a, b) => b.bytesUp + b.bytesDown - (a.bytesUp + a.bytesDown) || b.connections - a.connections);
  }

  /** At each scrape of /metrics: the active-CPE and port-block gauges, and the per-CPE gauges when metrics.perCpe is on. */
  #updateFigures(): void {
    const m = this.#deps.metrics;
    const figures = this.cpeFigures();
    m.activeCpes.set(figures.length);
    m.portBlocks.set(this.#sourceAddress instanceof PortBlockSourceAddress ? this.#sourceAddress.allocator.summary().blocks : 0);
    if (!m.perCpe) return;
    m.cpeConnections.reset();
    m.cpeSubflows.reset();
    for (const f of figures) {
      m.cpeConnections.set({ cpe: f.cpe }, f.connections);
      m.cpeSubflows.set({ cpe: f.cpe }, f.subflows);
    }
  }

  /** What the dashboard shows, once a second (GET /events). */
  async live() {
    const figures = this.cpeFigures();
    const values = async (c: { get(): Promise<{ values: Array<{ value: number; labels: Record<string, string | number> }> }> }, label: string) =>
      Object.fromEntries((await c.get()).values.map((v) => [String(v.labels[label]), v.value]));
    return {
      role: 'concentrator',
      t: Date.now(),
      ready: this.readiness(),
      listeners: [...this.#listeners.keys()],
      activeCpes: figures.length,
      activeSessions: this.#sessions.size,
      subflows: figures.reduce((a, f) => a + f.subflows, 0),
      topCpes: figures.slice(0, this.#config.metrics.topCpes),
      refusals: await values(this.#deps.metrics.refused, 'reason'),
      serverLegs: await values(this.#deps.metrics.serverLeg, 'transport'),
      fallbackCache: this.fallbackCache,
      // The UDP channel (issue 11) adds its channels and mappings here, and a card for them to the dashboard.
    };
  }

  /** The sessions (newest first, at most `limit`), of one CPE identity or of all. */
  connections(q: { subflows: boolean; limit: number; cpe?: string }) {
    const now = this.#now();
    const list = [...this.#sessions].filter((s) => q.cpe === undefined || s.ctx.identity === q.cpe || s.ctx.cpe === q.cpe).reverse();
    return {
      total: list.length,
      connections: list.slice(0, q.limit).map((s) => {
        const c = s.ctx;
        let subflows: unknown;
        if (q.subflows && !c.socket.destroyed) {
          try {
            subflows = this.#deps.sockets.subflows(c.socket).map((sf) => ({
              id: sf.id ?? null,
              local: `${sf.local.address}:${sf.local.port}`,
              remote: `${sf.remote.address}:${sf.remote.port}`,
              rttMs: sf.tcp && sf.tcp.rttUs > 0 ? sf.tcp.rttUs / 1000 : null,
              retransmits: sf.tcp?.totalRetrans ?? 0,
            }));
          } catch {
            subflows = [];
          }
        }
        return {
          id: c.id,
          cpe: c.identity,
          source: `${c.cpe}`,
          destination: c.destination ? `${c.destination.address}:${c.destination.port}` : null,
          state: c.relay ? 'relayed' : c.signalling?.binding !== undefined ? 'reverse idle' : 'setting up',
          ageS: Math.round((now - c.started) / 100) / 10,
          bytesUp: c.relay?.bytesAToB ?? 0,
          bytesDown: c.relay?.bytesBToA ?? 0,
          ...(subflows !== undefined ? { subflows } : {}),
        };
      }),
    };
  }

  /** Resets one session (admin API). */
  closeConnection(id: number): boolean {
    for (const s of this.#sessions) {
      if (s.ctx.id !== id) continue;
      if (s.ctx.relay) s.ctx.relay.destroy();
      else s.ctx.socket.resetAndDestroy();
      return true;
    }
    return false;
  }

  /** Resets every session of one CPE (its identity, or its source address); returns how many. */
  closeCpe(cpe: string): number {
    let n = 0;
    for (const s of [...this.#sessions]) {
      if (s.ctx.identity !== cpe && s.ctx.cpe !== cpe) continue;
      if (s.ctx.relay) s.ctx.relay.destroy();
      else s.ctx.socket.resetAndDestroy();
      n++;
    }
    if (n > 0) this.#deps.logger.info({ cpe, connections: n }, 'closed every connection of a CPE (admin API)');
    return n;
  }

  /** Ready while it listens and is not stopping. */
  readiness(): { ready: true } | { ready: false; reason: string } {
    if (this.#stopping) return { ready: false, reason: 'stopping' };
    if (this.#listeners.size === 0) return { ready: false, reason: 'no listener' };
    return { ready: true };
  }

  status() {
    return {
      listeners: [...this.#listeners.keys()],
      activeSessions: this.#sessions.size,
      signallingPending: this.#pending.size,
      warm: this.#warm.total,
      bindings: this.#bindings.snapshot(),
      connections: this.#limits.total,
      udp: this.#udp.status(),
      fallbackCache: this.fallbackCache,
      // Servers dialled with TCP because they answered without MP_CAPABLE (server.tcpServersTtlS; a count: up to fallbackCacheSize).
      tcpServersLearned: this.#dialer.tcpServers.length,
      sourceAddress: this.#sourceAddress.name,
      ...(this.#sourceAddress instanceof PortBlockSourceAddress ? { portBlocks: this.#sourceAddress.allocator.summary() } : {}),
      returnPath: this.#returnPath?.installed ?? false,
      ...(this.#onPath ? { onPath: this.#onPath.status() } : {}),
      ...(this.#keys ? { auth: { keys: this.#keys.size, replayCache: this.#replay.size } } : {}),
      ...(this.#radius ? { radius: this.#radius.status() } : {}),
      activeCpes: this.cpeFigures().length,
      topCpes: this.cpeFigures().slice(0, this.#config.metrics.topCpes),
      ...(this.#lastReload ? { lastReload: this.#lastReload } : {}),
      stopping: this.#stopping,
    };
  }

  /** SIGHUP: apply a new configuration; established connections are kept. */
  async reload(wanted: ConcentratorConfig): Promise<ReloadReport> {
    const report = diffConfig(this.#config, wanted, new Set(Object.keys(wanted).filter((k) => !RESTART_KEYS.has(k))));
    const next = effectiveConfig(this.#config, wanted, report);
    // First, before anything changes: a return path that cannot be installed leaves the running configuration.
    // Its mark and table are taken at install: a change of those needs a restart.
    const worker = this.#deps.worker !== undefined;
    if (!worker) await this.#ensureReturnPath(next);
    const old = this.#config;
    // Compiled before anything changes: a list that does not compile leaves the running configuration.
    const open = openAllowProblem(next.allow, next.auth);
    if (open) throw new ConfigError(open);
    const allow = PrefixSet.from(next.allow);
    const destinations = compileDestinationPolicy({ deny: denyPrefixes(next) });
    const keys = next.auth && !worker ? await loadKeysFile(next.auth.keysFile) : undefined;
    if (!worker) await this.#setRadius(next);
    this.#config = next;
    this.#keys = keys;
    if (next.auth) this.#replay.resize(next.auth.replayCacheSize);
    this.#ownCache = undefined;
    this.#allow = allow;
    this.#destinations = destinations;
    this.#limits.reconfigure(next.limits);
    this.#pending.reconfigure(next.signalling);
    this.#dialer.setMptcp(next.server.mptcp);
    this.#dialer.setTcpServersTtl(next.server.tcpServersTtlS * 1000);
    this.#proxyProtocol = compileProxyProtocolTargets(next.server.proxyProtocol);
    this.#bindings.reconfigure();
    // Connections already open release their address into the strategy they took it from.
    if (JSON.stringify([old.sourcePool, old.sourceAddress, old.portBlocks]) !== JSON.stringify([next.sourcePool, next.sourceAddress, next.portBlocks])) {
      this.#sourceAddress = sourceAddressStrategy(next, { blockLog: (e) => this.#sessionLog({ ...e }), previous: this.#sourceAddress });
    }
    for (const [text, server] of this.#listeners) {
      if (!next.listen.includes(text)) {
        server.close();
        this.#listeners.delete(text);
      }
    }
    for (const text of next.listen) if (!this.#listeners.has(text)) await this.#openListener(text);
    this.#onPath?.reconfigure(next);
    if (!worker) await this.#rules.apply(next, this.addresses);
    await this.#onPath?.resync();
    if (report.applied.includes('logLevel')) this.#deps.logger.level = next.logLevel;
    logReload(this.#deps.logger, old, wanted, report);
    this.#lastReload = report;
    return report;
  }

  #stopped: Promise<void> | undefined;

  /** Stop accepting; let relayed connections drain for `drainMs`, then abort what is left. A second call waits for the first. */
  stop(drainMs = this.#config.shutdownDrainS * 1000): Promise<void> {
    this.#stopped ??= this.#stop(drainMs);
    return this.#stopped;
  }

  async #stop(drainMs: number): Promise<void> {
    this.#stopping = true;
    if (this.#sweeper) clearInterval(this.#sweeper);
    this.#deps.metrics.onScrape.figures = undefined;
    // close() stops accepting at once; its callback would wait for every connection, which the drain handles.
    for (const s of this.#listeners.values()) s.close();
    this.#listeners.clear();
    this.#bindings.stop();
    // UDP channels have nothing to drain (a datagram late is a datagram lost).
    this.#udp.stop();
    // Sessions still in signalling or dialing have nothing to drain.
    for (const s of [...this.#sessions]) if (!s.ctx.relay) s.ctx.socket.resetAndDestroy();
    this.#onPath?.closeListeners();
    const deadline = Date.now() + drainMs;
    while (this.#sessions.size + (this.#onPath?.active ?? 0) > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    // Accounting Stops are built now, while the connections left still count their live bytes; sent meanwhile.
    const radiusStopped = this.#radius?.stop().catch((err: unknown) => this.#deps.logger.warn({ err }, 'could not send the RADIUS accounting Stop records'));
    for (const s of [...this.#sessions]) {
      if (s.ctx.relay) s.ctx.relay.destroy();
      else s.ctx.socket.resetAndDestroy();
      s.end();
    }
    await radiusStopped;
    // Port blocks still held go back, each with its release line.
    this.#sourceAddress.close?.('stop');
    await this.#onPath?.stop().catch((err: unknown) => this.#deps.logger.warn({ err }, 'could not stop the on-path interception'));
    // A worker's stop leaves the kernel configuration to the primary.
    if (!this.#deps.worker) await this.#rules.remove().catch((err: unknown) => this.#deps.logger.warn({ err }, 'could not remove the nft table of the listeners'));
    await this.#returnPath?.stop().catch((err: unknown) => this.#deps.logger.warn({ err }, 'could not remove the return path'));
    this.#returnPath = undefined;
    for (const id of this.#announced.splice(0)) {
      await this.#deps.kernel.mptcp.deleteEndpoint(id).catch((err: unknown) => this.#deps.logger.warn({ err, id }, 'could not remove an announce endpoint'));
    }
    this.#deps.logger.info('concentrator stopped');
  }
}

const isChannel = (ctx: ConnectionContext): boolean => ctx.signalling?.protocol !== undefined;

function denyPrefixes(c: ConcentratorConfig): string[] {
  return sourceAddressMode(c) === 'nptv6' ? [...c.deny, ...(c.sourceAddress?.nptv6?.prefixes ?? [])] : [...c.deny];
}

/** A listener that cannot be opened is a configuration problem: one line that says which and why. */
function listenError(text: string, err: unknown): Error {
  const code = (err as { code?: string }).code;
  const why: Record<string, string> = {
    EADDRNOTAVAIL: 'the address is not an address of this host (listen addresses must be local)',
    EADDRINUSE: 'the address and port are already in use (another instance, or another service)',
    EACCES: 'permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)',
    EPROTONOSUPPORT: 'the kernel has no MPTCP (net.mptcp.enabled=1 and CONFIG_MPTCP are needed)',
  };
  const reason = code !== undefined ? why[code] : undefined;
  if (!reason) return err instanceof Error ? err : new Error(String(err));
  return new ConfigError(`listen ${text}: ${reason} (${code})`);
}
