/**
 * Verifies the concentrator's confirmation at the start of the MPTCP byte stream, incrementally.
 * MP_CONVERT: the exact bytes of the IEs the CPE sent (MCP capability discovery); RFC 8803: a Convert
 * message, which may carry an Error TLV. The bytes after the confirmation are the server's.
 */
import { decodeConvertMessage } from '../protocol/index.js';
import { headerHasMpCapable } from '../protocol/server-options.js';

export type EchoResult =
  | { status: 'need-more' }
  /** `serverMptcp`: RFC 8803, the reply's Extended TCP Header TLV carries MP_CAPABLE (the server speaks MPTCP). */
  | { status: 'confirmed'; leftover: Buffer; serverMptcp?: boolean }
  /** Not a converter: the bytes differ from what a converter sends. */
  | { status: 'mismatch' }
  /** A converter that refused (RFC 8803 Error TLV): the destination failed. */
  | { status: 'refused'; errorCode: number };

const CONVERT_MAGIC = 0x2263;

export class EchoVerifier {
  readonly #expected: Buffer;
  readonly #format: 'mp-convert' | 'rfc8803';
  #buffered: Buffer = Buffer.alloc(0);
  #settled = false;

  constructor(format: 'mp-convert' | 'rfc8803', sentSignalling: Buffer) {
    this.#format = format;
    this.#expected = sentSignalling;
  }

  push(chunk: Buffer): EchoResult {
    if (this.#settled) throw new Error('EchoVerifier: push after a final result');
    this.#buffered = this.#buffered.length === 0 ? chunk : Buffer.concat([this.#buffered, chunk]);
    const r = this.#format === 'mp-convert' ? this.#mpConvert() : this.#convert();
    if (r.status !== 'need-more') this.#settled = true;
    return r;
  }

  #mpConvert(): EchoResult {
    const want = this.#expected;
    const n = Math.min(want.length, this.#buffered.length);
    if (this.#buffered.compare(want, 0, n, 0, n) !== 0) return { status: 'mismatch' };
    if (this.#buffered.length < want.length) return { status: 'need-more' };
    return { status: 'confirmed', leftover: this.#buffered.subarray(want.length) };
  }

  #convert(): EchoResult {
    const b = this.#buffered;
    if (b.length >= 1 && b[0] !== 1) return { status: 'mismatch' };
    if (b.length >= 4 && b.readUInt16BE(2) !== CONVERT_MAGIC) return { status: 'mismatch' };
    if (b.length < 4) return { status: 'need-more' };
    const total = (b[1] as number) * 4;
    if (total < 4) return { status: 'mismatch' };
    if (b.length < total) return { status: 'need-more' };
    let msg;
    try {
      msg = decodeConvertMessage(b.subarray(0, total));
    } catch {
      return { status: 'mismatch' };
    }
    if (msg.error) return { status: 'refused', errorCode: msg.error.code };
    const serverMptcp = msg.extendedTcpHeader !== undefined && headerHasMpCapable(msg.extendedTcpHeader);
    return { status: 'confirmed', leftover: b.subarray(total), ...(serverMptcp ? { serverMptcp } : {}) };
  }
}
