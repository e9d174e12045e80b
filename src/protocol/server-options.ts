/**
 * What an RFC 8803 converter tells its client about the server's TCP options, pure: the Extended TCP Header TLV
 * (0x14) carries the TCP header of the server's SYN+ACK as the converter saw it. mpconvert's concentrator sends
 * it when its server leg came up with MPTCP and `server.reportMptcp` is on, so a CPE can learn that the server
 * speaks MPTCP (docs/protocol.md section 1.7; the CPE's `serverMptcp.mode: direct`). The kernel gives userspace neither the
 * server's SYN+ACK nor its key: the header is rebuilt with what is known, an MP_CAPABLE of version 1 whose key
 * is zero (never used as a key: it only says "MP_CAPABLE was there").
 *
 *  TCP header (RFC 9293 section 3.1), 20 bytes, then the options:
 *  | Source Port (16) | Destination Port (16) | Sequence (32) | Acknowledgment (32) |
 *  | Data Offset (4) | Reserved (4) | Flags (8) | Window (16) | Checksum (16) | Urgent Pointer (16) |
 *  MP_CAPABLE (RFC 8684 section 3.1), SYN+ACK form, 12 bytes:
 *  | Kind = 30 | Length = 12 | Subtype = 0 (4) | Version = 1 (4) | Flags A-H (8) | Key (64) |
 */
import { parseTcpOptions } from './convert.js';

const TCP_HEADER = 20;
const MPTCP_KIND = 30;
const FLAG_SYN = 0x02;
const FLAG_ACK = 0x10;
/** Flags byte of the MP_CAPABLE: H (HMAC-SHA256), as Linux sends it. */
const MP_CAPABLE_FLAGS = 0x01;

/** The TCP header of a SYN+ACK that carried MP_CAPABLE (ports, numbers and key zero: not known here). */
export function mptcpSynAckHeader(): Buffer {
  const option = Buffer.alloc(12);
  option[0] = MPTCP_KIND;
  option[1] = 12;
  option[2] = 0x01; // subtype 0, version 1
  option[3] = MP_CAPABLE_FLAGS;
  const h = Buffer.alloc(TCP_HEADER);
  h[12] = ((TCP_HEADER + option.length) / 4) << 4;
  h[13] = FLAG_SYN | FLAG_ACK;
  return Buffer.concat([h, option]);
}

/**
 * Whether a TCP header (an Extended TCP Header TLV's) carries an MP_CAPABLE option. Total: a header that is
 * short, whose Data Offset points past its end or below 20 bytes, or whose options do not parse, says no.
 */
export function headerHasMpCapable(header: Buffer): boolean {
  if (header.length < TCP_HEADER) return false;
  const end = ((header[12] as number) >> 4) * 4;
  if (end < TCP_HEADER || end > header.length) return false;
  const parsed = parseTcpOptions(header.subarray(TCP_HEADER, end));
  if (!parsed.ok) return false;
  return parsed.options.some((o) => o.kind === MPTCP_KIND && o.data.length >= 1 && (o.data[0] as number) >> 4 === 0);
}
