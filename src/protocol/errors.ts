/**
 * Protocol errors: one class, a stable code per violation, and the wire reaction the receiver applies
 * (docs/protocol.md: silent abort for MP_CONVERT and UDP frames; an RFC 8803 Error TLV for Convert messages).
 * docs/protocol.md lists every code.
 */
import { MpconvertError } from '../errors.js';

/**
 * What the receiver does on the wire. `convert-error`: send a Convert message carrying one Error TLV
 * (errorCode, value, then `extra` bytes, see encodeConvertErrorReply), then close.
 */
export type WireReaction =
  | { kind: 'abort' }
  | { kind: 'convert-error'; errorCode: number; value?: number; extra?: Buffer };

/** RFC 8803 section 6.2.8 error codes (IANA "Convert Errors"). */
export const ConvertErrorCode = {
  UnsupportedVersion: 0,
  MalformedMessage: 1,
  UnsupportedMessage: 2,
  MissingCookie: 3,
  NotAuthorized: 32,
  UnsupportedTcpOption: 33,
  ResourceExceeded: 64,
  NetworkFailure: 65,
  ConnectionReset: 96,
  DestinationUnreachable: 97,
} as const;

export type ConvertErrorCodeValue = (typeof ConvertErrorCode)[keyof typeof ConvertErrorCode];

/** Every ProtocolError code, what it means, and its reaction (the table in docs/protocol.md). */
export const PROTOCOL_ERRORS = {
  MPC_ERR_FORMAT: { meaning: 'first bytes are neither MP_CONVERT (0xFA...) nor RFC 8803 (magic 0x2263)', reaction: 'abort' },
  MPC_ERR_IE_MAGIC: { meaning: 'MP_CONVERT IE does not start with 0xFAA8FAA8 (first IE, or after M = 0)', reaction: 'abort' },
  MPC_ERR_IE_LENGTH: { meaning: 'MP_CONVERT IE Length invalid for its Type (Type 0: 8/10/20/22; Type 0x80: 5; Type 0x82: 4; Type 0x83: 6; Type 0x85: 5; any: >= 4)', reaction: 'abort' },
  MPC_ERR_IE_LIMIT: { meaning: 'MP_CONVERT signalling over 8 IEs or 256 bytes', reaction: 'abort' },
  MPC_ERR_IE_DUPLICATE: { meaning: 'two address IEs with the same D bit, two transport IEs, two binding IEs, or two server MPTCP IEs', reaction: 'abort' },
  MPC_ERR_IE_CONFLICT: { meaning: 'a transport IE and a destination address IE in the same signalling (either order), or a binding IE with a destination, transport or warm IE', reaction: 'abort' },
  MPC_ERR_IE_PORT: { meaning: 'port 0 in an address IE or a binding IE', reaction: 'abort' },
  MPC_ERR_IE_WARM: { meaning: 'a warm IE (Type 0x82) that is not the first IE, or that has M = 1 (nothing to convert)', reaction: 'abort' },
  MPC_ERR_IE_TRUNCATED: { meaning: 'MP_CONVERT signalling ends before the IE with M = 1 (whole-buffer decode only)', reaction: 'abort' },
  MPC_ERR_IE_TRAILING: { meaning: 'bytes after the IE with M = 1 (whole-buffer decode only)', reaction: 'abort' },
  MPC_ERR_CONVERT_VERSION: { meaning: 'Convert message version is not 1', reaction: 'Error TLV 0 (Unsupported Version), value 1' },
  MPC_ERR_CONVERT_MALFORMED: {
    meaning: 'Convert message: bad magic, Total Length 0, TLV Length 0 / too short / past Total Length, bad TCP options, bad field',
    reaction: 'Error TLV 1 (Malformed Message), value 0, the message echoed',
  },
  MPC_ERR_CONVERT_DUPLICATE: { meaning: 'a Convert TLV appears more than once', reaction: 'Error TLV 1 (Malformed Message), value 0, the message echoed' },
  MPC_ERR_CONVERT_RESERVED: { meaning: 'Convert TLV of the reserved type 0', reaction: 'Error TLV 1 (Malformed Message), value 0, the message echoed' },
  MPC_ERR_CONVERT_UNSUPPORTED: {
    meaning: 'Convert TLV of an unassigned or private-use type',
    reaction: 'Error TLV 2 (Unsupported Message), value 0, the message echoed',
  },
  MPC_ERR_CONVERT_REPLY: { meaning: 'a Convert reply read by the client (CPE) is not a valid Convert message', reaction: 'abort' },
  MPC_ERR_UDP_MAGIC: { meaning: 'UDP channel frame does not start with 0xD7', reaction: 'abort' },
  MPC_ERR_UDP_RESERVED: { meaning: 'UDP channel frame has reserved bits set', reaction: 'abort' },
  MPC_ERR_UDP_LENGTH: { meaning: 'UDP channel frame payload over the maximum', reaction: 'abort' },
  MPC_ERR_UDP_PORT: { meaning: 'UDP channel frame with port 0', reaction: 'abort' },
  MPC_ERR_UDP_DIRECTION: { meaning: 'UDP channel frame with the D bit of the other direction', reaction: 'abort' },
  MPC_ERR_UDP_VERSION: { meaning: 'UDP channel frame of a version other than 1', reaction: 'abort' },
  MPC_ERR_UDP_FLOW: { meaning: 'UDP channel frame with LAN flow id 0', reaction: 'abort' },
  MPC_ERR_PROXY_SIGNATURE: { meaning: 'PROXY v2 header (decoder for tests and tools) does not start with its 12-byte signature', reaction: 'abort' },
  MPC_ERR_PROXY_VERSION: { meaning: 'PROXY v2 header version is not 2, or its command is neither LOCAL nor PROXY', reaction: 'abort' },
  MPC_ERR_PROXY_FAMILY: { meaning: 'PROXY v2 header family (> 3) or transport protocol (> 2) is not defined', reaction: 'abort' },
  MPC_ERR_PROXY_LENGTH: { meaning: 'PROXY v2 header with the PROXY command whose Length is shorter than its address block', reaction: 'abort' },
} as const;

export type ProtocolErrorCodeValue = keyof typeof PROTOCOL_ERRORS;

/** Named aliases of the codes (stable strings; these never change). */
export const ProtocolErrorCode = {
  UnknownFormat: 'MPC_ERR_FORMAT',
  BadMagic: 'MPC_ERR_IE_MAGIC',
  BadLength: 'MPC_ERR_IE_LENGTH',
  TooLarge: 'MPC_ERR_IE_LIMIT',
  DuplicateAddress: 'MPC_ERR_IE_DUPLICATE',
  TransportWithDestination: 'MPC_ERR_IE_CONFLICT',
  BadPort: 'MPC_ERR_IE_PORT',
  MisplacedWarm: 'MPC_ERR_IE_WARM',
  Truncated: 'MPC_ERR_IE_TRUNCATED',
  Trailing: 'MPC_ERR_IE_TRAILING',
  ConvertVersion: 'MPC_ERR_CONVERT_VERSION',
  ConvertMalformed: 'MPC_ERR_CONVERT_MALFORMED',
  ConvertDuplicate: 'MPC_ERR_CONVERT_DUPLICATE',
  ConvertReserved: 'MPC_ERR_CONVERT_RESERVED',
  ConvertUnsupported: 'MPC_ERR_CONVERT_UNSUPPORTED',
  ConvertReply: 'MPC_ERR_CONVERT_REPLY',
  UdpMagic: 'MPC_ERR_UDP_MAGIC',
  UdpReserved: 'MPC_ERR_UDP_RESERVED',
  UdpLength: 'MPC_ERR_UDP_LENGTH',
  UdpPort: 'MPC_ERR_UDP_PORT',
  UdpDirection: 'MPC_ERR_UDP_DIRECTION',
  UdpVersion: 'MPC_ERR_UDP_VERSION',
  UdpFlow: 'MPC_ERR_UDP_FLOW',
  ProxySignature: 'MPC_ERR_PROXY_SIGNATURE',
  ProxyVersion: 'MPC_ERR_PROXY_VERSION',
  ProxyFamily: 'MPC_ERR_PROXY_FAMILY',
  ProxyLength: 'MPC_ERR_PROXY_LENGTH',
} as const satisfies Record<string, ProtocolErrorCodeValue>;

export class ProtocolError extends MpconvertError {
  declare readonly code: ProtocolErrorCodeValue;
  readonly reaction: WireReaction;
  constructor(code: ProtocolErrorCodeValue, message: string, reaction: WireReaction = { kind: 'abort' }) {
    super(code, message);
    this.reaction = reaction;
  }
}

export function abortError(code: ProtocolErrorCodeValue, message: string): ProtocolError {
  return new ProtocolError(code, message, { kind: 'abort' });
}

export function convertError(code: ProtocolErrorCodeValue, message: string, errorCode: number, value = 0, extra?: Buffer): ProtocolError {
  return new ProtocolError(code, message, extra ? { kind: 'convert-error', errorCode, value, extra } : { kind: 'convert-error', errorCode, value });
}
