/**
 * A minimal pcap reader for lab captures (tests and the bench): TCP segments over Ethernet or Linux cooked
 * captures (v1, v2), IPv4 or IPv6 (no extension headers).
 */
import { readFileSync } from 'node:fs';

export interface TcpSegment {
  src: string;
  dst: string;
  sport: number;
  dport: number;
  seq: number;
  ack: number;
  flags: { syn: boolean; ack: boolean; fin: boolean; rst: boolean };
  /** The window field as sent (unscaled). */
  window: number;
  /** TCP option kinds present (30 = MPTCP). */
  options: number[];
  /** The MPTCP option (kind 30), whole (kind and length included), when the segment has one. */
  mptcp?: Buffer | undefined;
  /** The captured payload (cut short by the capture's snap length). */
  payload: Buffer;
  /** The payload's length on the wire, from the IP header. */
  length: number;
}

export function readTcpSegments(file: string): TcpSegment[] {
  const b = readFileSync(file);
  if (b.length < 24) return [];
  const le = b.readUInt32LE(0) === 0xa1b2c3d4 || b.readUInt32LE(0) === 0xa1b23c4d;
  const u32 = (o: number) => (le ? b.readUInt32LE(o) : b.readUInt32BE(o));
  const linkType = u32(20);
  const out: TcpSegment[] = [];
  let off = 24;
  while (off + 16 <= b.length) {
    const incl = u32(off + 8);
    const pkt = b.subarray(off + 16, off + 16 + incl);
    off += 16 + incl;
    let l3 = 0;
    let etherType: number;
    if (linkType === 1) {
      etherType = pkt.readUInt16BE(12);
      l3 = 14;
    } else if (linkType === 113) {
      // Linux cooked capture v1 (tcpdump -i any, older libpcap)
      etherType = pkt.readUInt16BE(14);
      l3 = 16;
    } else if (linkType === 276) {
      // Linux cooked capture v2 (tcpdump -i any, libpcap >= 1.10): protocol first, 20-byte header
      etherType = pkt.readUInt16BE(0);
      l3 = 20;
    } else continue;
    let src: string;
    let dst: string;
    let l4: number;
    let end: number;
    if (etherType === 0x0800) {
      if (pkt[l3 + 9] !== 6) continue;
      const ihl = ((pkt[l3] as number) & 0x0f) * 4;
      src = [...pkt.subarray(l3 + 12, l3 + 16)].join('.');
      dst = [...pkt.subarray(l3 + 16, l3 + 20)].join('.');
      l4 = l3 + ihl;
      end = l3 + pkt.readUInt16BE(l3 + 2);
    } else if (etherType === 0x86dd) {
      if (pkt[l3 + 6] !== 6) continue;
      const hex = (s: Buffer) => (s.toString('hex').match(/.{4}/g) ?? []).join(':');
      src = hex(pkt.subarray(l3 + 8, l3 + 24));
      dst = hex(pkt.subarray(l3 + 24, l3 + 40));
      l4 = l3 + 40;
      end = l4 + pkt.readUInt16BE(l3 + 4);
    } else continue;
    const doff = (((pkt[l4 + 12] as number) >> 4) & 0xf) * 4;
    const fl = pkt[l4 + 13] as number;
    const options: number[] = [];
    let mptcp: Buffer | undefined;
    for (let o = l4 + 20; o < l4 + doff; ) {
      const kind = pkt[o] as number;
      if (kind === 0) break;
      if (kind === 1) {
        o++;
        continue;
      }
      options.push(kind);
      const len = Math.max(2, pkt[o + 1] as number);
      if (kind === 30 && o + len <= l4 + doff) mptcp = Buffer.from(pkt.subarray(o, o + len));
      o += len;
    }
    out.push({
      src,
      dst,
      sport: pkt.readUInt16BE(l4),
      dport: pkt.readUInt16BE(l4 + 2),
      seq: pkt.readUInt32BE(l4 + 4),
      ack: pkt.readUInt32BE(l4 + 8),
      flags: { fin: (fl & 1) !== 0, syn: (fl & 2) !== 0, rst: (fl & 4) !== 0, ack: (fl & 16) !== 0 },
      window: pkt.readUInt16BE(l4 + 14),
      options,
      ...(mptcp ? { mptcp } : {}),
      payload: Buffer.from(pkt.subarray(l4 + doff, end)),
      length: end - l4 - doff,
    });
  }
  return out;
}

/** MPTCP option subtypes (RFC 8684 section 3): 0 MP_CAPABLE, 1 MP_JOIN, 3 ADD_ADDR, ... */
export const MPTCP_SUBTYPE = { capable: 0, join: 1, dss: 2, addAddr: 3 } as const;

/** The MPTCP option's subtype (the high nibble of its third byte); undefined without one. */
export function mptcpSubtype(seg: TcpSegment): number | undefined {
  return seg.mptcp && seg.mptcp.length >= 3 ? (seg.mptcp[2] as number) >> 4 : undefined;
}

/**
 * The C bit of an MP_CAPABLE (RFC 8684 section 3.1, flags A B C D E F G H, C = 0x20): the sender takes no
 * MP_JOIN to the address and port of this connection. undefined when the segment has no MP_CAPABLE.
 */
export function mpCapableCBit(seg: TcpSegment): boolean | undefined {
  if (mptcpSubtype(seg) !== MPTCP_SUBTYPE.capable || !seg.mptcp || seg.mptcp.length < 4) return undefined;
  return ((seg.mptcp[3] as number) & 0x20) !== 0;
}
