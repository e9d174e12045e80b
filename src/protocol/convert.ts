/**
 * RFC 8803 0-RTT TCP Convert Protocol, version 1: messages and TLVs (pure).
 *
 * Fixed header (section 4.1) and TLV (section 4.2):
 *  0                   1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +---------------+---------------+-------------------------------+
 * |  Version = 1  | Total Length  |     Magic Number = 0x2263     |  Total Length: 32-bit words, header
 * +---------------+---------------+-------------------------------+  included (max 255 -> 1020 bytes)
 * |     Type      |    Length     |          Value ...            |  Length: 32-bit words, whole TLV;
 * +---------------+---------------+-------------------------------+  Value zero-padded to 32 bits
 *
 * Info (0x01, Length 1):                | Type | Length | Unassigned (16)                     |
 * Connect (0x0A, Length >= 5):          | Type | Length | Remote Peer Port (16)               |
 *                                       | Remote Peer IP Address (128; IPv4 as ::ffff:a.b.c.d) |
 *                                       | TCP Options (variable, EOL/zero padded)              |
 * Extended TCP Header (0x14):           | Type | Length | Unassigned (16) | TCP header ...    |
 * Supported TCP Extensions (0x15):      | Type | Length | Unassigned (16) | Kind (8) ...      |
 * Cookie (0x16):                        | Type | Length | Zero (16)       | Opaque Cookie ... |
 * Error (0x1E):                         | Type | Length | Error Code (8) | Value (8) | ...   |
 */
import { addressToMapped16, bytesToIpv6, unmapIpv4 } from './address.js';
import { ConvertErrorCode, ProtocolErrorCode, convertError, type ProtocolErrorCodeValue, type WireReaction } from './errors.js';

export const CONVERT_VERSION = 1;
export const CONVERT_MAGIC = 0x2263;
/** Total Length is one byte of 32-bit words. */
export const CONVERT_MAX_BYTES = 255 * 4;
/** What a Malformed / Unsupported Message Error TLV can echo in a reply of at most 1020 bytes. */
export const CONVERT_MAX_ECHO = CONVERT_MAX_BYTES - 8;

export const ConvertTlvType = {
  Info: 0x01,
  Connect: 0x0a,
  ExtendedTcpHeader: 0x14,
  SupportedTcpExtensions: 0x15,
  Cookie: 0x16,
  Error: 0x1e,
} as const;

/** A TCP option as in a TCP header: kind 1 (NOP) has no data; other kinds are kind, length, data. */
export interface TcpOption {
  kind: number;
  data: Buffer;
}

export type ConvertTlv =
  | { type: 'info' }
  /** `options`: the TCP options bytes, without the EOL/zero padding. */
  | { type: 'connect'; address: string; port: number; options: Buffer }
  | { type: 'extended-tcp-header'; header: Buffer }
  | { type: 'supported-tcp-extensions'; kinds: number[] }
  | { type: 'cookie'; cookie: Buffer }
  | { type: 'error'; code: number; value: number; extra?: Buffer };

export type ConnectTlv = Extract<ConvertTlv, { type: 'connect' }>;
export type ErrorTlv = Extract<ConvertTlv, { type: 'error' }>;

export interface ConvertMessage {
  tlvs: ConvertTlv[];
}

/** A decoded message: the TLVs in wire order, and each one by name (each appears at most once). */
export interface DecodedConvertMessage extends ConvertMessage {
  info?: true;
  connect?: ConnectTlv;
  extendedTcpHeader?: Buffer;
  supportedTcpExtensions?: number[];
  cookie?: Buffer;
  error?: ErrorTlv;
}

const TLV_NAMES: Readonly<Record<ConvertTlv['type'], number>> = {
  info: ConvertTlvType.Info,
  connect: ConvertTlvType.Connect,
  'extended-tcp-header': ConvertTlvType.ExtendedTcpHeader,
  'supported-tcp-extensions': ConvertTlvType.SupportedTcpExtensions,
  cookie: ConvertTlvType.Cookie,
  error: ConvertTlvType.Error,
};

const pad4 = (b: Buffer): Buffer => (b.length % 4 === 0 ? b : Buffer.concat([b, Buffer.alloc(4 - (b.length % 4))]));

const u16 = (v: number): Buffer => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v);
  return b;
};

const byte = (v: number, what: string): number => {
  if (!Number.isInteger(v) || v < 0 || v > 255) throw new TypeError(`Cannot encode Convert message: ${what} ${v} is not 0-255`);
  return v;
};

function tlv(type: number, firstTwo: Buffer, rest: Buffer = Buffer.alloc(0)): Buffer {
  const out = pad4(Buffer.concat([Buffer.from([type, 0]), firstTwo, rest]));
  if (out.length > CONVERT_MAX_BYTES - 4) throw new TypeError(`Cannot encode Convert TLV 0x${type.toString(16)}: ${out.length} bytes do not fit in a message`);
  out[1] = out.length / 4;
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// TCP options (Connect TLV)

export type TcpOptionsParse = { ok: true; options: TcpOption[]; length: number } | { ok: false; why: string };

/** Parses TCP options; stops at EOL (kind 0), after which only zero bytes may follow. Never throws. */
export function parseTcpOptions(buf: Buffer): TcpOptionsParse {
  const options: TcpOption[] = [];
  let off = 0;
  while (off < buf.length) {
    const kind = buf[off] as number;
    if (kind === 0) {
      for (let i = off + 1; i < buf.length; i++) if (buf[i] !== 0) return { ok: false, why: `non-zero byte ${i} after End of Option List` };
      return { ok: true, options, length: off };
    }
    if (kind === 1) {
      options.push({ kind, data: Buffer.alloc(0) });
      off += 1;
      continue;
    }
    if (off + 2 > buf.length) return { ok: false, why: `TCP option ${kind} at byte ${off} has no length` };
    const len = buf[off + 1] as number;
    if (len < 2) return { ok: false, why: `TCP option ${kind} at byte ${off} has length ${len}` };
    if (off + len > buf.length) return { ok: false, why: `TCP option ${kind} at byte ${off} runs past the TLV` };
    options.push({ kind, data: Buffer.from(buf.subarray(off + 2, off + len)) });
    off += len;
  }
  return { ok: true, options, length: off };
}

/** TCP options to bytes (no padding). Throws TypeError on EOL or an option that does not fit its length byte. */
export function encodeTcpOptions(options: readonly TcpOption[]): Buffer {
  return Buffer.concat(
    options.map((o) => {
      byte(o.kind, 'TCP option kind');
      if (o.kind === 0) throw new TypeError('Cannot encode TCP options: EOL (kind 0) is padding, not an option');
      if (o.kind === 1) {
        if (o.data.length !== 0) throw new TypeError('Cannot encode TCP options: NOP carries no data');
        return Buffer.from([1]);
      }
      if (o.data.length > 253) throw new TypeError(`Cannot encode TCP option ${o.kind}: ${o.data.length} bytes of data`);
      return Buffer.concat([Buffer.from([o.kind, o.data.length + 2]), o.data]);
    }),
  );
}

// ---------------------------------------------------------------------------------------------------------
// Error TLV value rules (RFC 8803 section 6.2.8)

/** What an Error TLV says, per code. */
export type ConvertErrorInfo =
  | { code: 0; name: 'unsupported-version'; versions: number[] }
  | { code: 1 | 2; name: 'malformed-message' | 'unsupported-message'; echo: Buffer }
  | { code: 3; name: 'missing-cookie'; cookieTlv: Buffer }
  | { code: 32 | 96; name: 'not-authorized' | 'connection-reset' }
  | { code: 33; name: 'unsupported-tcp-option'; kinds: number[] }
  | { code: 64 | 65; name: 'resource-exceeded' | 'network-failure'; retryAfterSeconds: number }
  | { code: 97; name: 'destination-unreachable'; icmpCode: number }
  | { code: number; name: 'unassigned'; value: number; extra: Buffer };

/** Resource Exceeded / Network Failure: Value 0 means "the default delay of at least 30 seconds". */
export const CONVERT_DEFAULT_RETRY_SECONDS = 30;

const nonZeroList = (first: number, extra: Buffer | undefined): number[] => [first, ...(extra ?? [])].filter((k) => k !== 0);

/** A list of non-zero bytes, then only zero padding. */
function isPaddedList(b: Buffer): boolean {
  const firstZero = b.indexOf(0);
  return firstZero < 0 || b.subarray(firstZero).every((x) => x === 0);
}

/** A typed view of an Error TLV (lenient: any value decodes, per the rules of its code). */
export function interpretConvertError(t: ErrorTlv): ConvertErrorInfo {
  const extra = t.extra ?? Buffer.alloc(0);
  switch (t.code) {
    case ConvertErrorCode.UnsupportedVersion:
      return { code: 0, name: 'unsupported-version', versions: nonZeroList(t.value, extra) };
    case ConvertErrorCode.MalformedMessage:
      return { code: 1, name: 'malformed-message', echo: extra };
    case ConvertErrorCode.UnsupportedMessage:
      return { code: 2, name: 'unsupported-message', echo: extra };
    case ConvertErrorCode.MissingCookie:
      return { code: 3, name: 'missing-cookie', cookieTlv: extra };
    case ConvertErrorCode.NotAuthorized:
      return { code: 32, name: 'not-authorized' };
    case ConvertErrorCode.ConnectionReset:
      return { code: 96, name: 'connection-reset' };
    case ConvertErrorCode.UnsupportedTcpOption:
      return { code: 33, name: 'unsupported-tcp-option', kinds: nonZeroList(t.value, extra) };
    case ConvertErrorCode.ResourceExceeded:
      return { code: 64, name: 'resource-exceeded', retryAfterSeconds: t.value === 0 ? CONVERT_DEFAULT_RETRY_SECONDS : t.value };
    case ConvertErrorCode.NetworkFailure:
      return { code: 65, name: 'network-failure', retryAfterSeconds: t.value === 0 ? CONVERT_DEFAULT_RETRY_SECONDS : t.value };
    case ConvertErrorCode.DestinationUnreachable:
      return { code: 97, name: 'destination-unreachable', icmpCode: t.value };
    default:
      return { code: t.code, name: 'unassigned', value: t.value, extra };
  }
}

/** Checks an Error TLV against the value rules of its code before sending it. Throws TypeError. */
function checkErrorTlv(t: ErrorTlv): void {
  byte(t.code, 'Error Code');
  byte(t.value, 'Error Value');
  const extra = t.extra ?? Buffer.alloc(0);
  const bad = (why: string) => new TypeError(`Cannot encode Error TLV ${t.code}: ${why}`);
  switch (t.code) {
    case ConvertErrorCode.UnsupportedVersion:
      if (t.value === 0) throw bad('Value must be a supported version (1)');
      if (!isPaddedList(extra)) throw bad('the further versions must be non-zero, then only zero padding');
      return;
    case ConvertErrorCode.MalformedMessage:
    case ConvertErrorCode.UnsupportedMessage:
      if (t.value !== 0) throw bad('Value must be 0 (the message is echoed after it)');
      return;
    case ConvertErrorCode.MissingCookie:
      if (t.value !== 0) throw bad('Value must be 0');
      if (extra.length < 4 || extra[0] !== ConvertTlvType.Cookie || (extra[1] as number) * 4 !== pad4(extra).length) {
        throw bad('the bytes after Value must be the Cookie TLV to send');
      }
      return;
    case ConvertErrorCode.NotAuthorized:
    case ConvertErrorCode.ConnectionReset:
      if (t.value !== 0 || extra.length !== 0) throw bad('Value must be 0, nothing after it');
      return;
    case ConvertErrorCode.UnsupportedTcpOption:
      if (t.value === 0 || !isPaddedList(extra)) throw bad('Value and the bytes after it must be TCP option kinds (non-zero), then only zero padding');
      return;
    case ConvertErrorCode.ResourceExceeded:
    case ConvertErrorCode.NetworkFailure:
    case ConvertErrorCode.DestinationUnreachable:
      if (extra.length !== 0) throw bad('nothing may follow Value');
      return;
    default:
      return;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Encoding

function encodeTlv(t: ConvertTlv): Buffer {
  switch (t.type) {
    case 'info':
      return tlv(ConvertTlvType.Info, u16(0));
    case 'connect': {
      if (!Number.isInteger(t.port) || t.port < 1 || t.port > 65535) throw new TypeError(`Cannot encode Connect TLV: port ${t.port} is out of range 1-65535`);
      const parsed = parseTcpOptions(t.options);
      if (!parsed.ok || parsed.length !== t.options.length) throw new TypeError(`Cannot encode Connect TLV: TCP options: ${parsed.ok ? 'EOL inside' : parsed.why}`);
      return tlv(ConvertTlvType.Connect, u16(t.port), Buffer.concat([addressToMapped16(t.address), t.options]));
    }
    case 'extended-tcp-header':
      return tlv(ConvertTlvType.ExtendedTcpHeader, u16(0), t.header);
    case 'supported-tcp-extensions':
      for (const k of t.kinds) if (byte(k, 'TCP option kind') === 0) throw new TypeError('Cannot encode Supported TCP Extensions TLV: kind 0');
      return tlv(ConvertTlvType.SupportedTcpExtensions, u16(0), Buffer.from(t.kinds));
    case 'cookie':
      return tlv(ConvertTlvType.Cookie, u16(0), t.cookie);
    case 'error':
      checkErrorTlv(t);
      return tlv(ConvertTlvType.Error, Buffer.from([t.code, t.value]), t.extra ?? Buffer.alloc(0));
  }
}

/** Encodes a Convert message (header + TLVs in the given order). Throws TypeError on a value it cannot send. */
export function encodeConvertMessage(msg: ConvertMessage): Buffer {
  const seen = new Set<string>();
  for (const t of msg.tlvs) {
    if (!(t.type in TLV_NAMES)) throw new TypeError(`Cannot encode Convert message: unknown TLV "${String(t.type)}"`);
    if (seen.has(t.type)) throw new TypeError(`Cannot encode Convert message: TLV ${t.type} twice (each TLV at most once)`);
    seen.add(t.type);
  }
  const body = Buffer.concat(msg.tlvs.map(encodeTlv));
  const total = 4 + body.length;
  if (total > CONVERT_MAX_BYTES) throw new TypeError(`Cannot encode Convert message: ${total} bytes, the limit is ${CONVERT_MAX_BYTES}`);
  const head = Buffer.from([CONVERT_VERSION, total / 4, CONVERT_MAGIC >> 8, CONVERT_MAGIC & 0xff]);
  return Buffer.concat([head, body]);
}

/**
 * The Convert message that answers a refusal: one Error TLV, built from a `convert-error` reaction (a
 * ProtocolError's, or one the concentrator chooses, e.g. { errorCode: 97, value: icmpCode }).
 */
export function encodeConvertErrorReply(reaction: { errorCode: number; value?: number; extra?: Buffer }): Buffer {
  const t: ErrorTlv = { type: 'error', code: reaction.errorCode, value: reaction.value ?? 0 };
  if (reaction.extra && reaction.extra.length > 0) t.extra = reaction.extra;
  return encodeConvertMessage({ tlvs: [t] });
}

/** The echo a Malformed / Unsupported Message Error TLV carries: the message, cut to fit one reply. */
export function convertEcho(message: Buffer): Buffer {
  return Buffer.from(message.subarray(0, CONVERT_MAX_ECHO));
}

// ---------------------------------------------------------------------------------------------------------
// Decoding

const malformed = (why: string, message: Buffer, code: ProtocolErrorCodeValue = ProtocolErrorCode.ConvertMalformed) =>
  convertError(code, `Cannot parse Convert message: ${why}`, ConvertErrorCode.MalformedMessage, 0, convertEcho(message));

/**
 * The Convert message's Total Length in bytes from its first 4 bytes, or 'need-more'. Throws ProtocolError
 * (reaction: Error TLV) on a wrong magic (Malformed), a version other than 1 (Unsupported Version, value 1)
 * or a Total Length of 0 (Malformed). Reads at most 4 bytes.
 */
export function convertMessageLength(buf: Buffer): number | 'need-more' {
  if (buf.length < 4) return 'need-more';
  const head = buf.subarray(0, 4);
  const magic = buf.readUInt16BE(2);
  if (magic !== CONVERT_MAGIC) throw malformed(`bad magic 0x${magic.toString(16).padStart(4, '0')}`, head);
  if (buf[0] !== CONVERT_VERSION) {
    throw convertError(ProtocolErrorCode.ConvertVersion, `Cannot parse Convert message: version ${buf[0]} is not supported`, ConvertErrorCode.UnsupportedVersion, CONVERT_VERSION);
  }
  const total = (buf[1] as number) * 4;
  if (total === 0) throw malformed('Total Length is 0', head);
  return total;
}

/** Minimum TLV Length (32-bit words) per type; Info is exactly 1. */
const MIN_WORDS: Readonly<Record<number, number>> = {
  [ConvertTlvType.Info]: 1,
  [ConvertTlvType.Connect]: 5,
  [ConvertTlvType.ExtendedTcpHeader]: 1,
  [ConvertTlvType.SupportedTcpExtensions]: 1,
  [ConvertTlvType.Cookie]: 1,
  [ConvertTlvType.Error]: 1,
};

/**
 * Decodes one whole Convert message; `buf` must be exactly the message (Total Length bytes). Throws
 * ProtocolError whose reaction is the RFC 8803 Error TLV a converter sends back: Unsupported Version (0,
 * value 1); Malformed Message (1, message echoed) for a bad header or length, a TLV of the reserved type 0,
 * a TLV twice, a bad field; Unsupported Message (2, message echoed) for an unassigned or private TLV type.
 */
export function decodeConvertMessage(buf: Buffer): DecodedConvertMessage {
  const total = convertMessageLength(buf);
  const msg = buf.subarray(0, typeof total === 'number' ? total : buf.length);
  if (total === 'need-more' || buf.length < total) throw malformed(`truncated: ${buf.length} bytes`, msg);
  if (buf.length > total) throw malformed(`${buf.length - total} bytes after Total Length (${total})`, msg);
  const out: DecodedConvertMessage = { tlvs: [] };
  const seen = new Set<number>();
  let off = 4;
  while (off < total) {
    const type = buf[off] as number;
    const len = (buf[off + 1] as number) * 4;
    if (len === 0) throw malformed(`TLV at byte ${off} has Length 0`, msg);
    if (off + len > total) throw malformed(`TLV at byte ${off} (Length ${len / 4}) runs past Total Length`, msg);
    if (type === 0) throw malformed(`TLV at byte ${off} has the reserved type 0`, msg, ProtocolErrorCode.ConvertReserved);
    const min = MIN_WORDS[type];
    if (min === undefined) {
      throw convertError(ProtocolErrorCode.ConvertUnsupported, `Cannot parse Convert message: TLV type ${type} at byte ${off} is not supported`, ConvertErrorCode.UnsupportedMessage, 0, convertEcho(msg));
    }
    if (seen.has(type)) throw malformed(`TLV type ${type} appears twice`, msg, ProtocolErrorCode.ConvertDuplicate);
    seen.add(type);
    if (len < min * 4 || (type === ConvertTlvType.Info && len !== 4)) throw malformed(`TLV type ${type} at byte ${off} has Length ${len / 4}`, msg);
    const v = buf.subarray(off + 2, off + len);
    switch (type) {
      case ConvertTlvType.Info:
        out.tlvs.push({ type: 'info' });
        out.info = true;
        break;
      case ConvertTlvType.Connect: {
        const port = v.readUInt16BE(0);
        if (port === 0) throw malformed(`Connect TLV at byte ${off} has Remote Peer Port 0`, msg);
        const a = v.subarray(2, 18);
        const opts = parseTcpOptions(v.subarray(18));
        if (!opts.ok) throw malformed(`Connect TLV at byte ${off}: ${opts.why}`, msg);
        const t: ConnectTlv = { type: 'connect', address: unmapIpv4(a) ?? bytesToIpv6(a), port, options: Buffer.from(v.subarray(18, 18 + opts.length)) };
        out.tlvs.push(t);
        out.connect = t;
        break;
      }
      case ConvertTlvType.ExtendedTcpHeader: {
        const header = Buffer.from(v.subarray(2));
        out.tlvs.push({ type: 'extended-tcp-header', header });
        out.extendedTcpHeader = header;
        break;
      }
      case ConvertTlvType.SupportedTcpExtensions: {
        const raw = v.subarray(2);
        let end = raw.length;
        while (end > 0 && raw[end - 1] === 0) end--;
        const kinds = [...raw.subarray(0, end)];
        if (kinds.includes(0)) throw malformed(`Supported TCP Extensions TLV at byte ${off} lists kind 0`, msg);
        out.tlvs.push({ type: 'supported-tcp-extensions', kinds });
        out.supportedTcpExtensions = kinds;
        break;
      }
      case ConvertTlvType.Cookie: {
        const cookie = Buffer.from(v.subarray(2));
        out.tlvs.push({ type: 'cookie', cookie });
        out.cookie = cookie;
        break;
      }
      case ConvertTlvType.Error: {
        const t: ErrorTlv = { type: 'error', code: v[0] as number, value: v[1] as number };
        if (v.length > 2) t.extra = Buffer.from(v.subarray(2));
        out.tlvs.push(t);
        out.error = t;
        break;
      }
    }
    off += len;
  }
  return out;
}

/** The reaction a converter applies for a reaction-less failure (helper for roles building replies). */
export function convertReaction(errorCode: number, value = 0, extra?: Buffer): Extract<WireReaction, { kind: 'convert-error' }> {
  return extra ? { kind: 'convert-error', errorCode, value, extra } : { kind: 'convert-error', errorCode, value };
}
