/**
 * UDP channel frames, version 1: the UDP datagrams of many LAN flows of one CPE carried over one long-lived
 * MPTCP connection (the seeds' U-bit idea, as an mpconvert private extension, docs/protocol.md section 4). The
 * connection opens with MP_CONVERT signalling holding a transport IE (Type 0x80, protocol 17); after the
 * echo, both directions are a sequence of frames:
 *
 *  0                   1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +---------------+-------+---+-+-+-------------------------------+
 * | Magic = 0xD7  |Ver = 1|Rsv|F|D|        Payload Length         |
 * +---------------+-------+---+-+-+-------------------------------+
 * |                     LAN Flow Id (32 bits)                     |
 * +-------------------------------+-------------------------------+
 * |          Remote Port          |        Reserved (zero)        |
 * +-------------------------------+-------------------------------+
 * |     Remote Address (F = 0: IPv4, 4 octets; F = 1: IPv6, 16)   |
 * +---------------------------------------------------------------+
 * |        Payload (Payload Length octets, no padding) ...        |
 * +---------------------------------------------------------------+
 *
 * D = 1: the address is the datagram's destination (upstream, CPE -> concentrator);
 * D = 0: the address is the datagram's source (downstream, concentrator -> CPE).
 * LAN Flow Id: chosen by the CPE, one per LAN source address and port, never 0; the concentrator keeps one
 * mapping (one external UDP socket) per CPE and flow id, and answers with the same id.
 * Version and reserved bits are checked: a framing error means the stream lost sync (abort).
 */
import { addressToBytes, bytesToIpv4, bytesToIpv6 } from './address.js';
import { ProtocolErrorCode, abortError } from './errors.js';

export const UDP_FRAME_MAGIC = 0xd7;
export const UDP_FRAME_VERSION = 1;
export const UDP_FRAME_HEADER_BYTES = 12;
/** The largest UDP payload in an IPv4 datagram (65535 - 20 - 8). */
export const UDP_MAX_PAYLOAD_V4 = 65_507;
/** The largest UDP payload in an IPv6 datagram without jumbograms (65535 - 8). */
export const UDP_MAX_PAYLOAD_V6 = 65_527;
/** The largest payload a frame may carry (per family, above); the decoder's default limit. */
export const UDP_MAX_PAYLOAD = UDP_MAX_PAYLOAD_V6;
/** The largest frame on the wire: header + IPv6 address + the largest payload. */
export const UDP_FRAME_MAX_BYTES = UDP_FRAME_HEADER_BYTES + 16 + UDP_MAX_PAYLOAD;
/** MP_CONVERT private IE that opens a UDP channel (see mp-convert.ts). */
export { IE_TYPE_TRANSPORT as UDP_CHANNEL_IE_TYPE, IPPROTO_UDP } from './mp-convert.js';

const FLAG_D = 0x1;
const FLAG_F = 0x2;
const VERSION_SHIFT = 4;
const RESERVED_BITS = 0x0c;

export interface UdpFrame {
  /** upstream: D = 1, `address`/`port` are the destination; downstream: D = 0, they are the source. */
  direction: 'upstream' | 'downstream';
  /** The LAN flow (CPE-chosen, 1 to 2^32 - 1). */
  flow: number;
  address: string;
  port: number;
  payload: Buffer;
}

/** The bytes a frame of this payload takes on the wire. */
export const udpFrameSize = (family: 4 | 6, payloadBytes: number): number => UDP_FRAME_HEADER_BYTES + (family === 4 ? 4 : 16) + payloadBytes;

/** Encodes one frame. Throws TypeError on a value it cannot carry. */
export function encodeUdpFrame(f: UdpFrame): Buffer {
  const addr = addressToBytes(f.address);
  const max = addr.length === 4 ? UDP_MAX_PAYLOAD_V4 : UDP_MAX_PAYLOAD_V6;
  if (f.payload.length > max) throw new TypeError(`Cannot encode UDP frame: payload of ${f.payload.length} bytes is over ${max}`);
  if (!Number.isInteger(f.port) || f.port < 1 || f.port > 65535) throw new TypeError(`Cannot encode UDP frame: port ${f.port} is out of range 1-65535`);
  if (!Number.isInteger(f.flow) || f.flow < 1 || f.flow > 0xffffffff) throw new TypeError(`Cannot encode UDP frame: flow id ${f.flow} is out of range 1-4294967295`);
  const out = Buffer.allocUnsafe(UDP_FRAME_HEADER_BYTES + addr.length + f.payload.length);
  out[0] = UDP_FRAME_MAGIC;
  out[1] = (UDP_FRAME_VERSION << VERSION_SHIFT) | (addr.length === 16 ? FLAG_F : 0) | (f.direction === 'upstream' ? FLAG_D : 0);
  out.writeUInt16BE(f.payload.length, 2);
  out.writeUInt32BE(f.flow, 4);
  out.writeUInt16BE(f.port, 8);
  out.writeUInt16BE(0, 10);
  addr.copy(out, UDP_FRAME_HEADER_BYTES);
  f.payload.copy(out, UDP_FRAME_HEADER_BYTES + addr.length);
  return out;
}

export interface UdpFrameDecoderOptions {
  /** Refuse frames of the other direction (a concentrator expects 'upstream', a CPE 'downstream'). */
  expect?: UdpFrame['direction'];
  /** Lower payload limit (default: per family, UDP_MAX_PAYLOAD_V4 / _V6). */
  maxPayload?: number;
}

/**
 * Incremental: push stream bytes, get whole frames. Holds at most one incomplete frame between pushes
 * (< UDP_FRAME_MAX_BYTES). Throws ProtocolError (reaction: abort) as soon as a header byte is wrong; the
 * decoder is then unusable.
 */
export class UdpFrameDecoder {
  #buf: Buffer = Buffer.alloc(0);
  #failed = false;
  readonly #expect: UdpFrame['direction'] | undefined;
  readonly #maxPayload: number;

  constructor(opts: UdpFrameDecoderOptions = {}) {
    this.#expect = opts.expect;
    this.#maxPayload = opts.maxPayload ?? UDP_MAX_PAYLOAD;
  }

  get buffered(): number {
    return this.#buf.length;
  }

  push(chunk: Buffer): UdpFrame[] {
    if (this.#failed) throw new Error('UdpFrameDecoder: push after an error');
    let b = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    const frames: UdpFrame[] = [];
    try {
      for (;;) {
        const need = this.#check(b);
        if (need === null || b.length < need) break;
        const flags = b[1] as number;
        const alen = flags & FLAG_F ? 16 : 4;
        const a = b.subarray(UDP_FRAME_HEADER_BYTES, UDP_FRAME_HEADER_BYTES + alen);
        frames.push({
          direction: flags & FLAG_D ? 'upstream' : 'downstream',
          flow: b.readUInt32BE(4),
          address: alen === 4 ? bytesToIpv4(a) : bytesToIpv6(a),
          port: b.readUInt16BE(8),
          payload: Buffer.from(b.subarray(UDP_FRAME_HEADER_BYTES + alen, need)),
        });
        b = b.subarray(need);
      }
    } catch (err) {
      this.#failed = true;
      this.#buf = Buffer.alloc(0);
      throw err;
    }
    this.#buf = b.length === 0 ? Buffer.alloc(0) : Buffer.from(b);
    return frames;
  }

  /** Validates what has arrived of the next header; returns the frame's total size once known, else null. */
  #check(b: Buffer): number | null {
    const fail = (code: Parameters<typeof abortError>[0], why: string) => abortError(code, `Cannot parse UDP frame: ${why}`);
    if (b.length < 1) return null;
    if (b[0] !== UDP_FRAME_MAGIC) throw fail(ProtocolErrorCode.UdpMagic, `bad magic 0x${(b[0] as number).toString(16)}`);
    if (b.length < 2) return null;
    const flags = b[1] as number;
    const version = flags >> VERSION_SHIFT;
    if (version !== UDP_FRAME_VERSION) throw fail(ProtocolErrorCode.UdpVersion, `version ${version}, only ${UDP_FRAME_VERSION} is known`);
    if (flags & RESERVED_BITS) throw fail(ProtocolErrorCode.UdpReserved, `reserved flag bits set (0x${flags.toString(16)})`);
    const direction = flags & FLAG_D ? 'upstream' : 'downstream';
    if (this.#expect !== undefined && direction !== this.#expect) throw fail(ProtocolErrorCode.UdpDirection, `a ${direction} frame where ${this.#expect} frames are expected`);
    if (b.length < 4) return null;
    const alen = flags & FLAG_F ? 16 : 4;
    const len = b.readUInt16BE(2);
    const max = Math.min(this.#maxPayload, alen === 4 ? UDP_MAX_PAYLOAD_V4 : UDP_MAX_PAYLOAD_V6);
    if (len > max) throw fail(ProtocolErrorCode.UdpLength, `payload length ${len} is over ${max}`);
    if (b.length < 8) return null;
    if (b.readUInt32BE(4) === 0) throw fail(ProtocolErrorCode.UdpFlow, 'flow id 0');
    if (b.length < 10) return null;
    if (b.readUInt16BE(8) === 0) throw fail(ProtocolErrorCode.UdpPort, 'port 0');
    if (b.length < 12) return null;
    if (b.readUInt16BE(10) !== 0) throw fail(ProtocolErrorCode.UdpReserved, 'reserved field is not zero');
    return UDP_FRAME_HEADER_BYTES + alen + len;
  }
}
