/**
 * The CPE daemon (upstream MCP): owns the transparent listeners, the interception ruleset, the uplinks and
 * the conversion sessions, and releases all of them on stop.
 */
import type { Server, Socket } from 'node:net';
import type { KernelConfig, Sockets, SpliceEngine } from '../platform/types.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../control/metrics.js';
import { RESET_ON_CLOSE, type RelayHandle } from '../relay/index.js';
import { parseEndpoint } from '../control/address.js';
import { loadCredentials, natUplinks, type CpeConfig, type Credentials } from './config.js';
import { ConcentratorSelector } from './concentrators.js';
import { ConcentratorProbe } from './probe.js';
import { handleClient } from './session.js';
import { Interception, type InterceptionOptions } from './interception.js';
import { UplinkManager, type EndpointLedger } from './uplinks.js';
import { WarmPool } from './warm-pool.js';

export interface CpeDeps {
  sockets: Sockets;
  kernel: KernelConfig;
  logger: Logger;
  metrics: Metrics;
  /** Zero-copy relaying; absent: the stream relay. */
  splice?: SpliceEngine | undefined;
  /** Endpoint ownership across restarts (src/cpe/ledger.ts); absent: this run's only. */
  ledger?: EndpointLedger | undefined;
}

/** Settings read once at start: a reload keeps their running value (restart to change them). */
export const RESTART_KEYS = ['instance', 'tproxyPort', 'mark', 'routingTableBase', 'rulePriorityBase', 'stateDir', 'admin'] as const satisfies ReadonlyArray<keyof CpeConfig>;

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
    dscpToMark: cfg.preserveDscp,
    ...(cfg.mssClamp === 'off' ? {} : { mssClamp: cfg.mssClamp }),
    natInterfaces: natUplinks(cfg),
    synWindowClamp: cfg.concentrators.filter((c) => c.synWindowClamp).map((c) => {
      const ep = parseEndpoint(c.address);
      return { address: ep.host, port: ep.port };
    }),
  };
}

/** How often a concentrator held off as unreachable is probed. */
const PROBE_INTERVAL_MS = 500;

export class Cpe {
  #config: CpeConfig;
  readonly #deps: CpeDeps;
  readonly #selector: ConcentratorSelector;
  readonly #probe: ConcentratorProbe;
  readonly #warm: WarmPool;
  readonly #listeners: Server[] = [];
  readonly #relays = new Set<RelayHandle>();
  readonly #pending = new Set<Socket>();
  #interception: Interception | undefined;
  #uplinks: UplinkManager | undefined;
  #stopping = false;
  /** Per concentrator address: its key id and secret, read from the secret files at start. */
  #credentials = new Map<string, Credentials>();

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
  }

  get selector(): ConcentratorSelector {
    return this.#selector;
  }

  async start(): Promise<void> {
    const cfg = this.#config;
    const { logger, kernel } = this.#deps;
    // Before anything is changed on the host: a secret file that cannot be used stops the start cleanly.
    this.#credentials = await loadCredentials(cfg.concentrators);
    try {
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
      this.#interception = new Interception({ kernel, logger }, interceptionOptions(cfg));
      await this.#interception.start();
      this.#warm.configure(cfg.concentrators);
    } catch (err) {
      await this.stop(0);
      throw err;
    }
    logger.info({ lan: cfg.lan, uplinks: cfg.uplinks.map((u) => u.interface), concentrators: cfg.concentrators.map((c) => c.address) }, 'cpe started');
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
    });
    return uplinks;
  }

  /**
   * SIGHUP: applies a new configuration to the running CPE; returns the keys that still need a restart. Nothing
   * changes when the new secret files cannot be read. In order:
   * - concentrators (list, formats, 0-RTT, credentials) and every per-connection setting: for new connections;
   *   the capability cache is flushed;
   * - uplinks (the list, modes, gateways, poll interval, MPTCP limits), when changed: the uplink manager is
   *   replaced (endpoints, tables and rules removed, then installed anew);
   * - the interception (policy, DSCP, MSS clamp, SYN window clamps, LAN interfaces): the nft table is replaced
   *   in one transaction; a change of LAN interfaces or of the uplink count reinstalls it.
   * Keys read once at start keep their running value and are returned: instance, tproxyPort, mark,
   * routingTableBase, rulePriorityBase, stateDir, admin.
   */
  async reload(requested: CpeConfig): Promise<string[]> {
    if (this.#stopping || !this.#interception || !this.#uplinks) throw new Error('Cpe.reload() before start or while stopping');
    const old = this.#config;
    const restart = RESTART_KEYS.filter((k) => JSON.stringify(old[k]) !== JSON.stringify(requested[k]));
    const next: CpeConfig = { ...requested };
    for (const k of restart) (next as Record<string, unknown>)[k] = old[k];
    const { logger, kernel } = this.#deps;
    // Before anything changes: secret files that cannot be used keep the running configuration.
    const credentials = await loadCredentials(next.concentrators);

    const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
    if (!same([old.uplinks, old.uplinkPollMs, old.mptcpLimits], [next.uplinks, next.uplinkPollMs, next.mptcpLimits])) {
      await this.#uplinks.stop();
      this.#uplinks = this.#newUplinks(next);
      await this.#uplinks.start();
      logger.info({ uplinks: next.uplinks.map((u) => u.interface) }, 'uplinks reinstalled');
    }
    const opts = interceptionOptions(next);
    if (!(await this.#interception.update(opts))) {
      const fresh = new Interception({ kernel, logger }, opts);
      await this.#interception.stop();
      this.#interception = fresh;
      await fresh.start();
    }
    this.#config = next;
    this.#credentials = credentials;
    this.#selector.reconfigure(next.concentrators);
    // Warm connections were dialled with the old settings: replaced like the capability cache is flushed.
    this.#warm.configure(next.concentrators);
    this.#warm.flush();
    this.#deps.logger.level = next.logLevel;
    logger.info({ lan: next.lan, uplinks: next.uplinks.map((u) => u.interface), concentrators: next.concentrators.map((c) => c.address), ...(restart.length ? { needsRestart: restart } : {}) }, 'configuration reloaded');
    if (restart.length > 0) logger.warn({ keys: restart }, `configuration reloaded, but ${restart.join(', ')} changed: restart to apply ${restart.length === 1 ? 'it' : 'them'} (the running value${restart.length === 1 ? ' stays' : 's stay'})`);
    return restart;
  }

  #onConnection(client: Socket): void {
    if (this.#stopping) {
      client.resetAndDestroy();
      return;
    }
    this.#pending.add(client);
    client.once('close', () => this.#pending.delete(client));
    handleClient(client, {
      sockets: this.#deps.sockets,
      logger: this.#deps.logger,
      metrics: this.#deps.metrics,
      selector: this.#selector,
      splice: this.#deps.splice,
      config: () => this.#config,
      credentials: (t) => this.#credentials.get(t.address),
      warm: this.#warm,
      track: (relay) => {
        this.#pending.delete(client);
        this.#relays.add(relay);
        relay.once('close', () => this.#relays.delete(relay));
      },
    }).catch((err: unknown) => {
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
      concentrators: this.#selector.snapshot(),
      warmPool: this.#warm.snapshot(),
      uplinks: this.#uplinks?.snapshot() ?? [],
    };
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
    this.#warm.stop();
    await step(() => this.#interception?.stop());
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
