/**
 * The signalling at the start of a converted connection, read incrementally whatever the format, so that
 * one concentrator port serves both (docs/protocol.md, "Detection"):
 *   - first byte 0xFA                      -> MP_CONVERT IEs (the rest of 0xFAA8FAA8 is checked by the IE parser);
 *   - else bytes 2-3 = 0x2263 (the magic)  -> RFC 8803 Convert message (its version is checked afterwards);
 *   - else                                 -> neither: abort (MPC_ERR_FORMAT), as soon as a byte proves it.
 * It never holds more than the format's limit (256 / 1020 bytes) of signalling between two pushes, and it
 * returns the signalling's exact bytes (the MP_CONVERT echo repeats them) apart from the application bytes
 * that follow.
 */
import {
  CONVERT_MAGIC,
  convertMessageLength,
  decodeConvertMessage,
  type ConnectTlv,
  type DecodedConvertMessage,
} from './convert.js';
import { MP_CONVERT_LIMITS, WARM_IE, parseMpConvert, type MpConvertSignalling, type SignalledAddress } from './mp-convert.js';
import { ProtocolError, ProtocolErrorCode, abortError } from './errors.js';

export interface ConvertSignalling {
  format: 'rfc8803';
  message: DecodedConvertMessage;
  /** The Connect TLV, when there is one (same object as message.connect). */
  connect?: ConnectTlv;
  /** The Connect TLV's address and port, in the shape MP_CONVERT uses. */
  destination?: Required<SignalledAddress>;
}

export type Signalling = MpConvertSignalling | ConvertSignalling;

export type SignallingResult =
  | { status: 'need-more' }
  | { status: 'done'; signalling: Signalling; raw: Buffer; rest: Buffer };

export type SignallingFormat = 'mp-convert' | 'rfc8803';

const MAGIC_HI = CONVERT_MAGIC >> 8;
const MAGIC_LO = CONVERT_MAGIC & 0xff;

/** The format from the first bytes: 'need-more' until it can tell. Throws ProtocolError (abort) on neither. */
export function detectFormat(buf: Buffer): SignallingFormat | 'need-more' {
  if (buf.length === 0) return 'need-more';
  if (buf[0] === 0xfa) return 'mp-convert';
  const neither = () => abortError(ProtocolErrorCode.UnknownFormat, 'Cannot detect signalling format: neither MP_CONVERT (0xFA...) nor RFC 8803 (magic 0x2263)');
  if (buf.length >= 3 && buf[2] !== MAGIC_HI) throw neither();
  if (buf.length >= 4 && buf[3] !== MAGIC_LO) throw neither();
  return buf.length >= 4 ? 'rfc8803' : 'need-more';
}

/** Server side (concentrator): reads the signalling of either format at the start of a connection. */
export class SignallingDecoder {
  #buf: Buffer = Buffer.alloc(0);
  #done = false;
  #failed = false;

  /** Signalling bytes held between pushes (always below the format's limit). */
  get buffered(): number {
    return this.#buf.length;
  }

  /**
   * The signalling so far opens with a warm IE (docs/protocol.md section 1.5): the connection was opened ahead
   * of use and the rest may take its time.
   */
  get warm(): boolean {
    return this.#buf.length >= WARM_IE.length && this.#buf.subarray(0, WARM_IE.length).equals(WARM_IE);
  }

  /** Feed the next bytes. Throws ProtocolError on a violation; the decoder is then unusable. */
  push(chunk: Buffer): SignallingResult {
    if (this.#done || this.#failed) throw new Error('SignallingDecoder: push after a final result');
    const buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    try {
      const r = this.#parse(buf);
      if (r.status === 'need-more') this.#buf = Buffer.from(buf);
      return r;
    } catch (err) {
      this.#failed = true;
      this.#buf = Buffer.alloc(0);
      throw err;
    }
  }

  #parse(buf: Buffer): SignallingResult {
    const format = detectFormat(buf);
    if (format === 'need-more') return { status: 'need-more' };
    if (format === 'mp-convert') {
      // parseMpConvert never looks past the limit and throws before it is crossed, so what is kept stays under it.
      const r = parseMpConvert(buf.subarray(0, MP_CONVERT_LIMITS.maxBytes));
      if (r.status === 'need-more') return r;
      return this.#finish(buf, r.signalling, r.length);
    }
    const total = convertMessageLength(buf);
    // Total Length is one byte of 32-bit words: what is kept never exceeds 1020 bytes.
    if (total === 'need-more' || buf.length < total) return { status: 'need-more' };
    const message = decodeConvertMessage(buf.subarray(0, total));
    const s: ConvertSignalling = { format: 'rfc8803', message };
    if (message.connect) {
      s.connect = message.connect;
      s.destination = { address: message.connect.address, port: message.connect.port };
    }
    return this.#finish(buf, s, total);
  }

  #finish(buf: Buffer, signalling: Signalling, length: number): SignallingResult {
    this.#done = true;
    this.#buf = Buffer.alloc(0);
    return { status: 'done', signalling, raw: Buffer.from(buf.subarray(0, length)), rest: buf.subarray(length) };
  }
}

export type ConvertReplyResult =
  | { status: 'need-more' }
  | { status: 'done'; message: DecodedConvertMessage; raw: Buffer; rest: Buffer };

/**
 * Client side (CPE): reads the converter's RFC 8803 reply (a Convert message, possibly with an Error TLV)
 * at the start of the byte stream it receives; the rest is the server's bytes. Any violation throws
 * ProtocolError MPC_ERR_CONVERT_REPLY with reaction abort (RFC 8803: the client resets).
 */
export class ConvertReplyDecoder {
  #buf: Buffer = Buffer.alloc(0);
  #done = false;

  get buffered(): number {
    return this.#buf.length;
  }

  push(chunk: Buffer): ConvertReplyResult {
    if (this.#done) throw new Error('ConvertReplyDecoder: push after a final result');
    const buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    try {
      // The magic first: a reply that is not a Convert message is refused on its 3rd byte already.
      if ((buf.length >= 3 && buf[2] !== MAGIC_HI) || (buf.length >= 4 && buf[3] !== MAGIC_LO)) {
        throw abortError(ProtocolErrorCode.ConvertReply, 'Cannot parse Convert reply: bad magic');
      }
      const total = convertMessageLength(buf);
      if (total === 'need-more' || buf.length < total) {
        this.#buf = Buffer.from(buf);
        return { status: 'need-more' };
      }
      const message = decodeConvertMessage(buf.subarray(0, total));
      this.#done = true;
      this.#buf = Buffer.alloc(0);
      return { status: 'done', message, raw: Buffer.from(buf.subarray(0, total)), rest: buf.subarray(total) };
    } catch (err) {
      this.#done = true;
      this.#buf = Buffer.alloc(0);
      if (err instanceof ProtocolError && err.code !== ProtocolErrorCode.ConvertReply) {
        throw abortError(ProtocolErrorCode.ConvertReply, `Cannot parse Convert reply: ${err.message} (${err.code})`);
      }
      throw err;
    }
  }
}
