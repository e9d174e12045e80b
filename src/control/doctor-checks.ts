/**
 * The host checks of `mpconvert doctor` that depend on a role and its configuration, as pure functions over
 * facts gathered once (src/control/doctor.ts gathers them), so each is unit-tested without a host:
 * forwarding, reverse-path filtering, per-uplink routes, and the configuration file of a role.
 */
import type { AddressEntry, RouteEntry } from '../platform/types.js';
import { defaultGateway, observeLink } from '../cpe/uplinks.js';
import type { CpeConfig } from '../cpe/config.js';

export interface DoctorCheck {
  name: string;
  ok: boolean;
  detail: string;
  /** What to do when the check fails (or, for advisories, what would improve). */
  fix?: string;
}

export type DoctorRole = 'cpe' | 'concentrator' | 'any';

export function check(name: string, ok: boolean, detail: string, fix?: string): DoctorCheck {
  return ok || fix === undefined ? { name, ok, detail } : { name, ok, detail, fix };
}

/** An advisory: passes, with a hint. */
function hint(name: string, detail: string, fix: string): DoctorCheck {
  return { name, ok: true, detail, fix };
}

/**
 * Forwarding: a CPE forwards what it does not convert (UDP, ICMP, excluded and native MPTCP flows; NATed in
 * router mode), so IPv4 forwarding is required; IPv6 forwarding is advised (the LAN's IPv6). A concentrator
 * needs neither (it terminates and dials).
 */
export function forwardingCheck(role: DoctorRole, f: { ipv4: string; ipv6: string | null }, nsPrefix = ''): DoctorCheck {
  const v4 = f.ipv4.trim() === '1';
  const v6 = f.ipv6 === null ? null : f.ipv6.trim() === '1';
  const detail = `net.ipv4.ip_forward = ${f.ipv4.trim()}, net.ipv6.conf.all.forwarding = ${f.ipv6?.trim() ?? 'unreadable'}`;
  const persist = ' (persist it in /etc/sysctl.d/90-mpconvert.conf)';
  if (role === 'cpe') {
    if (!v4) return check('forwarding', false, `${detail}: the CPE forwards what it does not convert (UDP, ICMP, excluded flows)`, `'${nsPrefix}sysctl -w net.ipv4.ip_forward=1'${persist}`);
    if (v6 === false) return hint('forwarding', `${detail}: IPv4 forwarded; IPv6 from the LAN is not`, `For an IPv6 LAN: '${nsPrefix}sysctl -w net.ipv6.conf.all.forwarding=1'${persist}`);
    return check('forwarding', true, detail);
  }
  return check('forwarding', true, `${detail}${role === 'concentrator' ? ' (a concentrator does not need it)' : ' (a CPE needs IPv4 forwarding)'}`);
}

/** The kernel's effective rp_filter of an interface: the larger of conf.all and conf.IFACE. */
export function effectiveRpFilter(all: number, iface: number | undefined): number {
  return Math.max(all, iface ?? 0);
}

/**
 * Reverse-path filtering on the uplinks. Converted traffic passes strict mode (1): the reverse-path lookup of
 * a reply uses the uplink's own address as source, which the CPE's per-uplink rule routes back out of that
 * uplink (measured in the lab: two uplinks, rp_filter=1 everywhere, both carry subflows). What strict mode
 * drops is traffic the main table would not send back out of the interface it came in on: forwarded flows
 * returning on another uplink than the main table's default (after the default moved on a failure, with
 * multipath defaults), and an uplink's subflows while its table is not installed (no gateway yet). So strict
 * on an uplink of a CPE is an advisory (loose, 2, is what to use), and an error nowhere.
 */
export function rpFilterCheck(role: DoctorRole, all: number, uplinks: ReadonlyMap<string, number | undefined>, nsPrefix = ''): DoctorCheck {
  const names = [...uplinks.keys()];
  const eff = (n: string) => effectiveRpFilter(all, uplinks.get(n));
  const mode = (v: number) => (v === 1 ? 'strict' : v === 2 ? 'loose' : v === 0 ? 'off' : String(v));
  const detail = `net.ipv4.conf.*.rp_filter: ${[`all = ${all} (${mode(all)})`, ...names.map((n) => `${n} = ${eff(n)} (${mode(eff(n))})`)].join(', ')}`;
  if (role !== 'cpe') return check('rp_filter', true, `${detail}${role === 'any' ? ' (a CPE is better with loose or off on its uplinks)' : ''}`);
  const strict = names.length === 0 ? (all === 1 ? ['all'] : []) : names.filter((n) => eff(n) === 1);
  if (strict.length === 0) return check('rp_filter', true, detail);
  const ifaces = ['all', ...strict.filter((n) => n !== 'all')];
  return hint(
    'rp_filter',
    `${detail}: strict on ${strict.join(', ')} drops forwarded traffic that returns on another uplink than the main table's (converted traffic passes)`,
    `Loose mode: '${nsPrefix}sysctl -w ${ifaces.map((i) => `net.ipv4.conf.${i}.rp_filter=2`).join(' ')}' (persist it in /etc/sysctl.d/90-mpconvert.conf)`,
  );
}

/** What the host shows of one uplink: its addresses and link state, the main table's routes, the CPE's table. */
export interface UplinkRouteFacts {
  addresses: readonly AddressEntry[];
  main4: readonly RouteEntry[];
  main6: readonly RouteEntry[];
  /** The routes of the CPE's table for this uplink (routingTableBase + index), per family; [] when none. */
  table4: readonly RouteEntry[];
  table6: readonly RouteEntry[];
}

/**
 * Per uplink of a CPE configuration: the interface exists and is up, has a global address, and for each
 * family it has an address of, a gateway (the configured one, or a default route through it in the main
 * table), so the CPE can install its per-uplink table; and whether that table is installed now (a running CPE).
 */
export function uplinkRouteChecks(cfg: Pick<CpeConfig, 'uplinks' | 'routingTableBase'>, facts: UplinkRouteFacts): DoctorCheck[] {
  return cfg.uplinks.map((u, i) => {
    const name = `route:${u.interface}`;
    const table = cfg.routingTableBase + i;
    if (!facts.addresses.some((a) => a.ifname === u.interface)) return check(name, false, `no interface ${u.interface}`, 'Fix the uplink\'s interface name in the configuration, or bring the interface up');
    const link = observeLink(facts.addresses, u.interface);
    const fams: string[] = [];
    const missing: string[] = [];
    for (const [addr, configured, main, own] of [
      [link.address4, u.gateway4, facts.main4, facts.table4],
      [link.address6, u.gateway6, facts.main6, facts.table6],
    ] as const) {
      if (addr === null) continue;
      const found = defaultGateway(main, u.interface);
      const via = configured ?? (found === undefined ? undefined : (found ?? 'point-to-point'));
      const installed = own.some((r) => r.dst === 'default' && r.dev === u.interface);
      if (via === undefined) missing.push(addr);
      fams.push(`${addr} ${via === undefined ? 'without a gateway (none configured, no default route through it in the main table)' : `via ${via}${configured ? ' (configured)' : ' (main table)'}`}; table ${table}: ${installed ? 'default route installed' : 'not installed (no CPE running)'}`);
    }
    if (!link.up) return check(name, false, `${u.interface} is down${fams.length ? `: ${fams.join('; ')}` : ''}`, `Bring it up ('ip link set ${u.interface} up') or check the access link`);
    if (fams.length === 0) return check(name, false, `${u.interface} has no global address`, 'Give it an address (DHCP client, static configuration); the CPE adds it when one appears');
    // An address without a gateway: its subflows would leave by the main table's route, another uplink.
    return check(name, missing.length === 0, `${u.interface}: ${fams.join('; ')}`, `Configure gateway4/gateway6 for ${u.interface}, or give it a default route ('ip route add default via GATEWAY dev ${u.interface} metric 100')`);
  });
}

/** The configuration file of a role: it loads, and what it asks of this host is there (the `--check` rules). */
export function configCheck(role: 'cpe' | 'concentrator', file: string, r: { error: string } | { problems: readonly string[] }): DoctorCheck {
  if ('error' in r) return check('config', false, `${file}: ${r.error}`, `Fix the file (docs/${role}.md lists every setting)`);
  if (r.problems.length > 0) return check('config', false, `${file}: ${r.problems.join('; ')}`, `Fix what is named (mpconvert ${role} --config ${file} --check lists the same)`);
  return check('config', true, `${file}: valid for a ${role}, and this host has what it names`);
}
