/**
 * Pure builders of the nft text both roles' interception tables are made of: the TPROXY statement, the marks,
 * the transparent-socket match, SYN and local-destination matches, sets and chains. Each role keeps its
 * policy (what is intercepted: LAN flows on the CPE, forwarded MP_CAPABLE SYNs on path, replies to transparent
 * server legs) in its own ruleset and builds the statements here, so the mechanism is written once.
 */
import type { Family } from '../platform/types.js';
import { parseCidr } from '../policy/cidr.js';

/** Transport protocols a transparent listener takes. */
export type L4 = 'tcp' | 'udp';

/** `0x0000006d`: the fixed-width form of the CPE's table. */
export function hex8(n: number): string {
  return `0x${(n >>> 0).toString(16).padStart(8, '0')}`;
}

/** `0x6d`: the short form of the concentrator's tables. */
export function hex(n: number): string {
  return `0x${(n >>> 0).toString(16)}`;
}

export function quote(s: string): string {
  return `"${s}"`;
}

/** One item as it is, several as an anonymous set `{ a, b }`. */
export function nftSet(items: readonly string[]): string {
  return items.length === 1 ? (items[0] as string) : `{ ${items.join(', ')} }`;
}

/** `meta nfproto ipv4` / `ipv6`. */
export function nfproto(family: Family): string {
  return `meta nfproto ${family === 4 ? 'ipv4' : 'ipv6'}`;
}

/** A new connection's first SYN (SYN set, ACK clear). */
export const SYN = 'tcp flags & (syn | ack) == syn';
/** Anything but a new connection's first SYN. */
export const NOT_SYN = 'tcp flags & (syn | ack) != syn';
/** Destinations that are this host itself, or not unicast: never intercepted. */
export const LOCAL_DESTINATION = 'fib daddr type { local, broadcast, multicast }';

/** Packets of a connection an IP_TRANSPARENT socket of this host owns (its SYN was diverted, or it is a transparent server leg). */
export function transparentSocket(l4: L4 = 'tcp'): string {
  return `meta l4proto ${l4} socket transparent 1`;
}

/** Sets the mark (the CPE's form: its mark bits are the whole mark, DSCP bits excepted). */
export function markSet(mark: number): string {
  return `meta mark set ${hex8(mark)}`;
}

/** Adds the mark bits, keeping the others (the concentrator's form: other software's marks survive). */
export function markOr(mark: number): string {
  return `meta mark set meta mark | ${hex(mark)}`;
}

/**
 * Diverts to the transparent listener on the loopback address of the family, which sees the original
 * destination as its local address. Put it before the mark: without a listener tproxy gives NFT_BREAK
 * (net/netfilter/nft_tproxy.c), the rule stops before the mark, and the packet is routed as if nothing were
 * there (fail open); marked first, it would be delivered locally to nobody and answered with an RST.
 */
export function tproxyTo(family: Family, port: number, l4: L4 = 'tcp'): string {
  return family === 4 ? `meta l4proto ${l4} tproxy ip to 127.0.0.1:${port}` : `meta l4proto ${l4} tproxy ip6 to [::1]:${port}`;
}

/** The head line of a base chain at priority mangle (where TPROXY and marks must run). */
export function mangleHook(hook: 'prerouting' | 'forward' | 'output'): string {
  return `type filter hook ${hook} priority mangle; policy accept;`;
}

/** A chain's lines: `indent` before `chain`, two more before the head (when given) and each rule. */
export function nftChain(name: string, head: string | undefined, rules: readonly string[], indent = '  '): string[] {
  const inner = `${indent}  `;
  return [`${indent}chain ${name} {`, ...(head === undefined ? [] : [`${inner}${head}`]), ...rules.map((r) => `${inner}${r}`), `${indent}}`];
}

/** Prefixes split by family, in canonical text; a bad prefix throws what `fail` makes of the parser's message. */
export function prefixesByFamily(prefixes: readonly string[], fail: (message: string) => Error): { v4: string[]; v6: string[] } {
  const v4: string[] = [];
  const v6: string[] = [];
  for (const p of prefixes) {
    let c;
    try {
      c = parseCidr(p);
    } catch (err) {
      throw fail((err as Error).message);
    }
    (c.family === 4 ? v4 : v6).push(c.text);
  }
  return { v4, v6 };
}
