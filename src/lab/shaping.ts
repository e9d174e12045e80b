/**
 * Uplink rate shaping: tc tbf on the egress of both ends of an uplink. Pure helpers (rate parsing and the tbf
 * parameters) so they are unit-tested without root.
 */
import { MpconvertError } from '../errors.js';

const UNITS: Record<string, number> = {
  '': 1, bit: 1, kbit: 1e3, mbit: 1e6, gbit: 1e9, tbit: 1e12,
  kibit: 1024, mibit: 1024 ** 2, gibit: 1024 ** 3,
  // tc's "bps" units are bytes per second.
  bps: 8, kbps: 8e3, mbps: 8e6, gbps: 8e9,
};

/** A tc rate ("50mbit", "800kbit", "1gbit", "2mbps" = bytes) in bits per second. */
export function parseRate(rate: string): number {
  const m = /^(\d+(?:\.\d+)?)([a-z]*)$/i.exec(rate.trim());
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  const bits = m && unit !== undefined ? Number(m[1]) * unit : NaN;
  if (!Number.isFinite(bits) || bits <= 0) {
    throw new MpconvertError('MPC_ERR_LAB_SPEC', `Cannot parse uplink rate "${rate}": expected e.g. 50mbit, 800kbit, 1gbit (or 0 for unshaped)`);
  }
  return bits;
}

/** The smallest bucket: two full Ethernet frames, so a single MTU packet always fits. */
export const MIN_BURST_BYTES = 2 * 1514;
/** The bucket holds this much time at the configured rate (hrtimer-driven tbf needs little more than 1 ms). */
export const BURST_MS = 4;
/** The queue in front of the bucket holds this much time at the rate: enough for one TCP flow to fill the link. */
export const LATENCY_MS = 50;

export interface TbfParams {
  rateBitsPerSecond: number;
  burstBytes: number;
  latencyMs: number;
}

export function tbfParams(rate: string): TbfParams {
  const rateBitsPerSecond = parseRate(rate);
  const burstBytes = Math.max(MIN_BURST_BYTES, Math.ceil((rateBitsPerSecond / 8) * (BURST_MS / 1000)));
  return { rateBitsPerSecond, burstBytes, latencyMs: LATENCY_MS };
}

/** `tc qdisc replace dev DEV root tbf ...` arguments. */
export function tbfArgs(dev: string, rate: string): string[] {
  const p = tbfParams(rate);
  return ['qdisc', 'replace', 'dev', dev, 'root', 'tbf', 'rate', `${p.rateBitsPerSecond}bit`, 'burst', String(p.burstBytes), 'latency', `${p.latencyMs}ms`];
}
