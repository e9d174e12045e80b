/**
 * concentratorsInUse: the CPE's concentrators, in order of preference, from the configured list and the ones
 * the uplinks' DHCP leases name (draft-boucadair-mptcp-dhc), by `concentratorSource`. Pure; called at start and
 * whenever a lease or the configuration changes.
 *
 * - DHCP's come by uplink, in the order of the configuration's uplinks, each lease's addresses in the option's
 *   order, IPv4 before IPv6; each becomes `address:port` with the template's settings (dhcp.concentrator).
 * - An address in both lists appears once, at the first place the order gives it, with the static entry's
 *   settings (its key, its format); `sources` names every list it is in.
 */
export type ConcentratorSource = 'static' | 'dhcp' | 'dhcp-first' | 'static-first';

/** What one uplink's leases name now (an uplink without a lease or without the option: empty lists). */
export interface LearnedConcentrators {
  uplink: string;
  v4: readonly string[];
  v6: readonly string[];
}

export interface InUse<T> {
  targets: T[];
  /** By target address: 'static' and/or 'dhcp:<uplink>', in the order they were found. */
  sources: Map<string, string[]>;
}

export function dhcpAddress(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

export function concentratorsInUse<T extends { address: string }>(
  source: ConcentratorSource,
  statics: readonly T[],
  learned: readonly LearnedConcentrators[],
  fromDhcp: (address: string) => T,
  port: number,
): InUse<T> {
  const dhcp: Array<{ address: string; uplink: string }> = [];
  if (source !== 'static') {
    for (const l of learned) for (const host of [...l.v4, ...l.v6]) dhcp.push({ address: dhcpAddress(host, port), uplink: l.uplink });
  }
  const staticList = source === 'dhcp' ? [] : statics;
  const sources = new Map<string, string[]>();
  const note = (address: string, what: string) => {
    const s = sources.get(address);
    if (!s) sources.set(address, [what]);
    else if (!s.includes(what)) s.push(what);
  };
  for (const t of staticList) note(t.address, 'static');
  for (const d of dhcp) note(d.address, `dhcp:${d.uplink}`);

  const byAddress = new Map(staticList.map((t) => [t.address, t] as const));
  const ordered = source === 'static-first' ? [...staticList.map((t) => t.address), ...dhcp.map((d) => d.address)] : [...dhcp.map((d) => d.address), ...staticList.map((t) => t.address)];
  const targets: T[] = [];
  const seen = new Set<string>();
  for (const a of ordered) {
    if (seen.has(a)) continue;
    seen.add(a);
    targets.push(byAddress.get(a) ?? fromDhcp(a));
  }
  return { targets, sources };
}
