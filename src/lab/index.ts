/**
 * The network lab: network namespaces for a LAN client, a CPE with N shaped uplinks, a concentrator (which also
 * plays the access routers) and K servers on an "internet" bridge; dual stack; optional plain-MPTCP policy
 * routing; fault injection (uplink down/up, random loss). Topology and addresses: ./addressing.ts, docs/lab.md.
 *
 * Everything a lab makes lives inside its namespaces, so removing the namespaces (after killing what runs in
 * them) removes it all: veths, the bridge, routes, qdiscs, nft tables. A lab made by this process is removed on
 * down(), on a failed up(), on process exit and on SIGINT/SIGTERM.
 */
import { execFileSync, spawn as spawnChild, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { MpconvertError, toError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { run, runJson, type RunResult } from '../platform/linux/exec.js';
import { DELAY_LINE, FIELD, LAB, LAB_NAMESPACE_RE, MANY, PREFIX_RE, fieldAccess, manyCpeAddressing, namespaceName, poolAddress, serverAddressing, serverNamespace, uplinkAddressing } from './addressing.js';
import { checkLossPercent, lossRuleset, parseLossTable } from './loss.js';
import { batch, sysctl } from './commands.js';
import { FieldDhcp, buildField, type FieldDhcpClientOptions, type FieldDhcpServerOptions } from './field.js';
import { buildMany } from './many.js';
import { parseRate, tbfArgs } from './shaping.js';
import { listStates, ownerAlive, processStart, readState, removeState, writeState, type LabState } from './state.js';

export type { RunResult } from '../platform/linux/exec.js';
export { FIELD, LAB, MANY, fieldAccess, manyCpeAddressing, namespaceName, poolAddress, serverAddressing, uplinkAddressing } from './addressing.js';
export { LabProcess, descendants } from './process.js';
export { MPTCP_SUBTYPE, mpCapableCBit, mptcpSubtype, readTcpSegments, type TcpSegment } from './pcap.js';
export type { FieldDhcpClientOptions, FieldDhcpServerOptions } from './field.js';

export interface LabUplinkSpec {
  /** tbf rate at both ends ('50mbit'), 0 = unshaped. */
  rate: string | 0;
  /**
   * Round-trip time added on this uplink (ms): a delay line (src/lab/delay-line.ts) in namespace
   * `${prefix}-dl{i}` between the CPE and the concentrator delays each direction by half. 0/absent: none.
   */
  rttMs?: number;
  /** Field topology only: this access network sits behind a carrier-grade NAT in its ISP's namespace. */
  cgn?: boolean;
  /** Field topology only: the access link's MTU at both ends (1492 = PPPoE DSL); default 1500. */
  mtu?: number;
}

export type Topology = 'classic' | 'field' | 'onpath' | 'many';

export interface LabSpec {
  uplinks: LabUplinkSpec[];
  /** Servers on the internet segment (default 1). */
  servers?: number;
  /** Namespace prefix: `mpc` + 1..9 of [a-z0-9]; default `mpc` + 6 random hex digits. */
  prefix?: string;
  /** Plain kernel MPTCP on the CPE: per-uplink policy routing + subflow endpoints + limits on both ends. */
  mptcpRouting?: boolean;
  /**
   * 'classic' (default): the concentrator is the access router of every uplink, all addresses static.
   * 'field': ISP routers with DHCP (dnsmasq), optional CGN, a concentrator on a public address, a private
   * LAN, IPv4 only (docs/lab.md, "The field topology").
   * 'onpath': the classic namespaces and links with `mptcpRouting` on; the `cpe` namespace is a dual-homed MPTCP
   * host that runs no mpconvert software and the concentrator is the router both its paths cross (implicit
   * mode, docs/implicit.md; `lab.host('host')`).
   * 'many': `cpes` CPE namespaces, each with its own LAN client namespace and `uplinks` (the same for every CPE)
   * to one concentrator, which reaches one server over a shared link shaped to `serverRate`; IPv4 only
   * (docs/lab.md, "The many-CPE topology"; `hosts.cpes`, `hosts.clients`).
   */
  topology?: Topology;
  /** Many-CPE topology: the number of CPEs (1..99). */
  cpes?: number;
  /** Many-CPE topology: tbf rate of the shared concentrator-server link at both ends ('500mbit'); default 0 = unshaped. */
  serverRate?: string | 0;
  /** Field topology: start the CPE's DHCP client on every uplink during up() (default true). */
  dhcpClients?: boolean;
}

export interface LabExecOptions {
  input?: string;
  timeoutMs?: number;
  allowFailure?: boolean;
}

export interface LabHost {
  /** The network namespace. */
  readonly name: string;
  /** The host's main address ('' for the inet bridge namespace). */
  readonly v4: string;
  readonly v6: string;
  exec(cmd: string, args: readonly string[], opts?: LabExecOptions): Promise<RunResult>;
  /** Starts a process in the namespace (stdio default: ignore, pipe, pipe); killed on down(). */
  spawn(cmd: string, args: readonly string[], opts?: SpawnOptions): ChildProcess;
}

export type BuildStep = 'namespaces' | 'links' | 'addresses' | 'shaping' | 'dhcp';

export interface LabDeps {
  logger?: Logger;
  /** Called before each build step; a throw aborts the build like any failure (tests inject faults here). */
  onStep?: (step: BuildStep, lab: Lab) => void | Promise<void>;
}

export interface LabHosts {
  client: LabHost;
  cpe: LabHost;
  concentrator: LabHost;
  servers: LabHost[];
  /** Field topology: the ISP router of each access network (`${prefix}-isp{i}`); empty otherwise. */
  isps: LabHost[];
  /** Every CPE and its LAN client: many-CPE topology `${prefix}-cpe{c}` / `-cli{c}`; else [cpe] / [client]. */
  cpes: LabHost[];
  clients: LabHost[];
}

export interface UplinkStatus {
  index: number;
  dev: string;
  rate: string | 0;
  /** Added round-trip time (the delay line), when the uplink has one. */
  rttMs?: number;
  /** Field topology: behind a carrier-grade NAT. */
  cgn?: boolean;
  state: 'up' | 'down' | 'missing';
  lossPercent: number;
  v4: string;
  v6: string;
  rxBytes: number;
  txBytes: number;
  rxPackets: number;
  txPackets: number;
}

export interface LabStatus {
  prefix: string;
  topology: Topology;
  /** pid of the process that removes the lab on exit; null = persistent (`mpconvert lab up`). */
  ownerPid: number | null;
  mptcpRouting: boolean;
  namespaces: Array<{ name: string; present: boolean }>;
  healthy: boolean;
  uplinks: UplinkStatus[];
  servers: Array<{ name: string; v4: string; v6: string }>;
  poolAddresses: number;
}

/** Labs of this process that are removed on exit/signal. */
const live = new Set<Lab>();
let handlersInstalled = false;

function onExit(): void {
  for (const lab of [...live]) lab.destroySync();
}

function onSignal(signal: NodeJS.Signals): void {
  const labs = [...live];
  void Promise.allSettled(labs.map((l) => l.down())).then(() => {
    // Re-raise with the default action unless somebody else handles this signal.
    uninstallHandlers();
    if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
  });
}

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', onExit);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}

function uninstallHandlers(): void {
  if (!handlersInstalled) return;
  handlersInstalled = false;
  process.off('exit', onExit);
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
}

function randomPrefix(): string {
  return `${LAB.namePrefix}${randomBytes(3).toString('hex')}`;
}

function validate(spec: LabSpec): { prefix: string; servers: number; mptcpRouting: boolean; field: boolean; onpath: boolean; many: { cpes: number; serverRate: string | 0 } | null } {
  const bad = (msg: string) => new MpconvertError('MPC_ERR_LAB_SPEC', `Invalid lab spec: ${msg}`);
  if (!Array.isArray(spec.uplinks) || spec.uplinks.length < 1 || spec.uplinks.length > LAB.maxUplinks) {
    throw bad(`expected 1..${LAB.maxUplinks} uplinks, got ${Array.isArray(spec.uplinks) ? spec.uplinks.length : 'none'}`);
  }
  for (const u of spec.uplinks) {
    if (u.rate !== 0) parseRate(u.rate);
    if (u.rttMs !== undefined && (!Number.isFinite(u.rttMs) || u.rttMs < 0 || u.rttMs > DELAY_LINE.maxRttMs)) throw bad(`uplink rttMs ${u.rttMs}: expected 0..${DELAY_LINE.maxRttMs}`);
    if (spec.topology !== 'field' && (u.cgn !== undefined || u.mtu !== undefined)) throw bad('cgn and mtu are uplink settings of the field topology');
    if (spec.topology === 'field' && u.rttMs) throw bad('the field topology has no delay lines (rttMs)');
    if (u.mtu !== undefined && (!Number.isInteger(u.mtu) || u.mtu < 1280 || u.mtu > 9000)) throw bad(`uplink mtu ${u.mtu}: expected 1280..9000`);
  }
  if (spec.topology !== undefined && spec.topology !== 'classic' && spec.topology !== 'field' && spec.topology !== 'onpath' && spec.topology !== 'many') throw bad(`unknown topology "${String(spec.topology)}" (classic, field, onpath, many)`);
  let many: { cpes: number; serverRate: string | 0 } | null = null;
  if (spec.topology === 'many') {
    const cpes = spec.cpes ?? 0;
    if (!Number.isInteger(cpes) || cpes < 1 || cpes > MANY.maxCpes) throw bad(`many-CPE topology: expected 1..${MANY.maxCpes} cpes, got ${String(spec.cpes)}`);
    if (spec.uplinks.some((u) => u.rttMs)) throw bad('the many-CPE topology has no delay lines (rttMs)');
    if (spec.mptcpRouting) throw bad('mptcpRouting is for the classic topology (each CPE daemon sets up its own routing)');
    if ((spec.servers ?? 1) !== 1) throw bad('the many-CPE topology has one server');
    const serverRate = spec.serverRate ?? 0;
    if (serverRate !== 0) parseRate(serverRate);
    many = { cpes, serverRate };
  } else if (spec.cpes !== undefined || spec.serverRate !== undefined) {
    throw bad('cpes and serverRate are settings of the many-CPE topology');
  }
  if (spec.topology === 'field' && spec.mptcpRouting) throw bad('mptcpRouting is for the classic topology (in the field the CPE daemon sets up its routing)');
  const servers = spec.servers ?? 1;
  if (!Number.isInteger(servers) || servers < 1 || servers > LAB.maxServers) throw bad(`expected 1..${LAB.maxServers} servers, got ${servers}`);
  const prefix = spec.prefix ?? randomPrefix();
  if (!PREFIX_RE.test(prefix)) throw bad(`prefix "${prefix}" must be "mpc" followed by 1..9 of [a-z0-9]`);
  // The on-path host is plain kernel MPTCP over both paths: its routing and endpoints are mptcpRouting's.
  const onpath = spec.topology === 'onpath';
  return { prefix, servers, mptcpRouting: onpath || (spec.mptcpRouting ?? false), field: spec.topology === 'field', onpath, many };
}

export async function listNamespaces(): Promise<string[]> {
  const list = await runJson<Array<{ name: string }>>('ip', ['-j', 'netns', 'list']);
  return list.map((n) => n.name);
}

/** Kills whatever still runs in a namespace, deletes it and its /etc/netns directory; never throws. */
async function removeNamespace(name: string): Promise<void> {
  const pids = await run('ip', ['netns', 'pids', name], { allowFailure: true });
  for (const pid of pids.stdout.split(/\s+/).filter(Boolean).map(Number)) {
    if (pid !== process.pid) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
  await run('ip', ['netns', 'del', name], { allowFailure: true });
  rmSync(`/etc/netns/${name}`, { recursive: true, force: true });
}

function removeNamespaceSync(name: string): void {
  try {
    const pids = execFileSync('ip', ['netns', 'pids', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    for (const pid of pids.split(/\s+/).filter(Boolean).map(Number)) {
      if (pid !== process.pid) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    }
  } catch {
    /* no such namespace */
  }
  try {
    execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
  } catch {
    /* already gone */
  }
  rmSync(`/etc/netns/${name}`, { recursive: true, force: true });
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      child.off('exit', done);
      resolve(false);
    }, ms);
    const done = () => {
      clearTimeout(t);
      resolve(true);
    };
    child.once('exit', done);
  });
}

export class Lab {
  readonly prefix: string;
  readonly hosts: LabHosts;
  /** The namespace holding the internet segment's bridge. */
  readonly inet: LabHost;
  readonly uplinks: ReadonlyArray<LabUplinkSpec>;
  readonly mptcpRouting: boolean;
  readonly topology: Topology;
  /** Many-CPE topology: the shared server link's rate; else 0. */
  readonly serverRate: string | 0;
  /** Every namespace of the lab, in creation order. */
  readonly namespaces: readonly string[];
  readonly #logger: Logger;
  readonly #children = new Set<ChildProcess>();
  /** Uplink index -> its delay line's namespace. */
  readonly #delayLines: ReadonlyMap<number, string>;
  #state: LabState;
  #downing: Promise<void> | null = null;
  /** The build in progress: down() during up() (a signal) stops it at the next step and waits for it. */
  #building: Promise<void> | null = null;
  #aborted = false;
  /** Field topology: the access networks' DHCP servers and the CPE's clients. */
  readonly #dhcp: FieldDhcp | null;

  private constructor(state: LabState, logger: Logger) {
    this.#state = state;
    this.#logger = logger;
    this.prefix = state.prefix;
    this.uplinks = state.uplinks.map((u) => ({ ...u }));
    this.mptcpRouting = state.mptcpRouting;
    this.topology = state.topology ?? 'classic';
    this.serverRate = state.serverRate ?? 0;
    const field = this.topology === 'field';
    const p = state.prefix;
    if (this.topology === 'many') {
      // IPv4 only; the shared server link is a veth pair (no bridge, no inet namespace).
      const cpes = Array.from({ length: state.cpes ?? 0 }, (_, j) => this.#host(namespaceName(p, `cpe${j + 1}`), manyCpeAddressing(j + 1).lanV4, ''));
      const clients = Array.from({ length: state.cpes ?? 0 }, (_, j) => this.#host(namespaceName(p, `cli${j + 1}`), manyCpeAddressing(j + 1).clientV4, ''));
      const server = this.#host(serverNamespace(p, 1), serverAddressing(1).v4, '');
      this.hosts = { client: clients[0]!, cpe: cpes[0]!, concentrator: this.#host(namespaceName(p, 'conc'), LAB.concentrator.v4, ''), servers: [server], isps: [], cpes, clients };
      this.inet = this.#host(namespaceName(p, 'inet'), '', '');
      this.#dhcp = null;
      this.#delayLines = new Map();
      this.namespaces = [this.hosts.concentrator.name, server.name, ...cpes.map((h) => h.name), ...clients.map((h) => h.name)];
      return;
    }
    // The field topology is IPv4 only: hosts have no IPv6 address ('').
    const v6 = (a: string) => (field ? '' : a);
    const servers = Array.from({ length: state.servers }, (_, j) => {
      const a = serverAddressing(j + 1);
      return this.#host(serverNamespace(p, j + 1), a.v4, v6(a.v6));
    });
    const isps = field ? this.uplinks.map((_, j) => this.#host(namespaceName(p, `isp${j + 1}`), fieldAccess(j + 1).coreV4, '')) : [];
    const client = this.#host(namespaceName(p, 'client'), LAB.lan.client.v4, v6(LAB.lan.client.v6));
    const cpe = this.#host(namespaceName(p, 'cpe'), LAB.lan.cpe.v4, v6(LAB.lan.cpe.v6));
    this.hosts = {
      client,
      cpe,
      concentrator: this.#host(namespaceName(p, 'conc'), field ? FIELD.concentrator.v4 : LAB.concentrator.v4, v6(LAB.concentrator.v6)),
      servers,
      isps,
      cpes: [cpe],
      clients: [client],
    };
    this.inet = this.#host(namespaceName(p, 'inet'), '', '');
    this.#dhcp = field ? new FieldDhcp(p, this.hosts.cpe, isps, logger) : null;
    // Delay-line namespaces of the uplinks that have an RTT.
    this.#delayLines = new Map(this.uplinks.flatMap((u, j) => (u.rttMs ? [[j + 1, namespaceName(p, `dl${j + 1}`)] as const] : [])));
    this.namespaces = [this.hosts.client.name, this.hosts.cpe.name, this.hosts.concentrator.name, this.inet.name, ...servers.map((s) => s.name), ...this.#delayLines.values(), ...isps.map((h) => h.name)];
  }

  /** Builds a lab; on any failure removes everything it made and rethrows (code MPC_ERR_LAB_UP). */
  static async up(spec: LabSpec, deps: LabDeps = {}): Promise<Lab> {
    const { prefix, servers, mptcpRouting, field, onpath, many } = validate(spec);
    const logger = deps.logger ?? silentLogger();
    const start = processStart(process.pid);
    const state: LabState = {
      version: 1,
      prefix,
      uplinks: spec.uplinks.map((u) => ({ rate: u.rate, ...(u.rttMs ? { rttMs: u.rttMs } : {}), ...(u.cgn ? { cgn: true } : {}), ...(u.mtu !== undefined ? { mtu: u.mtu } : {}) })),
      servers,
      mptcpRouting,
      ...(field ? { topology: 'field' as const } : onpath ? { topology: 'onpath' as const } : many ? { topology: 'many' as const, cpes: many.cpes, serverRate: many.serverRate } : {}),
      namespaces: [],
      owner: start === null ? null : { pid: process.pid, start },
      createdAt: new Date().toISOString(),
    };
    const lab = new Lab(state, logger);
    state.namespaces = [...lab.namespaces];
    const existing = new Set(await listNamespaces());
    const clash = lab.namespaces.find((n) => existing.has(n));
    if (clash !== undefined) throw new MpconvertError('MPC_ERR_LAB_EXISTS', `Cannot build the lab ${prefix}: namespace ${clash} exists (try 'mpconvert lab down --prefix ${prefix}')`);
    // State first: a crash from here on leaves something `lab down --all` recognises.
    writeState(state);
    live.add(lab);
    installHandlers();
    const t0 = Date.now();
    try {
      lab.#building = field ? lab.#buildField(deps.onStep, spec.dhcpClients ?? true) : many ? lab.#buildMany(deps.onStep) : lab.#build(deps.onStep);
      await lab.#building;
    } catch (err) {
      logger.error({ err, prefix }, 'lab: build failed, removing what was made');
      await lab.down();
      throw new MpconvertError('MPC_ERR_LAB_UP', `Cannot build the lab ${prefix}: ${toError(err).message}`, { cause: err });
    }
    logger.info({ prefix, topology: lab.topology, uplinks: state.uplinks, servers, mptcpRouting, ms: Date.now() - t0 }, 'lab: up');
    return lab;
  }

  /** Finds a lab made by another process (through its state file). */
  static attach(prefix: string, deps: { logger?: Logger } = {}): Lab {
    const state = readState(prefix);
    if (state === null) throw new MpconvertError('MPC_ERR_LAB_NOT_FOUND', `No lab with prefix ${prefix} (no state file; 'mpconvert lab status' lists the labs)`);
    return new Lab(state, deps.logger ?? silentLogger());
  }

  /** The labs with a state file. */
  static list(): LabState[] {
    return listStates();
  }

  /**
   * Removes leftovers: labs whose owner process is gone (crashed runs), persistent labs (`lab up`), labs of this
   * process, lab-named namespaces without a state file, orphaned /etc/netns/mpc* directories. Labs owned by
   * another live process are kept. With `foreign`, also any other `mpc*` namespace with no process inside.
   * Returns the namespaces removed.
   */
  static async downAll(opts: { foreign?: boolean; logger?: Logger } = {}): Promise<string[]> {
    const logger = opts.logger ?? silentLogger();
    const removed: string[] = [];
    const keep = new Set<string>();
    for (const lab of [...live]) {
      removed.push(...(await lab.#presentNamespaces()));
      await lab.down();
    }
    const present = new Set(await listNamespaces());
    for (const state of listStates()) {
      if (state.owner !== null && state.owner.pid !== process.pid && ownerAlive(state.owner)) {
        for (const n of state.namespaces) keep.add(n);
        continue;
      }
      for (const n of state.namespaces) {
        if (present.has(n)) {
          await removeNamespace(n);
          removed.push(n);
          present.delete(n);
        }
        rmSync(`/etc/netns/${n}`, { recursive: true, force: true });
      }
      removeState(state.prefix);
    }
    for (const n of present) {
      if (keep.has(n) || !n.startsWith(LAB.namePrefix)) continue;
      let remove = LAB_NAMESPACE_RE.test(n);
      if (!remove && opts.foreign) {
        const pids = await run('ip', ['netns', 'pids', n], { allowFailure: true });
        remove = pids.stdout.trim() === '';
      }
      if (remove) {
        await removeNamespace(n);
        removed.push(n);
      }
    }
    const still = new Set(await listNamespaces());
    let dirs: string[] = [];
    try {
      dirs = readdirSync('/etc/netns');
    } catch {
      /* none */
    }
    for (const d of dirs) if (d.startsWith(LAB.namePrefix) && !still.has(d)) rmSync(`/etc/netns/${d}`, { recursive: true, force: true });
    if (removed.length > 0) logger.info({ removed }, 'lab: removed leftovers');
    return removed;
  }

  /** Leaves the lab running after this process exits (for `mpconvert lab up`); `lab down` removes it later. */
  detach(): void {
    live.delete(this);
    if (live.size === 0) uninstallHandlers();
    this.#state = { ...this.#state, owner: null };
    writeState(this.#state);
  }

  /** Removes the lab: kills its processes, deletes its namespaces and state. Idempotent, never throws. */
  down(): Promise<void> {
    this.#downing ??= this.#down();
    return this.#downing;
  }

  async #down(): Promise<void> {
    this.#aborted = true;
    await this.#building?.catch(() => {});
    const children = [...this.#children];
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
    await Promise.all(
      children.map(async (c) => {
        if (!(await waitExit(c, 1000))) {
          c.kill('SIGKILL');
          await waitExit(c, 2000);
        }
      }),
    );
    // Servers last (they are leaves); all in parallel is fine: deleting a namespace deletes its veth ends.
    await Promise.all(this.namespaces.map((n) => removeNamespace(n)));
    removeState(this.prefix);
    live.delete(this);
    if (live.size === 0) uninstallHandlers();
    this.#logger.info({ prefix: this.prefix }, 'lab: down');
  }

  /** The synchronous part of down() for process 'exit' (no event loop left). @internal */
  destroySync(): void {
    for (const c of this.#children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (const n of this.namespaces) removeNamespaceSync(n);
    removeState(this.prefix);
    live.delete(this);
  }

  /** Uplink i's link goes down on the CPE side (the kernel drops its routes; the peer loses carrier). */
  async uplinkDown(i: number): Promise<void> {
    const u = this.#uplink(i);
    if (this.topology === 'field') {
      // The ISP's end loses carrier; the kernel drops the DHCP default route (the address stays, as on a router).
      await this.hosts.cpe.exec('ip', ['link', 'set', u.cpeDev, 'down']);
      return;
    }
    await this.hosts.cpe.exec('ip', ['link', 'set', u.cpeDev, 'down']);
    // Through a delay line the concentrator's end keeps its carrier unless its side goes down too.
    const dl = this.#delayLines.get(i);
    if (dl) await run('ip', ['link', 'set', DELAY_LINE.concSide, 'down'], { netns: dl });
  }

  /** Uplink i's link comes back; addresses, routes and MPTCP endpoints the kernel removed are restored. */
  async uplinkUp(i: number): Promise<void> {
    const u = this.#uplink(i);
    if (this.topology === 'field') {
      // As a router's network manager does on carrier: the DHCP client starts over (its route is gone).
      await this.hosts.cpe.exec('ip', ['link', 'set', u.cpeDev, 'up']);
      await this.stopDhcpClient(i);
      await this.startDhcpClient(i);
      this.#logger.info({ prefix: this.prefix, uplink: i }, 'lab: uplink up');
      return;
    }
    const cpe = this.hosts.cpe;
    const dl = this.#delayLines.get(i);
    if (dl) await run('ip', ['link', 'set', DELAY_LINE.concSide, 'up'], { netns: dl });
    await cpe.exec('ip', ['link', 'set', u.cpeDev, 'up']);
    const v4 = [`addr replace ${u.cpeV4}/${LAB.uplink.v4Len} dev ${u.cpeDev}`, `route replace default via ${u.concV4} dev ${u.cpeDev} metric ${u.metric}`];
    const v6 = [`addr replace ${u.cpeV6}/${LAB.uplink.v6Len} dev ${u.cpeDev} nodad`, `route replace ::/0 via ${u.concV6} dev ${u.cpeDev} metric ${u.metric}`];
    if (this.mptcpRouting) {
      v4.push(`route replace default via ${u.concV4} dev ${u.cpeDev} table ${u.table}`);
      v6.push(`route replace ::/0 via ${u.concV6} dev ${u.cpeDev} table ${u.table}`);
    }
    await batch(cpe.name, v4);
    await batch(cpe.name, v6, '-6');
    if (this.mptcpRouting) {
      const eps = await runJson<Array<{ address?: string }>>('ip', ['-j', 'mptcp', 'endpoint', 'show'], { netns: cpe.name });
      const have = new Set(eps.map((e) => e.address));
      for (const a of [u.cpeV4, u.cpeV6]) {
        if (!have.has(a)) await cpe.exec('ip', ['mptcp', 'endpoint', 'add', a, 'dev', u.cpeDev, 'subflow']);
      }
    }
    this.#logger.info({ prefix: this.prefix, uplink: i }, 'lab: uplink up');
  }

  /** Drops `percent` % of the packets on uplink i at the CPE, in each direction (so a round trip loses more). */
  async setLoss(i: number, percent: number): Promise<void> {
    this.#uplink(i);
    checkLossPercent(percent);
    const losses = await this.#readLoss();
    losses.set(i, percent);
    await this.#applyLoss(losses);
  }

  async clearLoss(i: number): Promise<void> {
    this.#uplink(i);
    const losses = await this.#readLoss();
    losses.delete(i);
    await this.#applyLoss(losses);
  }

  /** Adds the first n addresses of the concentrator's outgoing pool on inet0 (idempotent). */
  async addPoolAddresses(n: number): Promise<Array<{ v4: string; v6: string }>> {
    if (!Number.isInteger(n) || n < 1 || n > LAB.pool.max) throw new MpconvertError('MPC_ERR_LAB_SPEC', `Cannot add ${n} pool addresses: expected 1..${LAB.pool.max}`);
    const pool = Array.from({ length: n }, (_, j) => poolAddress(j));
    const dev = LAB.concentrator.inetDev;
    const ns = this.hosts.concentrator.name;
    await batch(ns, pool.map((a) => `addr replace ${a.v4}/32 dev ${dev}`));
    await batch(ns, pool.map((a) => `addr replace ${a.v6}/128 dev ${dev} nodad`), '-6');
    return pool;
  }

  async status(): Promise<LabStatus> {
    const present = new Set(await listNamespaces());
    const cpeThere = present.has(this.hosts.cpe.name);
    const concThere = present.has(this.hosts.concentrator.name);
    type Link = { ifname: string; flags?: string[]; stats64?: { rx?: { bytes?: number; packets?: number }; tx?: { bytes?: number; packets?: number } } };
    const links = cpeThere ? await runJson<Link[]>('ip', ['-j', '-s', 'link', 'show'], { netns: this.hosts.cpe.name }).catch(() => []) : [];
    const losses = cpeThere ? await this.#readLoss().catch(() => new Map<number, number>()) : new Map<number, number>();
    // Field: the uplinks' addresses are whatever DHCP gave.
    const leased = new Map<number, string>();
    if (cpeThere && this.topology === 'field') for (let j = 1; j <= this.uplinks.length; j++) leased.set(j, (await this.dhcpAddress(j).catch(() => null)) ?? '');
    let poolCount = 0;
    if (concThere) {
      type Addr = { addr_info?: Array<{ local?: string; prefixlen?: number }> };
      const addrs = await runJson<Addr[]>('ip', ['-j', '-4', 'addr', 'show', 'dev', LAB.concentrator.inetDev], { netns: this.hosts.concentrator.name }).catch(() => []);
      for (const a of addrs) for (const i of a.addr_info ?? []) if (i.prefixlen === 32 && /^198\.19\.0\.(1[2-9]\d|2\d\d)$/.test(i.local ?? '')) poolCount++;
    }
    const uplinks = this.uplinks.map((u, j): UplinkStatus => {
      const a = uplinkAddressing(j + 1);
      const link = links.find((l) => l.ifname === a.cpeDev);
      return {
        index: j + 1,
        dev: a.cpeDev,
        rate: u.rate,
        ...(u.rttMs ? { rttMs: u.rttMs } : {}),
        ...(u.cgn ? { cgn: true } : {}),
        state: link === undefined ? 'missing' : link.flags?.includes('UP') ? 'up' : 'down',
        lossPercent: losses.get(j + 1) ?? 0,
        v4: leased.get(j + 1) ?? (this.topology === 'many' ? manyCpeAddressing(1).uplink(j + 1).cpeV4 : a.cpeV4),
        v6: this.topology === 'field' || this.topology === 'many' ? '' : a.cpeV6,
        rxBytes: link?.stats64?.rx?.bytes ?? 0,
        txBytes: link?.stats64?.tx?.bytes ?? 0,
        rxPackets: link?.stats64?.rx?.packets ?? 0,
        txPackets: link?.stats64?.tx?.packets ?? 0,
      };
    });
    const namespaces = this.namespaces.map((name) => ({ name, present: present.has(name) }));
    return {
      prefix: this.prefix,
      topology: this.topology,
      ownerPid: this.#state.owner?.pid ?? null,
      mptcpRouting: this.mptcpRouting,
      namespaces,
      healthy: namespaces.every((n) => n.present) && uplinks.every((u) => u.state !== 'missing'),
      uplinks,
      servers: this.hosts.servers.map((s) => ({ name: s.name, v4: s.v4, v6: s.v6 })),
      poolAddresses: poolCount,
    };
  }

  /** Field topology: the IPv4 address DHCP gave uplink i (null: none yet). */
  dhcpAddress(i: number): Promise<string | null> {
    return this.#fieldDhcp().address(i);
  }

  /**
   * Field topology: starts the CPE's DHCP client on uplink i; resolves with the leased address once it has one
   * (src/lab/field.ts).
   */
  startDhcpClient(i: number, opts?: FieldDhcpClientOptions): Promise<string> {
    return this.#fieldDhcp().startClient(i, opts);
  }

  /**
   * Field topology: ISP i's DHCP server is restarted with these options (the concentrators option, T1); the CPE's
   * client keeps its address and sees them at its next renewal.
   */
  dhcpServer(i: number, opts: FieldDhcpServerOptions): Promise<void> {
    return this.#fieldDhcp().reconfigureServer(i, opts);
  }

  /** Field topology: a DHCPv6 client (dhclient -6) on uplink i, after `dhcpServer(i, { v6 })`; resolves with a lease. */
  startDhcp6Client(i: number, opts?: FieldDhcpClientOptions): Promise<void> {
    return this.#fieldDhcp().startClient6(i, opts);
  }

  /** Field topology: ends uplink i's DHCPv6 client; `release` gives the lease back. */
  stopDhcp6Client(i: number, opts: { release?: boolean } = {}): Promise<void> {
    return this.#fieldDhcp().stopClient6(i, opts);
  }

  /** Field topology: ends uplink i's DHCP client; `release` also gives the lease back (the address goes). */
  stopDhcpClient(i: number, opts: { release?: boolean } = {}): Promise<void> {
    return this.#fieldDhcp().stopClient(i, opts);
  }

  /** Field topology: ISP i renumbers its access network; the CPE gets a new lease, returned. */
  renumber(i: number): Promise<string> {
    return this.#fieldDhcp().renumber(i);
  }

  #fieldDhcp(): FieldDhcp {
    if (this.#dhcp === null) throw new MpconvertError('MPC_ERR_LAB_SPEC', `lab ${this.prefix} has the classic topology: DHCP is a field-topology feature`);
    return this.#dhcp;
  }

  /** The field topology (src/lab/field.ts). */
  async #buildField(onStep: LabDeps['onStep'], dhcpClients: boolean): Promise<void> {
    const step = async (name: BuildStep) => {
      this.#checkAborted();
      this.#logger.debug({ prefix: this.prefix, step: name }, 'lab: build step');
      await onStep?.(name, this);
    };
    await buildField({ prefix: this.prefix, uplinks: this.uplinks, hosts: this.hosts, inet: this.inet, step, makeNamespaces: () => this.#makeNamespaces() }, this.#fieldDhcp(), dhcpClients);
  }

  /** The many-CPE topology (src/lab/many.ts). */
  async #buildMany(onStep: LabDeps['onStep']): Promise<void> {
    const step = async (name: BuildStep) => {
      this.#checkAborted();
      this.#logger.debug({ prefix: this.prefix, step: name }, 'lab: build step');
      await onStep?.(name, this);
    };
    await buildMany({ uplinks: this.uplinks, serverRate: this.serverRate, hosts: this.hosts, step, makeNamespaces: () => this.#makeNamespaces() });
  }

  /** Every namespace of the lab, with its resolv.conf. */
  async #makeNamespaces(): Promise<void> {
    for (const name of this.namespaces) {
      this.#checkAborted();
      await run('ip', ['netns', 'add', name]);
      mkdirSync(`/etc/netns/${name}`, { recursive: true });
      writeFileSync(`/etc/netns/${name}/resolv.conf`, 'nameserver 127.0.0.1\n');
    }
  }

  /** A host by CLI name: client | cpe | concentrator (conc) | inet | srvK | ispI (field). */
  host(name: string): LabHost {
    if (name === 'client') return this.hosts.client;
    if (name === 'cpe') return this.hosts.cpe;
    // The on-path topology's dual-homed MPTCP host lives in the `cpe` namespace.
    if (name === 'host' && this.topology === 'onpath') return this.hosts.cpe;
    if (name === 'concentrator' || name === 'conc') return this.hosts.concentrator;
    if (name === 'inet') return this.inet;
    const many = /^(cpe|cli)(\d+)$/.exec(name);
    if (many && this.topology === 'many') {
      const h = (many[1] === 'cpe' ? this.hosts.cpes : this.hosts.clients)[Number(many[2]) - 1];
      if (h === undefined) throw new MpconvertError('MPC_ERR_LAB_SPEC', `No host "${name}" in lab ${this.prefix} (cpe1..cpe${this.hosts.cpes.length}, cli1..cli${this.hosts.clients.length})`);
      return h;
    }
    const isp = /^isp(\d+)$/.exec(name);
    if (isp) {
      const h = this.hosts.isps[Number(isp[1]) - 1];
      if (h === undefined) throw new MpconvertError('MPC_ERR_LAB_SPEC', `No host "${name}" in lab ${this.prefix} (ISP routers exist in the field topology: isp1..isp${this.hosts.isps.length})`);
      return h;
    }
    const m = /^srv(\d+)$/.exec(name);
    const s = m ? this.hosts.servers[Number(m[1]) - 1] : undefined;
    if (s === undefined) throw new MpconvertError('MPC_ERR_LAB_SPEC', `No host "${name}" in lab ${this.prefix} (client, cpe, concentrator, inet, srv1..srv${this.hosts.servers.length})`);
    return s;
  }

  #checkAborted(): void {
    if (this.#aborted) throw new MpconvertError('MPC_ERR_LAB_UP', `lab ${this.prefix} was taken down while it was being built`);
  }

  #uplink(i: number) {
    if (this.topology === 'many') throw new MpconvertError('MPC_ERR_LAB_SPEC', `lab ${this.prefix} has the many-CPE topology: uplink faults and loss are classic-topology features`);
    if (!Number.isInteger(i) || i < 1 || i > this.uplinks.length) {
      throw new MpconvertError('MPC_ERR_LAB_SPEC', `No uplink ${i} in lab ${this.prefix} (1..${this.uplinks.length})`);
    }
    return uplinkAddressing(i);
  }

  async #readLoss(): Promise<Map<number, number>> {
    const r = await this.hosts.cpe.exec('nft', ['-j', 'list', 'table', 'inet', LAB.lossTable], { allowFailure: true });
    return r.code === 0 ? parseLossTable(r.stdout) : new Map();
  }

  async #applyLoss(losses: Map<number, number>): Promise<void> {
    await this.hosts.cpe.exec('nft', ['-f', '-'], { input: lossRuleset(losses) });
    this.#logger.info({ prefix: this.prefix, loss: Object.fromEntries(losses) }, 'lab: loss');
  }

  async #presentNamespaces(): Promise<string[]> {
    const present = new Set(await listNamespaces());
    return this.namespaces.filter((n) => present.has(n));
  }

  #host(name: string, v4: string, v6: string): LabHost {
    return {
      name,
      v4,
      v6,
      exec: (cmd, args, opts = {}) => run(cmd, args, { ...opts, netns: name }),
      spawn: (cmd, args, opts = {}) => {
        const child = spawnChild('ip', ['netns', 'exec', name, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
        this.#children.add(child);
        child.once('exit', () => this.#children.delete(child));
        // A failed spawn emits 'error' (and maybe no 'exit'): forget the child and leave the error to the caller.
        child.once('error', () => this.#children.delete(child));
        return child;
      },
    };
  }

  async #build(onStep: LabDeps['onStep']): Promise<void> {
    const step = async (name: BuildStep) => {
      this.#checkAborted();
      this.#logger.debug({ prefix: this.prefix, step: name }, 'lab: build step');
      await onStep?.(name, this);
    };
    await step('namespaces');
    const client = this.hosts.client.name;
    const cpe = this.hosts.cpe.name;
    const conc = this.hosts.concentrator.name;
    const inet = this.inet.name;
    const servers = this.hosts.servers.map((s) => s.name);
    const n = this.uplinks.length;

    // 1. Namespaces, resolv.conf, sysctls (before any interface exists, so "default" applies to all of them).
    await this.#makeNamespaces();
    const common = ['net.ipv6.conf.all.accept_dad=0', 'net.ipv6.conf.default.accept_dad=0', 'net.ipv6.conf.all.accept_ra=0', 'net.ipv6.conf.default.accept_ra=0'];
    const router = [
      'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1',
      'net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0',
    ];
    // The concentrator reaches the LAN through uplink 1, else through the next uplink that has carrier.
    const linkdown = [
      'net.ipv4.conf.all.ignore_routes_with_linkdown=1', 'net.ipv4.conf.default.ignore_routes_with_linkdown=1',
      'net.ipv6.conf.all.ignore_routes_with_linkdown=1', 'net.ipv6.conf.default.ignore_routes_with_linkdown=1',
    ];
    await Promise.all([
      sysctl(client, common),
      sysctl(cpe, [...common, ...router]),
      sysctl(conc, [...common, ...router, ...linkdown]),
      // The bridge namespace needs no IPv6 of its own (the bridge forwards frames either way).
      sysctl(inet, ['net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']),
      ...servers.map((s) => sysctl(s, common)),
      // A delay line forwards frames; it has no addresses and answers nothing.
      ...[...this.#delayLines.values()].map((d) => sysctl(d, ['net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1'])),
    ]);

    await step('links');
    // 2. Links: veth pairs created directly in their namespaces (no temporary names in the caller's namespace).
    const veth = (a: string, aDev: string, b: string, bDev: string) =>
      run('ip', ['link', 'add', aDev, 'netns', a, 'type', 'veth', 'peer', 'name', bDev, 'netns', b]);
    await veth(client, LAB.lan.client.dev, cpe, LAB.lan.cpe.dev);
    for (let i = 1; i <= n; i++) {
      const u = uplinkAddressing(i);
      const dl = this.#delayLines.get(i);
      if (dl) {
        await veth(cpe, u.cpeDev, dl, DELAY_LINE.cpeSide);
        await veth(dl, DELAY_LINE.concSide, conc, u.concDev);
      } else {
        await veth(cpe, u.cpeDev, conc, u.concDev);
      }
    }
    await veth(conc, LAB.concentrator.inetDev, inet, LAB.inet.concPort);
    for (let k = 1; k <= servers.length; k++) await veth(servers[k - 1]!, LAB.inet.serverDev, inet, serverAddressing(k).bridgePort);

    await step('addresses');
    // 3. Addresses and routes, one `ip -batch` per namespace and family.
    const br = LAB.inet.bridge;
    const ports = [LAB.inet.concPort, ...servers.map((_, j) => serverAddressing(j + 1).bridgePort)];
    const inetCmds = ['link set lo up', `link add ${br} type bridge mcast_snooping 0`, `link set ${br} up`, ...ports.flatMap((d) => [`link set ${d} master ${br}`, `link set ${d} up`])];

    const lanC = LAB.lan.client;
    const lanP = LAB.lan.cpe;
    const clientV4 = ['link set lo up', `link set ${lanC.dev} up`, `addr add ${lanC.v4}/${LAB.lan.v4Len} dev ${lanC.dev}`, `route add default via ${lanP.v4} dev ${lanC.dev}`];
    const clientV6 = [`addr add ${lanC.v6}/${LAB.lan.v6Len} dev ${lanC.dev} nodad`, `route add ::/0 via ${lanP.v6} dev ${lanC.dev}`];

    const cpeV4 = ['link set lo up', `link set ${lanP.dev} up`, `addr add ${lanP.v4}/${LAB.lan.v4Len} dev ${lanP.dev}`];
    const cpeV6 = [`addr add ${lanP.v6}/${LAB.lan.v6Len} dev ${lanP.dev} nodad`];
    const c = LAB.concentrator;
    const concV4 = ['link set lo up', `addr add ${c.v4}/32 dev lo`, `link set ${c.inetDev} up`, `addr add ${c.inetV4}/${LAB.inet.v4Len} dev ${c.inetDev}`];
    const concV6 = [`addr add ${c.v6}/128 dev lo`, `addr add ${c.inetV6}/${LAB.inet.v6Len} dev ${c.inetDev} nodad`];
    for (let i = 1; i <= n; i++) {
      const u = uplinkAddressing(i);
      cpeV4.push(`link set ${u.cpeDev} up`, `addr add ${u.cpeV4}/${LAB.uplink.v4Len} dev ${u.cpeDev}`, `route add default via ${u.concV4} dev ${u.cpeDev} metric ${u.metric}`);
      cpeV6.push(`addr add ${u.cpeV6}/${LAB.uplink.v6Len} dev ${u.cpeDev} nodad`, `route add ::/0 via ${u.concV6} dev ${u.cpeDev} metric ${u.metric}`);
      concV4.push(`link set ${u.concDev} up`, `addr add ${u.concV4}/${LAB.uplink.v4Len} dev ${u.concDev}`, `route add ${LAB.lan.v4Prefix} via ${u.cpeV4} dev ${u.concDev} metric ${u.metric}`);
      concV6.push(`addr add ${u.concV6}/${LAB.uplink.v6Len} dev ${u.concDev} nodad`, `route add ${LAB.lan.v6Prefix} via ${u.cpeV6} dev ${u.concDev} metric ${u.metric}`);
      if (this.mptcpRouting) {
        cpeV4.push(
          `rule add from ${u.cpeV4} table ${u.table}`,
          `route add default via ${u.concV4} dev ${u.cpeDev} table ${u.table}`,
          // On-path host: `fullmesh` beyond uplink 1, so the concentrator's ADD_ADDR (with the C bit, no join to
          // the server's address) gets a subflow from each further path, not only from the initial one's.
          `mptcp endpoint add ${u.cpeV4} dev ${u.cpeDev} subflow${this.topology === 'onpath' && i > 1 ? ' fullmesh' : ''}`,
        );
        cpeV6.push(
          `rule add from ${u.cpeV6} table ${u.table}`,
          `route add ::/0 via ${u.concV6} dev ${u.cpeDev} table ${u.table}`,
          `mptcp endpoint add ${u.cpeV6} dev ${u.cpeDev} subflow${this.topology === 'onpath' && i > 1 ? ' fullmesh' : ''}`,
        );
      }
    }
    if (this.mptcpRouting) {
      cpeV4.push('mptcp limits set subflows 8 add_addr_accepted 8');
      concV4.push('mptcp limits set subflows 8 add_addr_accepted 8');
    }
    await Promise.all([
      batch(inet, inetCmds),
      batch(client, clientV4).then(() => batch(client, clientV6, '-6')),
      batch(cpe, cpeV4).then(() => batch(cpe, cpeV6, '-6')),
      batch(conc, concV4).then(() => batch(conc, concV6, '-6')),
      ...servers.map((s, j) => {
        const a = serverAddressing(j + 1);
        return batch(s, ['link set lo up', `link set ${a.dev} up`, `addr add ${a.v4}/${LAB.inet.v4Len} dev ${a.dev}`, `route add default via ${c.inetV4} dev ${a.dev}`]).then(() =>
          batch(s, [`addr add ${a.v6}/${LAB.inet.v6Len} dev ${a.dev} nodad`, `route add ::/0 via ${c.inetV6} dev ${a.dev}`], '-6'),
        );
      }),
    ]);

    await Promise.all(
      [...this.#delayLines.values()].map((d) => batch(d, ['link set lo up', `link set ${DELAY_LINE.cpeSide} up`, `link set ${DELAY_LINE.concSide} up`])),
    );
    await Promise.all([...this.#delayLines].map(([i, d]) => startDelayLine(d, (this.uplinks[i - 1]!.rttMs ?? 0) / 2)));

    await step('shaping');
    // 4. Shaping: tbf on the egress of both ends of each shaped uplink.
    const tc: Array<Promise<unknown>> = [];
    this.uplinks.forEach((up, j) => {
      if (up.rate === 0) return;
      const u = uplinkAddressing(j + 1);
      tc.push(run('tc', tbfArgs(u.cpeDev, up.rate), { netns: cpe }), run('tc', tbfArgs(u.concDev, up.rate), { netns: conc }));
    });
    await Promise.all(tc);
  }
}

/**
 * Starts the delay line of one uplink in its namespace and waits for its `ready`. It is not a child the
 * lab keeps: it lives as long as the namespace (a persistent lab outlives the CLI), and removing the lab
 * kills every process in its namespaces.
 */
async function startDelayLine(netns: string, oneWayMs: number): Promise<void> {
  const program = fileURLToPath(new URL('./delay-line.js', import.meta.url));
  const child = spawnChild('ip', ['netns', 'exec', netns, process.execPath, program, JSON.stringify({ a: DELAY_LINE.cpeSide, b: DELAY_LINE.concSide, delayMs: oneWayMs })], {
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  let out = '';
  let err = '';
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`delay line in ${netns} not ready within 10 s: ${err.trim()}`)), 10_000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('ready')) {
        clearTimeout(t);
        resolve();
      }
    });
    child.stderr!.on('data', (d: Buffer) => {
      if (err.length < 2_000) err += d.toString();
    });
    child.once('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`delay line in ${netns} exited (${code}): ${err.trim()}`));
    });
  });
  child.removeAllListeners('exit');
  child.stdout!.destroy();
  child.stderr!.destroy();
  child.unref();
}
