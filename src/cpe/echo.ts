/**
 * Verifies the concentrator's confirmation at the start of the MPTCP byte stream, incrementally.
 * MP_CONVERT: the exact bytes of the IEs the CPE sent (MCP capability discovery); RFC 8803: a Convert
 * message, which may carry an Error TLV. The bytes after the confirmation are the server's. With a server
 * MPTCP query (docs/protocol.md section 1.7) one octet of the echo is the concentrator's answer (0 or 1).
 */
import { decodeConvertMessage } from '../protocol/index.js';
import { headerHasMpCapable } from '../protocol/server-options.js';

export type EchoResult =
  | { status: 'need-more' }
  /**
   * `serverMptcp`: the concentrator says its server leg negotiated MPTCP. MP_CONVERT: the answer to a server
   * MPTCP query (only when one was sent). RFC 8803: the reply's Extended TCP Header TLV carries MP_CAPABLE.
   */
  | { status: 'confirmed'; leftover: Buffer; serverMptcp?: boolean }
  /** Not a converter: the bytes differ from what a converter sends. */
  | { status: 'mismatch' }
  /** A converter that refused (RFC 8803 Error TLV): the destination failed. */
  | { status: 'refused'; errorCode: number };

const CONVERT_MAGIC = 0x2263;

export class EchoVerifier {
  readonly #expected: Buffer;
  readonly #format: 'mp-convert' | 'rfc8803';
  readonly #answerAt: number | undefined;
  #buffered: Buffer = Buffer.alloc(0);
  #settled = false;

  /** `answerAt`: the offset of a server MPTCP query's Answer octet in the sent signalling (MP_CONVERT only). */
  constructor(format: 'mp-convert' | 'rfc8803', sentSignalling: Buffer, answerAt?: number) {
    this.#format = format;
    this.#expected = sentSignalling;
    if (answerAt !== undefined && (format !== 'mp-convert' || answerAt < 0 || answerAt >= sentSignalling.length)) throw new RangeError(`EchoVerifier: answer offset ${answerAt} outside the signalling`);
    this.#answerAt = answerAt;
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
    const got = this.#buffered;
    const n = Math.min(want.length, got.length);
    const at = this.#answerAt;
    if (at === undefined) {
      if (got.compare(want, 0, n, 0, n) !== 0) return { status: 'mismatch' };
    } else {
      // Byte for byte around the Answer octet, which must be 0 or 1.
      const head = Math.min(n, at);
      if (got.compare(want, 0, head, 0, head) !== 0) return { status: 'mismatch' };
      if (n > at) {
        const answer = got[at] as number;
        if (answer > 1) return { status: 'mismatch' };
        if (got.compare(want, at + 1, n, at + 1, n) !== 0) return { status: 'mismatch' };
      }
    }
    if (got.length < want.length) return { status: 'need-more' };
    const leftover = got.subarray(want.length);
    return at === undefined ? { status: 'confirmed', leftover } : { status: 'confirmed', leftover, serverMptcp: got[at] === 1 };
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
