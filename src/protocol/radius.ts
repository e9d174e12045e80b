/**
 * RADIUS packets (RFC 2865 authentication, RFC 2866 accounting, RFC 3579 section 3.2 Message-Authenticator):
 * a pure codec. It builds the two requests the concentrator sends (Access-Request, Accounting-Request) and
 * parses and verifies the answers. No I/O; every length is checked before it is read.
 *
 *  0                   1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |     Code      |  Identifier   |            Length             |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |                   Authenticator (16 octets)                   |
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 * |  Attributes: Type (1) | Length (1, >= 2, whole attribute) | Value ...
 * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';
import { addressToBytes, bytesToAddress } from './address.js';
import { MpconvertError } from '../errors.js';

export const RadiusCode = {
  AccessRequest: 1,
  AccessAccept: 2,
  AccessReject: 3,
  AccountingRequest: 4,
  AccountingResponse: 5,
  AccessChallenge: 11,
} as const;

/** The attributes mpconvert sends or reads (RFC 2865 section 5, RFC 2866 section 5, RFC 2869, RFC 3162, RFC 3579). */
export const RadiusAttr = {
  UserName: 1,
  UserPassword: 2,
  NasIpAddress: 4,
  ServiceType: 6,
  FramedIpAddress: 8,
  ReplyMessage: 18,
  Class: 25,
  SessionTimeout: 27,
  CallingStationId: 31,
  NasIdentifier: 32,
  AcctStatusType: 40,
  AcctInputOctets: 42,
  AcctOutputOctets: 43,
  AcctSessionId: 44,
  AcctSessionTime: 46,
  AcctTerminateCause: 49,
  AcctLinkCount: 51,
  AcctInputGigawords: 52,
  AcctOutputGigawords: 53,
  EventTimestamp: 55,
  NasPortType: 61,
  MessageAuthenticator: 80,
  AcctInterimInterval: 85,
  NasIpv6Address: 95,
  FramedIpv6Address: 168,
} as const;

export const AcctStatusType = { Start: 1, Stop: 2, InterimUpdate: 3 } as const;
/** RFC 2866 section 5.10 values used here. */
export const AcctTerminateCause = { UserRequest: 1, IdleTimeout: 4, SessionTimeout: 5, AdminReset: 6, NasRequest: 10, NasReboot: 11 } as const;

/** RFC 2865 section 3: 20 to 4096 octets. */
export const RADIUS_MIN_LENGTH = 20;
export const RADIUS_MAX_LENGTH = 4096;
const AUTH_LEN = 16;

export interface RadiusAttribute {
  type: number;
  value: Buffer;
}

export interface RadiusPacket {
  code: number;
  identifier: number;
  authenticator: Buffer;
  attributes: RadiusAttribute[];
}

export class RadiusPacketError extends MpconvertError {
  constructor(message: string) {
    super('MPC_ERR_RADIUS_PACKET', `Cannot parse RADIUS packet: ${message}`);
  }
}

// ---- attribute values -------------------------------------------------------------------------------------

export const attrString = (type: number, text: string): RadiusAttribute => ({ type, value: Buffer.from(text, 'utf8') });
export const attrBytes = (type: number, value: Buffer): RadiusAttribute => ({ type, value });
export function attrUint32(type: number, n: number): RadiusAttribute {
  const value = Buffer.alloc(4);
  value.writeUInt32BE(n >>> 0);
  return { type, value };
}
export function attrAddress(type: number, address: string): RadiusAttribute {
  if (!isIP(address)) throw new RadiusPacketError(`not an IP address: ${address}`);
  return { type, value: addressToBytes(address) };
}

export function readUint32(value: Buffer): number | undefined {
  return value.length === 4 ? value.readUInt32BE(0) : undefined;
}

/** An IPv4 (4 octets) or IPv6 (16 octets) address value as text; undefined for any other length. */
export function readAddress(value: Buffer): string | undefined {
  return value.length === 4 || value.length === 16 ? bytesToAddress(value) : undefined;
}

/** Splits a counter into the 32-bit Octets value and the Gigawords (RFC 2869 section 5.1) above it. */
export function octetsAndGigawords(n: number): { octets: number; gigawords: number } {
  const gigawords = Math.floor(n / 2 ** 32);
  return { octets: n - gigawords * 2 ** 32, gigawords };
}

// ---- encoding ---------------------------------------------------------------------------------------------

function encodeAttributes(attrs: readonly RadiusAttribute[]): Buffer {
  const parts: Buffer[] = [];
  for (const a of attrs) {
    if (!Number.isInteger(a.type) || a.type < 1 || a.type > 255) throw new RadiusPacketError(`attribute type ${a.type} out of range`);
    if (a.value.length > 253) throw new RadiusPacketError(`attribute ${a.type} value of ${a.value.length} octets (at most 253)`);
    parts.push(Buffer.from([a.type, a.value.length + 2]), a.value);
  }
  return Buffer.concat(parts);
}

function header(code: number, identifier: number, length: number, authenticator: Buffer): Buffer {
  if (length > RADIUS_MAX_LENGTH) throw new RadiusPacketError(`${length} octets (at most ${RADIUS_MAX_LENGTH})`);
  const h = Buffer.alloc(4);
  h[0] = code;
  h[1] = identifier & 0xff;
  h.writeUInt16BE(length, 2);
  return Buffer.concat([h, authenticator]);
}

const md5 = (...parts: Buffer[]) => {
  const h = createHash('md5');
  for (const p of parts) h.update(p);
  return h.digest();
};

/**
 * User-Password hiding (RFC 2865 section 5.2): the password padded with zeros to a multiple of 16,
 * each 16-octet block XORed with MD5(secret + previous block), the first with MD5(secret + Request Authenticator).
 */
export function hidePassword(password: Buffer, secret: Buffer, requestAuthenticator: Buffer): Buffer {
  if (password.length > 128) throw new RadiusPacketError('User-Password longer than 128 octets');
  const padded = Buffer.alloc(Math.max(16, Math.ceil(password.length / 16) * 16));
  password.copy(padded);
  const out = Buffer.alloc(padded.length);
  let prev = requestAuthenticator;
  for (let i = 0; i < padded.length; i += 16) {
    const b = md5(secret, prev);
    for (let k = 0; k < 16; k++) out[i + k] = (padded[i + k] as number) ^ (b[k] as number);
    prev = out.subarray(i, i + 16);
  }
  return out;
}

/**
 * An Access-Request: the Request Authenticator is the caller's 16 random octets; the password is hidden with
 * it; a Message-Authenticator (HMAC-MD5 over the whole packet, RFC 3579 section 3.2) goes first, as the
 * mitigation of CVE-2024-3596 (BlastRADIUS) asks, so a server may require it.
 */
export function encodeAccessRequest(
  r: { identifier: number; authenticator: Buffer; attributes: readonly RadiusAttribute[]; password?: Buffer | undefined },
  secret: Buffer,
): Buffer {
  if (r.authenticator.length !== AUTH_LEN) throw new RadiusPacketError('the Request Authenticator must be 16 octets');
  const attrs: RadiusAttribute[] = [{ type: RadiusAttr.MessageAuthenticator, value: Buffer.alloc(16) }, ...r.attributes];
  if (r.password) attrs.push({ type: RadiusAttr.UserPassword, value: hidePassword(r.password, secret, r.authenticator) });
  const body = encodeAttributes(attrs);
  const packet = Buffer.concat([header(RadiusCode.AccessRequest, r.identifier, RADIUS_MIN_LENGTH + body.length, r.authenticator), body]);
  // The Message-Authenticator is the first attribute: its value sits at offset 22.
  createHmac('md5', secret).update(packet).digest().copy(packet, RADIUS_MIN_LENGTH + 2);
  return packet;
}

/** An Accounting-Request: Request Authenticator = MD5(Code + Identifier + Length + 16 zero octets + Attributes + secret) (RFC 2866 section 3). */
export function encodeAccountingRequest(r: { identifier: number; attributes: readonly RadiusAttribute[] }, secret: Buffer): Buffer {
  const body = encodeAttributes(r.attributes);
  const packet = Buffer.concat([header(RadiusCode.AccountingRequest, r.identifier, RADIUS_MIN_LENGTH + body.length, Buffer.alloc(AUTH_LEN)), body]);
  md5(packet, secret).copy(packet, 4);
  return packet;
}

/** A reply as a server builds it (tests, and the forged-answer checks): Response Authenticator over the request's. */
export function encodeResponse(
  r: { code: number; identifier: number; attributes: readonly RadiusAttribute[]; messageAuthenticator?: boolean },
  requestAuthenticator: Buffer,
  secret: Buffer,
): Buffer {
  const attrs = r.messageAuthenticator ? [{ type: RadiusAttr.MessageAuthenticator, value: Buffer.alloc(16) }, ...r.attributes] : [...r.attributes];
  const body = encodeAttributes(attrs);
  const packet = Buffer.concat([header(r.code, r.identifier, RADIUS_MIN_LENGTH + body.length, requestAuthenticator), body]);
  if (r.messageAuthenticator) createHmac('md5', secret).update(packet).digest().copy(packet, RADIUS_MIN_LENGTH + 2);
  md5(packet, secret).copy(packet, 4);
  return packet;
}

// ---- decoding ---------------------------------------------------------------------------------------------

/**
 * Parses a packet. Octets past the Length field are padding and ignored (RFC 2865 section 3); a packet
 * shorter than its Length, an attribute that overruns it, or a Length outside 20..4096 is refused.
 */
export function decodePacket(buf: Uint8Array): RadiusPacket {
  if (buf.length < RADIUS_MIN_LENGTH) throw new RadiusPacketError(`${buf.length} octets, the header alone is ${RADIUS_MIN_LENGTH}`);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const length = view.getUint16(2);
  if (length < RADIUS_MIN_LENGTH || length > RADIUS_MAX_LENGTH) throw new RadiusPacketError(`Length ${length} outside ${RADIUS_MIN_LENGTH}..${RADIUS_MAX_LENGTH}`);
  if (length > buf.length) throw new RadiusPacketError(`Length ${length} but only ${buf.length} octets received`);
  const b = Buffer.from(buf.buffer, buf.byteOffset, length);
  const attributes: RadiusAttribute[] = [];
  let off = RADIUS_MIN_LENGTH;
  while (off < length) {
    if (off + 2 > length) throw new RadiusPacketError(`attribute header truncated at offset ${off}`);
    const type = b[off] as number;
    const len = b[off + 1] as number;
    if (len < 2) throw new RadiusPacketError(`attribute ${type} with Length ${len} (at least 2)`);
    if (off + len > length) throw new RadiusPacketError(`attribute ${type} overruns the packet`);
    attributes.push({ type, value: Buffer.from(b.subarray(off + 2, off + len)) });
    off += len;
  }
  return { code: b[0] as number, identifier: b[1] as number, authenticator: Buffer.from(b.subarray(4, 20)), attributes };
}

export type ResponseCheck = { ok: true; packet: RadiusPacket } | { ok: false; why: 'malformed' | 'authenticator' | 'message-authenticator' | 'message-authenticator-missing' };

/**
 * Verifies an answer to a request: Response Authenticator = MD5(Code + Identifier + Length + Request
 * Authenticator + Attributes + secret) (RFC 2865 section 3), and the Message-Authenticator when present
 * (HMAC-MD5 with the Request Authenticator in place and the attribute zeroed; RFC 3579 section 3.2), or
 * when `requireMessageAuthenticator`. A forged or corrupted answer fails here and is dropped by the caller.
 */
export function verifyResponse(raw: Uint8Array, requestAuthenticator: Buffer, secret: Buffer, requireMessageAuthenticator = false): ResponseCheck {
  let packet: RadiusPacket;
  try {
    packet = decodePacket(raw);
  } catch {
    return { ok: false, why: 'malformed' };
  }
  const length = RADIUS_MIN_LENGTH + packet.attributes.reduce((n, a) => n + 2 + a.value.length, 0);
  const bytes = Buffer.from(Buffer.from(raw.buffer, raw.byteOffset, length));
  const expected = md5(bytes.subarray(0, 4), requestAuthenticator, bytes.subarray(20), secret);
  if (!timingSafeEqual(expected, bytes.subarray(4, 20))) return { ok: false, why: 'authenticator' };
  const maIndex = packet.attributes.findIndex((a) => a.type === RadiusAttr.MessageAuthenticator);
  if (maIndex < 0) return requireMessageAuthenticator ? { ok: false, why: 'message-authenticator-missing' } : { ok: true, packet };
  const ma = packet.attributes[maIndex] as RadiusAttribute;
  if (ma.value.length !== 16) return { ok: false, why: 'message-authenticator' };
  let off = RADIUS_MIN_LENGTH;
  for (let i = 0; i < maIndex; i++) off += 2 + (packet.attributes[i] as RadiusAttribute).value.length;
  const copy = Buffer.from(bytes);
  requestAuthenticator.copy(copy, 4);
  copy.fill(0, off + 2, off + 18);
  const mac = createHmac('md5', secret).update(copy).digest();
  if (!timingSafeEqual(mac, ma.value)) return { ok: false, why: 'message-authenticator' };
  return { ok: true, packet };
}

/** The first attribute of a type, or undefined. */
export const findAttr = (p: RadiusPacket, type: number): Buffer | undefined => p.attributes.find((a) => a.type === type)?.value;
export const findAll = (p: RadiusPacket, type: number): Buffer[] => p.attributes.filter((a) => a.type === type).map((a) => a.value);
