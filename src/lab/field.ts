/**
 * The field topology (docs/lab.md, "The field topology"): ISP routers with a real DHCP server (dnsmasq) on each
 * access network, the CPE's WAN addresses from a real DHCP client (ISC dhclient and Debian's dhclient-script),
 * carrier-grade NAT in front of the access networks marked `cgn`, the concentrator on a public address, a
 * private LAN. IPv4 only. Addresses: ./addressing.ts (FIELD, fieldAccess).
 *
 * The DHCP servers and clients are daemons living in the lab's namespaces (as the delay lines do): removing
 * the namespaces kills them; their lease, pid and log files are in the lab's run directory, removed with its
 * state.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import { MpconvertError } from '../errors.js';
import type { Logger } from '../log.js';
import { run, runJson } from '../platform/linux/exec.js';
import { FIELD, LAB, fieldAccess, serverAddressing } from './addressing.js';
import { batch, sysctl } from './commands.js';
import { tbfArgs } from './shaping.js';
import { runDir } from './state.js';
import type { BuildStep, LabHost, LabHosts, LabUplinkSpec } from './index.js';

export interface FieldBuildContext {
  prefix: string;
  uplinks: ReadonlyArray<LabUplinkSpec>;
  hosts: LabHosts;
  inet: LabHost;
  /** Checks for an abort and runs the caller's step hook. */
  step: (name: BuildStep) => Promise<void>;
  /** Makes every namespace of the lab with its resolv.conf. */
  makeNamespaces: () => Promise<void>;
}

/** What ISP i's DHCP server sends besides the address and the router (`Lab.dhcpServer`). */
export interface FieldDhcpServerOptions {
  /** The concentrators option (draft-boucadair-mptcp-dhc): these IPv4 addresses under `optionV4` (default 224). */
  mcpV4?: readonly string[];
  optionV4?: number;
  /** T1 (option 58): the client renews this often (seconds), so a changed option reaches it soon. */
  renewS?: number;
  /**
   * DHCPv6 on the access link as well (the ISP gets 2001:db8:i::1/64 on it, dnsmasq leases ::100-::1ff), with the
   * concentrators option `mcp` under `optionV6` (default 65224). Only the access link has IPv6 in this topology.
   */
  v6?: { mcp?: readonly string[]; optionV6?: number };
}

/** How the CPE's DHCP client on uplink i runs (`Lab.startDhcpClient`). */
export interface FieldDhcpClientOptions {
  /** More dhclient.conf lines (the option declarations of `mpconvert cpe --dhcp-snippet dhclient`). */
  conf?: string;
  /**
   * Exit hooks run by dhclient-script instead of the host's /etc/dhcp/dhclient-exit-hooks.d: Debian's script,
   * copied into the run directory with its hook directories pointed at the lab's own (nothing on the host runs).
   */
  exitHooks?: readonly string[];
  /** Environment of the script and its hooks (dhclient -e). */
  env?: Readonly<Record<string, string>>;
}

const DHCLIENT_SCRIPT = '/sbin/dhclient-script';

/** The access networks' DHCP: a dnsmasq per ISP router, a dhclient per CPE uplink. */
export class FieldDhcp {
  readonly prefix: string;
  readonly #cpe: LabHost;
  readonly #isps: readonly LabHost[];
  readonly #logger: Logger;
  /** Per uplink: the options its server and client were last started with (a renumbering or an uplinkUp keeps them). */
  readonly #serverOpts = new Map<number, FieldDhcpServerOptions>();
  readonly #clientOpts = new Map<number, FieldDhcpClientOptions>();

  constructor(prefix: string, cpe: LabHost, isps: readonly LabHost[], logger: Logger) {
    this.prefix = prefix;
    this.#cpe = cpe;
    this.#isps = isps;
    this.#logger = logger;
  }

  /** The IPv4 address DHCP gave uplink i (null: none yet). */
  async address(i: number): Promise<string | null> {
    const a = this.#access(i);
    type Addr = { addr_info?: Array<{ local?: string; scope?: string }> };
    const addrs = await runJson<Addr[]>('ip', ['-j', '-4', 'addr', 'show', 'dev', a.cpeDev], { netns: this.#cpe.name });
    return addrs.flatMap((x) => x.addr_info ?? []).find((x) => x.scope === 'global')?.local ?? null;
  }

  /**
   * Starts the CPE's DHCP client (ISC dhclient, Debian's dhclient-script: address, then the
   * default route with metric 100*i) on uplink i and resolves once it holds a lease (dhclient goes to the
   * background then). Lives as long as the CPE namespace; `stopClient` ends it earlier.
   */
  async startClient(i: number, opts?: FieldDhcpClientOptions): Promise<string> {
    const a = this.#access(i);
    const f = this.#dhcpFiles(i);
    if (opts) this.#clientOpts.set(i, opts);
    const o = this.#clientOpts.get(i) ?? {};
    mkdirSync(runDir(this.prefix), { recursive: true });
    // Only what a router needs from its access network: no DNS, NTP or domain (nothing touches the host).
    writeFileSync(f.conf, `request subnet-mask, broadcast-address, routers;\ntimeout 20;\n${o.conf ?? ''}`);
    const args = ['-4', '-1', '-e', `IF_METRIC=${a.metric}`, ...Object.entries(o.env ?? {}).flatMap(([k, v]) => ['-e', `${k}=${v}`])];
    if (o.exitHooks) args.push('-sf', this.#hookScript(i, o.exitHooks));
    await this.#cpe.exec('dhclient', [...args, '-cf', f.conf, '-pf', f.pid, '-lf', f.leases, a.cpeDev], { timeoutMs: 30_000 });
    const got = await this.address(i);
    if (got === null) throw new MpconvertError('MPC_ERR_LAB_UP', `lab ${this.prefix}: dhclient on ${a.cpeDev} reported a lease but the interface has no address`);
    this.#logger.info({ prefix: this.prefix, uplink: i, address: got }, 'lab: DHCP lease');
    return got;
  }

  /**
   * Starts a DHCPv6 client (dhclient -6, stateful) on uplink i, with the same kind of options as `startClient`
   * (its own files); resolves once it holds a lease. Needs `dhcpServer(i, { v6 })` first.
   */
  async startClient6(i: number, opts: FieldDhcpClientOptions = {}): Promise<void> {
    const a = this.#access(i);
    const f = this.#dhcpFiles(i);
    mkdirSync(runDir(this.prefix), { recursive: true });
    writeFileSync(f.conf6, `timeout 20;\n${opts.conf ?? ''}`);
    const args = ['-6', '-1', ...Object.entries(opts.env ?? {}).flatMap(([k, v]) => ['-e', `${k}=${v}`])];
    if (opts.exitHooks) args.push('-sf', this.#hookScript(i, opts.exitHooks, 6));
    this.#client6Args.set(i, args.slice(2));
    await this.#cpe.exec('dhclient', [...args, '-cf', f.conf6, '-pf', f.pid6, '-lf', f.leases6, a.cpeDev], { timeoutMs: 30_000 });
  }

  /** Ends uplink i's DHCPv6 client; `release` also gives the lease back. */
  async stopClient6(i: number, opts: { release?: boolean } = {}): Promise<void> {
    const a = this.#access(i);
    const f = this.#dhcpFiles(i);
    await this.#cpe.exec('dhclient', ['-6', opts.release ? '-r' : '-x', ...(this.#client6Args.get(i) ?? []), '-cf', f.conf6, '-pf', f.pid6, '-lf', f.leases6, a.cpeDev], { allowFailure: true, timeoutMs: 15_000 });
  }

  readonly #client6Args = new Map<number, string[]>();

  /** Ends uplink i's DHCP client; `release` also gives the lease back (the address goes). */
  async stopClient(i: number, opts: { release?: boolean } = {}): Promise<void> {
    const a = this.#access(i);
    const f = this.#dhcpFiles(i);
    const o = this.#clientOpts.get(i) ?? {};
    const script = o.exitHooks ? ['-sf', f.script] : [];
    const env = Object.entries(o.env ?? {}).flatMap(([k, v]) => ['-e', `${k}=${v}`]);
    await this.#cpe.exec('dhclient', ['-4', opts.release ? '-r' : '-x', ...env, ...script, '-cf', f.conf, '-pf', f.pid, '-lf', f.leases, a.cpeDev], { allowFailure: true, timeoutMs: 15_000 });
  }

  /**
   * The ISP renumbers access network i (its DHCP pool moves to .200-.249, old leases are
   * forgotten) and the CPE's DHCP client gets a new lease, as after an ISP-side reset. Returns the new address.
   */
  async renumber(i: number): Promise<string> {
    this.#access(i);
    await this.stopClient(i, { release: true });
    await this.#stopServer(i);
    rmSync(this.#dhcpFiles(i).leases, { force: true });
    await this.startServer(i, true);
    this.#renumbered.add(i);
    return this.startClient(i);
  }

  /**
   * Debian's dhclient-script, copied into the run directory with its hook directories pointed at the lab's own,
   * which hold only `exitHooks` (run-parts names: letters, digits, _ and -). Returns its path.
   */
  #hookScript(i: number, exitHooks: readonly string[], family: 4 | 6 = 4): string {
    const files = this.#dhcpFiles(i);
    const f = family === 4 ? files : { hooks: `${files.hooks}6`, script: `${files.script}6` };
    const hooks = `${f.hooks}/exit`;
    rmSync(f.hooks, { recursive: true, force: true });
    mkdirSync(hooks, { recursive: true });
    mkdirSync(`${f.hooks}/enter`);
    exitHooks.forEach((h, k) => writeFileSync(`${hooks}/${k}-${basename(h).replace(/[^A-Za-z0-9_-]/g, '_')}`, readFileSync(h)));
    const script = readFileSync(DHCLIENT_SCRIPT, 'utf8')
      .replaceAll('/etc/dhcp/dhclient-exit-hooks.d', hooks)
      .replaceAll('/etc/dhcp/dhclient-enter-hooks.d', `${f.hooks}/enter`)
      .replaceAll('/etc/dhcp/dhclient-exit-hooks', `${f.hooks}/none`)
      .replaceAll('/etc/dhcp/dhclient-enter-hooks', `${f.hooks}/none`);
    writeFileSync(f.script, script, { mode: 0o755 });
    return f.script;
  }

  #access(i: number) {
    if (!Number.isInteger(i) || i < 1 || i > this.#isps.length) throw new MpconvertError('MPC_ERR_LAB_SPEC', `No uplink ${i} in lab ${this.prefix} (1..${this.#isps.length})`);
    return fieldAccess(i);
  }

  #dhcpFiles(i: number) {
    const d = runDir(this.prefix);
    return {
      conf: `${d}/dhclient-up${i}.conf`,
      pid: `${d}/dhclient-up${i}.pid`,
      leases: `${d}/dhclient-up${i}.leases`,
      serverPid: `${d}/dnsmasq-isp${i}.pid`,
      serverLeases: `${d}/dnsmasq-isp${i}.leases`,
      serverLog: `${d}/dnsmasq-isp${i}.log`,
      script: `${d}/dhclient-script-up${i}`,
      conf6: `${d}/dhclient6-up${i}.conf`,
      pid6: `${d}/dhclient6-up${i}.pid`,
      leases6: `${d}/dhclient6-up${i}.leases`,
      hooks: `${d}/dhclient-hooks-up${i}`,
    };
  }

  /** dnsmasq as the DHCP server of access network i, in ISP i's namespace (it daemonizes once it serves). */
  async startServer(i: number, renumbered = false, opts?: FieldDhcpServerOptions): Promise<void> {
    const a = fieldAccess(i);
    const f = this.#dhcpFiles(i);
    if (opts) this.#serverOpts.set(i, opts);
    const o = this.#serverOpts.get(i) ?? {};
    mkdirSync(runDir(this.prefix), { recursive: true });
    const [lo, hi] = renumbered ? a.renumberedPool : a.pool;
    if (o.v6) {
      const isp = this.#isps[i - 1]!;
      const have = await run('ip', ['-6', 'addr', 'show', 'dev', a.ispDev], { netns: isp.name });
      if (!have.stdout.includes(`${a.gatewayV6}/`)) await run('ip', ['-6', 'addr', 'add', `${a.gatewayV6}/${a.v6Len}`, 'dev', a.ispDev, 'nodad'], { netns: isp.name });
    }
    const extra = [
      ...(o.mcpV4?.length ? [`--dhcp-option=${o.optionV4 ?? 224},${o.mcpV4.join(',')}`] : []),
      ...(o.v6 ? [`--dhcp-range=${a.pool6[0]},${a.pool6[1]},${a.v6Len},${FIELD.leaseS}s`] : []),
      ...(o.v6?.mcp?.length ? [`--dhcp-option=option6:${o.v6.optionV6 ?? 65224},${o.v6.mcp.map((x) => `[${x}]`).join(',')}`] : []),
      ...(o.renewS ? [`--dhcp-option=option:T1,${o.renewS}`, `--dhcp-option=option:T2,${Math.max(o.renewS + 1, Math.floor(FIELD.leaseS * 0.875))}`] : []),
    ];
    await run('dnsmasq', [...extra,
      '--conf-file=/dev/null', '--port=0', `--interface=${a.ispDev}`, '--bind-interfaces', '--no-ping', '--dhcp-authoritative',
      `--dhcp-range=${lo},${hi},255.255.255.0,${FIELD.leaseS}s`, `--dhcp-option=option:router,${a.gatewayV4}`,
      `--dhcp-leasefile=${f.serverLeases}`, `--pid-file=${f.serverPid}`, `--log-facility=${f.serverLog}`, '--log-dhcp', '--user=root',
    ], { netns: this.#isps[i - 1]!.name, timeoutMs: 10_000 });
  }

  /**
   * ISP i's DHCP server, restarted with other options (the same pool and leases: the CPE keeps its address);
   * the CPE's client sees them at its next renewal.
   */
  async reconfigureServer(i: number, opts: FieldDhcpServerOptions): Promise<void> {
    const renumbered = this.#renumbered.has(i);
    await this.#stopServer(i);
    await this.startServer(i, renumbered, opts);
  }

  readonly #renumbered = new Set<number>();

  async #stopServer(i: number): Promise<void> {
    let pid: number;
    try {
      pid = Number(readFileSync(this.#dhcpFiles(i).serverPid, 'utf8').trim());
    } catch {
      return;
    }
    if (!Number.isInteger(pid) || pid <= 1) return;
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      return;
    }
    // Poll until it is gone (its DHCP socket must be free for the next one).
    for (let t = 0; t < 100; t++) {
      try {
        process.kill(pid, 0);
      } catch {
        return;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    process.kill(pid, 'SIGKILL');
  }
}

/**
 * Builds the field topology in namespaces the caller names (docs/lab.md, "The field topology"): the build steps
 * of the classic topology, then 'dhcp' (the ISPs' dnsmasq, and the CPE's DHCP clients when `dhcpClients`).
 */
export async function buildField(ctx: FieldBuildContext, dhcp: FieldDhcp, dhcpClients: boolean): Promise<void> {
const step = ctx.step;
  await step('namespaces');
  const client = ctx.hosts.client.name;
  const cpe = ctx.hosts.cpe.name;
  const conc = ctx.hosts.concentrator.name;
  const inet = ctx.inet.name;
  const servers = ctx.hosts.servers.map((s) => s.name);
  const isps = ctx.hosts.isps.map((h) => h.name);
  const n = ctx.uplinks.length;
  await ctx.makeNamespaces();
  mkdirSync(runDir(ctx.prefix), { recursive: true });
  const common = ['net.ipv6.conf.all.accept_dad=0', 'net.ipv6.conf.default.accept_dad=0', 'net.ipv6.conf.all.accept_ra=0', 'net.ipv6.conf.default.accept_ra=0'];
  const router = ['net.ipv4.ip_forward=1', 'net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0'];
  await Promise.all([
    sysctl(client, common),
    sysctl(cpe, [...common, ...router]),
    sysctl(conc, [...common, 'net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0']),
    sysctl(inet, ['net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']),
    ...servers.map((s) => sysctl(s, common)),
    ...isps.map((s) => sysctl(s, [...common, ...router])),
  ]);

  await step('links');
  const veth = (a: string, aDev: string, b: string, bDev: string) =>
    run('ip', ['link', 'add', aDev, 'netns', a, 'type', 'veth', 'peer', 'name', bDev, 'netns', b]);
  await veth(client, LAB.lan.client.dev, cpe, LAB.lan.cpe.dev);
  for (let i = 1; i <= n; i++) {
    const a = fieldAccess(i);
    await veth(cpe, a.cpeDev, isps[i - 1]!, a.ispDev);
    await veth(isps[i - 1]!, FIELD.ispCoreDev, inet, a.ispPort);
  }
  await veth(conc, FIELD.concentrator.dev, inet, LAB.inet.concPort);
  for (let k = 1; k <= servers.length; k++) await veth(servers[k - 1]!, LAB.inet.serverDev, inet, serverAddressing(k).bridgePort);

  await step('addresses');
  const br = LAB.inet.bridge;
  const ports = [LAB.inet.concPort, ...servers.map((_, j) => serverAddressing(j + 1).bridgePort), ...ctx.uplinks.map((_, j) => fieldAccess(j + 1).ispPort)];
  const inetCmds = ['link set lo up', `link add ${br} type bridge mcast_snooping 0`, `link set ${br} up`, ...ports.flatMap((d) => [`link set ${d} master ${br}`, `link set ${d} up`])];
  const lanC = LAB.lan.client;
  const lanP = LAB.lan.cpe;
  // Public access networks are routed to their ISP on the internet segment; CGN ones are not (private space).
  const publicRoutes = ctx.uplinks.flatMap((u, j) => (u.cgn ? [] : [`route add ${fieldAccess(j + 1).v4Prefix} via ${fieldAccess(j + 1).coreV4}`]));
  const cpeCmds = ['link set lo up', `link set ${lanP.dev} up`, `addr add ${lanP.v4}/${LAB.lan.v4Len} dev ${lanP.dev}`];
  const ispCmds: string[][] = [];
  for (let i = 1; i <= n; i++) {
    const a = fieldAccess(i);
    const mtu = ctx.uplinks[i - 1]!.mtu ?? 1500;
    // No address on the CPE's uplinks: DHCP gives them.
    cpeCmds.push(`link set ${a.cpeDev} mtu ${mtu}`, `link set ${a.cpeDev} up`);
    ispCmds.push([
      'link set lo up', `link set ${a.ispDev} mtu ${mtu}`, `link set ${a.ispDev} up`, `addr add ${a.gatewayV4}/${a.v4Len} dev ${a.ispDev}`,
      `link set ${FIELD.ispCoreDev} up`, `addr add ${a.coreV4}/${LAB.inet.v4Len} dev ${FIELD.ispCoreDev}`,
      // The other ISPs' customers are reached through them, like every other internet host does.
      ...publicRoutes.filter((r) => !r.startsWith(`route add ${a.v4Prefix} `)),
    ]);
  }
  const fc = FIELD.concentrator;
  await Promise.all([
    batch(inet, inetCmds),
    batch(client, ['link set lo up', `link set ${lanC.dev} up`, `addr add ${lanC.v4}/${LAB.lan.v4Len} dev ${lanC.dev}`, `route add default via ${lanP.v4} dev ${lanC.dev}`]),
    batch(cpe, cpeCmds),
    batch(conc, ['link set lo up', `link set ${fc.dev} up`, `addr add ${fc.v4}/${LAB.inet.v4Len} dev ${fc.dev}`, ...publicRoutes]),
    ...isps.map((ns, j) => batch(ns, ispCmds[j]!)),
    ...servers.map((s, j) => {
      const a = serverAddressing(j + 1);
      return batch(s, ['link set lo up', `link set ${a.dev} up`, `addr add ${a.v4}/${LAB.inet.v4Len} dev ${a.dev}`, ...publicRoutes]);
    }),
  ]);
  // The carrier-grade NATs: what leaves an ISP from its CGN access network leaves from the ISP's address.
  await Promise.all(
    ctx.uplinks.flatMap((u, j) => {
      if (!u.cgn) return [];
      const a = fieldAccess(j + 1);
      const table = `table ip ${FIELD.cgnTable} {\n  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname "${FIELD.ispCoreDev}" ip saddr ${a.v4Prefix} counter masquerade\n  }\n}\n`;
      return [run('nft', ['-f', '-'], { netns: isps[j]!, input: table })];
    }),
  );

  await step('shaping');
  const tc: Array<Promise<unknown>> = [];
  ctx.uplinks.forEach((up, j) => {
    if (up.rate === 0) return;
    const a = fieldAccess(j + 1);
    tc.push(run('tc', tbfArgs(a.cpeDev, up.rate), { netns: cpe }), run('tc', tbfArgs(a.ispDev, up.rate), { netns: isps[j]! }));
  });
  await Promise.all(tc);

  await step('dhcp');
  for (let i = 1; i <= n; i++) await dhcp.startServer(i);
  if (dhcpClients) for (let i = 1; i <= n; i++) await dhcp.startClient(i);
}
