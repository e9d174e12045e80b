/**
 * MP_CONVERT Information Elements (docs/protocol.md section 2, after draft-boucadair-mptcp-plain-mode-10).
 *
 *  0                   1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +---------------------------------------------------------------+
 * |                 Magic Number = 0xFAA8 0xFAA8                  |
 * +---------------+---------------+---------------------------+-+-+
 * |     Type      |    Length     |      Reserved (zero)      |D|M|
 * +---------------+---------------+---------------------------+-+-+
 * |        Address (IPv4: 4 octets / IPv6: 16 octets)             |
 * +-------------------------------+-------------------------------+
 * |   Port (2 octets, optional)   |  zero padding to 32 bits      |
 * +-------------------------------+-------------------------------+
 *
 * Length counts Type, Length, the flags word, Address and Port (not the magic, not the padding).
 * M = 1 marks the last IE; the bytes after it are application data. D = 1: source, D = 0: destination.
 *
 * mpconvert private Type 0x80 (transport of a channel, docs/protocol.md), Length 5:
 * | magic | 0x80 | 5 | Reserved |D|M| | Protocol (8, IANA number, 17 = UDP) | zero padding (3) |
 * A channel has no single destination (each frame names its own), so a transport IE and a destination
 * address IE never go together, in either order (MPC_ERR_IE_CONFLICT): a receiver that ignored one of them
 * would relay the connection as something the sender did not mean.
 *
 * mpconvert private Type 0x83 (binding: a reverse connection for an inbound binding, docs/protocol.md
 * section 1.6), Length 6:
 * | magic | 0x83 | 6 | Reserved |0|M| | External port (16) | zero padding (2) |
 * A reverse connection carries no destination: it waits for the concentrator to hand it an internet
 * client. With a destination, transport or warm IE it would mean two things at once (MPC_ERR_IE_CONFLICT).
 *
 * mpconvert private Type 0x85 (server MPTCP query, docs/protocol.md section 1.6), Length 5:
 * | magic | 0x85 | 5 | Reserved |D|M| | Answer (8) | zero padding (3) |
 * The CPE sends Answer = 0; the concentrator's echo repeats the IE with Answer = 1 when its server leg
 * negotiated MPTCP (the one byte of the echo that may differ from what was sent). At most one per signalling.
 */
import { addressToBytes, bytesToIpv4, bytesToIpv6 } from './address.js';
import { ProtocolErrorCode, abortError } from './errors.js';

export const MP_CONVERT_MAGIC = 0xfaa8faa8;
export const MP_CONVERT_LIMITS = { maxIes: 8, maxBytes: 256 } as const;
export const IE_TYPE_ADDRESS = 0;
/** mpconvert private IE: the transport protocol of a channel connection (UDP channel: 17). */
export const IE_TYPE_TRANSPORT = 0x80;
export const IPPROTO_UDP = 17;
/** mpconvert private IE: the connection was opened ahead of use (the CPE's warm pool). */
export const IE_TYPE_WARM = 0x82;
/** mpconvert private IE: a reverse connection offered for the inbound binding on this external port. */
export const IE_TYPE_BINDING = 0x83;
/** mpconvert private IE: the CPE asks whether the server leg speaks MPTCP; the echo answers in its body. */
export const IE_TYPE_SERVER_MPTCP = 0x85;
const FLAG_M = 0x1;
const FLAG_D = 0x2;
const MAGIC_BYTES = Buffer.from([0xfa, 0xa8, 0xfa, 0xa8]);
/** Valid Length values of a Type 0 IE: [address octets, port present]. */
const ADDRESS_LENGTHS: Readonly<Record<number, readonly [4 | 16, boolean]>> = { 8: [4, false], 10: [4, true], 20: [16, false], 22: [16, true] };
const TRANSPORT_LENGTH = 5;
const WARM_LENGTH = 4;
const BINDING_LENGTH = 6;
const SERVER_MPTCP_LENGTH = 5;
/** The server MPTCP query on the wire (12 bytes), Answer = 0, M = 0 (it never goes last). */
export const SERVER_MPTCP_QUERY = Buffer.from([0xfa, 0xa8, 0xfa, 0xa8, IE_TYPE_SERVER_MPTCP, SERVER_MPTCP_LENGTH, 0, 0, 0, 0, 0, 0]);
/** Offset of the Answer octet inside the IE. */
export const SERVER_MPTCP_ANSWER_OFFSET = 8;
/** The warm IE on the wire (8 bytes): what a warm connection sends first, alone. */
export const WARM_IE = Buffer.from([0xfa, 0xa8, 0xfa, 0xa8, IE_TYPE_WARM, WARM_LENGTH, 0, 0]);

export type IeDirection = 'destination' | 'source';

export interface AddressIe {
  type: 0;
  direction: IeDirection;
  /** Canonical text of the address (IPv4 dotted, IPv6 RFC 5952). */
  address: string;
  port?: number;
}

/** mpconvert private IE (Type 0x80): this connection is a channel for another transport (17 = UDP). */
export interface TransportIe {
  type: 0x80;
  protocol: number;
}

/**
 * An IE of a type this implementation does not know: skipped by Length, kept with its D bit and body (the
 * bytes after the flags word, without padding). The byte-exact echo uses SignallingResult.raw, not this.
 */
export interface UnknownIe {
  type: number;
  direction: IeDirection;
  body: Buffer;
}

/** mpconvert private IE (Type 0x82): the first IE of a warm connection (opened ahead of use). */
export interface WarmIe {
  type: 0x82;
}

/** mpconvert private IE (Type 0x83): a reverse connection for the binding on `port` (docs/protocol.md 1.6). */
export interface BindingIe {
  type: 0x83;
  port: number;
}

/** mpconvert private IE (Type 0x85): does the server leg speak MPTCP? Answer 0 (asked / no) or 1 (yes). */
export interface ServerMptcpIe {
  type: 0x85;
  answer: number;
}

export type Ie = AddressIe | TransportIe | WarmIe | BindingIe | ServerMptcpIe | UnknownIe;

export interface SignalledAddress {
  address: string;
  port?: number;
}

export interface MpConvertSignalling {
  format: 'mp-convert';
  ies: Ie[];
  destination?: SignalledAddress;
  source?: SignalledAddress;
  /** From a Type 0x80 IE: the connection is a channel of this IANA protocol (17 = UDP). */
  protocol?: number;
  /** From a Type 0x82 IE: a warm connection (opened by the CPE's pool before it was used). */
  warm?: true;
  /** From a Type 0x83 IE: a reverse connection for the binding on this external port. */
  binding?: number;
  /** From a Type 0x85 IE: the offset of its Answer octet in the signalling (where the echo answers). */
  serverMptcpAt?: number;
}

export const isAddressIe = (ie: Ie): ie is AddressIe => ie.type === IE_TYPE_ADDRESS && 'address' in ie;
export const isTransportIe = (ie: Ie): ie is TransportIe => ie.type === IE_TYPE_TRANSPORT && 'protocol' in ie;
export const isWarmIe = (ie: Ie): ie is WarmIe => ie.type === IE_TYPE_WARM;
export const isBindingIe = (ie: Ie): ie is BindingIe => ie.type === IE_TYPE_BINDING && 'port' in ie;
export const isServerMptcpIe = (ie: Ie): ie is ServerMptcpIe => ie.type === IE_TYPE_SERVER_MPTCP && 'answer' in ie;

/** Bytes one IE takes on the wire for a given Length: magic + Length, padded to 32 bits. */
export const ieWireSize = (length: number): number => 4 + Math.ceil(length / 4) * 4;

function ieBody(ie: Ie): { body: Buffer; direction: IeDirection } {
  if (isAddressIe(ie)) {
    const addr = addressToBytes(ie.address);
    const body = Buffer.alloc(addr.length + (ie.port !== undefined ? 2 : 0));
    addr.copy(body, 0);
    if (ie.port !== undefined) {
      if (!Number.isInteger(ie.port) || ie.port < 1 || ie.port > 65535) throw new TypeError(`Cannot encode MP_CONVERT: port ${ie.port} is out of range 1-65535`);
      body.writeUInt16BE(ie.port, addr.length);
    }
    return { body, direction: ie.direction };
  }
  if (isTransportIe(ie)) {
    if (!Number.isInteger(ie.protocol) || ie.protocol < 0 || ie.protocol > 255) throw new TypeError(`Cannot encode MP_CONVERT: protocol ${ie.protocol}`);
    return { body: Buffer.from([ie.protocol]), direction: 'destination' };
  }
  if (isWarmIe(ie)) return { body: Buffer.alloc(0), direction: 'destination' };
  if (isBindingIe(ie)) {
    if (!Number.isInteger(ie.port) || ie.port < 1 || ie.port > 65535) throw new TypeError(`Cannot encode MP_CONVERT: binding port ${ie.port} is out of range 1-65535`);
    const body = Buffer.alloc(2);
    body.writeUInt16BE(ie.port, 0);
    return { body, direction: 'destination' };
  }
  if (isServerMptcpIe(ie)) {
    if (ie.answer !== 0 && ie.answer !== 1) throw new TypeError(`Cannot encode MP_CONVERT: server MPTCP answer ${ie.answer} (0 or 1)`);
    return { body: Buffer.from([ie.answer]), direction: 'destination' };
  }
  const u = ie as UnknownIe;
  if (!Number.isInteger(u.type) || u.type < 0 || u.type > 255) throw new TypeError(`Cannot encode MP_CONVERT: Type ${u.type}`);
  if (u.type === IE_TYPE_ADDRESS || u.type === IE_TYPE_TRANSPORT || u.type === IE_TYPE_BINDING || u.type === IE_TYPE_SERVER_MPTCP) throw new TypeError(`Cannot encode MP_CONVERT: Type ${u.type} needs its own fields`);
  return { body: u.body, direction: u.direction };
}

/** Encodes the IEs in order; M is set on the last one. Throws TypeError on values it cannot encode. */
export function encodeMpConvert(ies: readonly Ie[]): Buffer {
  if (ies.length === 0) throw new TypeError('Cannot encode MP_CONVERT: at least one IE is needed');
  if (ies.length > MP_CONVERT_LIMITS.maxIes) throw new TypeError(`Cannot encode MP_CONVERT: ${ies.length} IEs, the limit is ${MP_CONVERT_LIMITS.maxIes}`);
  if (ies.some((ie, i) => isWarmIe(ie) && (i > 0 || ies.length === 1))) throw new TypeError('Cannot encode MP_CONVERT: a warm IE goes first and is never the last IE');
  const parts = ies.map((ie, i) => {
    const { body, direction } = ieBody(ie);
    const length = 4 + body.length;
    if (length > 255) throw new TypeError('Cannot encode MP_CONVERT: IE Length over 255');
    const out = Buffer.alloc(ieWireSize(length));
    MAGIC_BYTES.copy(out, 0);
    out[4] = ie.type;
    out[5] = length;
    out.writeUInt16BE((direction === 'source' ? FLAG_D : 0) | (i === ies.length - 1 ? FLAG_M : 0), 6);
    body.copy(out, 8);
    return out;
  });
  const all = Buffer.concat(parts);
  if (all.length > MP_CONVERT_LIMITS.maxBytes) throw new TypeError(`Cannot encode MP_CONVERT: ${all.length} bytes, the limit is ${MP_CONVERT_LIMITS.maxBytes}`);
  return all;
}

export type MpConvertParse = { status: 'need-more' } | { status: 'done'; signalling: MpConvertSignalling; length: number };

const fail = (code: Parameters<typeof abortError>[0], why: string) => abortError(code, `Cannot parse MP_CONVERT: ${why}`);

/**
 * Parses MP_CONVERT IEs at the start of `buf`, which may be incomplete (then 'need-more'). Never looks at a
 * byte at or past MP_CONVERT_LIMITS.maxBytes; throws ProtocolError (reaction: abort) on any violation, as
 * soon as the bytes that prove it have arrived.
 */
export function parseMpConvert(buf: Buffer): MpConvertParse {
  const limit = MP_CONVERT_LIMITS.maxBytes;
  const ies: Ie[] = [];
  const result: MpConvertSignalling = { format: 'mp-convert', ies };
  let off = 0;
  for (;;) {
    if (ies.length >= MP_CONVERT_LIMITS.maxIes) throw fail(ProtocolErrorCode.TooLarge, `M = 0 on IE ${ies.length}, the limit is ${MP_CONVERT_LIMITS.maxIes} IEs`);
    if (off + 8 > limit) throw fail(ProtocolErrorCode.TooLarge, `M = 0 at byte ${off}, no room for another IE in ${limit} bytes`);
    // The magic is checked on what has arrived so far, so that garbage is refused at once.
    const have = Math.min(4, buf.length - off);
    for (let i = 0; i < have; i++) {
      if (buf[off + i] !== MAGIC_BYTES[i]) throw fail(ProtocolErrorCode.BadMagic, `IE at byte ${off} does not start with 0xFAA8FAA8`);
    }
    if (buf.length < off + 6) return { status: 'need-more' };
    const type = buf[off + 4] as number;
    const length = buf[off + 5] as number;
    let addr: readonly [4 | 16, boolean] | undefined;
    if (type === IE_TYPE_ADDRESS) {
      addr = ADDRESS_LENGTHS[length];
      if (!addr) throw fail(ProtocolErrorCode.BadLength, `Length ${length} is not valid for an address IE (8, 10, 20 or 22)`);
    } else if (type === IE_TYPE_TRANSPORT) {
      if (length !== TRANSPORT_LENGTH) throw fail(ProtocolErrorCode.BadLength, `Length ${length} is not valid for a transport IE (5)`);
    } else if (type === IE_TYPE_WARM) {
      if (length !== WARM_LENGTH) throw fail(ProtocolErrorCode.BadLength, `Length ${length} is not valid for a warm IE (4)`);
      if (off !== 0) throw fail(ProtocolErrorCode.MisplacedWarm, `a warm IE at byte ${off}: it may only be the first IE`);
    } else if (type === IE_TYPE_BINDING) {
      if (length !== BINDING_LENGTH) throw fail(ProtocolErrorCode.BadLength, `Length ${length} is not valid for a binding IE (6)`);
    } else if (type === IE_TYPE_SERVER_MPTCP) {
      if (length !== SERVER_MPTCP_LENGTH) throw fail(ProtocolErrorCode.BadLength, `Length ${length} is not valid for a server MPTCP IE (5)`);
    } else if (length < 4) {
      throw fail(ProtocolErrorCode.BadLength, `Length ${length} of Type ${type} is shorter than the IE header (4)`);
    }
    const size = ieWireSize(length);
    if (off + size > limit) throw fail(ProtocolErrorCode.TooLarge, `IE at byte ${off} ends past ${limit} bytes`);
    if (buf.length < off + size) return { status: 'need-more' };
    // Reserved bits and padding are ignored on receipt (the echo repeats them anyway, byte for byte).
    const flags = buf.readUInt16BE(off + 6);
    const direction: IeDirection = flags & FLAG_D ? 'source' : 'destination';
    const body = buf.subarray(off + 8, off + 4 + length);
    if (addr) {
      const [alen, hasPort] = addr;
      const a = body.subarray(0, alen);
      const ie: AddressIe = { type: 0, direction, address: alen === 4 ? bytesToIpv4(a) : bytesToIpv6(a) };
      const where: SignalledAddress = { address: ie.address };
      if (hasPort) {
        const port = body.readUInt16BE(alen);
        if (port === 0) throw fail(ProtocolErrorCode.BadPort, `port 0 in the ${direction} address IE at byte ${off}`);
        ie.port = port;
        where.port = port;
      }
      if (result[direction]) throw fail(ProtocolErrorCode.DuplicateAddress, `a second ${direction} address IE at byte ${off}`);
      if (direction === 'destination' && result.binding !== undefined) throw fail(ProtocolErrorCode.TransportWithDestination, `a destination address IE at byte ${off} after a binding IE`);
      if (direction === 'destination' && result.protocol !== undefined) throw fail(ProtocolErrorCode.TransportWithDestination, `a destination address IE at byte ${off} after a transport IE`);
      result[direction] = where;
      ies.push(ie);
    } else if (type === IE_TYPE_TRANSPORT) {
      if (result.protocol !== undefined) throw fail(ProtocolErrorCode.DuplicateAddress, `a second transport IE at byte ${off}`);
      if (result.destination) throw fail(ProtocolErrorCode.TransportWithDestination, `a transport IE at byte ${off} after a destination address IE`);
      if (result.binding !== undefined) throw fail(ProtocolErrorCode.TransportWithDestination, `a transport IE at byte ${off} after a binding IE`);
      result.protocol = body[0] as number;
      ies.push({ type: IE_TYPE_TRANSPORT, protocol: result.protocol });
    } else if (type === IE_TYPE_WARM) {
      if (flags & FLAG_M) throw fail(ProtocolErrorCode.MisplacedWarm, 'a warm IE with M = 1: no destination follows');
      result.warm = true;
      ies.push({ type: IE_TYPE_WARM });
    } else if (type === IE_TYPE_BINDING) {
      if (result.binding !== undefined) throw fail(ProtocolErrorCode.DuplicateAddress, `a second binding IE at byte ${off}`);
      if (result.destination || result.protocol !== undefined || result.warm) throw fail(ProtocolErrorCode.TransportWithDestination, `a binding IE at byte ${off} after a destination, transport or warm IE`);
      const port = body.readUInt16BE(0);
      if (port === 0) throw fail(ProtocolErrorCode.BadPort, `port 0 in the binding IE at byte ${off}`);
      result.binding = port;
      ies.push({ type: IE_TYPE_BINDING, port });
    } else if (type === IE_TYPE_SERVER_MPTCP) {
      if (result.serverMptcpAt !== undefined) throw fail(ProtocolErrorCode.DuplicateAddress, `a second server MPTCP IE at byte ${off}`);
      result.serverMptcpAt = off + SERVER_MPTCP_ANSWER_OFFSET;
      ies.push({ type: IE_TYPE_SERVER_MPTCP, answer: body[0] as number });
    } else {
      ies.push({ type, direction, body: Buffer.from(body) });
    }
    off += size;
    if (flags & FLAG_M) return { status: 'done', signalling: result, length: off };
  }
}

/** Decodes a whole MP_CONVERT signalling; `buf` must hold exactly the IEs (no application bytes). */
export function decodeMpConvert(buf: Buffer): MpConvertSignalling {
  const r = parseMpConvert(buf.subarray(0, MP_CONVERT_LIMITS.maxBytes));
  if (r.status === 'need-more') throw fail(ProtocolErrorCode.Truncated, `truncated after ${buf.length} bytes`);
  if (r.length !== buf.length) throw fail(ProtocolErrorCode.Trailing, `${buf.length - r.length} bytes after the last IE`);
  return r.signalling;
}
