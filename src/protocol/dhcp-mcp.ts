/**
 * The DHCP options that name the concentrators (MPTCP Conversion Points, MCPs) of an access network, after
 * draft-boucadair-mptcp-dhc (docs/protocol.md, "DHCP options"). Pure: option bodies <-> address lists, and the
 * text forms DHCP clients hand to their hooks. The draft leaves the codes to IANA and none was assigned: the
 * codes are configuration (dhcp.optionV4, dhcp.optionV6 in the CPE's configuration), with site-specific
 * defaults.
 *
 * DHCPv4 (RFC 2132 option layout; a longer list is split and concatenated by RFC 3396, which the client undoes):
 *
 *  0                   1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +---------------+---------------+-------------------------------+
 * |  Code (224)   |  Length = 4N  |  MCP IPv4 Address 1 ...       |
 * +---------------+---------------+-------------------------------+
 * |  ... address 1 |  MCP IPv4 Address 2 ... (N addresses, N >= 1) |
 * +---------------------------------------------------------------+
 *
 * DHCPv6 (RFC 8415 section 21.1 option layout):
 *
 * +-------------------------------+-------------------------------+
 * |   option-code (65224)         |   option-len = 16N            |
 * +-------------------------------+-------------------------------+
 * |   MCP IPv6 Address 1 (128 bits) ... N addresses, N >= 1       |
 * +---------------------------------------------------------------+
 *
 * Order is preference: the first address is the one to use first. An address that can never be a
 * concentrator (unspecified, loopback, link-local, multicast, broadcast, reserved) is dropped, the others kept.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { bytesToIpv4, bytesToIpv6, ipv4ToBytes, ipv6ToBytes, type IpFamily } from './address.js';
import { addressBytes, bytesInCidr } from '../policy/cidr.js';
import { NEVER_RANGES } from '../policy/destination.js';

/** Site-specific DHCPv4 option code (RFC 3942 section 4: 224-254 are for site-specific use). */
export const DHCP_MCP_OPTION_V4_DEFAULT = 224;
/** DHCPv6 has no private-use range (RFC 8415): a code at the top of the space, far from IANA's assignments. */
export const DHCP_MCP_OPTION_V6_DEFAULT = 65224;
/** More addresses than this in one option is malformed (a hostile length: nobody runs 32 concentrators per link). */
export const DHCP_MCP_MAX_ADDRESSES = 32;

export type McpDecode = { ok: true; addresses: string[]; dropped: string[] } | { ok: false; why: string };

const width = (family: IpFamily) => (family === 4 ? 4 : 16);

/** Whether `a` can never be a concentrator (the destination gate's first rule, which nothing overrides). */
export function unusableMcp(a: string): string | null {
  const b = addressBytes(a);
  if (b === null) return 'not an IP address';
  return NEVER_RANGES.find((r) => bytesInCidr(b.family, b.bytes, r.cidr))?.label ?? null;
}

function keep(addresses: string[]): { ok: true; addresses: string[]; dropped: string[] } {
  const out: string[] = [];
  const dropped: string[] = [];
  for (const a of addresses) {
    if (unusableMcp(a) !== null) dropped.push(a);
    else if (!out.includes(a)) out.push(a);
  }
  return { ok: true, addresses: out, dropped };
}

/** Decodes an option body (the bytes after code and length) of the given family. */
export function decodeMcpOption(body: Uint8Array, family: IpFamily): McpDecode {
  const w = width(family);
  if (body.length === 0) return { ok: false, why: 'Cannot parse MCP option: empty (at least one address)' };
  if (body.length % w !== 0) return { ok: false, why: `Cannot parse MCP option: length ${body.length} is not a multiple of ${w}` };
  if (body.length / w > DHCP_MCP_MAX_ADDRESSES) return { ok: false, why: `Cannot parse MCP option: more than ${DHCP_MCP_MAX_ADDRESSES} addresses` };
  const buf = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  const list: string[] = [];
  for (let off = 0; off < buf.length; off += w) {
    const a = buf.subarray(off, off + w);
    list.push(family === 4 ? bytesToIpv4(a) : bytesToIpv6(a));
  }
  return keep(list);
}

/** The whole option (code, length, body) for a list of addresses: DHCPv4 8-bit code and length, DHCPv6 16-bit. */
export function encodeMcpOption(addresses: readonly string[], family: IpFamily, code: number): Buffer {
  if (addresses.length === 0 || addresses.length > DHCP_MCP_MAX_ADDRESSES) throw new RangeError(`Cannot encode MCP option: ${addresses.length} addresses (1-${DHCP_MCP_MAX_ADDRESSES})`);
  const body = Buffer.concat(addresses.map((a) => (family === 4 ? ipv4ToBytes(a) : ipv6ToBytes(a))));
  if (family === 4) {
    if (!Number.isInteger(code) || code < 1 || code > 254) throw new RangeError(`Cannot encode DHCPv4 option code ${code}`);
    if (body.length > 255) throw new RangeError('Cannot encode MCP option: more than 255 bytes (RFC 3396 splitting is the server\'s)');
    return Buffer.concat([Buffer.from([code, body.length]), body]);
  }
  if (!Number.isInteger(code) || code < 1 || code > 0xffff) throw new RangeError(`Cannot encode DHCPv6 option code ${code}`);
  const head = Buffer.alloc(4);
  head.writeUInt16BE(code, 0);
  head.writeUInt16BE(body.length, 2);
  return Buffer.concat([head, body]);
}

/**
 * The option as a DHCP client's hook receives it: addresses separated by spaces or commas (ISC dhclient with
 * `array of ip-address` / `array of ip6-address`, dhcpcd with `array ipaddress` / `array ip6address`), or the
 * raw body in hex, with or without colons (dhclient `string`, dhcpcd `binhex`, when the type was not
 * declared). Empty text is a lease without the option: no address, not an error.
 */
export function parseMcpText(text: string, family: IpFamily): McpDecode {
  const t = text.trim();
  if (t === '') return { ok: true, addresses: [], dropped: [] };
  const tokens = t.split(/[\s,]+/);
  const isAddr = family === 4 ? isIPv4 : isIPv6;
  if (tokens.every((x) => isAddr(x))) {
    if (tokens.length > DHCP_MCP_MAX_ADDRESSES) return { ok: false, why: `Cannot parse MCP option: more than ${DHCP_MCP_MAX_ADDRESSES} addresses` };
    return keep(tokens.map((x) => (family === 4 ? x : bytesToIpv6(ipv6ToBytes(x)))));
  }
  if (tokens.length === 1 && /^[0-9a-f]{2}(:?[0-9a-f]{2})*$/i.test(t)) return decodeMcpOption(Buffer.from(t.replace(/:/g, ''), 'hex'), family);
  const bad = tokens.find((x) => !isAddr(x)) ?? t;
  return { ok: false, why: `Cannot parse MCP option: "${bad.slice(0, 64)}" is not an IPv${family} address` };
}
