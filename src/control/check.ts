/**
 * `--check`: what a configuration asks of this host, checked before anything is changed. Pure functions over
 * the host's facts (gathered once by `hostFacts`), so each problem is named in one line and tests need no
 * host. The daemons run the same checks at start; `mpconvert cpe|concentrator --check` runs only them.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { natUplinks, type CpeConfig } from '../cpe/config.js';
import { sourceAddressMode, type ConcentratorConfig } from '../concentrator/config.js';
import type { DoctorCheck } from './doctor-checks.js';
import { parseEndpoint } from './address.js';
import { adminExposureProblem } from './admin.js';

export interface HostFacts {
  /** Interface names (with or without addresses). */
  interfaces: ReadonlySet<string>;
  /** Addresses configured on this host (any interface). */
  addresses: ReadonlySet<string>;
  /** net.mptcp.enabled is 1. */
  mptcp: boolean;
  /** net.ipv4.ip_forward is 1; absent = unknown (not checked). */
  ipv4Forwarding?: boolean;
}

export function hostFacts(): HostFacts {
  // Netlink (ip link) answers for this process's network namespace, whatever /sys shows.
  let names: string[] = Object.keys(networkInterfaces());
  try {
    const links = JSON.parse(execFileSync('ip', ['-j', 'link', 'show'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })) as Array<{ ifname?: string }>;
    names = [...names, ...links.flatMap((l) => (l.ifname ? [l.ifname] : []))];
  } catch {
    try {
      names = [...names, ...readdirSync('/sys/class/net')];
    } catch {
      /* only the interfaces with addresses are known */
    }
  }
  const addresses = new Set(Object.values(networkInterfaces()).flatMap((l) => (l ?? []).map((i) => i.address.split('%')[0] as string)));
  let mptcp = false;
  try {
    mptcp = readFileSync('/proc/sys/net/mptcp/enabled', 'utf8').trim() === '1';
  } catch {
    mptcp = false;
  }
  let ipv4Forwarding: boolean | undefined;
  try {
    ipv4Forwarding = readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8').trim() === '1';
  } catch {
    ipv4Forwarding = undefined;
  }
  return { interfaces: new Set(names), addresses, mptcp, ...(ipv4Forwarding !== undefined ? { ipv4Forwarding } : {}) };
}

const MPTCP_OFF = "kernel MPTCP is off or missing (net.mptcp.enabled is not 1): try 'sysctl -w net.mptcp.enabled=1'";

const duplicates = (list: readonly string[]): string[] => [...new Set(list.filter((x, i) => list.indexOf(x) !== i))];

/** The CPE's configuration against the host: one line per problem, [] when none. */
/** An admin endpoint others can reach needs a token file (the same rule startAdmin enforces). */
function adminProblems(c: { admin?: string | undefined; adminTokenFile?: string | undefined }): string[] {
  if (!c.admin) return [];
  const p = adminExposureProblem(parseEndpoint(c.admin), c.adminTokenFile);
  return p ? [p] : [];
}

export function checkCpe(c: CpeConfig, host: HostFacts): string[] {
  const problems: string[] = [];
  for (const i of c.lan) if (!host.interfaces.has(i)) problems.push(`lan: interface ${i} does not exist on this host`);
  const uplinks = c.uplinks.map((u) => u.interface);
  for (const i of uplinks) if (!host.interfaces.has(i)) problems.push(`uplinks: interface ${i} does not exist on this host`);
  for (const i of c.lan.filter((l) => uplinks.includes(l))) problems.push(`interface ${i} is both a LAN interface and an uplink`);
  for (const i of duplicates(uplinks)) problems.push(`uplinks: interface ${i} is listed more than once`);
  for (const i of duplicates([...c.lan])) problems.push(`lan: interface ${i} is listed more than once`);
  for (const a of duplicates(c.concentrators.map((x) => x.address))) problems.push(`concentrators: ${a} is listed more than once`);
  // Names the distribution gives must be uplinks (the daemon would refuse them after installing the uplinks).
  const o = c.distribution.overflow;
  if (c.distribution.scheme === 'overflow' && o && !uplinks.includes(o.primary)) problems.push(`distribution.overflow.primary: ${o.primary} is not one of the uplinks`);
  for (const k of c.distribution.classes) if (k.uplink !== undefined && !uplinks.includes(k.uplink)) problems.push(`distribution.classes ${k.name}: uplink ${k.uplink} is not one of the uplinks`);
  if (!host.mptcp) problems.push(MPTCP_OFF);
  const nat = natUplinks(c);
  if (nat.length > 0 && host.ipv4Forwarding === false) {
    problems.push(`uplinks ${nat.join(', ')} NAT what the CPE forwards (mode: ${c.mode}), but this host does not forward IPv4 (net.ipv4.ip_forward is 0): try 'sysctl -w net.ipv4.ip_forward=1'`);
  }
  problems.push(...adminProblems(c));
  return problems;
}

/** The concentrator's configuration against the host: one line per problem, [] when none. */
export function checkConcentrator(c: ConcentratorConfig, host: HostFacts): string[] {
  const problems: string[] = [];
  for (const text of duplicates(c.listen)) problems.push(`listen: ${text} is listed more than once`);
  for (const text of new Set(c.listen)) {
    const ep = parseEndpoint(text, { allowPortZero: true });
    const any = ep.host === '0.0.0.0' || ep.host === '::';
    if (!any && !host.addresses.has(ep.host)) problems.push(`listen ${text}: the address is not an address of this host (listen addresses must be local)`);
  }
  // Bindings open TCP listeners on these addresses (docs/concentrator.md, "Inbound bindings").
  for (const a of c.bindings?.addresses ?? []) {
    if (!host.addresses.has(a)) problems.push(`bindings.addresses: ${a} is not an address of this host (bindings listen on it)`);
  }
  if (!host.mptcp) problems.push(MPTCP_OFF);
  problems.push(...onPathProblems(c, host));
  problems.push(...adminProblems(c));
  return problems;
}

/**
 * The kernel features a configuration needs, judged from doctor's probes (src/control/doctor.ts
 * `probeKernel`, run once): one line per missing feature, naming what needs it, what the probe saw and what
 * to do. MPTCP itself is `checkCpe` / `checkConcentrator`'s (not repeated here).
 */
export function kernelProblems(role: 'cpe', c: CpeConfig, probes: readonly DoctorCheck[]): string[];
export function kernelProblems(role: 'concentrator', c: ConcentratorConfig, probes: readonly DoctorCheck[]): string[];
export function kernelProblems(role: 'cpe' | 'concentrator', c: CpeConfig | ConcentratorConfig, probes: readonly DoctorCheck[]): string[] {
  const needs: Array<[string, string]> = [];
  if (!probes.some((p) => p.name === 'mptcp' && !p.ok)) needs.push(['mptcp-socket', 'MPTCP sockets']);
  needs.push(['nft', `the ${role}'s nftables table`]);
  if (role === 'cpe') {
    const cpe = c as CpeConfig;
    needs.push(['tproxy', 'the interception (nft tproxy and socket expressions)'], ['ip-transparent', 'the transparent listener (IP_TRANSPARENT)'], ['iproute2', "the uplinks' MPTCP endpoints (ip mptcp)"]);
    if (cpe.concentrators.some((t) => t.zeroRtt)) needs.push(['tfo-client', "zeroRtt (the signalling in the SYN; 'mpconvert cpe --prepare', the unit's ExecStartPre, sets it)"]);
  } else {
    const conc = c as ConcentratorConfig;
    const mode = sourceAddressMode(conc);
    if (mode === 'transparent' || mode === 'nptv6') needs.push(['tproxy', `sourceAddress.mode ${mode} (the return path's nft socket expression)`], ['ip-transparent', `sourceAddress.mode ${mode} (server legs bound with IP_TRANSPARENT)`]);
    // With manageSysctls the daemon (or its --prepare) sets the server bit itself.
    if (conc.onPath) needs.push(['tproxy', 'onPath (TPROXY of the intercepted SYNs)'], ['ip-transparent', 'onPath (the transparent MPTCP listener)']);
    if (!conc.manageSysctls) needs.push(['tfo-server', 'accepting the signalling in the SYN with manageSysctls: false']);
  }
  const problems: string[] = [];
  for (const [name, what] of needs) {
    const p = probes.find((x) => x.name === name);
    if (p && !p.ok) problems.push(`kernel: ${what} cannot work here: ${p.detail}${p.fix ? `; ${p.fix}` : ''}`);
  }
  return problems;
}

/** Implicit mode: the box routes, its announced addresses are its own, the two ports differ (docs/implicit.md). */
function onPathProblems(c: ConcentratorConfig, host: HostFacts): string[] {
  const o = c.onPath;
  if (!o) return [];
  const problems: string[] = [];
  for (const a of o.announce) if (!host.addresses.has(a)) problems.push(`onPath.announce ${a}: not an address of this host (hosts join it: it must be local)`);
  if (o.joinPort === o.port) problems.push(`onPath.joinPort and onPath.port are both ${o.port}: the join listener and the transparent listener need their own ports`);
  if (host.ipv4Forwarding === false) problems.push("onPath: this host does not forward IPv4 (net.ipv4.ip_forward is 0), so it cannot route what it does not take: try 'sysctl -w net.ipv4.ip_forward=1'");
  return problems;
}

/** `--check`'s report: every problem on its own line (stderr, exit code 2), or one line saying all is well. */
export function reportCheck(role: string, problems: readonly string[], io: { out: (s: string) => void; err: (s: string) => void } = { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) }): number {
  if (problems.length === 0) {
    io.out(`mpconvert ${role}: configuration and host OK\n`);
    return 0;
  }
  for (const p of problems) io.err(`mpconvert ${role}: ${p}\n`);
  return 2;
}
