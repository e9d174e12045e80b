/**
 * The zero-copy relay: the same contract as the stream relay (./relay.ts: backpressure, half-close, abort
 * mapped to abort, one idle lifetime, `close` once with the byte counts), but bulk bytes move inside the
 * kernel through a SpliceEngine (src/platform: splice(2) in a worker thread) instead of through JavaScript
 * buffers on the event loop.
 *
 * A pair starts on the stream relay: a short exchange (a request and its answer) never pays for the hand-over.
 * Once `spliceAfterBytes` went through with both directions open, the stream relay lets go of the pair and
 * the hand-over begins: both sockets stop reading in Node; whatever Node had already read and whatever is
 * still queued for writing goes out through Node first; once both sockets hold nothing in Node, the engine
 * takes their descriptors. From then on only the engine touches them, and they are closed here only after
 * the engine let go (`done`). When the engine cannot take the pair (no descriptor, its thread failed), the
 * stream relay carries it on.
 */
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import type { SpliceEngine, SplicePair, SpliceResult } from '../platform/types.js';
import { Relay, failureOutcome, lingerOff, type HandOver, type RelayOptions, type RelayOutcome, type RelaySink, type RelayStats } from './relay.js';

/** What the daemons hold of a relay, whichever engine moves its bytes. */
/**
 * 'close' (with RelayStats) is emitted exactly once, so listeners use on(), not once(): once() wraps each
 * listener in a bound function and a state object, kept for the connection's whole life (7 per idle relayed
 * connection on the concentrator, about 700 bytes, before this was changed).
 */
export interface RelayHandle {
  readonly closed: boolean;
  /** Who moves the bytes: the kernel (splice), Node (streams), or nobody yet (hand-over in progress). */
  readonly mode: 'splice' | 'streams' | 'handover';
  readonly bytesAToB: number;
  readonly bytesBToA: number;
  /** Graceful: half-close both ways and let what is in flight drain; reset after closeTimeoutMs. */
  close(): void;
  /** Immediate: reset both sides. */
  destroy(err?: Error): void;
  once(event: 'close', listener: (stats: RelayStats) => void): this;
  on(event: 'close', listener: (stats: RelayStats) => void): this;
}

export interface SpliceRelayOptions extends RelayOptions {
  /** Bytes through the stream relay before the engine takes over (default 128 KiB; 0 = at once). */
  spliceAfterBytes?: number;
}

/** Default of `spliceAfterBytes`: past a request/response exchange, well before a bulk transfer gets going. */
export const SPLICE_AFTER_BYTES = 128 * 1024;

/** A relay for the pair: zero-copy through `engine` when there is one, else the stream relay. */
export function createRelay(a: Socket, b: Socket, options: SpliceRelayOptions, engine?: SpliceEngine): RelayHandle {
  return engine ? new SpliceRelay(a, b, options, engine) : new Relay(a, b, options);
}

interface Internals {
  _read: (size: number) => void;
  _handle?: { reading?: boolean; readStop?: () => number } | null;
}

function noop(): void {}

/** Node stops reading this socket and never starts again by itself (its `_read` does nothing). */
function quiesce(s: Socket): void {
  s.pause();
  const x = s as unknown as Internals;
  x._read = noop;
  const h = x._handle;
  if (h?.reading) {
    h.reading = false;
    h.readStop?.();
  }
}

/** Node reads this socket again (the stream relay takes over). */
function unquiesce(s: Socket): void {
  const x = s as unknown as Partial<Internals> & { _readableState?: { ended?: boolean } };
  delete x._read;
  // The stream may still count a read as pending (it asked before the quiesce and got nothing since), so
  // resume() alone would not ask again: restart the handle unless the peer's FIN was already read.
  if (!s.destroyed && x._readableState?.ended !== true && x._handle && !x._handle.reading) (s as unknown as Internals)._read(65536);
}

/** Resolves when Node has handed every queued byte of `s` to the kernel. */
function drained(s: Socket, timeoutMs: number): Promise<void> {
  if (s.writableLength === 0) return Promise.resolve();
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const tick = () => {
      if (s.destroyed) reject(new Error('the socket closed while its queued bytes were written'));
      else if (s.writableLength === 0) resolve();
      else if (Date.now() - t0 > timeoutMs) reject(Object.assign(new Error('idle'), { idle: true }));
      else setTimeout(tick, 1);
    };
    tick();
  });
}

export class SpliceRelay extends EventEmitter<{ close: [RelayStats] }> implements RelayHandle, RelaySink {
  readonly #a: Socket;
  readonly #b: Socket;
  readonly #opts: RelayOptions;
  readonly #engine: SpliceEngine;
  readonly #now: () => number;
  readonly #started: number;
  /** Bytes moved through Node (the stream phase and the hand-over). */
  #preAToB = 0;
  #preBToA = 0;
  /** The stream relay: before the hand-over, and after it when the engine could not take the pair. */
  #streams: Relay | undefined;
  #pair: SplicePair | undefined;
  #request: 'close' | 'destroy' | undefined;
  #closed = false;
  /** Made at the hand-over (most pairs never get there). */
  #handoverErrors: Array<() => void> | undefined;

  constructor(a: Socket, b: Socket, options: SpliceRelayOptions, engine: SpliceEngine) {
    super();
    this.#a = a;
    this.#b = b;
    const { spliceAfterBytes, ...relayOptions } = options;
    this.#opts = relayOptions;
    this.#engine = engine;
    this.#now = options.now ?? Date.now;
    this.#started = this.#now();
    const threshold = spliceAfterBytes ?? SPLICE_AFTER_BYTES;
    if (threshold <= 0) {
      if (options.noDelay ?? true) {
        a.setNoDelay(true);
        b.setNoDelay(true);
      }
      this.#beginHandover();
      return;
    }
    this.#streams = new Relay(a, b, { ...relayOptions, handOverAfterBytes: threshold }, this);
  }

  /** RelaySink: the stream relay ended the pair. */
  relayClosed(stats: RelayStats): void {
    this.#streamsClosed(stats);
  }

  /** RelaySink: the stream relay let the pair go once the threshold was reached. */
  relayHandedOver(moved: HandOver): void {
    this.#streams = undefined;
    this.#preAToB = moved.aToB;
    this.#preBToA = moved.bToA;
    this.#beginHandover();
  }

  get closed(): boolean {
    return this.#closed;
  }

  get mode(): 'splice' | 'streams' | 'handover' {
    return this.#streams ? 'streams' : this.#pair ? 'splice' : 'handover';
  }

  get bytesAToB(): number {
    return this.#preAToB + (this.#streams?.bytesAToB ?? this.#pair?.aToB ?? 0);
  }

  get bytesBToA(): number {
    return this.#preBToA + (this.#streams?.bytesBToA ?? this.#pair?.bToA ?? 0);
  }

  close(): void {
    if (this.#closed) return;
    if (this.#streams) this.#streams.close();
    else if (this.#pair) this.#pair.close();
    else this.#request ??= 'close';
  }

  destroy(err?: Error): void {
    if (this.#closed) return;
    if (this.#streams) this.#streams.destroy(err);
    else if (this.#pair) {
      this.#request = 'destroy';
      this.#pair.abort();
    } else {
      // The engine has not borrowed the descriptors yet: close at once.
      this.#finish('aborted', err);
      this.#a.resetAndDestroy();
      this.#b.resetAndDestroy();
    }
  }

  #streamsClosed(stats: RelayStats): void {
    if (this.#closed) return;
    this.#closed = true;
    this.emit('close', { ...stats, aToB: stats.aToB + this.#preAToB, bToA: stats.bToA + this.#preBToA, durationMs: this.#now() - this.#started });
  }

  /** Node stops reading both sockets; errors until the engine has them abort the pair. */
  #beginHandover(): void {
    const a = this.#a;
    const b = this.#b;
    quiesce(a);
    quiesce(b);
    this.#handoverErrors = [];
    for (const [s, side] of [
      [a, 'a'],
      [b, 'b'],
    ] as const) {
      const onError = (err: Error) => this.#abortBeforeEngine(side, err);
      s.on('error', onError);
      this.#handoverErrors.push(() => s.off('error', onError));
    }
    void this.#handover();
  }

  async #handover(): Promise<void> {
    const a = this.#a;
    const b = this.#b;
    try {
      for (let round = 0; round < 8; round++) {
        this.#preAToB += this.#forward(a, b);
        this.#preBToA += this.#forward(b, a);
        await Promise.all([drained(a, this.#opts.idleTimeoutMs), drained(b, this.#opts.idleTimeoutMs)]);
        if (this.#closed) return;
        if (a.readableLength === 0 && b.readableLength === 0) break;
      }
    } catch (err) {
      if (this.#closed) return;
      if ((err as { idle?: boolean }).idle) {
        this.#finish('idle-timeout', undefined);
        a.resetAndDestroy();
        b.resetAndDestroy();
      } else this.#abortBeforeEngine(a.destroyed ? 'a' : 'b', err as Error);
      return;
    }
    if (this.#closed) return;
    for (const off of this.#handoverErrors?.splice(0) ?? []) off();
    // Late errors from sockets the engine drives (or that are being torn down) are reported through `done`.
    a.on('error', noop);
    b.on('error', noop);
    if (a.destroyed || b.destroyed) {
      this.#finish(a.destroyed ? 'reset-a' : 'reset-b', undefined);
      a.resetAndDestroy();
      b.resetAndDestroy();
      return;
    }
    let pair: SplicePair;
    try {
      if (a.writableEnded || b.writableEnded || a.connecting || b.connecting) throw new Error('a socket is not in a state to hand over');
      pair = this.#engine.pair(a, b, {
        idleTimeoutMs: this.#opts.idleTimeoutMs,
        halfCloseTimeoutMs: this.#opts.halfCloseTimeoutMs ?? this.#opts.idleTimeoutMs,
        closeTimeoutMs: this.#opts.closeTimeoutMs ?? 5_000,
      });
    } catch {
      this.#useStreams();
      return;
    }
    this.#pair = pair;
    if (this.#request === 'destroy') pair.abort();
    else if (this.#request === 'close') pair.close();
    this.#onDone(await pair.done);
  }

  /** Moves what Node already read from `src` to `dst` (through Node); returns the byte count. */
  #forward(src: Socket, dst: Socket): number {
    if (src.readableLength === 0) return 0;
    const chunk = src.read() as Buffer | null;
    if (!chunk || chunk.length === 0) return 0;
    dst.write(chunk);
    return chunk.length;
  }

  #useStreams(): void {
    for (const off of this.#handoverErrors?.splice(0) ?? []) off();
    unquiesce(this.#a);
    unquiesce(this.#b);
    const relay = new Relay(this.#a, this.#b, { ...this.#opts, aEnded: this.#opts.aEnded === true || this.#a.readableEnded, noDelay: false }, this);
    this.#streams = relay;
    if (this.#request === 'destroy') relay.destroy();
    else if (this.#request === 'close') relay.close();
  }

  #abortBeforeEngine(side: 'a' | 'b', err: Error): void {
    if (this.#closed || this.#pair || this.#streams) return;
    this.#finish(failureOutcome(side, err), err);
    (side === 'a' ? this.#b : this.#a).resetAndDestroy();
    (side === 'a' ? this.#a : this.#b).destroy();
  }

  #onDone(r: SpliceResult): void {
    const error = r.errno ? Object.assign(new Error(`${r.errno} (spliced relay)`), { code: r.errno }) : undefined;
    this.#finish(r.outcome, error, r);
    const a = this.#a;
    const b = this.#b;
    switch (r.outcome) {
      case 'done':
        lingerOff(this.#opts.sockets, a, b);
        a.destroy();
        b.destroy();
        break;
      case 'reset-a':
      case 'error-a':
        b.resetAndDestroy();
        a.destroy();
        break;
      case 'reset-b':
      case 'error-b':
        a.resetAndDestroy();
        b.destroy();
        break;
      default:
        a.resetAndDestroy();
        b.resetAndDestroy();
    }
  }

  #finish(outcome: RelayOutcome, error: Error | undefined, r?: SpliceResult): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const off of this.#handoverErrors?.splice(0) ?? []) off();
    this.#a.on('error', noop);
    this.#b.on('error', noop);
    const stats: RelayStats = {
      aToB: this.#preAToB + (r?.aToB ?? 0),
      bToA: this.#preBToA + (r?.bToA ?? 0),
      outcome,
      durationMs: this.#now() - this.#started,
    };
    if (error) stats.error = error;
    this.emit('close', stats);
  }
}
