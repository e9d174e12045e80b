/**
 * The RADIUS authorization gate (pure): what the AAA answer, or its absence, means for one connection.
 * The asynchronous part (asking, caching, waiting) is src/concentrator/radius-authorizer.ts; this decides.
 */
import { refuse, type Refusal } from './refusals.js';

/** The answer for one CPE: accepted (with the concentrators the AAA assigned it, if it said), rejected, or none. */
export type RadiusVerdict =
  | { kind: 'accept'; concentrators: readonly string[] }
  | { kind: 'reject' }
  /** No server answered (every server, every try) or the wait bound ran out first. */
  | { kind: 'unavailable'; why: 'no-answer' | 'timeout' };

export interface RadiusGateOptions {
  failMode: 'open' | 'closed';
  /** Refuse a CPE whose Access-Accept names concentrators (draft-boucadair-mptcp-radius) none of which is this one. */
  enforceConcentrators: boolean;
}

/**
 * `local`: the concentrator address the connection arrived on. Returns a refusal, or nothing (authorized,
 * or let through by fail-open).
 */
export function radiusGate(v: RadiusVerdict, local: string, o: RadiusGateOptions): Refusal | undefined {
  switch (v.kind) {
    case 'accept':
      if (o.enforceConcentrators && v.concentrators.length > 0 && !v.concentrators.includes(local)) {
        return refuse('radius-other-concentrator', { detail: { assigned: v.concentrators, local } });
      }
      return undefined;
    case 'reject':
      return refuse('radius-reject');
    case 'unavailable':
      return o.failMode === 'open' ? undefined : refuse('radius-unavailable', { qualifier: v.why });
  }
}
