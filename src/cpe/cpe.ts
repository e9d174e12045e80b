/**
 * The CPE daemon (upstream MCP): owns the transparent listeners, the interception ruleset, the uplinks and
 * the conversion sessions, and releases all of them on stop.
 */
import { EventEmitter } from 'node:events';
import type { Server, Socket } from 'node:net';
import type { KernelConfig, Sockets, SpliceEngine, TransparentUdpFactory } from '../platform/types.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../control/metrics.js';
import { RESET_ON_CLOSE, type RelayHandle } from '../relay/index.js';
import { parseEndpoint } from '../control/address.js';
import { loadCredentials, natUplinks, type CpeConfig, type Credentials } from './config.js';
import { ConcentratorSelector } from './concentrators.js';
import { ConcentratorProbe } from './probe.js';
import { handleClient, type SessionContext } from './session.js';
import { Interception, type InterceptionOptions } from './interception.js';
import { UplinkManager, type EndpointLedger } from './uplinks.js';
import { WarmPool } from './warm-pool.js';
import { ReverseBindings } from './bindings.js';
import { ConfigError } from '../control/config-file.js';
import { QuotaBook } from './quota.js';
import { OVERFLOW_IDLE, overflowModes, overflowStep, type OverflowState } from '../policy/distribution.js';
import { diffConfig, effectiveConfig, logReload, type ReloadReport } from '../control/reload.js';
import { UplinkObserver, subflowView, type ConnectionRecord } from './observer.js';
import { FlowPinning } from './pinning.js';
import { DhcpWatcher } from './dhcp.js';
import { concentratorsInUse } from '../policy/concentrator-source.js';
import { parseSecret, readSecretFile } from '../control/secret-file.js';
import type { ConcentratorTarget } from './config.js';
import { UdpChannelClient } from './udp-channels.js';
import { ServerMptcpCache } from './server-mptcp.js';

export interface CpeDeps {
  sockets: Sockets;
  kernel: KernelConfig;
  logger: Logger;
  metrics: Metrics;
  /** Zero-copy relaying; absent: the stream relay. */
  splice?: SpliceEngine | undefined;
  /** Endpoint ownership across restarts (src/cpe/ledger.ts); absent: this run's only. */
  ledger?: EndpointLedger | undefined;
  /** Transparent UDP interception; needed when `transports` lists udp. */
  transparentUdp?: TransparentUdpFactory | undefined;
}

/** Settings read once at start: a reload keeps their running value (restart to change them). */
export const RESTART_KEYS = ['instance', 'tproxyPort', 'mark', 'routingTableBase', 'rulePriorityBase', 'stateDir', 'admin', 'adminTokenFile', 'quotaStateFile', 'transports'] as const satisfies ReadonlyArray<keyof CpeConfig>;

/** The interception for a configuration (its tables after the uplinks': routingTableBase + number of uplinks). */
export function interceptionOptions(cfg: CpeConfig): InterceptionOptions {
  return {
    instance: cfg.instance,
    // After the uplinks' tables and rules (routingTableBase + i, rulePriorityBase + i), so two instances
    // with different bases never share one.
    table: cfg.routingTableBase + cfg.uplinks.length,
    rulePriority: cfg.rulePriorityBase + cfg.uplinks.length,
    lanInterfaces: cfg.lan,
    tproxyPort: cfg.tproxyPort,
    mark: cfg.mark,
    include: cfg.policy.include,
    // Never intercept what goes to the concentrators themselves.
    exclude: [
      ...cfg.policy.exclude,
      ...cfg.concentrators.map((c) => {
        const ep = parseEndpoint(c.address);
        return { prefix: `${ep.host}/${ep.family === 4 ? 32 : 128}` };
      }),
    ],
    nativeMptcp: cfg.policy.nativeMptcp,
    // Flow classes that match on DSCP read it from the mark as well.
    dscpToMark: cfg.preserveDscp || cfg.distribution.classes.some((c) => c.dscp !== undefined),
    ...(cfg.transports.includes('udp') ? { udpTproxyPort: cfg.tproxyPort } : {}),
    ...(cfg.mssClamp === 'off' ? {} : { mssClamp: cfg.mssClamp }),
    natInterfaces: natUplinks(cfg),
    synWindowClamp: cfg.concentrators.filter((c) => c.synWindowClamp).map((c) => {
      const ep = parseEndpoint(c.address);
      return { address: ep.host, port: ep.port };
    }),
  };
}

/** The overflow primary and a flow class's named uplink must be uplinks. */
function checkDistributionNames(cfg: CpeConfig): void {
  const o = cfg.distribution.overflow;
  if (cfg.distribution.scheme === 'overflow' && o && !cfg.uplinks.some((u) => u.interface === o.primary)) {
    throw new ConfigError(`distribution.overflow.primary: ${o.primary} is not one of the uplinks`);
  }
  for (const c of cfg.distribution.classes) {
    if (c.uplink !== undefined && !cfg.uplinks.some((u) => u.interface === c.uplink)) {
      throw new ConfigError(`distribution.classes ${c.name}: uplink ${c.uplink} is not one of the uplinks`);
    }
  }
}

/** How often a concentrator held off as unreachable is probed. */
const PROBE_INTERVAL_MS = 500;

/** A LAN connection still being converted knows the set that tracks it (one shared close listener, no closure). */
const kPending = Symbol('mpconvert.pending');
type PendingSocket = Socket & { [kPending]?: Set<Socket> | undefined };
function leavePending(this: PendingSocket): void {
  this[kPending]?.delete(this);
}

export class Cpe {
  #config: CpeConfig;
  readonly #deps: CpeDeps;
  readonly #selector: ConcentratorSelector;
  readonly #probe: ConcentratorProbe;
  readonly #warm: WarmPool;
  /** Inbound bindings: the reverse connections kept open to the concentrators. */
  readonly #bindings: ReverseBindings;
  readonly #serverMptcp: ServerMptcpCache;
  /** What every connection's conversion needs from the daemon (src/cpe/session.ts). */
  readonly #session: SessionContext;
  readonly #listeners: Server[] = [];
  readonly #relays = new Set<RelayHandle>();
  /** The relayed connections by id, for the operator (admin API, dashboard). */
  readonly #connections = new Map<number, ConnectionRecord>();
  #nextId = 1;
  #observer: UplinkObserver | undefined;
  /** 'change' on an uplink change (the dashboard's stream sends at once instead of at the next second). */
  readonly #changes = new EventEmitter();
  readonly #pending = new Set<Socket>();
  #interception: Interception | undefined;
  #uplinks: UplinkManager | undefined;
  #pinning: FlowPinning;
  #udp: UdpChannelClient | undefined;
  #stopping = false;
  /** Per concentrator address: its key id and secret, read from the secret files at start. */
  #credentials = new Map<string, Credentials>();
  /** The key of the concentrators DHCP names (dhcp.concentrator's keyId and secretFile). */
  #dhcpCredentials: Credentials | undefined;
  /** The uplinks' DHCP leases (concentratorSource other than static). */
  #dhcp: DhcpWatcher | undefined;
  /** The concentrators in use now (static and DHCP's, by concentratorSource), and where each came from. */
  #inUse: ConcentratorTarget[] = [];
  #sources = new Map<string, string[]>();

  constructor(config: CpeConfig, deps: CpeDeps) {
    this.#config = config;
    this.#deps = deps;
    this.#selector = new ConcentratorSelector(config.concentrators, {
      capabilityTtlMs: config.capabilityCacheTtlS * 1000,
      unreachableHoldMs: config.unreachableHoldS * 1000,
      onUnreachable: (t) => this.#probe.watch(t),
    });
    this.#probe = new ConcentratorProbe({
      sockets: deps.sockets,
      logger: deps.logger,
      selector: this.#selector,
      intervalMs: PROBE_INTERVAL_MS,
      timeoutMs: () => this.#config.connectTimeoutMs,
    });
    this.#warm = new WarmPool({
      sockets: deps.sockets,
      logger: deps.logger,
      selector: this.#selector,
      connectTimeoutMs: () => this.#config.connectTimeoutMs,
      maxSeg: () => this.#config.mss,
      expectedSubflows: () => Math.max(0, (this.#uplinks?.snapshot().filter((u) => u.up && u.mode === 'subflow' && (u.ipv4 ?? u.ipv6) !== null).length ?? 1) - 1),
      count: (event) => deps.metrics.warm.inc({ event }),
    });
    this.#pinning = new FlowPinning({ kernel: deps.kernel, logger: deps.logger, metrics: deps.metrics });
    this.#bindings = new ReverseBindings({
      sockets: deps.sockets,
      logger: deps.logger,
      metrics: deps.metrics,
      splice: deps.splice,
      connectTimeoutMs: () => this.#config.connectTimeoutMs,
      maxSeg: () => this.#config.mss,
      credentials: (t) => this.#credentials.get(t.address),
      relaySettings: () => this.#config,
      track: (relay) => {
        this.#relays.add(relay);
        relay.on('close', () => this.#relays.delete(relay));
      },
    });
    this.#serverMptcp = new ServerMptcpCache(config.serverMptcp);
    this.#session = {
      sockets: deps.sockets,
      logger: deps.logger,
      metrics: deps.metrics,
      selector: this.#selector,
      splice: deps.splice,
      config: () => this.#config,
      credentials: (t) => this.#credentialsFor(t),
      warm: this.#warm,
      serverMptcp: this.#serverMptcp,
      pin: (flow, family) => (this.#config.distribution.classes.length > 0 ? this.#pinning.choose(this.#config, flow, family, this.#uplinks?.snapshot() ?? []) : undefined),
      track: (relay, info) => {
        this.#pending.delete(info.client);
        this.#relays.add(relay);
        const id = this.#nextId++;
        this.#connections.set(id, { id, ...info, relay, startedAt: Date.now() });
        relay.on('close', () => {
          this.#relays.delete(relay);
          this.#connections.delete(id);
        });
      },
    };
  }

  get selector(): ConcentratorSelector {
    return this.#selector;
  }

  async start(): Promise<void> {
    const cfg = this.#config;
    const { logger, kernel } = this.#deps;
    // Before anything is changed on the host: a secret file that cannot be used stops the start cleanly.
    this.#credentials = await loadCredentials(cfg.concentrators);
    this.#dhcpCredentials = await loadDhcpCredentials(cfg);
    const udp = cfg.transports.includes('udp');
    if (udp && !this.#deps.transparentUdp) throw new Error('transports lists udp, but this platform has no transparent UDP sockets');
    try {
      await this.#startDhcp(cfg);
      this.#useConcentrators(cfg);
      for (const [family, host] of [
        [4, '127.0.0.1'],
        [6, '::1'],
      ] as const) {
        const server = await this.#deps.sockets.listen({ family, protocol: 'tcp', host, port: cfg.tproxyPort, transparent: true, reuseAddr: true, backlog: 4096, linger: RESET_ON_CLOSE });
        server.allowHalfOpen = true;
        server.on('connection', (s: Socket) => this.#onConnection(s));
        server.on('error', (err) => logger.error({ err }, 'transparent listener error'));
        this.#listeners.push(server);
      }
      this.#uplinks = this.#newUplinks(cfg);
      await this.#uplinks.start();
      this.#observer = new UplinkObserver({
        kernel,
        sockets: this.#deps.sockets,
        metrics: this.#deps.metrics,
        logger,
        uplinks: () => this.#uplinks?.snapshot() ?? [],
        connections: () => this.#connections.values(),
      });
      this.#observer.on('sample', () => {
        if (this.#observer) this.#pinning.noteRtt(this.#observer.pathRtt());
      });
      this.#observer.start();
      await this.#startDistribution();
      await this.#pinning.apply(cfg);
      this.#interception = new Interception({ kernel, logger }, interceptionOptions({ ...cfg, concentrators: this.#inUse }));
      await this.#interception.start();
      this.#warm.configure(this.#inUse);
      this.#bindings.configure(cfg.bindings, cfg.concentrators);
      if (udp && this.#deps.transparentUdp) {
        this.#udp = new UdpChannelClient({
          sockets: this.#deps.sockets,
          logger,
          metrics: this.#deps.metrics,
          transparentUdp: this.#deps.transparentUdp,
          selector: this.#selector,
          config: () => this.#config,
          credentials: (t) => this.#credentialsFor(t),
        });
        this.#udp.start();
      }
    } catch (err) {
      await this.stop(0);
      throw err;
    }
    logger.info({ lan: cfg.lan, uplinks: cfg.uplinks.map((u) => u.interface), concentrators: this.#inUse.map((c) => c.address), concentratorSource: cfg.concentratorSource }, 'cpe started');
  }

  /** A concentrator's credentials: its own from the configuration, else (one only DHCP named) the DHCP template's. */
  #credentialsFor(t: { address: string }): Credentials | undefined {
    return this.#credentials.get(t.address) ?? (this.#sources.get(t.address)?.includes('static') ? undefined : this.#dhcpCredentials);
  }

  /** Follows the uplinks' DHCP leases unless the concentrators are static only (src/cpe/dhcp.ts). */
  async #startDhcp(cfg: CpeConfig): Promise<void> {
    this.#dhcp?.stop();
    this.#dhcp = undefined;
    if (cfg.concentratorSource === 'static') return;
    const watcher = new DhcpWatcher({ dir: cfg.dhcp.leaseDir, uplinks: () => this.#config.uplinks.map((u) => u.interface), pollMs: cfg.dhcp.pollMs, logger: this.#deps.logger });
    await watcher.start();
    watcher.on('change', () => void this.#onLeases());
    this.#dhcp = watcher;
  }

  /** Computes the concentrators in use from the configuration and the leases; true when they changed. */
  #useConcentrators(cfg: CpeConfig): boolean {
    const { port, ...settings } = cfg.dhcp.concentrator;
    const next = concentratorsInUse(cfg.concentratorSource, cfg.concentrators, this.#dhcp?.learned() ?? [], (address) => ({ address, ...settings }), port);
    const changed = JSON.stringify(next.targets) !== JSON.stringify(this.#inUse);
    this.#inUse = next.targets;
    this.#sources = next.sources;
    if (changed) this.#selector.reconfigure(next.targets);
    return changed;
  }

  /**
   * A lease named other concentrators (added, changed, withdrawn, expired): new connections use the new list at
   * once; the capability cache is flushed, the warm pool refilled, the interception's exclusions follow.
   */
  async #onLeases(): Promise<void> {
    if (this.#stopping || !this.#interception) return;
    if (this.#reloading) {
      this.#leasesPending = true;
      return;
    }
    const cfg = this.#config;
    const learned = this.#dhcp?.learned() ?? [];
    if (!this.#useConcentrators(cfg)) return;
    this.#deps.logger.info({ leases: learned, concentrators: this.#inUse.map((c) => ({ address: c.address, sources: this.#sources.get(c.address) })) }, 'dhcp: the leases name other concentrators: in use for new connections');
    this.#warm.configure(this.#inUse);
    this.#warm.flush();
    this.#udp?.refresh();
    this.#changes.emit('change');
    try {
      await this.#interception.update(interceptionOptions({ ...cfg, concentrators: this.#inUse }));
    } catch (err) {
      this.#deps.logger.warn({ err: (err as Error).message }, 'dhcp: cannot update the interception for the new concentrators');
    }
  }

  #newUplinks(cfg: CpeConfig): UplinkManager {
    const { logger, kernel } = this.#deps;
    const uplinks = new UplinkManager(
      { kernel, logger, ledger: this.#deps.ledger },
      {
        uplinks: cfg.uplinks,
        tableBase: cfg.routingTableBase,
        rulePriorityBase: cfg.rulePriorityBase,
        pollIntervalMs: cfg.uplinkPollMs,
        limits: cfg.mptcpLimits,
      },
    );
    uplinks.on('change', () => {
      logger.info('uplink change: flushing the concentrator capability cache and the warm pool');
      this.#selector.flush();
      this.#warm.flush();
      this.#bindings.flush();
      this.#udp?.refresh();
      this.#flushServerMptcp();
      this.#changes.emit('change');
    });
    return uplinks;
  }

  /** Servers learnt over the old uplinks may not be reachable the same way: learn them again. */
  #flushServerMptcp(): void {
    const n = this.#serverMptcp.flush();
    if (n > 0) this.#deps.metrics.serverMptcp.inc({ event: 'flushed' }, n);
  }

  #onConnection(client: Socket): void {
    if (this.#stopping) {
      client.resetAndDestroy();
      return;
    }
    this.#pending.add(client);
    (client as PendingSocket)[kPending] = this.#pending;
    client.on('close', leavePending);
    // One session context for every connection (built once): nothing per connection but the client.
    handleClient(client, this.#session).catch((err: unknown) => {
      this.#deps.logger.error({ err }, 'unexpected error converting a connection');
      client.resetAndDestroy();
    });
  }

  /**
   * Ready when a connection would be served: a concentrator is usable (not held off, not known incapable),
   * or connections fall back to direct TCP.
   */
  readiness(): { ready: true } | { ready: false; reason: string } {
    if (this.#stopping) return { ready: false, reason: 'stopping' };
    if (this.#listeners.length === 0) return { ready: false, reason: 'not started' };
    if (this.#selector.candidates().length > 0 || this.#config.fallback === 'direct') return { ready: true };
    return { ready: false, reason: 'no concentrator is usable (unreachable or not capable) and fallback is refuse' };
  }

  status() {
    return {
      relays: this.#relays.size,
      pending: this.#pending.size,
      concentrators: this.#concentratorView(),
      concentratorSource: this.#config.concentratorSource,
      ...(this.#dhcp ? { dhcp: this.#dhcp.learned() } : {}),
      warmPool: this.#warm.snapshot(),
      bindings: this.#bindings.snapshot(),
      serverMptcp: { mode: this.#config.serverMptcp.mode, cached: this.#serverMptcp.size },
      uplinks: this.#observer?.view() ?? [],
      distribution: this.distribution(),
      ...(this.#lastReload ? { lastReload: this.#lastReload } : {}),
      ...(this.#udp ? { udp: this.#udp.status() } : {}),
    };
  }

  /** The selector's view of each concentrator in use, with where it came from ('static', 'dhcp:<uplink>'). */
  #concentratorView() {
    return this.#selector.snapshot().map((c) => ({ ...c, sources: this.#sources.get(c.address) ?? ['static'] }));
  }

  #lastReload: ReloadReport | undefined;
  #overflow: OverflowState = OVERFLOW_IDLE;
  #distributionBusy = false;

  #quota: QuotaBook | undefined;
  /** The modes the schemes wanted at the last sample: only a change is applied (an admin override stays until then). */
  #wanted = new Map<string, 'subflow' | 'backup'>();

  /** The mode each uplink should have now: its configured mode or the overflow scheme's, backup past its quota. */
  #wantedModes(now: number): Map<string, 'subflow' | 'backup'> {
    const cfg = this.#config;
    const names = cfg.uplinks.map((u) => u.interface);
    const o = cfg.distribution.overflow;
    const base = cfg.distribution.scheme === 'overflow' && o ? overflowModes(names, this.#overflow, o) : new Map(cfg.uplinks.map((u) => [u.interface, u.mode] as const));
    for (const n of names) if (this.#quota?.over(n, now)) base.set(n, 'backup');
    return base;
  }

  /**
   * The distribution schemes and quotas: applied at start, then at each observer sample (once a second) the
   * quota usage is counted, the overflow decision taken, and the uplinks whose wanted mode changed are set.
   */
  async #startDistribution(): Promise<void> {
    const cfg = this.#config;
    checkDistributionNames(cfg);
    const quotas = new Map(cfg.uplinks.flatMap((u) => (u.quota ? [[u.interface, u.quota] as const] : [])));
    this.#quota = new QuotaBook(cfg.quotaStateFile, quotas, this.#deps.logger);
    await this.#quota.load();
    // The sample handler runs whatever the scheme: a reload may switch to overflow or add a quota.
    const first = this.#wantedModes(Date.now());
    await this.#applyModes(new Map([...first].filter(([u, m]) => cfg.uplinks.find((x) => x.interface === u)?.mode !== m)));
    this.#wanted = first;
    this.#observer?.on('sample', (s) => {
      const c = this.#config;
      c.uplinks.forEach((u, i) => this.#quota?.add(u.interface, s.bytes[i] ?? 0, s.t));
      const policy = c.distribution.overflow;
      if (c.distribution.scheme === 'overflow' && policy) {
        const load = Math.max(s.rx.reduce((a, b) => a + b, 0), s.tx.reduce((a, b) => a + b, 0));
        const next = overflowStep(this.#overflow, load, s.t, policy);
        if (next.joined !== this.#overflow.joined) {
          this.#deps.logger.info({ scheme: 'overflow', joined: next.joined, loadMbit: Math.round((load * 8) / 1e5) / 10 }, next.joined ? 'overflow: the other uplinks join' : 'overflow: back to the primary uplink only');
        }
        this.#overflow = next;
      }
      for (const u of c.uplinks) {
        const v = this.#quota?.view(u.interface, s.t);
        if (!v) continue;
        this.#deps.metrics.uplinkQuotaUsed.set({ uplink: u.interface }, v.used);
        this.#deps.metrics.uplinkQuotaLimit.set({ uplink: u.interface }, v.limit);
      }
      void this.#quota?.save(s.t);
      if (this.#distributionBusy) return;
      const wanted = this.#wantedModes(s.t);
      const changed = new Map([...wanted].filter(([u, m]) => this.#wanted.get(u) !== m));
      if (changed.size === 0) return;
      for (const [u, m] of changed) {
        if (this.#quota?.over(u, s.t) && m === 'backup') this.#deps.logger.warn({ uplink: u, quota: this.#quota.view(u, s.t) }, 'quota used up: the uplink is only a backup until the period ends');
      }
      this.#wanted = wanted;
      this.#distributionBusy = true;
      void this.#applyModes(changed).finally(() => (this.#distributionBusy = false));
    });
  }

  async #applyModes(modes: Map<string, 'subflow' | 'backup'>): Promise<void> {
    for (const [uplink, mode] of modes) {
      await this.#uplinks?.setMode(uplink, mode).catch((err: unknown) => this.#deps.logger.warn({ err: (err as Error).message, uplink }, 'distribution: cannot set the uplink mode'));
    }
  }

  /** The distribution scheme and its state (status, dashboard). */
  distribution() {
    const d = this.#config.distribution;
    const now = Date.now();
    const quotas = Object.fromEntries(this.#config.uplinks.flatMap((u) => {
      const v = this.#quota?.view(u.interface, now);
      return v ? [[u.interface, v] as const] : [];
    }));
    return {
      scheme: d.scheme,
      ...(d.scheme === 'overflow' ? { primary: d.overflow?.primary, joined: this.#overflow.joined } : {}),
      quotas,
      ...(d.classes.length > 0 ? this.#pinning.view(this.#config) : {}),
    };
  }

  /**
   * SIGHUP: applies a new configuration to the running CPE and reports what changed (logged, and in /status as
   * lastReload). Nothing changes when the new secret files cannot be read. In order:
   * - concentrators (list, formats, 0-RTT, credentials) and every per-connection setting: for new connections;
   *   the capability cache is flushed and the warm pool refilled;
   * - uplinks: a change of modes only is applied in place; any other change (the list, gateways, NAT, quotas,
   *   poll interval, MPTCP limits) replaces the uplink manager (endpoints, tables and rules removed, then
   *   installed anew); the distribution scheme then sets its modes again at its next sample;
   * - the interception (policy, DSCP, MSS clamp, SYN window clamps, NAT, LAN interfaces): the nft table is
   *   replaced in one transaction; a change of LAN interfaces or of the uplink count reinstalls it.
   * Keys read once at start keep their running value and are reported as needing a restart: instance,
   * tproxyPort, mark, routingTableBase, rulePriorityBase, stateDir, admin, adminTokenFile, quotaStateFile, transports. `distribution`
   * changes live: another scheme starts idle and sets its modes at the next sample (once a second); the overflow
   * thresholds apply at the next sample; flow classes to new connections (the pin table is replaced).
   */
  async reload(requested: CpeConfig): Promise<ReloadReport> {
    if (this.#stopping || !this.#interception || !this.#uplinks) throw new Error('Cpe.reload() before start or while stopping');
    // A lease change during the reload waits for it (it would apply the old configuration's lists).
    this.#reloading = true;
    try {
      return await this.#reload(requested);
    } finally {
      this.#reloading = false;
      if (this.#leasesPending) {
        this.#leasesPending = false;
        await this.#onLeases();
      }
    }
  }

  #reloading = false;
  #leasesPending = false;

  async #reload(requested: CpeConfig): Promise<ReloadReport> {
    if (!this.#interception || !this.#uplinks) throw new Error('Cpe.reload() before start');
    const old = this.#config;
    const pinned = new Set<string>(RESTART_KEYS);
    const live = new Set([...Object.keys(old), ...Object.keys(requested)].filter((k) => !pinned.has(k)));
    const report = diffConfig(old, requested, live);
    const next = effectiveConfig(old, requested, report);
    const { logger, kernel } = this.#deps;
    // Before anything changes: secret files that cannot be used keep the running configuration.
    const credentials = await loadCredentials(next.concentrators);
    checkDistributionNames(next);
    const dhcpCredentials = await loadDhcpCredentials(next);

    const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
    if (!same([old.uplinks, old.uplinkPollMs, old.mptcpLimits], [next.uplinks, next.uplinkPollMs, next.mptcpLimits])) {
      const modesOnly =
        same([old.uplinkPollMs, old.mptcpLimits], [next.uplinkPollMs, next.mptcpLimits]) &&
        old.uplinks.length === next.uplinks.length &&
        old.uplinks.every((u, i) => same({ ...u, mode: '' }, { ...next.uplinks[i], mode: '' }));
      if (modesOnly) {
        for (const u of next.uplinks) {
          if (old.uplinks.find((o) => o.interface === u.interface)?.mode !== u.mode) await this.setUplinkMode(u.interface, u.mode);
        }
      } else {
        await this.#uplinks.stop();
        this.#uplinks = this.#newUplinks(next);
        await this.#uplinks.start();
        await this.#quota?.save(Date.now(), true);
        this.#quota = new QuotaBook(next.quotaStateFile, new Map(next.uplinks.flatMap((u) => (u.quota ? [[u.interface, u.quota] as const] : []))), logger);
        await this.#quota.load();
        logger.info({ uplinks: next.uplinks.map((u) => u.interface) }, 'uplinks reinstalled');
      }
      // The uplinks run their configured modes now: the scheme applies its own again at the next sample.
      this.#wanted = new Map(next.uplinks.map((u) => [u.interface, u.mode] as const));
    }
    if (!same([old.concentratorSource, old.dhcp.leaseDir, old.dhcp.pollMs], [next.concentratorSource, next.dhcp.leaseDir, next.dhcp.pollMs])) await this.#startDhcp(next);
    this.#useConcentrators(next);
    await this.#pinning.apply(next);
    const opts = interceptionOptions({ ...next, concentrators: this.#inUse });
    if (!(await this.#interception.update(opts))) {
      const fresh = new Interception({ kernel, logger }, opts);
      await this.#interception.stop();
      this.#interception = fresh;
      await fresh.start();
    }
    // Another distribution scheme: it starts from its idle state, and the next sample sets the modes it wants.
    if (old.distribution.scheme !== next.distribution.scheme) this.#overflow = OVERFLOW_IDLE;
    this.#config = next;
    this.#credentials = credentials;
    this.#dhcpCredentials = dhcpCredentials;
    this.#selector.reconfigure(this.#inUse);
    // Warm connections were dialled with the old settings: replaced like the capability cache is flushed.
    this.#warm.configure(this.#inUse);
    this.#warm.flush();
    this.#bindings.configure(next.bindings, next.concentrators);
    // The UDP channels reopen towards the concentrators now configured.
    this.#udp?.refresh();
    this.#deps.metrics.serverMptcp.inc({ event: 'flushed' }, this.#serverMptcp.configure(next.serverMptcp));
    logger.level = next.logLevel;
    logReload(logger, old, next, report);
    this.#lastReload = report;
    return report;
  }

  get observer(): UplinkObserver | undefined {
    return this.#observer;
  }

  watch(onChange: () => void): () => void {
    this.#changes.on('change', onChange);
    return () => this.#changes.off('change', onChange);
  }

  /** The charts' past (the first event of each dashboard stream). */
  history() {
    return { intervalMs: this.#observer?.intervalMs ?? 1000, uplinks: this.#config.uplinks.map((u) => u.interface), samples: this.#observer?.history() ?? [] };
  }

  /** What the dashboard shows, once a second (GET /events). */
  async live() {
    return {
      role: 'cpe',
      t: Date.now(),
      uplinks: this.#observer?.view() ?? [],
      connections: this.#relays.size,
      pending: this.#pending.size,
      distribution: this.distribution(),
      concentrators: this.#concentratorView(),
      refusals: await this.#refusals(),
      ready: this.readiness(),
    };
  }

  /** Refusals so far, by reason (mpconvert_refused_total), and connections refused because no concentrator worked. */
  async #refusals(): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    for (const v of (await this.#deps.metrics.refused.get()).values) out[String(v.labels.reason)] = v.value;
    for (const v of (await this.#deps.metrics.fallback.get()).values) if (v.labels.to === 'refused') out['no-concentrator'] = v.value;
    return out;
  }

  /** The relayed connections, newest first (at most `limit`); with `subflows`, each one's subflows read now. */
  connections(opts: { subflows?: boolean; limit?: number } = {}) {
    const uplinks = this.#uplinks?.snapshot() ?? [];
    const now = Date.now();
    const list = [...this.#connections.values()].reverse().slice(0, opts.limit ?? 100);
    return {
      total: this.#connections.size,
      connections: list.map((c) => {
        let subflows: ReturnType<typeof subflowView>[] | undefined;
        if (opts.subflows) {
          try {
            subflows = c.upstream.destroyed ? [] : this.#deps.sockets.subflows(c.upstream).map((sf) => subflowView(sf, uplinks));
          } catch {
            subflows = [];
          }
        }
        return {
          id: c.id,
          client: `${c.src.address}:${c.src.port}`,
          destination: `${c.dst.address}:${c.dst.port}`,
          via: c.via,
          engine: c.relay.mode,
          ageS: Math.round((now - c.startedAt) / 100) / 10,
          bytesUp: c.relay.bytesAToB + c.sentBefore,
          bytesDown: c.relay.bytesBToA,
          ...(subflows ? { subflows } : {}),
        };
      }),
    };
  }

  /** Resets one relayed connection (admin API); false when there is no such connection. */
  closeConnection(id: number): boolean {
    const c = this.#connections.get(id);
    if (!c) return false;
    c.relay.destroy();
    return true;
  }

  /** Sets an uplink's mode until the next restart or reload (admin API). */
  async setUplinkMode(ifname: string, mode: 'subflow' | 'backup'): Promise<void> {
    if (!this.#uplinks) throw new Error('the CPE is not started');
    await this.#uplinks.setMode(ifname, mode);
  }

  /** Stop intercepting, drain relayed connections for `drainMs`, then abort them; remove every kernel change. */
  stop(drainMs = this.#config.shutdownDrainS * 1000): Promise<void> {
    // A second call waits for the first.
    this.#stopped ??= this.#stop(drainMs);
    return this.#stopped;
  }

  #stopped: Promise<void> | undefined;

  async #stop(drainMs: number): Promise<void> {
    this.#stopping = true;
    const errors: unknown[] = [];
    const step = async (f: () => Promise<void> | undefined) => {
      try {
        await f();
      } catch (err) {
        errors.push(err);
      }
    };
    this.#probe.stop();
    this.#dhcp?.stop();
    this.#warm.stop();
    this.#bindings.stop();
    this.#observer?.stop();
    await this.#quota?.save(Date.now(), true);
    await step(() => this.#interception?.stop());
    await step(() => this.#pinning.stop());
    await step(() => this.#udp?.stop());
    for (const s of this.#listeners) s.close();
    for (const s of this.#pending) s.resetAndDestroy();
    const deadline = Date.now() + drainMs;
    while (this.#relays.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const r of this.#relays) r.destroy();
    await step(() => this.#uplinks?.stop());
    for (const err of errors) this.#deps.logger.error({ err }, 'error while stopping');
    this.#deps.logger.info('cpe stopped');
  }
}

/** The key of the concentrators DHCP names, read from dhcp.concentrator.secretFile (when concentratorSource uses DHCP). */
async function loadDhcpCredentials(cfg: CpeConfig): Promise<Credentials | undefined> {
  const t = cfg.dhcp.concentrator;
  if (cfg.concentratorSource === 'static' || t.keyId === undefined || t.secretFile === undefined) return undefined;
  const s = parseSecret(await readSecretFile(t.secretFile, 'secret file'));
  if (!s.ok) throw new ConfigError(`secret file ${t.secretFile} (dhcp.concentrator): ${s.why}`);
  return { keyId: t.keyId, secret: s.secret };
}
