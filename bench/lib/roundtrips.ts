/**
 * Round trips to the first byte, counted from a packet capture on the CPE's uplinks (this kernel has no netem,
 * so they cannot be timed with an added delay). One exchange is captured; walking its packets in order, a round
 * trip is counted each time a packet arrives from the concentrator side while the CPE side has sent a SYN or
 * payload that it had not yet had an answer for, up to the first packet from the concentrator that carries
 * payload (the response, or mpconvert's echo in front of it). Pure ACKs do not ask for anything and do not count.
 * MP_JOIN handshakes of additional subflows are left out (only the first SYN's subflow counts for SYNs).
 */
import { readFileSync } from 'node:fs';

interface Seg {
  src: string;
  dst: string;
  sport: number;
  dport: number;
  syn: boolean;
  payload: number;
}

function ipv4(b: Buffer, o: number): string {
  return `${b[o]}.${b[o + 1]}.${b[o + 2]}.${b[o + 3]}`;
}

export function readSegments(file: string): Seg[] {
  const b = readFileSync(file);
  if (b.length < 24) return [];
  const le = b.readUInt32LE(0) === 0xa1b2c3d4 || b.readUInt32LE(0) === 0xa1b23c4d;
  const u32 = (o: number) => (le ? b.readUInt32LE(o) : b.readUInt32BE(o));
  const link = u32(20);
  const out: Seg[] = [];
  let off = 24;
  while (off + 16 <= b.length) {
    const incl = u32(off + 8);
    const p = b.subarray(off + 16, off + 16 + incl);
    off += 16 + incl;
    let l3: number;
    let proto: number;
    if (link === 113) [l3, proto] = [16, p.readUInt16BE(14)]; // LINUX_SLL
    else if (link === 276) [l3, proto] = [20, p.readUInt16BE(0)]; // LINUX_SLL2
    else if (link === 1) [l3, proto] = [14, p.readUInt16BE(12)]; // Ethernet
    else continue;
    if (proto !== 0x0800 || p.length < l3 + 20) continue;
    const ihl = (p[l3]! & 0x0f) * 4;
    if (p[l3 + 9] !== 6) continue;
    const total = p.readUInt16BE(l3 + 2);
    const t = l3 + ihl;
    if (p.length < t + 20) continue;
    const doff = (p[t + 12]! >> 4) * 4;
    out.push({
      src: ipv4(p, l3 + 12),
      dst: ipv4(p, l3 + 16),
      sport: p.readUInt16BE(t),
      dport: p.readUInt16BE(t + 2),
      syn: (p[t + 13]! & 0x02) !== 0,
      payload: total - ihl - doff,
    });
  }
  return out;
}

/** Round trips until the first payload from `far` (the concentrator's address). */
export function countRoundTrips(segs: Seg[], far: string): number | null {
  let first: string | undefined;
  let pending = false;
  let rt = 0;
  for (const s of segs) {
    const toFar = s.dst === far;
    const fromFar = s.src === far;
    if (!toFar && !fromFar) continue;
    const flow = toFar ? `${s.src}:${s.sport}` : `${s.dst}:${s.dport}`;
    if (s.syn) {
      first ??= flow;
      if (flow !== first) continue; // MP_JOIN of another subflow
    }
    if (toFar) {
      if (s.syn || s.payload > 0) pending = true;
    } else {
      if (pending) {
        rt++;
        pending = false;
      }
      if (s.payload > 0) return rt;
    }
  }
  return null;
}
