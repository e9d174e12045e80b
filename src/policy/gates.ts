/**
 * The concentrator's admission gates, pure: each takes what it judges and returns a Refusal (src/policy/
 * refusals.ts) or undefined. The pipeline (src/concentrator/pipeline.ts) calls them at its named steps, in
 * this order: customer, mptcp, signalling admission (src/policy/pending.ts), [signalling is read], limits
 * (src/policy/limits.ts), destination (src/policy/destination.ts), source.
 */
import { convertErrorCodeForRefusal, destinationGate as judgeDestination, type DestinationGateOptions } from './destination.js';
import type { AdmitDecision } from './limits.js';
import { refuse, type Refusal } from './refusals.js';

/** Anything that answers "is this address in my prefixes" (a prefix list compiled once per configuration). */
export interface PrefixMatcher {
  has(address: string): boolean;
}

/** customer: only customer prefixes may use the concentrator; nothing is read from anybody else. */
export function customerGate(cpe: string, allow: PrefixMatcher): Refusal | undefined {
  return allow.has(cpe) ? undefined : refuse('not-customer');
}

/** mptcp: signalling on a connection that fell back to TCP is ignored (draft-boucadair-mptcp-plain-mode, section 5). */
export function mptcpGate(isMptcp: boolean, acceptFallback: boolean): Refusal | undefined {
  return isMptcp || acceptFallback ? undefined : refuse('tcp-fallback');
}

/** limits: the admission decision of ConnectionLimits as a refusal. */
export function limitsGate(decision: AdmitDecision): Refusal | undefined {
  return decision.admitted ? undefined : refuse(decision.reason);
}

/** destination: never a server, never the concentrator itself, never a denied prefix. */
export function destinationRefusal(address: string | undefined, opts: DestinationGateOptions): Refusal | undefined {
  if (address === undefined) return refuse('no-destination');
  const gate = judgeDestination(address, opts);
  if (gate.allowed) return undefined;
  return refuse('destination', { convertError: convertErrorCodeForRefusal(gate.reason), detail: { destination: address, why: gate.reason } });
}

/**
 * source: a source IE must name an address that can be a host (not loopback, multicast, unspecified...).
 * Private and other special-purpose addresses are what LAN hosts have: allowed.
 */
export function sourceGate(address: string | undefined): Refusal | undefined {
  if (address === undefined) return undefined;
  const gate = judgeDestination(address, {});
  return gate.allowed || gate.reason === 'special-purpose' ? undefined : refuse('source', { detail: { why: gate.reason } });
}
