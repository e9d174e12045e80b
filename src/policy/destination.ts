/**
 * destinationGate: may the concentrator connect to this address? (docs/protocol.md; draft-nam-mptcp-deployment-considerations section 7)
 * Pure. Called by the concentrator after the signalling is read and before any byte goes to a server; the
 * operator's lists are compiled once per configuration (compileDestinationPolicy, AddressSet.from), so a
 * connection's cost does not grow with them.
 *
 * Order, first match wins:
 *   1. never a server (not overridable): unspecified, "this network", loopback, link-local, multicast,
 *      limited broadcast, reserved 240.0.0.0/4;
 *   2. one of the node's own addresses (`own`);
 *   3. an operator deny prefix (`deny`);
 *   4. other RFC 6890 special-purpose ranges that are not globally reachable (private use, shared address
 *      space, documentation, ULA, ...), unless listed in `permit` (e.g. a deployment that serves private
 *      networks);
 *   5. allowed.
 * IPv4-mapped IPv6 forms (::ffff:a.b.c.d) are judged as the IPv4 address they carry. NAT64 well-known-prefix
 * forms (64:ff9b::a.b.c.d, RFC 6052 section 2.1) are judged both as themselves and as the IPv4 address they
 * embed, by every rule: a NAT64 gateway would deliver them there.
 *
 * Deliberately NOT refused by default: 198.18.0.0/15 (benchmarking, RFC 2544) and 2001:db8::/32
 * (documentation, RFC 3849). They are special-purpose, but they are the only ranges the lab and the tests may
 * use for real traffic, so refusing them would leave the product untestable. An operator who wants them
 * refused lists them in `deny`.
 */
import { addressBytes, bytesInCidr, parseCidr, type Cidr } from './cidr.js';
import { PrefixSet, type AddressSet } from './prefix-set.js';

export { AddressSet, PrefixSet } from './prefix-set.js';

export type DestinationRefusal =
  | 'not-an-ip'
  | 'unspecified'
  | 'this-network'
  | 'loopback'
  | 'link-local'
  | 'multicast'
  | 'broadcast'
  | 'reserved'
  | 'own-address'
  | 'deny-prefix'
  | 'special-purpose';

interface Range {
  cidr: Cidr;
  reason: DestinationRefusal;
  label: string;
}

const range = (cidr: string, reason: DestinationRefusal, label: string): Range => ({ cidr: parseCidr(cidr), reason, label });

/** Rule 1: never a server, whatever the configuration. */
export const NEVER_RANGES: readonly Range[] = [
  range('0.0.0.0/32', 'unspecified', 'unspecified'),
  range('0.0.0.0/8', 'this-network', '"this network" (RFC 791)'),
  range('127.0.0.0/8', 'loopback', 'loopback'),
  range('169.254.0.0/16', 'link-local', 'link-local'),
  range('224.0.0.0/4', 'multicast', 'multicast'),
  range('255.255.255.255/32', 'broadcast', 'limited broadcast'),
  range('240.0.0.0/4', 'reserved', 'reserved (RFC 1112)'),
  range('::/128', 'unspecified', 'unspecified'),
  range('::1/128', 'loopback', 'loopback'),
  range('fe80::/10', 'link-local', 'link-local'),
  range('ff00::/8', 'multicast', 'multicast'),
];

/** Rule 4: RFC 6890 special-purpose ranges that are not globally reachable (overridable with `permit`). */
export const SPECIAL_PURPOSE_RANGES: readonly Range[] = [
  range('10.0.0.0/8', 'special-purpose', 'private use (RFC 1918)'),
  range('172.16.0.0/12', 'special-purpose', 'private use (RFC 1918)'),
  range('192.168.0.0/16', 'special-purpose', 'private use (RFC 1918)'),
  range('100.64.0.0/10', 'special-purpose', 'shared address space (RFC 6598)'),
  range('192.0.0.0/24', 'special-purpose', 'IETF protocol assignments (RFC 6890)'),
  range('192.0.2.0/24', 'special-purpose', 'documentation TEST-NET-1 (RFC 5737)'),
  range('198.51.100.0/24', 'special-purpose', 'documentation TEST-NET-2 (RFC 5737)'),
  range('203.0.113.0/24', 'special-purpose', 'documentation TEST-NET-3 (RFC 5737)'),
  range('192.88.99.0/24', 'special-purpose', '6to4 relay anycast, deprecated (RFC 7526)'),
  range('::/96', 'special-purpose', 'IPv4-compatible IPv6, deprecated (RFC 4291)'),
  range('::ffff:0:0:0/96', 'special-purpose', 'IPv4-translated (RFC 2765)'),
  range('64:ff9b:1::/48', 'special-purpose', 'local-use NAT64 (RFC 8215)'),
  range('100::/64', 'special-purpose', 'discard-only (RFC 6666)'),
  range('2001::/32', 'special-purpose', 'TEREDO (RFC 4380)'),
  range('2001:2::/48', 'special-purpose', 'IPv6 benchmarking (RFC 5180)'),
  range('2001:10::/28', 'special-purpose', 'ORCHID, deprecated (RFC 4843)'),
  range('2001:20::/28', 'special-purpose', 'ORCHIDv2 (RFC 7343)'),
  range('2002::/16', 'special-purpose', '6to4 (RFC 3056), deprecated'),
  range('3fff::/20', 'special-purpose', 'documentation (RFC 9637)'),
  range('fc00::/7', 'special-purpose', 'unique local (RFC 4193)'),
  range('fec0::/10', 'special-purpose', 'site-local, deprecated (RFC 3879)'),
];

/** Documented exceptions: special-purpose, yet allowed by default (the lab's and tests' only ranges). */
export const LAB_RANGES: readonly string[] = ['198.18.0.0/15', '2001:db8::/32'];

const NAT64_WKP = parseCidr('64:ff9b::/96');

export type GateDecision = { allowed: true } | { allowed: false; reason: DestinationRefusal; detail: string };

/** The operator's destination lists, compiled (compileDestinationPolicy). */
export interface DestinationPolicy {
  /** Operator deny prefixes (rule 3). */
  deny: PrefixSet;
  /** Special-purpose prefixes (rule 4) the operator allows anyway; never lifts rule 1. */
  permit: PrefixSet;
}

export interface DestinationGateOptions {
  deny?: PrefixSet;
  permit?: PrefixSet;
  /** The node's own addresses (a connection to itself would loop). */
  own?: AddressSet;
}

/**
 * Compiles the operator's lists (CIDR text) once per configuration: at start and on reload, never per
 * connection. Throws TypeError on a malformed prefix (validate the configuration first).
 */
export function compileDestinationPolicy(lists: { deny?: readonly string[]; permit?: readonly string[] }): DestinationPolicy {
  return { deny: PrefixSet.from(lists.deny ?? []), permit: PrefixSet.from(lists.permit ?? []) };
}

function match(family: 4 | 6, bytes: Buffer, ranges: readonly Range[]): Range | undefined {
  return ranges.find((r) => bytesInCidr(family, bytes, r.cidr));
}

/** " (NAT64 form of a.b.c.d)" when the rule matched the embedded IPv4 address rather than the address itself. */
const via = (x: { family: 4 | 6; bytes: Buffer }, a: { family: 4 | 6 }): string => (x.family !== a.family ? ` (NAT64 form of ${x.bytes.join('.')})` : '');

/** The gate. Work per call is bounded by the address length, not by the size of `deny`, `permit` or `own`. */
export function destinationGate(address: string, opts: DestinationGateOptions = {}): GateDecision {
  const a = addressBytes(address);
  if (!a) return { allowed: false, reason: 'not-an-ip', detail: `"${address}" is not an IP address` };
  // NAT64 (RFC 6052): the IPv4 address at the end is where the packets really go.
  const embedded = a.family === 6 && bytesInCidr(6, a.bytes, NAT64_WKP) ? { family: 4 as const, bytes: a.bytes.subarray(12) } : null;
  const judged = embedded ? [a, embedded] : [a];
  for (const x of judged) {
    const r = match(x.family, x.bytes, NEVER_RANGES);
    if (r) return { allowed: false, reason: r.reason, detail: `${r.label} ${r.cidr.text}${via(x, a)}` };
  }
  if (opts.own) {
    for (const x of judged) {
      if (opts.own.hasBytes(x.family, x.bytes)) return { allowed: false, reason: 'own-address', detail: `${address} is an address of this node${via(x, a)}` };
    }
  }
  if (opts.deny) {
    for (const x of judged) {
      const d = opts.deny.matchBytes(x.family, x.bytes);
      if (d !== undefined) return { allowed: false, reason: 'deny-prefix', detail: `deny prefix ${d}${via(x, a)}` };
    }
  }
  for (const x of judged) {
    const r = match(x.family, x.bytes, SPECIAL_PURPOSE_RANGES);
    if (r && opts.permit?.matchBytes(x.family, x.bytes) === undefined) {
      return { allowed: false, reason: r.reason, detail: `${r.label} ${r.cidr.text}${via(x, a)}` };
    }
  }
  return { allowed: true };
}

/**
 * The RFC 8803 Error TLV code for a refused destination: Malformed Message (1) for an address that is never
 * a server (RFC 8803 section 6.2.8 names multicast, broadcast and loopback), Not Authorized (32) for policy.
 */
export function convertErrorCodeForRefusal(reason: DestinationRefusal): 1 | 32 {
  switch (reason) {
    case 'own-address':
    case 'deny-prefix':
    case 'special-purpose':
      return 32;
    default:
      return 1;
  }
}
