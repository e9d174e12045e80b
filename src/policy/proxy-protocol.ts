/**
 * Which server connections start with a PROXY protocol v2 header (server.proxyProtocol in the concentrator's
 * configuration), pure: a list of destination prefixes, each with its ports (absent: every port), compiled
 * once per configuration. A destination that matches no entry never gets a header: a server that does not
 * expect one would take it for its client's first bytes.
 */
import { addressBytes, bytesInCidr, parseCidr, type Cidr } from './cidr.js';

export interface ProxyProtocolRule {
  /** Destination prefix, e.g. 198.19.0.11/32 or 2001:db8:100::/64. */
  prefix: string;
  /** Destination ports; absent = every port. */
  ports?: readonly number[] | undefined;
}

export interface ProxyProtocolTargets {
  /** Does a server connection to this (signalled) destination start with a PROXY v2 header? */
  wants(address: string, port: number): boolean;
}

const none: ProxyProtocolTargets = { wants: () => false };

/** Throws TypeError on a prefix that does not parse (the config schema checks them first). */
export function compileProxyProtocolTargets(rules: readonly ProxyProtocolRule[]): ProxyProtocolTargets {
  if (rules.length === 0) return none;
  const compiled: Array<{ cidr: Cidr; ports: ReadonlySet<number> | undefined }> = rules.map((r) => ({
    cidr: parseCidr(r.prefix),
    ports: r.ports ? new Set(r.ports) : undefined,
  }));
  return {
    wants(address, port) {
      const a = addressBytes(address);
      if (!a) return false;
      return compiled.some((r) => (r.ports === undefined || r.ports.has(port)) && bytesInCidr(a.family, a.bytes, r.cidr));
    },
  };
}
