/**
 * PROXY protocol version 2 (HAProxy's doc/proxy-protocol.txt, section 2.2): the binary header a proxy puts
 * first on a connection to a server so that the server sees the original client's address. The concentrator
 * sends it, for configured destinations, as the first bytes of the server leg: the HOST_ID need of
 * draft-nam-mptcp-deployment-considerations section 4.3, in the form HAProxy, nginx and others read.
 *
 *  0                   1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +---------------------------------------------------------------+
 * |            Signature 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A      |
 * +                   (12 octets, "\r\n\r\n\0\r\nQUIT\n")         +
 * |                                                               |
 * +-------+-------+-------+-------+-------------------------------+
 * |Ver = 2|  Cmd  |  Fam  | Proto |     Length (octets after)     |
 * +-------+-------+-------+-------+-------------------------------+
 * |  Source address (Fam 1 = AF_INET: 4 octets; 2 = AF_INET6: 16) |
 * +---------------------------------------------------------------+
 * |          Destination address (same family and size)           |
 * +-------------------------------+-------------------------------+
 * |          Source port          |       Destination port        |
 * +-------------------------------+-------------------------------+
 * |   TLVs (the rest of Length): none sent by mpconvert           |
 * +---------------------------------------------------------------+
 *
 * Cmd 0 = LOCAL (the proxy's own connection, addresses ignored), 1 = PROXY. Proto 1 = STREAM (TCP),
 * 2 = DGRAM. Sent here: Cmd PROXY, Proto STREAM, so byte 13 is 0x21 and byte 14 0x11 (TCP over IPv4,
 * Length 12) or 0x21 (TCP over IPv6, Length 36).
 *
 * Mixed families (an IPv4 source with an IPv6 destination or the reverse; it happens when the header names
 * the CPE, whose connection may be of the other family): the header has one family for both addresses, so
 * the pair is sent as AF_INET6 with the IPv4 address mapped (::ffff:a.b.c.d, RFC 4291 section 2.5.5.2).
 * Nothing is lost, and a server reads the mapped form as IPv4 (HAProxy logs ::ffff:a.b.c.d).
 */
import { addressToBytes, addressToMapped16, bytesToIpv4, bytesToIpv6 } from './address.js';
import { abortError } from './errors.js';

export const PROXY_V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/** Signature, version/command, family/protocol, length. */
export const PROXY_V2_FIXED_BYTES = 16;

const VERSION_2 = 0x20;
const CMD_LOCAL = 0x0;
const CMD_PROXY = 0x1;
const AF_UNSPEC = 0x0;
const AF_INET = 0x1;
const AF_INET6 = 0x2;
const AF_UNIX = 0x3;
const PROTO_STREAM = 0x1;
const PROTO_DGRAM = 0x2;
/** Address block length per family: two addresses, and two ports for AF_INET/AF_INET6. */
const ADDRESS_BLOCK: Record<number, number> = { [AF_UNSPEC]: 0, [AF_INET]: 12, [AF_INET6]: 36, [AF_UNIX]: 216 };

export interface ProxyV2Endpoint {
  address: string;
  /** 0-65535 (0: unknown, e.g. a source IE without a port). */
  port: number;
}

export interface ProxyV2Addresses {
  source: ProxyV2Endpoint;
  destination: ProxyV2Endpoint;
}

/** A decoded header. */
export interface ProxyV2Header {
  command: 'local' | 'proxy';
  family: 'unspec' | 'inet' | 'inet6' | 'unix';
  transport: 'unspec' | 'stream' | 'dgram';
  /** For AF_INET / AF_INET6 (IPv4-mapped IPv6 stays in its ::ffff: text form). */
  addresses?: ProxyV2Addresses;
  /** The bytes after the address block (TLVs), unparsed. */
  tlvs: Buffer;
}

function checkPort(port: number): void {
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new TypeError(`Cannot encode PROXY v2 header: port ${port} is out of range 0-65535`);
}

/**
 * A PROXY command header for a TCP connection: `source` is the original client, `destination` the server
 * it asked for. Throws TypeError on an address that is not an IP address or a port out of range.
 */
export function encodeProxyV2(a: ProxyV2Addresses): Buffer {
  checkPort(a.source.port);
  checkPort(a.destination.port);
  let src = addressToBytes(a.source.address);
  let dst = addressToBytes(a.destination.address);
  if (src.length !== dst.length) {
    src = addressToMapped16(a.source.address);
    dst = addressToMapped16(a.destination.address);
  }
  const family = src.length === 4 ? AF_INET : AF_INET6;
  const block = ADDRESS_BLOCK[family] as number;
  const out = Buffer.alloc(PROXY_V2_FIXED_BYTES + block);
  PROXY_V2_SIGNATURE.copy(out, 0);
  out[12] = VERSION_2 | CMD_PROXY;
  out[13] = (family << 4) | PROTO_STREAM;
  out.writeUInt16BE(block, 14);
  src.copy(out, 16);
  dst.copy(out, 16 + src.length);
  out.writeUInt16BE(a.source.port, 16 + 2 * src.length);
  out.writeUInt16BE(a.destination.port, 18 + 2 * src.length);
  return out;
}

export type ProxyV2Decoded = { status: 'more' } | { status: 'done'; header: ProxyV2Header; length: number; rest: Buffer };

/**
 * Reads a header from the start of `buf` (for tests and tools: mpconvert only sends them). `more` while the
 * bytes so far are a valid beginning; throws ProtocolError (reaction: abort) as soon as a byte is wrong,
 * as a receiver must (the spec: drop the connection on anything else).
 */
export function decodeProxyV2(buf: Buffer): ProxyV2Decoded {
  const sig = Math.min(buf.length, PROXY_V2_SIGNATURE.length);
  if (!buf.subarray(0, sig).equals(PROXY_V2_SIGNATURE.subarray(0, sig))) {
    throw abortError('MPC_ERR_PROXY_SIGNATURE', 'Cannot decode PROXY v2 header: the first 12 bytes are not its signature');
  }
  if (buf.length > 12) {
    const vc = buf[12] as number;
    if ((vc & 0xf0) !== VERSION_2 || (vc & 0x0f) > CMD_PROXY) {
      throw abortError('MPC_ERR_PROXY_VERSION', `Cannot decode PROXY v2 header: version/command byte 0x${vc.toString(16)} (expected 0x20 LOCAL or 0x21 PROXY)`);
    }
  }
  if (buf.length > 13) {
    const fp = buf[13] as number;
    if (fp >> 4 > AF_UNIX || (fp & 0x0f) > PROTO_DGRAM) throw abortError('MPC_ERR_PROXY_FAMILY', `Cannot decode PROXY v2 header: family/protocol byte 0x${fp.toString(16)} is not defined`);
  }
  if (buf.length < PROXY_V2_FIXED_BYTES) return { status: 'more' };
  const command = ((buf[12] as number) & 0x0f) === CMD_LOCAL ? 'local' : 'proxy';
  const fam = (buf[13] as number) >> 4;
  const proto = (buf[13] as number) & 0x0f;
  const len = buf.readUInt16BE(14);
  const block = ADDRESS_BLOCK[fam] as number;
  // LOCAL may carry no address at all (the receiver must still skip Length bytes); PROXY must carry them.
  if (command === 'proxy' && proto !== 0 && len < block) {
    throw abortError('MPC_ERR_PROXY_LENGTH', `Cannot decode PROXY v2 header: Length ${len} is shorter than the ${block}-byte address block of its family`);
  }
  if (buf.length < PROXY_V2_FIXED_BYTES + len) return { status: 'more' };
  const body = buf.subarray(PROXY_V2_FIXED_BYTES, PROXY_V2_FIXED_BYTES + len);
  const header: ProxyV2Header = {
    command,
    family: (['unspec', 'inet', 'inet6', 'unix'] as const)[fam] as ProxyV2Header['family'],
    transport: (['unspec', 'stream', 'dgram'] as const)[proto] as ProxyV2Header['transport'],
    tlvs: Buffer.from(body.subarray(len >= block ? block : len)),
  };
  if ((fam === AF_INET || fam === AF_INET6) && proto !== 0 && len >= block) {
    const n = fam === AF_INET ? 4 : 16;
    const text = n === 4 ? bytesToIpv4 : bytesToIpv6;
    header.addresses = {
      source: { address: text(body.subarray(0, n)), port: body.readUInt16BE(2 * n) },
      destination: { address: text(body.subarray(n, 2 * n)), port: body.readUInt16BE(2 * n + 2) },
    };
  }
  return { status: 'done', header, length: PROXY_V2_FIXED_BYTES + len, rest: buf.subarray(PROXY_V2_FIXED_BYTES + len) };
}
