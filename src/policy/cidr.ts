/**
 * CIDR prefixes, pure: parse once, test membership on bytes. IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) and
 * prefixes inside ::ffff:0:0/96 count as IPv4, so one list serves both forms of the same address.
 */
import { ipFamily, ipv4ToBytes, ipv6ToBytes, unmapIpv4, type IpFamily } from '../protocol/address.js';

export interface Cidr {
  family: IpFamily;
  /** The network address (host bits cleared). */
  bytes: Buffer;
  bits: number;
  /** Canonical text, e.g. "198.18.0.0/15". */
  text: string;
}

const MAPPED_PREFIX = Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);

function mask(bytes: Buffer, bits: number): Buffer {
  const out = Buffer.from(bytes);
  for (let i = 0; i < out.length; i++) {
    const keep = Math.max(0, Math.min(8, bits - i * 8));
    out[i] = (out[i] as number) & ((0xff << (8 - keep)) & 0xff);
  }
  return out;
}

function format(family: IpFamily, bytes: Buffer, bits: number): string {
  if (family === 4) return `${bytes.join('.')}/${bits}`;
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
  // Compress the longest run of zero groups (RFC 5952) without the mapped-IPv4 special case.
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j === i ? i + 1 : j;
  }
  const text = best < 0 ? groups.join(':') : `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
  return `${text}/${bits}`;
}

/**
 * Parses "ADDRESS/LENGTH" (or a bare address: a host prefix). Host bits are cleared (198.18.0.1/15 is
 * 198.18.0.0/15). Throws TypeError with the reason.
 */
export function parseCidr(text: string): Cidr {
  const parts = text.trim().split('/');
  const [addr, len] = parts;
  const family = ipFamily(addr ?? '');
  if (parts.length > 2 || family === null) throw new TypeError(`Cannot parse prefix "${text}": expected ADDRESS/LENGTH`);
  const max = family === 4 ? 32 : 128;
  if (len !== undefined && !/^\d{1,3}$/.test(len)) throw new TypeError(`Cannot parse prefix "${text}": length must be 0-${max}`);
  const bits = len === undefined ? max : Number(len);
  if (bits > max) throw new TypeError(`Cannot parse prefix "${text}": length must be 0-${max}`);
  let bytes = family === 4 ? ipv4ToBytes(addr as string) : ipv6ToBytes(addr as string);
  let fam: IpFamily = family;
  let b = bits;
  if (fam === 6 && b >= 96 && bytes.subarray(0, 12).equals(MAPPED_PREFIX)) {
    fam = 4;
    bytes = bytes.subarray(12);
    b -= 96;
  }
  const net = mask(bytes, b);
  return { family: fam, bytes: net, bits: b, text: format(fam, net, b) };
}

/** The address as (family, bytes), IPv4-mapped IPv6 folded to IPv4; null when not an IP address. */
export function addressBytes(address: string): { family: IpFamily; bytes: Buffer } | null {
  const fam = ipFamily(address);
  if (fam === 4) return { family: 4, bytes: ipv4ToBytes(address) };
  if (fam === 6) {
    const b = ipv6ToBytes(address);
    const v4 = unmapIpv4(b);
    return v4 ? { family: 4, bytes: ipv4ToBytes(v4) } : { family: 6, bytes: b };
  }
  return null;
}

export function bytesInCidr(family: IpFamily, bytes: Buffer, c: Cidr): boolean {
  if (family !== c.family) return false;
  const full = Math.floor(c.bits / 8);
  for (let i = 0; i < full; i++) if (bytes[i] !== c.bytes[i]) return false;
  const rest = c.bits % 8;
  if (rest === 0) return true;
  const m = (0xff << (8 - rest)) & 0xff;
  return ((bytes[full] as number) & m) === ((c.bytes[full] as number) & m);
}

const cache = new Map<string, Cidr>();
function cached(text: string): Cidr {
  let c = cache.get(text);
  if (!c) {
    c = parseCidr(text);
    if (cache.size > 10_000) cache.clear();
    cache.set(text, c);
  }
  return c;
}

/** Whether `address` lies in `cidr` (text or parsed). False for a non-address; throws TypeError on a bad prefix. */
export function cidrContains(cidr: string | Cidr, address: string): boolean {
  const a = addressBytes(address);
  if (!a) return false;
  return bytesInCidr(a.family, a.bytes, typeof cidr === 'string' ? cached(cidr) : cidr);
}
