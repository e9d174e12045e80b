/**
 * The CPE's uplinks: one MPTCP endpoint per uplink and address family (`subflow`, or `backup` for the
 * primary/backup scheme of draft-nam-mptcp-deployment-considerations section 5.6.2), and the policy routing that makes each subflow leave
 * through its own uplink: routing table `tableBase + index` with `default via GW dev IF`, and
 * `from ADDR lookup TABLE priority rulePriorityBase + index`. The gateway is configured or taken from the main
 * table's default route on that interface (lowest metric: what DHCP/RA clients install).
 *
 * The host may change under us (DHCP renews, links flap), so the manager reconciles on the platform's link
 * events (netlink, when it has them; 50 ms after a burst) and, as a backstop, polls `ip -j address show` and
 * the main table every pollIntervalMs (every WATCHED_POLL_MS at least while the link events arrive): an address that appears, changes or disappears, or a link
 * going up or down, re-creates that uplink's endpoint/rule/route and emits 'change' (the daemon flushes its
 * concentrator capability cache). A gateway change only replaces the route.
 *
 * Everything added is kept in a ledger and removed on stop; endpoints, rules and limits that were there before
 * are never touched (an existing endpoint on an uplink address is used as is, and left on stop).
 */
import { EventEmitter } from 'node:events';
import type { AddressEntry, Family, KernelConfig, LinkWatch, MptcpEndpoint, MptcpLimits, RouteEntry, RouteSpec, RuleSpec } from '../platform/types.js';
import type { Logger } from '../log.js';
import { MpconvertError, toError } from '../errors.js';

export interface UplinkConfig {
  interface: string;
  mode: 'subflow' | 'backup';
  gateway4?: string | undefined;
  gateway6?: string | undefined;
}

export interface UplinkManagerOptions {
  uplinks: readonly UplinkConfig[];
  /** Uplink i uses routing table tableBase + i. */
  tableBase: number;
  /** Uplink i's source rules have priority rulePriorityBase + i. */
  rulePriorityBase: number;
  pollIntervalMs: number;
  limits: MptcpLimits;
}

/** An MPTCP endpoint this CPE created, as remembered across a crash. */
export interface OwnedEndpoint {
  id: number;
  address: string;
}

/**
 * Where the endpoints the CPE created are remembered, so that a CPE restarted after a crash (SIGKILL, OOM)
 * recognises its own leftovers, takes them back and removes them on stop, instead of mistaking them for
 * the operator's. Endpoints carry no owner tag in the kernel, hence this ledger.
 */
export interface EndpointLedger {
  load(): Promise<OwnedEndpoint[]>;
  save(owned: OwnedEndpoint[]): Promise<void>;
}

export interface UplinkManagerDeps {
  kernel: KernelConfig;
  logger: Logger;
  /** Endpoint ownership across restarts; absent: only this run's (a crash's leftovers look pre-existing). */
  ledger?: EndpointLedger | undefined;
  /** Informational: the kernel adapter already runs in its namespace. */
  netns?: string | undefined;
  /** Clock for `changedAt` (ms); default Date.now. */
  now?: () => number;
}

export interface UplinkFamilyState {
  address: string;
  /** Gateway in use (configured or from the main table); null = none known (no route or rule installed). */
  gateway: string | null;
  /** The MPTCP endpoint id for this address; null when it could not be created. */
  endpointId: number | null;
  /** Whether the routing table/rule for this address are installed. */
  routed: boolean;
}

export interface UplinkState {
  interface: string;
  mode: 'subflow' | 'backup';
  up: boolean;
  table: number;
  rulePriority: number;
  ipv4: UplinkFamilyState | null;
  ipv6: UplinkFamilyState | null;
  /** When up/addresses last changed (deps.now clock). */
  changedAt: number;
}

export interface UplinkChange {
  interface: string;
  before: { up: boolean; ipv4: string | null; ipv6: string | null };
  after: { up: boolean; ipv4: string | null; ipv6: string | null };
}

export class UplinkError extends MpconvertError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MPC_ERR_CPE_UPLINK', message, options);
  }
}

/** What the host shows for one interface. */
export interface ObservedLink {
  up: boolean;
  address4: string | null;
  address6: string | null;
}

const IFNAME = /^[A-Za-z0-9_.:@+-]{1,15}$/;

/**
 * Reads one interface from `ip -j address show`: up = administratively up with carrier (flags UP and
 * LOWER_UP; operstate UP when flags are absent); the first global, non-tentative address of each family.
 */
export function observeLink(entries: readonly AddressEntry[], ifname: string): ObservedLink {
  const e = entries.find((x) => x.ifname === ifname);
  if (!e) return { up: false, address4: null, address6: null };
  const flags = Array.isArray(e['flags']) ? (e['flags'] as unknown[]) : null;
  const up = flags ? flags.includes('UP') && flags.includes('LOWER_UP') : e.operstate === 'UP';
  const pick = (family: 'inet' | 'inet6'): string | null => {
    for (const a of e.addr_info ?? []) {
      if (a.family !== family) continue;
      if (a.scope !== undefined && a.scope !== 'global') continue;
      if (a['tentative'] === true || a['dadfailed'] === true) continue;
      return a.local;
    }
    return null;
  };
  return { up, address4: pick('inet'), address6: pick('inet6') };
}

/** The gateway of the lowest-metric default route on `ifname` in `routes` (the main table); undefined = no default route; null = a default route without gateway (point to point). */
export function defaultGateway(routes: readonly RouteEntry[], ifname: string): string | null | undefined {
  let best: RouteEntry | undefined;
  for (const r of routes) {
    if (r.dst !== 'default' || r.dev !== ifname) continue;
    if (r.type !== undefined && r.type !== 'unicast') continue;
    if (!best || (r.metric ?? 0) < (best.metric ?? 0)) best = r;
  }
  if (!best) return undefined;
  return typeof best.gateway === 'string' ? best.gateway : null;
}

interface Applied {
  address: string;
  /** Gateway of the installed route; undefined = no route installed. */
  routeVia: string | null | undefined;
  endpointId: number | null;
  /** We created the endpoint (else it pre-existed and is left alone). */
  endpointOwned: boolean;
  route: RouteSpec | null;
  rule: RuleSpec | null;
  /** Everything that was wanted is installed (else the next poll retries). */
  complete: boolean;
}

interface UplinkRuntime {
  cfg: UplinkConfig;
  index: number;
  table: number;
  priority: number;
  observed: ObservedLink;
  changedAt: number;
  applied: { 4: Applied | null; 6: Applied | null };
}

const FAMILIES: readonly Family[] = [4, 6];
/** Wait after a link event before reconciling, so that a burst of events is one reconcile. */
const EVENT_SETTLE_MS = 50;
/** The backstop poll while link events arrive (src/platform/linux/link-watch.ts reports link, address and route changes). */
export const WATCHED_POLL_MS = 30_000;

export class UplinkManager extends EventEmitter {
  readonly #kernel: KernelConfig;
  readonly #logger: Logger;
  readonly #now: () => number;
  readonly #opts: UplinkManagerOptions;
  readonly #uplinks: UplinkRuntime[];
  #previousLimits: MptcpLimits | null = null;
  #limitsSet = false;
  #timer: NodeJS.Timeout | undefined;
  /** Netlink events (when the platform has them): a change is reconciled at once, not at the next poll. */
  #watch: LinkWatch | undefined;
  #eventTimer: NodeJS.Timeout | undefined;
  #watchErrors = 0;
  #queue: Promise<void> = Promise.resolve();
  #running = false;
  #stopped = false;
  #generation = 0;
  /** Items whose removal failed: retried at every poll and on stop. */
  #leftovers: Array<{ u: UplinkRuntime; f: Family; a: Applied }> = [];
  readonly #ledger: EndpointLedger | undefined;
  /** What the ledger held at start: endpoints an earlier run of this CPE created and did not remove. */
  #inherited: OwnedEndpoint[] = [];

  constructor(deps: UplinkManagerDeps, opts: UplinkManagerOptions) {
    super();
    if (opts.uplinks.length === 0) throw new UplinkError('Cannot manage uplinks: none configured');
    const names = new Set<string>();
    for (const u of opts.uplinks) {
      if (!IFNAME.test(u.interface)) throw new UplinkError(`Cannot manage uplink '${u.interface}': bad interface name`);
      if (names.has(u.interface)) throw new UplinkError(`Cannot manage uplink '${u.interface}': listed twice`);
      names.add(u.interface);
    }
    if (!Number.isInteger(opts.tableBase) || opts.tableBase < 1 || opts.tableBase + opts.uplinks.length > 0xfffffeff) throw new UplinkError(`Cannot manage uplinks: bad tableBase ${opts.tableBase}`);
    if (!Number.isInteger(opts.rulePriorityBase) || opts.rulePriorityBase < 1 || opts.rulePriorityBase + opts.uplinks.length > 32765) throw new UplinkError(`Cannot manage uplinks: bad rulePriorityBase ${opts.rulePriorityBase}`);
    if (!(opts.pollIntervalMs > 0)) throw new UplinkError(`Cannot manage uplinks: bad pollIntervalMs ${opts.pollIntervalMs}`);
    this.#kernel = deps.kernel;
    this.#ledger = deps.ledger;
    this.#logger = deps.logger.child({ component: 'uplinks' });
    this.#now = deps.now ?? Date.now;
    this.#opts = opts;
    this.#uplinks = opts.uplinks.map((cfg, index) => ({
      cfg,
      index,
      table: opts.tableBase + index,
      priority: opts.rulePriorityBase + index,
      observed: { up: false, address4: null, address6: null },
      changedAt: this.#now(),
      applied: { 4: null, 6: null },
    }));
  }

  /**
   * Sets the MPTCP limits and installs every uplink that has an address. Rejects (after removing what it
   * added) when the kernel refuses; an uplink without an address yet is not an error (it is picked up later).
   */
  async start(): Promise<void> {
    if (this.#running) throw new Error('UplinkManager.start() twice');
    this.#running = true;
    this.#stopped = false;
    this.#generation++;
    try {
      this.#inherited = (await this.#ledger?.load().catch((err: unknown) => {
        this.#logger.warn({ err }, 'cannot read the endpoint ledger: endpoints left by an earlier run will be treated as the operator\'s');
        return [];
      })) ?? [];
      this.#previousLimits = await this.#kernel.mptcp.limits();
      await this.#kernel.mptcp.setLimits(this.#opts.limits);
      this.#limitsSet = true;
      const errors = await this.#serialized(() => this.#reconcile(true));
      if (errors.length > 0) throw errors[0];
      this.#startWatch();
    } catch (err) {
      await this.stop().catch((stopErr: unknown) => this.#logger.error({ err: stopErr }, 'could not remove everything after a failed start'));
      throw err;
    }
    this.#schedule();
  }

  /** Reconcile now (instead of waiting for the next poll). Resolves when done; kernel errors are logged. */
  async refresh(): Promise<void> {
    if (!this.#running) return;
    await this.#serialized(() => this.#reconcile(false));
  }

  /** Stops polling and removes every endpoint, rule and route it added; restores the MPTCP limits. Idempotent. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#running = false;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#watch?.close();
    this.#watch = undefined;
    if (this.#eventTimer) clearTimeout(this.#eventTimer);
    this.#eventTimer = undefined;
    const errors = await this.#serialized(async () => {
      const errs: Error[] = await this.#retryLeftovers();
      for (const u of this.#uplinks) {
        for (const f of FAMILIES) {
          const a = u.applied[f];
          if (!a) continue;
          errs.push(...(await this.#removeOrKeep(u, f, a)));
          u.applied[f] = null;
        }
      }
      // Endpoints an earlier run left and this one did not take back (its uplink address changed meanwhile).
      if (this.#inherited.length > 0) {
        try {
          const present = await this.#kernel.mptcp.endpoints();
          for (const o of this.#inherited) {
            if (!present.some((e) => e.id === o.id && e.address === o.address)) continue;
            await this.#kernel.mptcp.deleteEndpoint(o.id);
            this.#logger.info({ endpoint: o }, 'removed an MPTCP endpoint left by an earlier run');
          }
          this.#inherited = [];
        } catch (err) {
          errs.push(toError(err));
        }
      }
      await this.#saveLedger();
      if (this.#limitsSet && this.#previousLimits) {
        try {
          await this.#kernel.mptcp.setLimits(this.#previousLimits);
          this.#limitsSet = false;
        } catch (err) {
          errs.push(toError(err));
        }
      }
      return errs;
    });
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, `could not remove ${errors.length} uplink items`);
  }

  /**
   * Sets an uplink's mode now (admin API, reload): the flag of the endpoints this CPE created changes at once
   * (`ip mptcp endpoint change ... backup|nobackup`, which sends MP_PRIO on the live subflows), and every later
   * install uses it. An endpoint the operator made is left alone (an error says so).
   */
  async setMode(ifname: string, mode: 'subflow' | 'backup'): Promise<void> {
    const u = this.#uplinks.find((x) => x.cfg.interface === ifname);
    if (!u) throw new UplinkError(`Cannot set the mode of uplink '${ifname}': no such uplink`);
    await this.#serialized(async () => {
      const before = u.cfg.mode;
      u.cfg = { ...u.cfg, mode };
      for (const f of FAMILIES) {
        const a = u.applied[f];
        if (!a || a.endpointId === null) continue;
        if (!a.endpointOwned) throw new UplinkError(`Cannot set the mode of uplink '${ifname}': its MPTCP endpoint for ${a.address} is not this CPE's (left as it is)`);
        await this.#kernel.mptcp.setEndpointBackup(a.endpointId, mode === 'backup');
      }
      if (before !== mode) this.#logger.info({ uplink: ifname, from: before, to: mode }, 'uplink mode changed');
    });
  }

  snapshot(): UplinkState[] {
    return this.#uplinks.map((u) => {
      const fam = (f: Family): UplinkFamilyState | null => {
        const a = u.applied[f];
        if (!a) return null;
        return { address: a.address, gateway: a.routeVia ?? null, endpointId: a.endpointId, routed: a.rule !== null && a.route !== null };
      };
      return { interface: u.cfg.interface, mode: u.cfg.mode, up: u.observed.up, table: u.table, rulePriority: u.priority, ipv4: fam(4), ipv6: fam(6), changedAt: u.changedAt };
    });
  }

  override on(event: 'change', listener: (change: UplinkChange) => void): this;
  override on(event: string | symbol, listener: (...args: never[]) => void): this;
  override on(event: string | symbol, listener: (...args: never[]) => void): this {
    return super.on(event, listener as (...args: unknown[]) => void);
  }

  #startWatch(): void {
    if (!this.#kernel.watchLinks || this.#watch) return;
    this.#watch = this.#kernel.watchLinks(
      () => {
        // Events come in bursts (a link going down drops its addresses and routes): one reconcile per burst.
        if (this.#eventTimer || this.#stopped) return;
        this.#eventTimer = setTimeout(() => {
          this.#eventTimer = undefined;
          if (this.#stopped) return;
          void this.#serialized(() => this.#reconcile(false));
        }, EVENT_SETTLE_MS);
      },
      (err) => {
        // The poll still runs; say it once, then only at debug level.
        // An operational event, not a program error: the message, no stack trace.
        if (this.#watchErrors++ === 0) {
          this.#logger.warn({ error: err.message }, 'link events unavailable, uplink changes are seen at the next poll');
          // The poll waited at the slow interval for events that no longer come: back to pollIntervalMs now.
          if (this.#timer && !this.#stopped) {
            clearTimeout(this.#timer);
            this.#timer = undefined;
            this.#schedule();
          }
        } else this.#logger.debug({ error: err.message }, 'link event monitor ended');
      },
    );
  }

  #schedule(): void {
    if (this.#stopped) return;
    const generation = this.#generation;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      void this.#serialized(() => this.#reconcile(false)).finally(() => {
        if (generation === this.#generation) this.#schedule();
      });
    }, this.#pollMs());
    this.#timer.unref();
  }

  /**
   * The backstop poll's interval: pollIntervalMs while link events are unavailable (or their monitor failed
   * once), at least WATCHED_POLL_MS while they arrive (each poll spawns `ip` up to three times: CPU a router
   * need not spend when netlink already reports every change).
   */
  #pollMs(): number {
    const watched = this.#watch !== undefined && this.#watchErrors === 0;
    return watched ? Math.max(this.#opts.pollIntervalMs, WATCHED_POLL_MS) : this.#opts.pollIntervalMs;
  }

  #serialized<T>(f: () => Promise<T>): Promise<T> {
    const p = this.#queue.then(f);
    this.#queue = p.then(
      () => undefined,
      () => undefined,
    );
    return p;
  }

  async #reconcile(initial: boolean): Promise<Error[]> {
    if (this.#stopped && !initial) return [];
    const k = this.#kernel;
    const errors: Error[] = [];
    let entries: AddressEntry[];
    const mainRoutes: { 4: RouteEntry[] | null; 6: RouteEntry[] | null } = { 4: null, 6: null };
    try {
      // Read at once, not one after the other: on a busy router each `ip` takes its time to start, and a
      // restored uplink waits for this reconcile.
      const needs = (f: Family) => this.#uplinks.some((u) => (f === 4 ? u.cfg.gateway4 : u.cfg.gateway6) === undefined);
      const [list, main4, main6] = await Promise.all([
        k.routes.listAddresses(),
        needs(4) ? k.routes.listRoutes('main', 4) : null,
        // A host without IPv6 must not stop the IPv4 uplinks: an unreadable IPv6 table counts as empty.
        needs(6) ? k.routes.listRoutes('main', 6).catch(() => []) : null,
      ]);
      entries = list;
      mainRoutes[4] = main4;
      mainRoutes[6] = main6;
    } catch (err) {
      this.#logger.error({ err }, 'cannot read the interfaces');
      return [toError(err)];
    }
    if (this.#stopped && !initial) return [];
    errors.push(...(await this.#retryLeftovers()));
    let endpoints: Promise<MptcpEndpoint[] | null> | undefined;
    const listEndpoints = () =>
      (endpoints ??= k.mptcp.endpoints().catch((err: unknown) => {
        errors.push(toError(err));
        return null;
      }));
    let ledgerChanged = false;
    const changes: UplinkChange[] = [];
    for (const u of this.#uplinks) {
      const seen = observeLink(entries, u.cfg.interface);
      const before = u.observed;
      if (seen.up !== before.up || seen.address4 !== before.address4 || seen.address6 !== before.address6) {
        changes.push({
          interface: u.cfg.interface,
          before: { up: before.up, ipv4: before.address4, ipv6: before.address6 },
          after: { up: seen.up, ipv4: seen.address4, ipv6: seen.address6 },
        });
        u.observed = seen;
        u.changedAt = this.#now();
      }
      // Both families at once (their routes, rules and endpoints are independent): a restored uplink is back
      // in the time of one family's commands.
      await Promise.all(FAMILIES.map(async (f) => {
        const address = seen.up ? (f === 4 ? seen.address4 : seen.address6) : null;
        const configured = f === 4 ? u.cfg.gateway4 : u.cfg.gateway6;
        const routes = mainRoutes[f];
        const via: string | null | undefined = address === null ? undefined : configured ?? (routes ? defaultGateway(routes, u.cfg.interface) : undefined);
        const a = u.applied[f];
        if (a && a.address === address && a.complete) {
          if (a.routeVia !== via) errors.push(...(await this.#reroute(u, f, a, via)));
          return;
        }
        if (a) {
          errors.push(...(await this.#removeOrKeep(u, f, a)));
          u.applied[f] = null;
        }
        if (address === null) return;
        const list = await listEndpoints();
        if (list === null) return;
        const { applied, errors: errs } = await this.#install(u, f, address, via, list);
        u.applied[f] = applied;
        if (applied.endpointOwned) ledgerChanged = true;
        errors.push(...errs);
      }));
    }
    if (ledgerChanged) await this.#saveLedger();
    for (const change of changes) {
      if (initial) continue;
      this.#logger.info(change, 'uplink changed');
      this.emit('change', change);
    }
    for (const err of errors) if (!initial) this.#logger.warn({ err }, 'uplink reconfiguration incomplete; retrying at the next poll');
    return errors;
  }

  async #install(u: UplinkRuntime, f: Family, address: string, via: string | null | undefined, endpoints: MptcpEndpoint[]): Promise<{ applied: Applied; errors: Error[] }> {
    const k = this.#kernel;
    const dev = u.cfg.interface;
    const applied: Applied = { address, routeVia: undefined, endpointId: null, endpointOwned: false, route: null, rule: null, complete: false };
    const errors: Error[] = [];
    const wrap = (what: string, err: unknown) => new UplinkError(`Cannot ${what} for uplink ${dev} (${address}): ${toError(err).message}`, { cause: err });
    if (via !== undefined) {
      const route: RouteSpec = { family: f, table: u.table, dst: 'default', dev, ...(via !== null ? { via } : {}) };
      const rule: RuleSpec = { family: f, priority: u.priority, from: address, table: u.table };
      try {
        await k.routes.addRoute(route);
        applied.route = route;
        applied.routeVia = via;
        // A rule identical to ours can only be a leftover (a crashed run, or a removal that failed): replace it
        // rather than duplicate. Tried only when the add fails, so a restored uplink waits for one command.
        try {
          await k.routes.addRule(rule);
        } catch (err) {
          if (!/File exists|EEXIST/.test(toError(err).message)) throw err;
          await k.routes.deleteRule(rule);
          await k.routes.addRule(rule);
        }
        applied.rule = rule;
      } catch (err) {
        errors.push(wrap('install the policy routing', err));
      }
    } else {
      this.#logger.warn({ uplink: dev, family: f }, 'no default route on this uplink and no gateway configured: its subflows use the main table until one appears');
    }
    const existing = endpoints.find((e) => e.address === address);
    const ours = existing !== undefined && this.#inherited.some((o) => o.id === existing.id && o.address === existing.address);
    if (existing && ours) {
      // Left by an earlier run of this CPE that did not stop cleanly: ours again, removed on stop.
      applied.endpointId = existing.id;
      applied.endpointOwned = true;
      this.#inherited = this.#inherited.filter((o) => o.id !== existing.id);
      this.#logger.info({ uplink: dev, endpoint: existing }, `taking back the MPTCP endpoint for ${address} left by an earlier run`);
    } else if (existing) {
      applied.endpointId = existing.id;
      const want = u.cfg.mode;
      if (!existing.flags.includes(want)) this.#logger.warn({ uplink: dev, endpoint: existing }, `an MPTCP endpoint for ${address} already exists without '${want}': using it as is`);
    } else {
      try {
        // A backup endpoint still makes subflows (flag subflow), marked backup: they carry traffic only when no
        // other subflow works (failover), and a distribution scheme can turn them on with nobackup.
        await k.mptcp.addEndpoint({ address, dev, flags: u.cfg.mode === 'backup' ? ['subflow', 'backup'] : ['subflow'] });
        const now = await k.mptcp.endpoints();
        const ep = now.find((e) => e.address === address);
        if (!ep) throw new Error('the endpoint is not listed after adding it');
        applied.endpointId = ep.id;
        applied.endpointOwned = true;
        endpoints.push(ep);
      } catch (err) {
        errors.push(wrap('add the MPTCP endpoint', err));
      }
    }
    applied.complete = errors.length === 0;
    const endpoint = applied.endpointId === null ? 'none' : applied.endpointOwned ? 'created' : 'existing';
    this.#logger.info({ uplink: dev, family: f, address, gateway: applied.routeVia ?? null, endpointId: applied.endpointId, endpoint, table: u.table }, 'uplink installed');
    return { applied, errors };
  }

  async #reroute(u: UplinkRuntime, f: Family, a: Applied, via: string | null | undefined): Promise<Error[]> {
    const k = this.#kernel;
    try {
      if (a.route) {
        await k.routes.deleteRoute(a.route);
        a.route = null;
        a.routeVia = undefined;
      }
      if (via === undefined) {
        if (a.rule) {
          await k.routes.deleteRule(a.rule);
          a.rule = null;
        }
        return [];
      }
      const route: RouteSpec = { family: f, table: u.table, dst: 'default', dev: u.cfg.interface, ...(via !== null ? { via } : {}) };
      await k.routes.addRoute(route);
      a.route = route;
      a.routeVia = via;
      if (!a.rule) {
        const rule: RuleSpec = { family: f, priority: u.priority, from: a.address, table: u.table };
        await k.routes.deleteRule(rule);
        await k.routes.addRule(rule);
        a.rule = rule;
      }
      this.#logger.info({ uplink: u.cfg.interface, family: f, gateway: via }, 'uplink gateway changed');
      return [];
    } catch (err) {
      a.complete = false;
      return [new UplinkError(`Cannot change the gateway of uplink ${u.cfg.interface}: ${toError(err).message}`, { cause: err })];
    }
  }

  /** Records the endpoints owned now (plus inherited ones not taken back yet); a failure is only logged. */
  async #saveLedger(): Promise<void> {
    if (!this.#ledger) return;
    const owned: OwnedEndpoint[] = [...this.#inherited];
    const all = [...this.#uplinks.flatMap((u) => FAMILIES.map((f) => u.applied[f])), ...this.#leftovers.map((l) => l.a)];
    for (const a of all) if (a && a.endpointOwned && a.endpointId !== null) owned.push({ id: a.endpointId, address: a.address });
    await this.#ledger.save(owned).catch((err: unknown) => this.#logger.warn({ err }, 'cannot write the endpoint ledger'));
  }

  /** Removes `a`; what could not be removed is kept as a leftover (retried later). */
  async #removeOrKeep(u: UplinkRuntime, f: Family, a: Applied): Promise<Error[]> {
    const errors = await this.#remove(u, f, a);
    if (errors.length > 0) this.#leftovers.push({ u, f, a });
    return errors;
  }

  async #retryLeftovers(): Promise<Error[]> {
    const pending = this.#leftovers;
    this.#leftovers = [];
    const errors: Error[] = [];
    for (const { u, f, a } of pending) errors.push(...(await this.#removeOrKeep(u, f, a)));
    return errors;
  }

  /** Removes what `a` records; what could not be removed stays recorded in `a` (and is reported). */
  async #remove(u: UplinkRuntime, f: Family, a: Applied): Promise<Error[]> {
    const k = this.#kernel;
    const errors: Error[] = [];
    const step = async (what: string, f2: () => Promise<void>) => {
      try {
        await f2();
        return true;
      } catch (err) {
        errors.push(new UplinkError(`Cannot remove the ${what} of uplink ${u.cfg.interface} (${a.address}): ${toError(err).message}`, { cause: err }));
        return false;
      }
    };
    if (a.endpointOwned && a.endpointId !== null) {
      const id = a.endpointId;
      if (await step('MPTCP endpoint', () => k.mptcp.deleteEndpoint(id))) {
        a.endpointOwned = false;
        await this.#saveLedger();
      }
    }
    if (a.rule) {
      const rule = a.rule;
      if (await step('policy rule', () => k.routes.deleteRule(rule))) a.rule = null;
    }
    if (a.route) {
      const route = a.route;
      if (await step('route', () => k.routes.deleteRoute(route))) a.route = null;
    }
    if (errors.length === 0) this.#logger.info({ uplink: u.cfg.interface, family: f, address: a.address }, 'uplink removed');
    return errors;
  }
}
