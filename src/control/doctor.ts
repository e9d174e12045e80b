/**
 * `mpconvert doctor`: checks that this host (or a network namespace, `--netns NAME`) can run a CPE or a
 * concentrator, and says what to do for each failing check (after mptcpd: "Try 'sysctl -w ...'").
 * Exit code 1 when any check fails. The kernel feature probes (`probeKernel`) are also what `--check` and
 * the daemons' start use (src/control/check.ts, `kernelProblems`); the role- and configuration-dependent
 * checks are pure functions in ./doctor-checks.ts.
 */
import { readFileSync } from 'node:fs';
import { Command, Option } from 'commander';
import { run } from '../platform/linux/exec.js';
import { createLinuxKernelConfig } from '../platform/linux/kernel.js';
import type { KernelConfig, RouteEntry } from '../platform/types.js';
import { resolveCpeConfig, type CpeConfig } from '../cpe/config.js';
import { resolveConcentratorConfig, type ConcentratorConfig } from '../concentrator/config.js';
import { checkConcentrator, checkCpe, kernelProblems, type HostFacts } from './check.js';
import { check, configCheck, forwardingCheck, rpFilterCheck, uplinkRouteChecks, type DoctorCheck, type DoctorRole } from './doctor-checks.js';

export type { DoctorCheck } from './doctor-checks.js';

export interface DoctorOptions {
  /** Check this network namespace instead of the caller's. */
  netns?: string;
  /** 'concentrator' makes the TFO server bit (0x2) a requirement; 'cpe' and 'any' only advise it. */
  role?: DoctorRole;
  /** The configuration file of the role (needs role cpe or concentrator): checked, and its uplinks' routes and rp_filter. */
  config?: string;
}

const CAP_NET_ADMIN = 12;
const CAP_NET_RAW = 13;

function errText(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0] ?? '';
}

/** Parses "1.0.6" / "6.1.0" into comparable numbers. */
export function versionAtLeast(version: string, min: readonly number[]): boolean {
  const parts = version.split('.').map((p) => parseInt(p, 10));
  for (let i = 0; i < min.length; i++) {
    const a = parts[i] ?? 0;
    const b = min[i] ?? 0;
    if (Number.isNaN(a)) return false;
    if (a !== b) return a > b;
  }
  return true;
}

function capabilities(): { admin: boolean; raw: boolean; uid: number } {
  const status = readFileSync('/proc/self/status', 'utf8');
  const eff = /^CapEff:\s*([0-9a-f]+)/m.exec(status)?.[1] ?? '0';
  const caps = BigInt(`0x${eff}`);
  return {
    admin: (caps & (1n << BigInt(CAP_NET_ADMIN))) !== 0n,
    raw: (caps & (1n << BigInt(CAP_NET_RAW))) !== 0n,
    uid: typeof process.getuid === 'function' ? process.getuid() : -1,
  };
}

export async function runDoctor(opts: DoctorOptions = {}): Promise<DoctorCheck[]> {
  const netns = opts.netns;
  const role = opts.role ?? 'any';
  const nsPrefix = netns === undefined ? '' : `ip netns exec ${netns} `;
  const kernel = createLinuxKernelConfig(netns === undefined ? {} : { netns });
  const checks: DoctorCheck[] = [];

  // Privileges first: everything after needs them.
  const caps = capabilities();
  checks.push(
    check(
      'privileges',
      caps.admin,
      caps.admin ? `uid ${caps.uid}, CAP_NET_ADMIN${caps.raw ? ' and CAP_NET_RAW' : ''}` : `uid ${caps.uid} without CAP_NET_ADMIN`,
      "Run as root, or with CAP_NET_ADMIN: the packaged units (mpconvert-cpe.service, mpconvert-concentrator.service) run the daemons as the user mpconvert with AmbientCapabilities=CAP_NET_ADMIN (docs/service.md)",
    ),
  );

  if (netns !== undefined) {
    let exists = false;
    try {
      const { stdout } = await run('ip', ['-j', 'netns', 'list']);
      exists = (JSON.parse(stdout.trim() || '[]') as Array<{ name: string }>).some((n) => n.name === netns);
    } catch {
      /* reported below */
    }
    checks.push(check('netns', exists, exists ? `namespace ${netns} exists` : `no namespace named ${netns}`, `Create it ('ip netns add ${netns}') or fix --netns`));
    if (!exists) return checks;
  }

  // The role's configuration file, before the probes: its uplinks are what rp_filter and routes look at.
  let cpeConfig: CpeConfig | undefined;
  let concConfig: ConcentratorConfig | undefined;
  let configChecks: DoctorCheck[] = [];
  if (opts.config !== undefined) {
    if (role === 'any') {
      configChecks = [check('config', false, `${opts.config}: whose configuration is it?`, 'Say it with --role cpe or --role concentrator')];
    } else {
      let loaded: CpeConfig | ConcentratorConfig | undefined;
      try {
        loaded = role === 'cpe' ? await resolveCpeConfig({ config: opts.config }) : await resolveConcentratorConfig({ config: opts.config });
      } catch (err) {
        configChecks = [configCheck(role, opts.config, { error: errText(err) })];
      }
      if (loaded !== undefined) {
        const facts = await hostFactsOf(kernel).catch(() => undefined);
        const problems = facts === undefined ? ['the host\'s interfaces and addresses are unreadable'] : role === 'cpe' ? checkCpe(loaded as CpeConfig, facts) : checkConcentrator(loaded as ConcentratorConfig, facts);
        configChecks = [configCheck(role, opts.config, { problems })];
        if (role === 'cpe') cpeConfig = loaded as CpeConfig;
        else concConfig = loaded as ConcentratorConfig;
      }
    }
  }

  const probes = await probeKernel({ kernel, role, caps, ...(netns !== undefined ? { netns } : {}) });
  // A concentrator configured with manageSysctls sets the TFO server bit itself at start: then an advisory.
  checks.push(...probes.map((c) => (c.name === 'tfo-server' && !c.ok && concConfig?.manageSysctls ? { ...c, ok: true, detail: `${c.detail} (manageSysctls: true: the concentrator sets it at start)` } : c)));

  // Forwarding and reverse-path filtering (the uplinks' when the configuration names them).
  const sysctl = (name: string) => kernel.sysctl.get(name).then((v) => v.trim(), () => null);
  const [fwd4, fwd6, rpAll] = await Promise.all([sysctl('net.ipv4.ip_forward'), sysctl('net.ipv6.conf.all.forwarding'), sysctl('net.ipv4.conf.all.rp_filter')]);
  checks.push(fwd4 === null ? check('forwarding', role !== 'cpe', 'net.ipv4.ip_forward is unreadable', 'Use a kernel with IPv4 (procfs mounted)') : forwardingCheck(role, { ipv4: fwd4, ipv6: fwd6 }, nsPrefix));
  const uplinkRp = new Map<string, number | undefined>();
  for (const u of cpeConfig?.uplinks ?? []) {
    const v = await sysctl(`net.ipv4.conf.${u.interface}.rp_filter`);
    uplinkRp.set(u.interface, v === null ? undefined : Number(v));
  }
  checks.push(rpFilterCheck(role, Number(rpAll ?? 0), uplinkRp, nsPrefix));

  // Per-uplink routes (a CPE configuration).
  if (cpeConfig !== undefined) {
    const routes = (table: number | string, f: 4 | 6) => kernel.routes.listRoutes(table, f).catch((): RouteEntry[] => []);
    try {
      const addresses = await kernel.routes.listAddresses();
      const [main4, main6] = await Promise.all([routes('main', 4), routes('main', 6)]);
      for (const [i, u] of cpeConfig.uplinks.entries()) {
        const table = cpeConfig.routingTableBase + i;
        const [table4, table6] = await Promise.all([routes(table, 4), routes(table, 6)]);
        checks.push(...uplinkRouteChecks({ uplinks: [u], routingTableBase: table }, { addresses, main4, main6, table4, table6 }));
      }
    } catch (err) {
      checks.push(check('routes', false, `the interfaces are unreadable: ${errText(err)}`, "Check that 'ip -j addr show' works"));
    }
  }
  checks.push(...configChecks);
  return checks;
}

/** The host's interfaces, addresses and sysctls through the kernel adapter (so also inside a namespace). */
export async function hostFactsOf(kernel: KernelConfig): Promise<HostFacts> {
  const entries = await kernel.routes.listAddresses();
  const get = (name: string) => kernel.sysctl.get(name).then((v) => v.trim(), () => null);
  const [mptcp, fwd] = await Promise.all([get('net.mptcp.enabled'), get('net.ipv4.ip_forward')]);
  return {
    interfaces: new Set(entries.map((e) => e.ifname)),
    addresses: new Set(entries.flatMap((e) => (e.addr_info ?? []).map((a) => a.local))),
    mptcp: mptcp === '1',
    ...(fwd !== null ? { ipv4Forwarding: fwd === '1' } : {}),
  };
}

export interface ProbeOptions {
  /** Default: the caller's namespace, or `netns`'s. */
  kernel?: KernelConfig;
  netns?: string;
  role?: DoctorRole;
  /** The caller's capabilities (read from /proc/self/status when absent). */
  caps?: { admin: boolean; raw: boolean; uid: number };
}

/**
 * The kernel features mpconvert uses, each probed for real: MPTCP (sysctl, a socket), TCP Fast Open bits, nft
 * and its tproxy + socket expressions (a scratch table loaded and removed), iproute2 with `ip mptcp`,
 * IP_TRANSPARENT. Names: mptcp, mptcp-socket, tfo-client, tfo-server, nft, iproute2, tproxy, ip-transparent.
 */
export async function probeKernel(opts: ProbeOptions = {}): Promise<DoctorCheck[]> {
  const netns = opts.netns;
  const role = opts.role ?? 'any';
  const where = netns === undefined ? '' : ` (namespace ${netns})`;
  const nsPrefix = netns === undefined ? '' : `ip netns exec ${netns} `;
  const kernel = opts.kernel ?? createLinuxKernelConfig(netns === undefined ? {} : { netns });
  const caps = opts.caps ?? capabilities();
  const checks: DoctorCheck[] = [];

  // Kernel MPTCP.
  try {
    const enabled = await kernel.sysctl.get('net.mptcp.enabled');
    checks.push(
      check(
        'mptcp',
        enabled === '1',
        `net.mptcp.enabled = ${enabled}${where}`,
        `Enable MPTCP: '${nsPrefix}sysctl -w net.mptcp.enabled=1' (persist it in /etc/sysctl.d/90-mpconvert.conf)`,
      ),
    );
  } catch (err) {
    checks.push(
      check('mptcp', false, `net.mptcp.enabled is unreadable${where}: ${errText(err)}`, 'This kernel has no MPTCP: use Linux >= 5.19 built with CONFIG_MPTCP=y (and CONFIG_MPTCP_IPV6=y)'),
    );
  }

  // An MPTCP socket, through the FFI adapter (in the caller's namespace only).
  if (netns === undefined) {
    try {
      const ffi = await import('../platform/linux/ffi.js');
      const fd = ffi.socket(4, 'mptcp');
      ffi.close(fd);
      checks.push(check('mptcp-socket', true, 'socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP) works (koffi FFI loaded)'));
    } catch (err) {
      checks.push(
        check('mptcp-socket', false, `cannot create an MPTCP socket: ${errText(err)}`, "Check 'sysctl net.mptcp.enabled' and that the koffi package installed its native module (npm ci)"),
      );
    }
  }

  // TCP Fast Open bits: 0x1 lets the CPE put the signalling in the SYN, 0x2 lets a concentrator accept it.
  try {
    const tfo = Number(await kernel.sysctl.get('net.ipv4.tcp_fastopen'));
    const client = (tfo & 0x1) !== 0;
    const server = (tfo & 0x2) !== 0;
    checks.push(
      check(
        'tfo-client',
        client,
        `net.ipv4.tcp_fastopen = ${tfo}${where}: client bit 0x1 ${client ? 'set' : 'missing'}`,
        `Set the client bit: '${nsPrefix}sysctl -w net.ipv4.tcp_fastopen=${tfo | 0x1}'`,
      ),
    );
    const serverRequired = role === 'concentrator';
    checks.push({
      name: 'tfo-server',
      ok: server || !serverRequired,
      detail: server
        ? `server bit 0x2 set: data in the SYN is accepted${where}`
        : `server bit 0x2 missing${where}: a concentrator here sets it at start when manageSysctls is true; without it MPTCP connections that carry signalling in the SYN fall back to TCP`,
      ...(server ? {} : { fix: `For a concentrator: '${nsPrefix}sysctl -w net.ipv4.tcp_fastopen=${tfo | 0x3}' (or manageSysctls: true)` }),
    });
  } catch (err) {
    checks.push(check('tfo-client', false, `net.ipv4.tcp_fastopen is unreadable: ${errText(err)}`, 'Use a kernel with TCP Fast Open (any Linux >= 3.13)'));
  }

  // Tools.
  let nftOk = false;
  try {
    const { stdout } = await run('nft', ['--version']);
    const v = /v?(\d+\.\d+(?:\.\d+)?)/.exec(stdout)?.[1] ?? '0';
    const okVersion = versionAtLeast(v, [0, 9, 6]);
    checks.push(check('nft', okVersion, `nftables ${v}${okVersion ? '' : ' (0.9.6 or later needed)'}`, "Install a newer nftables ('apt-get install nftables')"));
    nftOk = okVersion;
  } catch (err) {
    checks.push(check('nft', false, `nft not usable: ${errText(err)}`, "Install nftables: 'apt-get install nftables'"));
  }
  try {
    const { stdout } = await run('ip', ['-V']);
    const v = /iproute2-(?:ss)?(\d+(?:\.\d+)*)/.exec(stdout)?.[1] ?? '0';
    let mptcpCmd = true;
    let limitsText = '';
    try {
      const l = await kernel.mptcp.limits();
      limitsText = `; MPTCP limits: subflows ${l.subflows}, add_addr_accepted ${l.addAddrAccepted}`;
    } catch {
      mptcpCmd = false;
    }
    const okVersion = versionAtLeast(v, [5, 15]) || v.length >= 6; // old 'ss' date versions are YYMMDD
    checks.push(
      check(
        'iproute2',
        okVersion && mptcpCmd,
        `iproute2 ${v}${mptcpCmd ? limitsText : ", no 'ip mptcp' support"}`,
        "Install iproute2 >= 5.15 with 'ip mptcp' ('apt-get install iproute2')",
      ),
    );
  } catch (err) {
    checks.push(check('iproute2', false, `ip not usable: ${errText(err)}`, "Install iproute2: 'apt-get install iproute2'"));
  }

  // TPROXY (CPE interception): load a real rule into the kernel in a scratch table, then remove it.
  if (nftOk) {
    const table = `mpconvert_doctor_${process.pid}`;
    try {
      await kernel.nft.applyTable(
        'inet',
        table,
        [
          'chain probe {',
          '  type filter hook prerouting priority mangle; policy accept;',
          '  meta l4proto tcp socket transparent 1 meta mark set 0x1 accept',
          '  meta l4proto tcp ip daddr 198.18.255.255 tproxy ip to 127.0.0.1:1 meta mark set 0x1 accept',
          '  meta l4proto tcp ip6 daddr 2001:db8::ffff tproxy ip6 to [::1]:1 meta mark set 0x1 accept',
          '}',
        ].join('\n'),
      );
      checks.push(check('tproxy', true, `nft tproxy and socket expressions load${where}`));
    } catch (err) {
      checks.push(
        check(
          'tproxy',
          false,
          `nft cannot load a tproxy rule${where}: ${errText(err)}`,
          "Load the modules ('modprobe nft_tproxy nft_socket nf_tproxy_ipv4 nf_tproxy_ipv6') or use a kernel with CONFIG_NFT_TPROXY and CONFIG_NFT_SOCKET",
        ),
      );
    } finally {
      await kernel.nft.deleteTable('inet', table).catch(() => {});
    }
  }

  // Transparent sockets need CAP_NET_ADMIN or CAP_NET_RAW at setsockopt time (caller's namespace only).
  if (netns === undefined && caps.admin) {
    try {
      const ffi = await import('../platform/linux/ffi.js');
      const fd = ffi.socket(4, 'tcp');
      try {
        ffi.setsockoptInt(fd, ffi.SOL_IP, ffi.IP.TRANSPARENT, 1, 'IP_TRANSPARENT');
      } finally {
        ffi.close(fd);
      }
      checks.push(check('ip-transparent', true, 'IP_TRANSPARENT can be set'));
    } catch (err) {
      checks.push(check('ip-transparent', false, `IP_TRANSPARENT refused: ${errText(err)}`, 'Grant CAP_NET_ADMIN (or CAP_NET_RAW) to the process'));
    }
  }
  return checks;
}

/**
 * `--check` and the daemons' start: the kernel features this configuration needs, probed as the doctor does
 * (`probeKernel`), one line per missing one. Without CAP_NET_ADMIN nothing can be probed (nor run): one line
 * says so.
 */
export async function kernelCheck(role: 'cpe', c: CpeConfig): Promise<string[]>;
export async function kernelCheck(role: 'concentrator', c: ConcentratorConfig): Promise<string[]>;
export async function kernelCheck(role: 'cpe' | 'concentrator', c: CpeConfig | ConcentratorConfig): Promise<string[]> {
  const caps = capabilities();
  if (!caps.admin) {
    return [`privileges: uid ${caps.uid} without CAP_NET_ADMIN: the ${role} needs it (run it as root, or as the packaged unit does), and its kernel features cannot be probed without it`];
  }
  const probes = await probeKernel({ role, caps });
  return role === 'cpe' ? kernelProblems('cpe', c as CpeConfig, probes) : kernelProblems('concentrator', c as ConcentratorConfig, probes);
}

/** One report, two renderings: the text and the JSON carry the same checks, in the same order, and the same verdict. */
export interface DoctorReport {
  ok: boolean;
  failed: number;
  total: number;
  checks: DoctorCheck[];
}

export function doctorReport(checks: readonly DoctorCheck[]): DoctorReport {
  const failed = checks.filter((c) => !c.ok).length;
  return { ok: failed === 0, failed, total: checks.length, checks: [...checks] };
}

/** The checks as a table, each failing one followed by what to do (advisories by a hint). */
export function formatDoctor(checks: readonly DoctorCheck[]): string {
  const r = doctorReport(checks);
  const width = Math.max(...r.checks.map((c) => c.name.length), 5);
  const lines: string[] = [];
  for (const c of r.checks) {
    lines.push(`${c.ok ? ' ok ' : 'FAIL'}  ${c.name.padEnd(width)}  ${c.detail}`);
    if (c.fix !== undefined) lines.push(`${' '.repeat(width + 8)}${c.ok ? 'hint' : 'fix'}: ${c.fix}`);
  }
  lines.push(r.ok ? `all ${r.total} checks passed` : `${r.failed} of ${r.total} checks failed`);
  return lines.join('\n');
}

export function doctorCommand(): Command {
  return new Command('doctor')
    .description('check kernel MPTCP, TCP Fast Open, nftables/TPROXY, iproute2, privileges, forwarding, rp_filter, and with --config a role\'s configuration and its uplinks\' routes; exit 1 if any check fails')
    .option('--netns <name>', 'check this network namespace instead of the current one')
    .addOption(new Option('--role <role>', 'what this host runs').choices(['cpe', 'concentrator', 'any']).default('any'))
    .option('--config <file>', 'the configuration file of the role (with --role cpe|concentrator)')
    .option('--json', 'print the report as JSON ({ok, failed, total, checks})')
    .action(async (o: { netns?: string; role: DoctorRole; config?: string; json?: boolean }) => {
      const checks = await runDoctor({ ...(o.netns !== undefined ? { netns: o.netns } : {}), role: o.role, ...(o.config !== undefined ? { config: o.config } : {}) });
      process.stdout.write(o.json ? `${JSON.stringify(doctorReport(checks), null, 2)}\n` : `${formatDoctor(checks)}\n`);
      if (checks.some((c) => !c.ok)) process.exitCode = 1;
    });
}
