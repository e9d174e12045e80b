/**
 * IP address text <-> bytes, pure (no DNS, no I/O). Text out is canonical: dotted quad for IPv4, RFC 5952 for
 * IPv6 (lower case, longest run of zero groups compressed, IPv4-mapped as ::ffff:a.b.c.d).
 */
import { isIPv4, isIPv6 } from 'node:net';

export type IpFamily = 4 | 6;

/** Throws TypeError unless `a` is a dotted-quad IPv4 address. */
export function ipv4ToBytes(a: string): Buffer {
  if (!isIPv4(a)) throw new TypeError(`Cannot parse IPv4 address "${a}"`);
  return Buffer.from(a.split('.').map((x) => Number(x)));
}

/** Throws TypeError unless `a` is an IPv6 address without a zone index. */
export function ipv6ToBytes(a: string): Buffer {
  if (!isIPv6(a) || a.includes('%')) throw new TypeError(`Cannot parse IPv6 address "${a}"`);
  let text = a;
  // An embedded IPv4 tail (::ffff:1.2.3.4) becomes two groups.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const tail = v4[1] as string;
    const b = ipv4ToBytes(tail);
    text = `${text.slice(0, -tail.length)}${b.readUInt16BE(0).toString(16)}:${b.readUInt16BE(2).toString(16)}`;
  }
  const out = Buffer.alloc(16);
  const compressed = text.indexOf('::');
  const head = compressed < 0 ? text : text.slice(0, compressed);
  const tail = compressed < 0 ? '' : text.slice(compressed + 2);
  const h = head === '' ? [] : head.split(':');
  const t = tail === '' ? [] : tail.split(':');
  const groups = compressed < 0 ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  if (groups.length !== 8) throw new TypeError(`Cannot parse IPv6 address "${a}"`);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

export function bytesToIpv4(b: Buffer): string {
  if (b.length !== 4) throw new TypeError(`Cannot format IPv4 address: ${b.length} bytes`);
  return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
}

/** RFC 5952 canonical text (section 5: IPv4-mapped addresses keep their dotted tail). */
export function bytesToIpv6(b: Buffer): string {
  if (b.length !== 16) throw new TypeError(`Cannot format IPv6 address: ${b.length} bytes`);
  const mapped = unmapIpv4(b);
  if (mapped !== null) return `::ffff:${mapped}`;
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i));
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

/** 4 bytes for IPv4 text, 16 for IPv6 text (IPv4-mapped IPv6 stays 16). Throws TypeError otherwise. */
export function addressToBytes(a: string): Buffer {
  if (isIPv4(a)) return ipv4ToBytes(a);
  if (isIPv6(a)) return ipv6ToBytes(a);
  throw new TypeError(`Cannot encode address "${a}": not an IP address`);
}

/** The text of 4 or 16 address bytes. */
export function bytesToAddress(b: Buffer): string {
  return b.length === 4 ? bytesToIpv4(b) : bytesToIpv6(b);
}

/** The address's family (IPv4-mapped IPv6 text counts as 6), or null when it is not an IP address. */
export function ipFamily(a: string): IpFamily | null {
  if (isIPv4(a)) return 4;
  if (isIPv6(a) && !a.includes('%')) return 6;
  return null;
}

/** The canonical form of an address (so decode(encode(x)) compares equal to canonicalAddress(x)). */
export function canonicalAddress(a: string): string {
  return bytesToAddress(addressToBytes(a));
}

/** An IPv4-mapped IPv6 address (::ffff:a.b.c.d) as IPv4 text, else null. */
export function unmapIpv4(b: Buffer): string | null {
  if (b.length !== 16) return null;
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return null;
  if (b[10] !== 0xff || b[11] !== 0xff) return null;
  return `${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
}

/**
 * IPv4 text for an IPv4-mapped IPv6 address in the form sockets report it (`::ffff:a.b.c.d`); anything else
 * unchanged. Cheap (per connection): a prefix test, no parsing of other addresses.
 */
export function unmapAddress(a: string): string {
  if (a.length > 7 && a.charCodeAt(0) === 0x3a && a.toLowerCase().startsWith('::ffff:')) {
    const v4 = a.slice(7);
    if (ipFamily(v4) === 4) return v4;
  }
  return a;
}

/** The 16-byte form: IPv4 becomes ::ffff:a.b.c.d (RFC 8803 Connect TLV, RFC 4291 section 2.5.5.2). */
export function addressToMapped16(a: string): Buffer {
  const b = addressToBytes(a);
  if (b.length === 16) return b;
  return Buffer.concat([Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]), b]);
}
