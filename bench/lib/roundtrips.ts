/**
 * Round trips to the first byte, counted from a packet capture on the CPE's uplinks (this kernel has no netem,
 * so they cannot be timed with an added delay). One exchange is captured; walking its packets in order, a round
 * trip is counted each time a packet arrives from the concentrator side while the CPE side has sent a SYN or
 * payload that it had not yet had an answer for, up to the first packet from the concentrator that carries
 * payload (the response, or mpconvert's echo in front of it). Pure ACKs do not ask for anything and do not count.
 * MP_JOIN handshakes of additional subflows are left out (only the first SYN's subflow counts for SYNs).
 */
import type { TcpSegment } from '../../src/lab/pcap.js';

/** Round trips until the first payload from `far` (the concentrator's address). */
export function countRoundTrips(segs: readonly TcpSegment[], far: string): number | null {
  let first: string | undefined;
  let pending = false;
  let rt = 0;
  for (const s of segs) {
    const toFar = s.dst === far;
    const fromFar = s.src === far;
    if (!toFar && !fromFar) continue;
    const flow = toFar ? `${s.src}:${s.sport}` : `${s.dst}:${s.dport}`;
    if (s.flags.syn) {
      first ??= flow;
      if (flow !== first) continue; // MP_JOIN of another subflow
    }
    if (toFar) {
      if (s.flags.syn || s.length > 0) pending = true;
    } else {
      if (pending) {
        rt++;
        pending = false;
      }
      if (s.length > 0) return rt;
    }
  }
  return null;
}
