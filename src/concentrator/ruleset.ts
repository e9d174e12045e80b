/**
 * The concentrator's own nft table, pure: options in, the text of one table `inet mpconvert_conc_<instance>`
 * out (applied atomically by the platform's `nft.applyTable`, removed on stop). Named after the CPE's
 * convention (src/cpe/ruleset.ts) so both roles can share a host without touching each other's tables.
 *
 * Prerouting (filter, priority mangle), for SYNs (syn set, ack clear) to the concentrator's listeners only:
 *   1. optional SYN-flood guards before the kernel's SYN queue: drop SYNs whose source is no customer prefix
 *      (a spoofed flood from outside `allow` then never fills the queue nor triggers SYN cookies), and an
 *      optional global rate limit;
 *   2. the SYN window clamp: works around the Linux MPTCP passive-TFO bug in which the listener's MPTCP-level
 *      send window is taken from the SYN's window shifted by the peer's window scale (docs/kernel-tfo-window.md).
 *      Per window scale w (1-14) the SYN's window is lowered to SYN_CLAMP_EDGE >> w, so the MPTCP edge starts at
 *      16 KiB whatever the scale: below any real initial window, and no lower than the initial congestion window
 *      (that edge only moves at the client's first DATA_ACK, not at the handshake's ACK, so a smaller one, e.g.
 *      window 1 = 1 KiB at scale 10, held the first response back by round trips). Only lowered, never raised;
 *      without window scaling there is no bug and nothing to do. It protects every client, third-party RFC 8803
 *      clients included, and costs nothing to connections without SYN data (built from the ACK).
 *
 * Every rule carries a counter and a comment so operators and tests can read what matched (`nft list table`).
 */
import { isIP } from 'node:net';
import { MpconvertError } from '../errors.js';
import { mangleHook, nftChain, nftSet as set, NOT_SYN, prefixesByFamily, quote as q } from '../interception/index.js';
import { buildOnPathRules, type OnPathRuleOptions } from './onpath-ruleset.js';

export interface ConcentratorListener {
  family: 4 | 6;
  /** The bound address; 0.0.0.0 / :: match any destination of that family (:: also IPv4, dual-stack). */
  address: string;
  port: number;
}

export interface ConcentratorRulesetOptions {
  /** Names the table: `mpconvert_conc_<instance>`. */
  instance: string;
  listeners: readonly ConcentratorListener[];
  /** Lower the window of SYNs to the listeners (per window scale, see SYN_CLAMP_EDGE). */
  synWindowClamp: boolean;
  /** Customer prefixes; with `dropNonCustomers`, SYNs from elsewhere are dropped before the SYN queue. */
  allow: readonly string[];
  dropNonCustomers: boolean;
  /** SYNs per second to the listeners accepted in total (burst: the same number); 0 = no limit. */
  synRateLimit: number;
  /** Implicit (on-path) mode: intercept forwarded MPTCP SYNs (./onpath-ruleset.ts); undefined = off. */
  onPath?: OnPathRuleOptions | undefined;
}

/** The MPTCP send window edge a clamped SYN leaves the listener with, in bytes (SYN window << scale). */
export const SYN_CLAMP_EDGE = 16_384;

export const CONC_RULE_COMMENTS = {
  nonCustomer: 'mpconvert: SYN from a non-customer dropped',
  rateLimit: 'mpconvert: SYN rate limit',
  windowClamp: 'mpconvert: SYN window clamp (MPTCP passive TFO)',
} as const;

export class ConcentratorRulesetError extends MpconvertError {
  constructor(message: string) {
    super('MPC_ERR_CONC_RULESET', `Cannot build the concentrator's nft table: ${message}`);
  }
}

export function concentratorTableName(instance: string): string {
  if (!/^[a-z0-9_]{1,16}$/.test(instance)) throw new ConcentratorRulesetError(`instance '${instance}' must be 1-16 of [a-z0-9_]`);
  return `mpconvert_conc_${instance}`;
}

/** Whether the options ask for any rule at all (no table is installed otherwise). */
export function concentratorRulesetWanted(o: ConcentratorRulesetOptions): boolean {
  return o.onPath !== undefined || (o.listeners.length > 0 && (o.synWindowClamp || o.dropNonCustomers || o.synRateLimit > 0));
}

function listenerMatch(l: ConcentratorListener): string {
  if (!Number.isInteger(l.port) || l.port < 1 || l.port > 65535) throw new ConcentratorRulesetError(`listener port ${l.port} is not a port (1-65535)`);
  const fam = isIP(l.address);
  if (fam !== l.family) throw new ConcentratorRulesetError(`listener address '${l.address}' is not an IPv${l.family} address`);
  if (l.address === '::') return `tcp dport ${l.port}`;
  if (l.address === '0.0.0.0') return `meta nfproto ipv4 tcp dport ${l.port}`;
  return `${fam === 4 ? 'ip' : 'ip6'} daddr ${l.address} tcp dport ${l.port}`;
}

/** The nft text of the whole table; call only when concentratorRulesetWanted(). */
export function buildConcentratorRuleset(o: ConcentratorRulesetOptions): string {
  const table = concentratorTableName(o.instance);
  if (o.listeners.length === 0 && !o.onPath) throw new ConcentratorRulesetError('no listener');
  if (!Number.isInteger(o.synRateLimit) || o.synRateLimit < 0) throw new ConcentratorRulesetError(`synRateLimit ${o.synRateLimit} must be a whole number >= 0`);
  const matches = [...new Set(o.listeners.map(listenerMatch))];
  const onPath = o.onPath ? buildOnPathRules(o.onPath) : undefined;
  const lines = [`table inet ${table} {`, ...(onPath?.sets ?? [])];
  // Only SYNs to a listener go on to listener_syn; everything else leaves at once.
  const pre = [...(onPath?.preroutingHead ?? []), `${NOT_SYN} accept`, ...matches.map((m) => `${m} goto listener_syn`)];
  lines.push(...nftChain('prerouting', mangleHook('prerouting'), pre));
  const syn: string[] = [];
  if (o.dropNonCustomers) {
    const { v4, v6 } = prefixesByFamily(o.allow, (m) => new ConcentratorRulesetError(m));
    syn.push(v4.length > 0 ? `meta nfproto ipv4 ip saddr != ${set(v4)} counter drop comment ${q(CONC_RULE_COMMENTS.nonCustomer)}` : `meta nfproto ipv4 counter drop comment ${q(CONC_RULE_COMMENTS.nonCustomer)}`);
    syn.push(v6.length > 0 ? `meta nfproto ipv6 ip6 saddr != ${set(v6)} counter drop comment ${q(CONC_RULE_COMMENTS.nonCustomer)}` : `meta nfproto ipv6 counter drop comment ${q(CONC_RULE_COMMENTS.nonCustomer)}`);
  }
  if (o.synRateLimit > 0) {
    syn.push(`limit rate over ${o.synRateLimit}/second burst ${o.synRateLimit} packets counter drop comment ${q(CONC_RULE_COMMENTS.rateLimit)}`);
  }
  if (o.synWindowClamp) {
    for (let w = 1; w <= 14; w++) {
      const win = SYN_CLAMP_EDGE >> w;
      syn.push(`tcp option window count ${w} tcp window > ${win} tcp window set ${win} counter comment ${q(CONC_RULE_COMMENTS.windowClamp)}`);
    }
  }
  lines.push(...nftChain('listener_syn', undefined, syn));
  if (onPath) lines.push(...onPath.chain);
  lines.push('}');
  return `${lines.join('\n')}\n`;
}
