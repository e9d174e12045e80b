/**
 * The CPE's interception ruleset, pure: options in, the nft text of one table `inet mpconvert_cpe_<instance>`
 * out (applied atomically by the platform's `nft.applyTable`).
 *
 * Prerouting (priority mangle), for TCP (and, with UDP channels, UDP) arriving on a LAN interface, in this order:
 *   1. packets of connections the daemon already owns (`socket transparent 1`): mark, accept (local delivery);
 *   2. anything but a new connection's SYN: accept (forwarded flows started before we ran stay untouched);
 *   3. destinations that are the CPE itself, broadcast/multicast, or routed back into a LAN: accept;
 *   4. native MPTCP (the Network-Assisted MPTCP design: "encourage end-to-end MPTCP"): every MPTCP SYN when 'passthrough'; MP_JOIN
 *      SYNs always (a join belongs to a connection the client already runs end to end);
 *   5. excluded destinations (exclude wins over include): accept untouched;
 *   6. included destinations: TPROXY to the transparent listener on 127.0.0.1 / [::1] (which sees the
 *      original destination as its local address), then mark (the client's DSCP above the mark bit). In that
 *      order so that the router fails open: without a listener (daemon killed) tproxy does not match, nothing
 *      is marked and the SYN is forwarded untouched.
 *   7. with `udpTproxyPort`: included UDP (every datagram) TPROXY to the transparent UDP sockets, then mark.
 * Forward (priority mangle), optional: MSS clamp of the SYNs of flows forwarded untouched.
 * Postrouting (priority srcnat), optional: masquerade of the IPv4 packets the CPE forwards out of the uplinks
 * with `nat` (what it does not convert: UDP, ICMP, excluded or native-MPTCP TCP). The CPE's own packets (the
 * subflows, from the uplinks' addresses) are left alone (`fib saddr type local`), so the kernel's choice
 * of source address per subflow stands. IPv6 is never NATed (a LAN gets a routed or delegated prefix).
 * Output (priority mangle), optional: the SYN window clamp (`tcp window set 62`) on the CPE's own SYNs to the
 * concentrators that ask for it, for concentrators whose kernel the operator cannot fix or clamp itself
 * (docs/kernel-tfo-window.md). 62 << the CPE's window scale (10 on Linux with default buffers) = 63488 stays
 * below the real 64240; the SYN window itself is never scaled.
 *
 * Every decisive rule carries a counter and a comment naming it, so tests and operators can read which rule
 * took a flow (`nft -j list table`).
 */
import { isIP } from 'node:net';
import { parseCidr } from '../policy/cidr.js';
import { MpconvertError } from '../errors.js';
import { hex8 as hex, LOCAL_DESTINATION, mangleHook, markSet, nftChain, nftSet, NOT_SYN, quote as q, tproxyTo, transparentSocket } from '../interception/index.js';

export type PortMatch = number | readonly [number, number];

export interface FlowMatch {
  /** IP prefix ("198.19.0.0/16", "::/0") or a bare address (a host prefix). */
  prefix: string;
  /** Destination ports or inclusive ranges; absent = all ports. */
  ports?: readonly PortMatch[] | undefined;
}

export interface InterceptionRulesetOptions {
  /** Names the table: `mpconvert_cpe_<instance>`. */
  instance: string;
  lanInterfaces: readonly string[];
  /** Port of the transparent listeners on 127.0.0.1 and [::1]. */
  tproxyPort: number;
  /** The fwmark bit(s) that route intercepted packets to the local table. */
  mark: number;
  /** Mask of the policy-routing match; default `mark`. Must not overlap the DSCP bits (8-13). */
  markMask?: number | undefined;
  include: readonly FlowMatch[];
  exclude: readonly FlowMatch[];
  nativeMptcp: 'passthrough' | 'intercept';
  /** Put the client's DSCP in the SYN's mark (dscp << 8 | mark); with tcp_fwmark_accept the accepted socket's SO_MARK carries it. */
  dscpToMark: boolean;
  /** MSS clamp for flows forwarded untouched: 'pmtu' (route MTU) or a value; absent = no clamp. */
  mssClamp?: number | 'pmtu' | undefined;
  /** Address families to intercept; default both. */
  families?: ReadonlyArray<4 | 6> | undefined;
  /** Uplinks that masquerade (IPv4) what the CPE forwards out of them (postrouting, srcnat); absent/empty = none. */
  natInterfaces?: readonly string[] | undefined;
  /**
   * UDP interception (UDP channels): LAN UDP of the same include/exclude policy, TPROXY to this port on
   * 127.0.0.1 / [::1] (the transparent UDP sockets); absent = UDP is forwarded untouched.
   */
  udpTproxyPort?: number | undefined;
  /** Concentrators whose SYNs leave with the window clamped (egress, output hook). */
  synWindowClamp?: ReadonlyArray<{ address: string; port: number }> | undefined;
}

/** The SYN window the CPE puts on its SYNs to a concentrator with synWindowClamp. */
export const CPE_SYN_WINDOW_CLAMP = 62;

/** Names given to the rules (nft comments), stable for tests and tools. */
export const RULE_COMMENTS = {
  established: 'mpconvert: established converted connection',
  local: 'mpconvert: destination is this host',
  lan: 'mpconvert: destination is on a LAN',
  nativeMptcp: 'mpconvert: native MPTCP passthrough',
  mptcpJoin: 'mpconvert: MPTCP join passthrough',
  exclude: 'mpconvert: excluded',
  intercept: 'mpconvert: intercepted',
  interceptUdp: 'mpconvert: intercepted (udp)',
  mssClamp: 'mpconvert: MSS clamp',
  synWindowClamp: 'mpconvert: SYN window clamp (MPTCP passive TFO)',
  nat: 'mpconvert: NAT of forwarded traffic',
} as const;

/** The DSCP bits of a mark produced by the ruleset. */
export const DSCP_MARK_SHIFT = 8;
const DSCP_MARK_BITS = 0x3f << DSCP_MARK_SHIFT;

export class RulesetError extends MpconvertError {
  constructor(message: string) {
    super('MPC_ERR_CPE_RULESET', `Cannot build the interception ruleset: ${message}`);
  }
}

export function interceptionTableName(instance: string): string {
  if (!/^[a-z0-9_]{1,16}$/.test(instance)) throw new RulesetError(`instance '${instance}' must be 1-16 of [a-z0-9_]`);
  return `mpconvert_cpe_${instance}`;
}

/** The mark of a SYN whose DSCP is `dscp` (what the daemon reads back with SO_MARK). */
export function dscpMark(dscp: number, mark: number): number {
  return ((dscp & 0x3f) << DSCP_MARK_SHIFT) | mark;
}

/** The DSCP carried in a mark set by the ruleset. */
export function dscpFromMark(mark: number): number {
  return (mark >>> DSCP_MARK_SHIFT) & 0x3f;
}

const IFNAME = /^[A-Za-z0-9_.:@+-]{1,15}$/;

function checkPort(p: number, what: string): number {
  if (!Number.isInteger(p) || p < 1 || p > 65535) throw new RulesetError(`${what} ${p} is not a port (1-65535)`);
  return p;
}

function portsExpr(ports: readonly PortMatch[] | undefined, proto: 'tcp' | 'udp' = 'tcp'): string {
  if (ports === undefined) return '';
  if (ports.length === 0) throw new RulesetError('an empty port list matches nothing; omit "ports" to match all ports');
  const items = ports.map((p) => {
    if (typeof p === 'number') return String(checkPort(p, 'port'));
    const [a, b] = p;
    checkPort(a, 'port range start');
    checkPort(b, 'port range end');
    if (a > b) throw new RulesetError(`port range ${a}-${b} is reversed`);
    return a === b ? String(a) : `${a}-${b}`;
  });
  return items.length === 1 ? ` ${proto} dport ${items[0]}` : ` ${proto} dport { ${items.join(', ')} }`;
}

interface Match {
  family: 4 | 6;
  /** nft selector, e.g. "ip daddr 198.19.0.0/16 tcp dport { 80, 443 }". */
  text: string;
}

function flowMatch(m: FlowMatch, families: ReadonlyArray<4 | 6>, proto: 'tcp' | 'udp' = 'tcp'): Match | null {
  let c;
  try {
    c = parseCidr(m.prefix);
  } catch (err) {
    throw new RulesetError((err as Error).message);
  }
  if (!families.includes(c.family)) return null;
  const addr = c.bits === 0 ? `meta nfproto ${c.family === 4 ? 'ipv4' : 'ipv6'}` : `${c.family === 4 ? 'ip' : 'ip6'} daddr ${c.text}`;
  return { family: c.family, text: `${addr}${portsExpr(m.ports, proto)}` };
}

function ifset(names: readonly string[]): string {
  return nftSet(names.map(q));
}

export function validateRulesetOptions(o: InterceptionRulesetOptions): void {
  interceptionTableName(o.instance);
  if (o.lanInterfaces.length === 0) throw new RulesetError('no LAN interface');
  for (const i of o.lanInterfaces) if (!IFNAME.test(i)) throw new RulesetError(`bad interface name '${i}'`);
  checkPort(o.tproxyPort, 'tproxyPort');
  if (o.udpTproxyPort !== undefined) checkPort(o.udpTproxyPort, 'udpTproxyPort');
  const mask = o.markMask ?? o.mark;
  if (!Number.isInteger(o.mark) || o.mark <= 0 || o.mark > 0xffffffff) throw new RulesetError(`mark ${o.mark} must be a non-zero 32-bit value`);
  if (!Number.isInteger(mask) || mask <= 0 || mask > 0xffffffff) throw new RulesetError(`markMask ${mask} must be a non-zero 32-bit value`);
  if ((o.mark & ~mask) !== 0) throw new RulesetError(`mark ${hex(o.mark)} has bits outside markMask ${hex(mask)}`);
  if (o.dscpToMark && ((o.mark | mask) & DSCP_MARK_BITS) !== 0) {
    throw new RulesetError(`mark/markMask must leave bits 8-13 free for the DSCP (mark ${hex(o.mark)}, mask ${hex(mask)})`);
  }
  if (o.mssClamp !== undefined && o.mssClamp !== 'pmtu' && (!Number.isInteger(o.mssClamp) || o.mssClamp < 536 || o.mssClamp > 65535)) {
    throw new RulesetError(`mssClamp ${o.mssClamp} must be 'pmtu' or 536-65535`);
  }
  for (const t of o.synWindowClamp ?? []) {
    if (isIP(t.address) === 0) throw new RulesetError(`synWindowClamp target '${t.address}' is not an IP address`);
    checkPort(t.port, 'synWindowClamp port');
  }
  for (const i of o.natInterfaces ?? []) {
    if (!IFNAME.test(i)) throw new RulesetError(`bad NAT interface name '${i}'`);
    if (o.lanInterfaces.includes(i)) throw new RulesetError(`interface '${i}' is both a LAN interface and a NAT uplink`);
  }
  const fams = o.families ?? [4, 6];
  if (fams.length === 0 || fams.some((f) => f !== 4 && f !== 6)) throw new RulesetError('families must be a non-empty subset of [4, 6]');
}

/** The nft text of the interception table (a whole `table inet mpconvert_cpe_<instance> { ... }`). */
export function buildInterceptionRuleset(o: InterceptionRulesetOptions): string {
  validateRulesetOptions(o);
  const table = interceptionTableName(o.instance);
  const families = o.families ?? [4, 6];
  const lans = ifset(o.lanInterfaces);
  // nft wants the comment last: "... counter accept comment "..."".
  const c = (name: keyof typeof RULE_COMMENTS, verdict = ' accept') => `counter${verdict} comment ${q(RULE_COMMENTS[name])}`;

  const lines: string[] = [`table inet ${table} {`];
  // An anonymous map, not a named one: nft 1.0.6 compiles `ip6 dscp map @named` with the shift applied to the
  // 16-bit field in network byte order (every IPv6 SYN then looks like DSCP 0); with an anonymous map it folds
  // the shift into the keys and gets both families right.
  const dscpMap = `{ ${Array.from({ length: 64 }, (_, d) => `${d} : ${hex(dscpMark(d, o.mark))}`).join(', ')} }`;

  const udp = o.udpTproxyPort !== undefined;
  const pre: string[] = [
    udp ? 'meta l4proto != { tcp, udp } accept' : 'meta l4proto != tcp accept',
    `iifname != ${o.lanInterfaces.length === 1 ? q(o.lanInterfaces[0] as string) : lans} accept`,
    `${transparentSocket()} ${markSet(o.mark)} ${c('established')}`,
    // Only a new connection's first SYN is ever diverted.
    `${NOT_SYN} accept`,
    `${LOCAL_DESTINATION} ${c('local')}`,
    `fib daddr oifname ${lans} ${c('lan')}`,
  ];
  if (o.nativeMptcp === 'passthrough') pre.push(`tcp option mptcp exists ${c('nativeMptcp')}`);
  else pre.push(`tcp option mptcp subtype 1 ${c('mptcpJoin')}`);
  for (const m of o.exclude) {
    const x = flowMatch(m, families);
    if (x) pre.push(`${x.text} ${c('exclude')}`);
    // Without ports the rule above matches both protocols; with ports it names tcp, so UDP gets its own.
    const u = udp && m.ports !== undefined ? flowMatch(m, families, 'udp') : null;
    if (u) pre.push(`${u.text} ${c('exclude')}`);
  }
  for (const m of o.include) {
    const x = flowMatch(m, families);
    if (!x) continue;
    const setMark = o.dscpToMark ? `meta mark set ${x.family === 4 ? 'ip' : 'ip6'} dscp map ${dscpMap}` : markSet(o.mark);
    // tproxy first, then the mark: fail open without a listener (see tproxyTo).
    pre.push(`${x.text} ${tproxyTo(x.family, o.tproxyPort)} ${setMark} ${c('intercept')}`);
  }
  if (udp) {
    // Every datagram, not only a flow's first: the transparent UDP sockets (and a flow's connected reply
    // socket, found by TPROXY's established lookup) take them. Without those sockets (no channel, daemon
    // killed) tproxy does not match and UDP is forwarded untouched, as for TCP.
    for (const m of o.include) {
      const x = flowMatch(m, families, 'udp');
      if (!x) continue;
      pre.push(`${x.text} ${tproxyTo(x.family, o.udpTproxyPort!, 'udp')} ${markSet(o.mark)} ${c('interceptUdp')}`);
    }
  }
  lines.push(...nftChain('prerouting', mangleHook('prerouting'), pre));

  if (o.mssClamp !== undefined) {
    // The kernel only ever lowers an MSS option (nft_exthdr), so a fixed value never raises the peer's.
    const size = o.mssClamp === 'pmtu' ? 'rt mtu' : String(o.mssClamp);
    const fwd = [
      `iifname ${lans} tcp flags & (syn | rst) == syn tcp option maxseg size set ${size} ${c('mssClamp', '')}`,
      `oifname ${lans} tcp flags & (syn | rst) == syn tcp option maxseg size set ${size} ${c('mssClamp', '')}`,
    ];
    lines.push(...nftChain('forward', mangleHook('forward'), fwd));
  }
  const nat = o.natInterfaces ?? [];
  if (nat.length > 0) {
    const post = [`meta nfproto ipv4 oifname ${ifset(nat)} fib saddr type != local ${c('nat', ' masquerade')}`];
    lines.push(...nftChain('postrouting', 'type nat hook postrouting priority srcnat; policy accept;', post));
  }
  const clamp = o.synWindowClamp ?? [];
  if (clamp.length > 0) {
    const out = clamp.map(
      (t) => `${isIP(t.address) === 4 ? 'ip' : 'ip6'} daddr ${t.address} tcp dport ${t.port} tcp flags & (syn | ack) == syn tcp window set ${CPE_SYN_WINDOW_CLAMP} ${c('synWindowClamp', '')}`,
    );
    lines.push(...nftChain('output', mangleHook('output'), out));
  }
  lines.push('}');
  return `${lines.join('\n')}\n`;
}
