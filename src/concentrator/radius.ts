/**
 * RADIUS for the concentrator, composed from its parts: the transport (radius-client.ts), the authorization
 * with its cache (radius-authorizer.ts), the gate (src/policy/radius.ts) and the accounting
 * (radius-accounting.ts). The Concentrator calls `authorize` as a pipeline step (after authenticate, before
 * limits: before any dial) and `opened` / `closed` around each relayed connection.
 */
import { readSecretFile } from '../control/secret-file.js';
import { ConfigError } from '../control/config-file.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../control/metrics.js';
import { unmapAddress } from '../protocol/address.js';
import { radiusGate } from '../policy/radius.js';
import type { Refusal } from '../policy/refusals.js';
import type { ConnectionContext } from './context.js';
import { RadiusAccounting } from './radius-accounting.js';
import { RadiusAuthorizer, type RadiusAuthorizerSettings } from './radius-authorizer.js';
import { RadiusClient, type RadiusClientOptions, type RadiusServer } from './radius-client.js';
import type { RadiusConfig } from './radius-config.js';

export interface RadiusDeps {
  logger: Logger;
  metrics: Metrics;
  now: () => number;
  instance: string;
  /** Bytes of the open connections of a CPE identity (accounting's live counts). */
  liveBytes: (identity: string) => { up: number; down: number };
}

/** What a connection was authorized with, kept for its accounting. */
interface Granted {
  userName: string;
  classes: readonly Buffer[];
}

export class RadiusService {
  #config: RadiusConfig;
  readonly #deps: RadiusDeps;
  readonly #client: RadiusClient;
  readonly #authorizer: RadiusAuthorizer;
  #accounting: RadiusAccounting | undefined;
  readonly #granted = new WeakMap<ConnectionContext, Granted>();
  /** Connections counted as opened in accounting (their close is counted once). */
  readonly #accounted = new WeakSet<ConnectionContext>();

  private constructor(config: RadiusConfig, servers: RadiusServer[], deps: RadiusDeps) {
    this.#config = config;
    this.#deps = deps;
    this.#client = new RadiusClient(this.#clientOptions(config, servers));
    this.#authorizer = new RadiusAuthorizer(this.#authorizerSettings(config), {
      client: this.#client,
      now: deps.now,
      onAnswer: (result) => deps.logger.debug({ result }, 'RADIUS Access-Request answered'),
    });
    this.#accounting = this.#makeAccounting(config);
  }

  /** Reads the servers' secret files (start, reload): a file that does not load is a configuration error. */
  static async create(config: RadiusConfig, deps: RadiusDeps): Promise<RadiusService> {
    return new RadiusService(config, await loadServers(config), deps);
  }

  /** SIGHUP: the secret files are read again; changed settings also empty the answer cache. */
  async reload(config: RadiusConfig): Promise<void> {
    const servers = await loadServers(config);
    const changed = JSON.stringify(config) !== JSON.stringify(this.#config);
    this.#config = config;
    this.#client.reconfigure(this.#clientOptions(config, servers));
    if (!changed) return;
    this.#authorizer.reconfigure(this.#authorizerSettings(config));
    this.#deps.metrics.radiusCached.set(0);
    if (config.accounting.enabled && this.#accounting) this.#accounting.reconfigure(this.#accountingSettings(config));
    else if (config.accounting.enabled) this.#accounting = this.#makeAccounting(config);
    else if (this.#accounting) {
      const old = this.#accounting;
      this.#accounting = undefined;
      await old.stop();
    }
  }

  /** The pipeline step: the CPE's answer (cached, awaited, or the fail behaviour past `maxWaitMs`), then the gate. */
  async authorize(ctx: ConnectionContext): Promise<Refusal | undefined> {
    const local = unmapAddress(ctx.socket.localAddress ?? ctx.listener.host);
    const a = await this.#authorizer.authorize({ identity: ctx.identity, cpe: ctx.cpe, keyId: ctx.keyId, local });
    const m = this.#deps.metrics;
    m.radiusAuthorizations.inc({ verdict: a.verdict.kind, source: a.source });
    m.radiusCached.set(this.#authorizer.cached);
    if (a.verdict.kind === 'unavailable' && a.source !== 'cache') {
      this.#deps.logger.warn({ cpe: ctx.cpe, identity: ctx.identity, why: a.verdict.why, failMode: this.#config.failMode }, 'no RADIUS answer for a CPE');
    }
    const refused = radiusGate(a.verdict, local, { failMode: this.#config.failMode, enforceConcentrators: this.#config.concentratorAttributes.enforce });
    if (!refused) this.#granted.set(ctx, { userName: a.userName, classes: a.classes });
    return refused;
  }

  /** A connection is relayed: accounting Start for the CPE's first. */
  opened(ctx: ConnectionContext): void {
    const g = this.#granted.get(ctx);
    if (!this.#accounting || !g) return;
    this.#accounted.add(ctx);
    this.#accounting.opened(ctx.identity, g.userName, ctx.cpe, g.classes);
    this.#deps.metrics.radiusSessions.set(this.#accounting.sessions);
  }

  /** A relayed connection closed with these byte counts (up = from the CPE). */
  closed(ctx: ConnectionContext, up: number, down: number): void {
    if (!this.#accounting || !this.#accounted.has(ctx)) return;
    this.#accounted.delete(ctx);
    this.#accounting.closed(ctx.identity, up, down);
  }

  status() {
    return {
      servers: this.#config.servers.map((s) => s.host),
      failMode: this.#config.failMode,
      cached: this.#authorizer.cached,
      pending: this.#authorizer.inflight,
      accountingSessions: this.#accounting?.sessions ?? 0,
    };
  }

  /** Stop records for every accounting session (bounded by the tries), then close the sockets. */
  async stop(): Promise<void> {
    await this.#accounting?.stop();
    this.#client.close();
  }

  #clientOptions(c: RadiusConfig, servers: RadiusServer[]): RadiusClientOptions {
    return {
      servers,
      timeoutMs: c.timeoutMs,
      retries: c.retries,
      sourceAddress: c.sourceAddress,
      requireMessageAuthenticator: c.requireMessageAuthenticator,
      logger: this.#deps.logger,
      onResult: (kind, server, result) => this.#deps.metrics.radiusRequests.inc({ kind, server, result }),
    };
  }

  #nasIdentifier(c: RadiusConfig): string {
    return c.nasIdentifier ?? `mpconvert-${this.#deps.instance}`;
  }

  #authorizerSettings(c: RadiusConfig): RadiusAuthorizerSettings {
    return {
      password: c.password,
      nasIdentifier: this.#nasIdentifier(c),
      nasIpAddress: c.nasIpAddress,
      maxWaitMs: c.maxWaitMs,
      cacheTtlS: c.cacheTtlS,
      rejectTtlS: c.rejectTtlS,
      failTtlS: c.failTtlS,
      cacheSize: c.cacheSize,
      concentratorAttributes: c.concentratorAttributes,
    };
  }

  #accountingSettings(c: RadiusConfig) {
    return { interimS: c.accounting.interimS, stopAfterIdleS: c.accounting.stopAfterIdleS, nasIdentifier: this.#nasIdentifier(c), nasIpAddress: c.nasIpAddress };
  }

  #makeAccounting(c: RadiusConfig): RadiusAccounting | undefined {
    if (!c.accounting.enabled) return undefined;
    return new RadiusAccounting(this.#accountingSettings(c), {
      client: this.#client,
      now: this.#deps.now,
      liveBytes: this.#deps.liveBytes,
      onRecord: (status, answered) => {
        this.#deps.metrics.radiusAccounting.inc({ status, result: answered ? 'answered' : 'no-answer' });
        if (this.#accounting) this.#deps.metrics.radiusSessions.set(this.#accounting.sessions);
      },
    });
  }
}

/** Each server's shared secret: the first line of its file (owner-only, like every secret file). */
async function loadServers(c: RadiusConfig): Promise<RadiusServer[]> {
  const servers: RadiusServer[] = [];
  for (const s of c.servers) {
    const text = (await readSecretFile(s.secretFile, 'RADIUS secret file')).split('\n')[0]?.trim() ?? '';
    if (text.length === 0) throw new ConfigError(`RADIUS secret file ${s.secretFile} (server ${s.host}) is empty`);
    servers.push({ host: s.host, authPort: s.authPort, acctPort: s.acctPort, secret: Buffer.from(text, 'utf8') });
  }
  return servers;
}
