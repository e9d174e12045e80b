/**
 * The concentrator's side of the signalling: read it from the start of an accepted connection (bounded in
 * time and size, split across reads or not), then confirm or refuse it on the wire.
 */
import { mptcpSynAckHeader } from '../protocol/server-options.js';
import type { Socket } from 'node:net';
import type { Sockets } from '../platform/types.js';
import { MpconvertError } from '../errors.js';
import { SignallingDecoder, encodeConvertErrorReply, encodeConvertMessage, type SignallingResult } from '../protocol/index.js';

export interface SignalledAddress {
  address: string;
  port?: number | undefined;
}

export interface ReadSignalling {
  format: 'mp-convert' | 'rfc8803';
  destination?: SignalledAddress | undefined;
  source?: SignalledAddress | undefined;
  /** A reverse connection for the inbound binding on this external port (docs/protocol.md section 1.6). */
  binding?: number | undefined;
  /** A channel of this IANA protocol (transport IE, 17 = UDP); undefined = a TCP connection to `destination`. */
  protocol?: number | undefined;
  /** The signalling bytes exactly as received (the MP_CONVERT echo repeats them). */
  raw: Buffer;
  /** Application bytes that followed the signalling. */
  rest: Buffer;
  /** MP_CONVERT with a server MPTCP query (Type 0x85): where in `raw` the echo answers it. */
  serverMptcpAt?: number | undefined;
}

export type Refusal = { kind: 'abort' | 'convert-error'; errorCode?: number; value?: number; extra?: Buffer };

export class SignallingTimeoutError extends MpconvertError {
  readonly reaction = { kind: 'abort' } as const;
  constructor(ms: number) {
    super('MPC_ERR_SIGNALLING_TIMEOUT', `Cannot read signalling: nothing complete within ${ms} ms`);
  }
}

/** Closed before a single byte: a health probe, or a CPE that gave up before sending. */
export class SignallingEmptyError extends MpconvertError {
  readonly reaction = { kind: 'abort' } as const;
  constructor() {
    super('MPC_ERR_SIGNALLING_EMPTY', 'Cannot read signalling: the connection ended before its first byte');
  }
}

export class SignallingClosedError extends MpconvertError {
  readonly reaction = { kind: 'abort' } as const;
  constructor() {
    super('MPC_ERR_SIGNALLING_CLOSED', 'Cannot read signalling: the connection ended before it was complete');
  }
}

/** A warm connection (opened by a CPE's pool) closed by the CPE before a LAN connection used it. */
export class WarmUnusedError extends MpconvertError {
  readonly reaction = { kind: 'abort' } as const;
  constructor() {
    super('MPC_ERR_WARM_UNUSED', 'Warm connection closed by the CPE before it was used');
  }
}

/** A warm connection idle past the warm idle time, or one the warm admission refused. */
export class WarmRefusedError extends MpconvertError {
  readonly reaction = { kind: 'abort' } as const;
  readonly why: 'idle' | 'per-cpe';
  constructor(why: 'idle' | 'per-cpe', detail: string) {
    super(why === 'idle' ? 'MPC_ERR_WARM_IDLE' : 'MPC_ERR_WARM_LIMIT', detail);
    this.why = why;
  }
}

/**
 * Warm connections (docs/protocol.md section 1.5): once the signalling so far is a warm IE, `admit` is asked
 * once (false: refused) and the wait for the rest becomes `idleMs`; `release` is called once when it ends.
 */
export interface WarmWait {
  idleMs: number;
  admit: () => boolean;
  release: () => void;
}

function fromDone(done: Extract<SignallingResult, { status: 'done' }>): ReadSignalling {
  const s = done.signalling;
  if (s.format === 'mp-convert') {
    return { format: 'mp-convert', destination: s.destination, source: s.source, binding: s.binding, protocol: s.protocol, raw: done.raw, rest: done.rest, serverMptcpAt: s.serverMptcpAt };
  }
  return {
    format: 'rfc8803',
    destination: s.message.connect ? { address: s.message.connect.address, port: s.message.connect.port } : undefined,
    raw: done.raw,
    rest: done.rest,
  };
}

/** Reads the signalling; leaves the socket paused with nothing consumed beyond it (the rest is returned). */
export function readSignalling(socket: Socket, timeoutMs: number, warm?: WarmWait): Promise<ReadSignalling> {
  const decoder = new SignallingDecoder();
  let waitingWarm = false;
  return new Promise<ReadSignalling>((resolve, reject) => {
    const done = (err: Error | undefined, value?: ReadSignalling) => {
      clearTimeout(timer);
      if (waitingWarm) warm?.release();
      waitingWarm = false;
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      socket.pause();
      if (err) reject(err);
      else resolve(value as ReadSignalling);
    };
    let got = 0;
    const onData = (chunk: Buffer) => {
      got += chunk.length;
      let r: SignallingResult;
      try {
        r = decoder.push(chunk);
      } catch (err) {
        done(err as Error);
        return;
      }
      if (r.status === 'done') done(undefined, fromDone(r));
      else if (!waitingWarm && decoder.warm) startWarm();
    };
    const startWarm = () => {
      if (!warm || !warm.admit()) {
        done(new WarmRefusedError('per-cpe', 'Warm connection refused: this CPE, or all CPEs together, keep as many warm connections as they may'));
        return;
      }
      waitingWarm = true;
      clearTimeout(timer);
      timer = setTimeout(() => done(new WarmRefusedError('idle', `Warm connection closed: not used within ${warm.idleMs} ms`)), warm.idleMs);
    };
    const onEnd = () => done(got === 0 ? new SignallingEmptyError() : waitingWarm ? new WarmUnusedError() : new SignallingClosedError());
    let timer = setTimeout(() => done(new SignallingTimeoutError(timeoutMs)), timeoutMs);
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('close', onEnd);
  });
}

/**
 * What the concentrator sends first once the server connection is up. `serverMptcp`: the server leg negotiated
 * MPTCP. MP_CONVERT: every IE back, byte for byte, except the Answer octet of a server MPTCP query (docs/protocol.md
 * section 1.7), which always answers when the CPE asked. RFC 8803: a Convert message, with an Extended TCP
 * Header TLV saying MP_CAPABLE (src/protocol/server-options.ts) only when `reportInTlv` (`server.reportMptcp`)
 * too, since nothing in RFC 8803 asks for it; else header only.
 */
export function confirmation(read: ReadSignalling, serverMptcp = false, reportInTlv = false): Buffer {
  if (read.format !== 'mp-convert') return encodeConvertMessage({ tlvs: serverMptcp && reportInTlv ? [{ type: 'extended-tcp-header', header: mptcpSynAckHeader() }] : [] });
  if (read.serverMptcpAt === undefined) return read.raw;
  const echo = Buffer.from(read.raw);
  echo[read.serverMptcpAt] = serverMptcp ? 1 : 0;
  return echo;
}

/** Silent abort (RST / MP_FASTCLOSE), or an RFC 8803 Error TLV followed by a close. */
export function refusal(socket: Socket, r: Refusal, sockets?: Pick<Sockets, 'setLinger'>): void {
  if (socket.destroyed) return;
  if (r.kind === 'convert-error' && r.errorCode !== undefined) {
    // The listener's SO_LINGER 0 would turn this close into a reset and could drop the Error TLV.
    try {
      sockets?.setLinger(socket, null);
    } catch {
      /* closed meanwhile */
    }
    // With the decoder's `extra` (e.g. the offending message echoed in a Malformed Message error).
    const msg = encodeConvertErrorReply({ errorCode: r.errorCode, ...(r.value !== undefined ? { value: r.value } : {}), ...(r.extra ? { extra: r.extra } : {}) });
    socket.end(msg);
    // Do not wait forever for a peer that never closes its side.
    const t = setTimeout(() => socket.destroy(), 2_000);
    t.unref();
    socket.once('close', () => clearTimeout(t));
    socket.resume();
    return;
  }
  socket.resetAndDestroy();
}
