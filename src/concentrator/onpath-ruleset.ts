/**
 * The implicit (on-path) mode's part of the concentrator's nft table (./ruleset.ts), pure: options in, the
 * sets, the head of `prerouting` and the chain `onpath_syn` out. docs/implicit.md explains the demux.
 *
 * prerouting, first: packets of intercepted connections (their transparent socket exists) are marked for local
 * delivery (the return path's `fwmark -> local default` routing); then every SYN carrying MP_CAPABLE (MPTCP
 * option subtype 0; MP_JOIN SYNs are subtype 1 and never taken: a native connection's joins pass) jumps to
 * onpath_syn, which in this order:
 *   1. returns for SYNs to this host itself (the explicit listeners, the announced addresses);
 *   2. returns for sources outside `sources` (hosts that want no proxying: native MPTCP, routed untouched);
 *   3. withdraw only: accepts (routes untouched, end to end) SYNs to `nativeServers` and to the servers learned
 *      as MPTCP-capable (sets `onpath_native4/6`, address . port, filled by the concentrator with a timeout);
 *   4. drops what is over `synRateLimit`;
 *   5. TPROXY to the transparent listener on 127.0.0.1 / [::1]:port, then the mark. tproxy first: without a
 *      listener (daemon killed) tproxy does not match, nothing is marked and the SYN is routed as if the box
 *      were not there (fail open, as the CPE's interception).
 * Plain TCP SYNs (no MPTCP option) never reach onpath_syn: they are routed untouched.
 */
import { MpconvertError } from '../errors.js';
import { LOCAL_DESTINATION, markOr, nftChain, nftSet as set, prefixesByFamily, quote as q, SYN, tproxyTo, transparentSocket } from '../interception/index.js';

export interface OnPathRuleOptions {
  sources: readonly string[];
  port: number;
  /** The return path's mark (also set on intercepted SYNs). */
  mark: number;
  withdrawal: 'maintain' | 'withdraw';
  nativeServers: readonly string[];
  synRateLimit: number;
}

export const ONPATH_SETS = { native4: 'onpath_native4', native6: 'onpath_native6' } as const;

export const ONPATH_RULE_COMMENTS = {
  established: 'mpconvert: on-path connection',
  native: 'mpconvert: on-path withdrawn (MPTCP-capable server, end to end)',
  rateLimit: 'mpconvert: on-path SYN rate limit',
  intercept: 'mpconvert: on-path intercept',
} as const;

export class OnPathRulesetError extends MpconvertError {
  constructor(message: string) {
    super('MPC_ERR_CONC_RULESET', `Cannot build the concentrator's nft table: on-path: ${message}`);
  }
}

const split = (prefixes: readonly string[]) => prefixesByFamily(prefixes, (m) => new OnPathRulesetError(m));

export interface OnPathRules {
  /** Set declarations (inside the table). */
  sets: string[];
  /** Rules that go first in prerouting. */
  preroutingHead: string[];
  /** The chain onpath_syn, whole. */
  chain: string[];
}

export function buildOnPathRules(o: OnPathRuleOptions): OnPathRules {
  if (!Number.isInteger(o.port) || o.port < 1 || o.port > 65_535) throw new OnPathRulesetError(`port ${o.port} is not a port (1-65535)`);
  if (!Number.isInteger(o.mark) || o.mark <= 0 || o.mark > 0xffffffff) throw new OnPathRulesetError(`mark ${o.mark} must be a non-zero 32-bit value`);
  if (!Number.isInteger(o.synRateLimit) || o.synRateLimit < 0) throw new OnPathRulesetError(`synRateLimit ${o.synRateLimit} must be a whole number >= 0`);
  if (o.sources.length === 0) throw new OnPathRulesetError('no source prefix');
  const src = split(o.sources);
  const native = split(o.nativeServers);
  const withdraw = o.withdrawal === 'withdraw';
  const sets = withdraw
    ? [
        `  set ${ONPATH_SETS.native4} {`, '    type ipv4_addr . inet_service', '    flags timeout', '  }',
        `  set ${ONPATH_SETS.native6} {`, '    type ipv6_addr . inet_service', '    flags timeout', '  }',
      ]
    : [];
  const preroutingHead = [
    `${transparentSocket()} ${markOr(o.mark)} counter accept comment ${q(ONPATH_RULE_COMMENTS.established)}`,
    // jump, not goto: a `return` from onpath_syn goes on with the listeners' rules below.
    `${SYN} tcp option mptcp subtype 0 jump onpath_syn`,
  ];
  const chain = [
    `${LOCAL_DESTINATION} return`,
    src.v4.length > 0 ? `meta nfproto ipv4 ip saddr != ${set(src.v4)} return` : 'meta nfproto ipv4 return',
    src.v6.length > 0 ? `meta nfproto ipv6 ip6 saddr != ${set(src.v6)} return` : 'meta nfproto ipv6 return',
  ];
  if (withdraw) {
    const c = `counter accept comment ${q(ONPATH_RULE_COMMENTS.native)}`;
    if (native.v4.length > 0) chain.push(`ip daddr ${set(native.v4)} ${c}`);
    if (native.v6.length > 0) chain.push(`ip6 daddr ${set(native.v6)} ${c}`);
    chain.push(`ip daddr . tcp dport @${ONPATH_SETS.native4} ${c}`, `ip6 daddr . tcp dport @${ONPATH_SETS.native6} ${c}`);
  }
  if (o.synRateLimit > 0) {
    chain.push(`limit rate over ${o.synRateLimit}/second burst ${o.synRateLimit} packets counter drop comment ${q(ONPATH_RULE_COMMENTS.rateLimit)}`);
  }
  const intercept = `counter accept comment ${q(ONPATH_RULE_COMMENTS.intercept)}`;
  chain.push(
    `meta nfproto ipv4 ${tproxyTo(4, o.port)} ${markOr(o.mark)} ${intercept}`,
    `meta nfproto ipv6 ${tproxyTo(6, o.port)} ${markOr(o.mark)} ${intercept}`,
  );
  return { sets, preroutingHead, chain: nftChain('onpath_syn', undefined, chain) };
}

/** The set element text of a learned server (`nft add element`): address . port with its timeout. */
export function nativeElement(address: string, port: number, ttlS: number): { set: string; element: string } {
  const v6 = address.includes(':');
  return { set: v6 ? ONPATH_SETS.native6 : ONPATH_SETS.native4, element: `${address} . ${port} timeout ${ttlS}s` };
}
