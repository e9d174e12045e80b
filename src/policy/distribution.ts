/**
 * Traffic distribution schemes (draft-nam-mptcp-deployment-considerations section 5.6.2), as pure decisions;
 * the CPE applies them with the uplinks' MPTCP backup flag (`ip mptcp endpoint change ... backup|nobackup`,
 * MP_PRIO on the live subflows): the Linux scheduler sends on a backup subflow only when no other is usable,
 * in both directions (the peer honours MP_PRIO).
 *
 * - aggregate: every `subflow` uplink carries traffic (the uplinks' configured modes; `backup` ones are
 *   active-backup).
 * - overflow (least-cost first): the primary uplink carries everything; the others are backup until the load
 *   (the uplinks' throughput, the larger direction) passes `joinAbove` of the primary's capacity, and become
 *   backup again once it stayed under `leaveBelow` for `holdS` seconds (hysteresis, so a load near the
 *   threshold does not flap). Failover is untouched: a backup uplink still takes over when the primary fails.
 */

export interface OverflowPolicy {
  /** The least-cost uplink (interface name). */
  primary: string;
  /** The primary's capacity, Mbit/s (its contracted or measured rate). */
  capacityMbit: number;
  /** Share of the capacity above which the other uplinks join. */
  joinAbove: number;
  /** Share of the capacity under which they leave again (after holdS). */
  leaveBelow: number;
  holdS: number;
}

export interface OverflowState {
  /** The other uplinks carry traffic. */
  joined: boolean;
  /** When the load went under leaveBelow (ms), while joined; null = not under it. */
  belowSince: number | null;
}

export const OVERFLOW_IDLE: OverflowState = { joined: false, belowSince: null };

/** One step of the overflow scheme: `loadBps` the uplinks' throughput now (bytes/s), at `now` (ms). */
export function overflowStep(state: OverflowState, loadBps: number, now: number, p: OverflowPolicy): OverflowState {
  const share = (loadBps * 8) / (p.capacityMbit * 1e6);
  if (!state.joined) return share > p.joinAbove ? { joined: true, belowSince: null } : state;
  if (share >= p.leaveBelow) return state.belowSince === null ? state : { joined: true, belowSince: null };
  const since = state.belowSince ?? now;
  if (now - since >= p.holdS * 1000) return OVERFLOW_IDLE;
  return { joined: true, belowSince: since };
}

/** The mode each uplink should have under the overflow scheme. */
export function overflowModes(uplinks: readonly string[], state: OverflowState, p: OverflowPolicy): Map<string, 'subflow' | 'backup'> {
  return new Map(uplinks.map((u) => [u, u === p.primary || state.joined ? 'subflow' : 'backup'] as const));
}
