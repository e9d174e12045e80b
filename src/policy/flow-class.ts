/**
 * Per-flow-class distribution (draft-nam-mptcp-deployment-considerations section 5.6.2), as pure decisions:
 * which class a LAN connection belongs to (its DSCP, its destination prefix and port), and which uplink a
 * class's connection is pinned to (a named one, or the uplink with the lowest path RTT). The CPE applies the
 * choice per connection (src/cpe/pinning.ts): the initial subflow leaves from the uplink's address and the
 * connection's mark makes the kernel refuse joins on any other uplink. Unclassified flows are aggregated.
 */
import { cidrContains } from './cidr.js';

export type PortRange = number | readonly [number, number];

export interface FlowClass {
  name: string;
  /** DSCP values (0-63); absent: any. */
  dscp?: readonly number[] | undefined;
  /** Destination prefixes with optional ports (any of them); absent: any. */
  destinations?: ReadonlyArray<{ prefix: string; ports?: readonly PortRange[] | undefined }> | undefined;
  /** Pin to this uplink while it can carry the connection; absent: the lowest-RTT uplink. */
  uplink?: string | undefined;
}

export interface Flow {
  dscp: number;
  dst: { address: string; port: number };
}

function portIn(port: number, ranges: readonly PortRange[] | undefined): boolean {
  if (ranges === undefined) return true;
  return ranges.some((r) => (typeof r === 'number' ? r === port : port >= r[0] && port <= r[1]));
}

/** Whether a flow is in a class: every criterion the class names matches (a class with none matches nothing). */
export function inClass(c: FlowClass, f: Flow): boolean {
  if (c.dscp === undefined && c.destinations === undefined) return false;
  if (c.dscp !== undefined && !c.dscp.includes(f.dscp)) return false;
  if (c.destinations !== undefined && !c.destinations.some((d) => cidrContains(d.prefix, f.dst.address) && portIn(f.dst.port, d.ports))) return false;
  return true;
}

/** The first class the flow is in (configuration order), or undefined: the flow is aggregated. */
export function classifyFlow(classes: readonly FlowClass[], f: Flow): FlowClass | undefined {
  return classes.find((c) => inClass(c, f));
}

/** An uplink as the pinning decision sees it. */
export interface PinCandidate {
  interface: string;
  /** Carrier up and an address of the concentrator's family installed. */
  usable: boolean;
  /** 'backup' uplinks (active-backup, overflow not joined, over quota) are chosen only when nothing else is usable. */
  mode: 'subflow' | 'backup';
  /** Last path RTT measured on the uplink's subflows (ms), or null when none was measured yet. */
  rttMs: number | null;
}

/**
 * The uplink a class's connection is pinned to: the class's named uplink when usable; else the usable
 * `subflow` uplink with the lowest RTT (an unmeasured one ranks after every measured one, then configuration
 * order), else the same among `backup` uplinks; undefined when none is usable (the connection is aggregated).
 */
export function pinUplink(c: Pick<FlowClass, 'uplink'>, candidates: readonly PinCandidate[]): string | undefined {
  if (c.uplink !== undefined && candidates.some((u) => u.interface === c.uplink && u.usable)) return c.uplink;
  const rank = (u: PinCandidate) => u.rttMs ?? Number.POSITIVE_INFINITY;
  for (const mode of ['subflow', 'backup'] as const) {
    let best: PinCandidate | undefined;
    for (const u of candidates) if (u.usable && u.mode === mode && (best === undefined || rank(u) < rank(best))) best = u;
    if (best) return best.interface;
  }
  return undefined;
}

/** The mark bits that carry a pin: bits 16-23, clear of the interception mark (bits 0-7) and the DSCP (8-13). */
export const PIN_MARK_SHIFT = 16;
export const PIN_MARK_MASK = 0xff << PIN_MARK_SHIFT;

/** The mark of a connection pinned to the uplink at `index` (configuration order, from 0). */
export function pinMark(index: number): number {
  if (!Number.isInteger(index) || index < 0 || index > 0xfe) throw new RangeError(`uplink index ${index} out of range for a pin mark`);
  return (index + 1) << PIN_MARK_SHIFT;
}
