/**
 * IPv6-to-IPv6 Network Prefix Translation, the address mapping of RFC 6296 section 3, pure: an internal
 * prefix maps to an external prefix of the same length, and a 16-bit word outside the prefix absorbs the
 * one's complement difference of the two prefixes, so the mapped address has the same one's complement sum
 * (the transport checksum over the pseudo-header is unchanged; RFC 6296 section 2.6). The mapping is 1:1 and
 * reversible (section 3.3).
 *
 * Which word takes the adjustment: bits 48..63 (the subnet word) for prefixes of /48 or shorter (section
 * 3.4); for /49../64 the first of the words in bits 64..127 that is not 0xFFFF (section 3.5). A result of
 * 0xFFFF is written as 0x0000 (both are zero in one's complement). An address whose adjustment word is 0xFFFF
 * (the /48 case) or whose four low words are all 0xFFFF cannot be mapped: `translate` returns null.
 */
import { bytesToIpv6, ipFamily, ipv6ToBytes } from '../protocol/address.js';
import { bytesInCidr, parseCidr, type Cidr } from './cidr.js';

/** One's complement 16-bit addition (end-around carry). */
function add(a: number, b: number): number {
  const s = a + b;
  return (s & 0xffff) + (s >>> 16);
}

/** One's complement sum of the 16-bit words of `bytes`. */
function sum16(bytes: Buffer): number {
  let s = 0;
  for (let i = 0; i + 1 < bytes.length; i += 2) s = add(s, bytes.readUInt16BE(i));
  return s;
}

export interface Nptv6Mapping {
  readonly internal: Cidr;
  readonly external: Cidr;
  /**
   * The checksum of the external prefix minus that of the internal one (RFC 6296 section 3.1), i.e. the
   * internal prefix's word sum minus the external one's: added outbound, subtracted inbound.
   */
  readonly adjustment: number;
}

/**
 * Checks and precomputes a mapping. Both prefixes IPv6, the same length, 1..64 bits (RFC 6296 sections 3.4,
 * 3.5: the adjustment word lies outside the prefix). Throws TypeError with the reason.
 */
export function nptv6Mapping(internal: string, external: string): Nptv6Mapping {
  const i = parseCidr(internal);
  const e = parseCidr(external);
  if (i.family !== 6 || e.family !== 6) throw new TypeError(`NPTv6 maps IPv6 prefixes: ${internal} -> ${external}`);
  if (i.bits !== e.bits) throw new TypeError(`NPTv6 prefixes must have the same length: ${i.text} -> ${e.text}`);
  if (i.bits < 1 || i.bits > 64) throw new TypeError(`NPTv6 prefix length must be 1..64: ${i.text}`);
  // The prefixes' host bits are cleared, so the sums over the full 16 bytes are the sums of the prefixes.
  const adjustment = add(sum16(i.bytes), ~sum16(e.bytes) & 0xffff);
  return { internal: i, external: e, adjustment };
}

/** Index (0..7) of the 16-bit word that takes the adjustment, or -1 when none may (RFC 6296 3.4, 3.5). */
function adjustmentWord(bits: number, bytes: Buffer): number {
  if (bits <= 48) return bytes.readUInt16BE(6) === 0xffff ? -1 : 3;
  for (let w = 4; w < 8; w++) if (bytes.readUInt16BE(w * 2) !== 0xffff) return w;
  return -1;
}

function rewrite(from: Cidr, to: Cidr, delta: number, address: string): string | null {
  if (ipFamily(address) !== 6) return null;
  const bytes = ipv6ToBytes(address);
  if (!bytesInCidr(6, bytes, from)) return null;
  const word = adjustmentWord(from.bits, bytes);
  if (word < 0) return null;
  const out = Buffer.from(bytes);
  // Replace the prefix bits, keep the rest.
  for (let b = 0; b < 16; b++) {
    const keep = Math.max(0, Math.min(8, to.bits - b * 8));
    const m = (0xff << (8 - keep)) & 0xff;
    out[b] = ((to.bytes[b] as number) & m) | ((out[b] as number) & ~m & 0xff);
  }
  let v = add(out.readUInt16BE(word * 2), delta);
  if (v === 0xffff) v = 0;
  out.writeUInt16BE(v, word * 2);
  return bytesToIpv6(out);
}

/** Internal -> external (RFC 6296 section 3.2). null: not in the internal prefix, or not mappable. */
export function translate(m: Nptv6Mapping, address: string): string | null {
  return rewrite(m.internal, m.external, m.adjustment, address);
}

/** External -> internal (RFC 6296 section 3.3), the inverse of `translate`. */
export function untranslate(m: Nptv6Mapping, address: string): string | null {
  return rewrite(m.external, m.internal, ~m.adjustment & 0xffff, address);
}

/** The one's complement sum of an address's words (what the mapping keeps; for tests and diagnostics). */
export function addressSum(address: string): number {
  const s = sum16(ipv6ToBytes(address));
  // 0x0000 and 0xFFFF are the same number in one's complement.
  return s === 0xffff ? 0 : s;
}
