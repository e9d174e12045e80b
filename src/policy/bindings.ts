/**
 * The binding gate, pure: may this CPE (identity) open the external port it claims for an inbound binding
 * (docs/protocol.md section 1.6)? The destination gate in reverse: never one of the concentrator's own
 * services (its MPTCP listeners, its admin endpoint) and only in the configured port range; one owner per
 * port; a bounded number of bindings per CPE.
 */
import { refuse, type Refusal } from './refusals.js';

export interface BindingClaim {
  /** The CPE identity (its key's CPE with authentication, else its source address). */
  cpe: string;
  /** The addresses the binding opens on (chosen by the concentrator, never by the CPE). */
  addresses: readonly string[];
  port: number;
}

export interface BindingRules {
  ports: { from: number; to: number };
  maxPerCpe: number;
  /** The concentrator's own services: host ('0.0.0.0' / '::' = every address) and port. */
  own: ReadonlyArray<{ host: string; port: number }>;
}

export interface BindingState {
  /** The identity owning this binding key, if any. */
  owner(key: string): string | undefined;
  /** Bindings the CPE owns now. */
  count(cpe: string): number;
}

/** The ownership key of a binding: its addresses and port. */
export const bindingKey = (addresses: readonly string[], port: number): string => `${[...addresses].sort().join(',')}|${port}`;

const WILDCARD = new Set(['0.0.0.0', '::', '']);

export function bindingGate(claim: BindingClaim, state: BindingState, rules: BindingRules): Refusal | undefined {
  const { port } = claim;
  if (port < rules.ports.from || port > rules.ports.to) {
    return refuse('binding-port', { detail: { port, why: `outside bindings.ports ${rules.ports.from}-${rules.ports.to}` } });
  }
  const service = rules.own.find((s) => s.port === port && (WILDCARD.has(s.host) || claim.addresses.includes(s.host)));
  if (service) return refuse('binding-port', { detail: { port, why: `a service of the concentrator listens there (${service.host}:${service.port})` } });
  const owner = state.owner(bindingKey(claim.addresses, port));
  if (owner !== undefined) return owner === claim.cpe ? undefined : refuse('binding-taken', { detail: { port, owner } });
  if (state.count(claim.cpe) >= rules.maxPerCpe) return refuse('binding-limit', { detail: { port, max: rules.maxPerCpe } });
  return undefined;
}
