/**
 * The relay: binds two connected sockets into one conversation, whatever their roles (LAN client <-> MPTCP
 * leg on the CPE, MPTCP leg <-> server leg on the concentrator).
 *
 * - Backpressure: a side is paused while the other side's send buffer is over its high-water mark.
 * - Half-close: FIN on one side becomes end() (FIN, or DATA_FIN on an MPTCP socket) on the other; the pair
 *   lives on until both directions are finished.
 * - Abort: a reset or error on one side resets the other (RST; MP_FASTCLOSE on an MPTCP socket), never a FIN:
 *   a peer whose protocol has no framing of its own would take a truncated transfer for a complete one.
 *   libuv reports EOF for a reset that arrived behind bytes still queued (the POLLHUP short cut in
 *   uv__stream_io), so with the platform's `sockets` every 'end' is checked against the socket's pending
 *   error (SO_ERROR) before it becomes a FIN on the other side.
 * - Crash: the daemons give relayed sockets SO_LINGER 0 (`RESET_ON_CLOSE`), so that if the process dies the
 *   kernel resets both legs instead of closing them with FIN; a graceful end clears it first (with linger 0
 *   close() would discard what the kernel still has to send).
 * - One idle lifetime for the pair: no byte in either direction for `idleTimeoutMs` aborts both.
 * - Both legs always end together, and `close` is emitted exactly once with the byte counts.
 * - No Nagle on either leg (TCP_NODELAY, on by default): the relay writes what it has read, so holding a small
 *   segment back until the previous one is acknowledged only adds a delayed-ACK wait per exchange.
 */
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { isResetError } from '../platform/errors.js';
import type { Sockets } from '../platform/types.js';

/**
 * SO_LINGER for sockets a daemon relays, set when they are made (on the listener, inherited at accept, or in
 * the dial): a process that dies resets its connections (RST / MP_FASTCLOSE) instead of ending them cleanly.
 */
export const RESET_ON_CLOSE = { onoff: true, seconds: 0 } as const;

/** The platform calls the relay needs for teardown (see the header). */
export type RelaySockets = Pick<Sockets, 'setLinger' | 'takeError'>;

export type RelayOutcome = 'done' | 'idle-timeout' | 'reset-a' | 'reset-b' | 'error-a' | 'error-b' | 'aborted' | 'close-timeout';

export interface RelayStats {
  /** Bytes read from a and written to b. */
  aToB: number;
  /** Bytes read from b and written to a. */
  bToA: number;
  outcome: RelayOutcome;
  error?: Error;
  durationMs: number;
}

export interface RelayOptions {
  idleTimeoutMs: number;
  /** After one side ended, how long the pair may stay half-open without traffic: defaults to idleTimeoutMs. */
  halfCloseTimeoutMs?: number;
  /** Graceful close(): how long to wait for both sides to finish before destroying them. */
  closeTimeoutMs?: number;
  now?: () => number;
  /** Side a already sent its FIN (and 'end' was emitted) before the pair was made. */
  aEnded?: boolean;
  /** TCP_NODELAY on both sockets (default true). */
  noDelay?: boolean;
  /**
   * Hand the pair over (event 'handover', no 'close') once this many bytes went through and both directions
   * are still open: both sockets are left paused with whatever Node holds (see ./splice-relay.ts).
   */
  handOverAfterBytes?: number;
  /** Check each FIN against the socket's pending error and clear SO_LINGER before a graceful close. */
  sockets?: RelaySockets | undefined;
}

/** Bytes the stream relay moved before it handed the pair over. */
export interface HandOver {
  aToB: number;
  bToA: number;
}

interface Side {
  socket: Socket;
  name: 'a' | 'b';
  ended: boolean; // FIN received
  finished: boolean; // our FIN sent and flushed
}

/** Outcome name of a side's reset (err undefined: the socket closed under us) or other error. */
export function failureOutcome(side: 'a' | 'b', err: Error | undefined): RelayOutcome {
  return err === undefined || isResetError((err as NodeJS.ErrnoException).code) ? `reset-${side}` : `error-${side}`;
}

/** The socket's pending error as an Error with its code, or undefined (no platform calls, or none pending). */
export function pendingError(sockets: RelaySockets | undefined, s: Socket): Error | undefined {
  let code: string | null = null;
  try {
    code = sockets?.takeError(s) ?? null;
  } catch {
    return undefined;
  }
  return code === null ? undefined : Object.assign(new Error(`${code} (read)`), { code });
}

/** Before a graceful close: SO_LINGER off, so close() keeps what the kernel still has to send. */
export function lingerOff(sockets: RelaySockets | undefined, ...list: Socket[]): void {
  if (!sockets) return;
  for (const s of list) {
    try {
      sockets.setLinger(s, null);
    } catch {
      /* closed meanwhile: nothing left to keep */
    }
  }
}

export class Relay extends EventEmitter<{ close: [RelayStats]; handover: [HandOver] }> {
  readonly #a: Side;
  readonly #b: Side;
  readonly #opts: Required<Omit<RelayOptions, 'now' | 'aEnded' | 'noDelay' | 'handOverAfterBytes' | 'sockets'>>;
  readonly #sockets: RelaySockets | undefined;
  readonly #handOverAt: number;
  #handingOver = false;
  readonly #now: () => number;
  readonly #started: number;
  #aToB = 0;
  #bToA = 0;
  #lastActivity: number;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  #cleanups: Array<() => void> = [];

  constructor(a: Socket, b: Socket, options: RelayOptions) {
    super();
    this.#now = options.now ?? Date.now;
    this.#opts = {
      idleTimeoutMs: options.idleTimeoutMs,
      halfCloseTimeoutMs: options.halfCloseTimeoutMs ?? options.idleTimeoutMs,
      closeTimeoutMs: options.closeTimeoutMs ?? 5_000,
    };
    this.#started = this.#now();
    this.#lastActivity = this.#started;
    this.#handOverAt = options.handOverAfterBytes ?? Infinity;
    this.#sockets = options.sockets;
    if (options.noDelay ?? true) {
      a.setNoDelay(true);
      b.setNoDelay(true);
    }
    this.#a = { socket: a, name: 'a', ended: false, finished: false };
    this.#b = { socket: b, name: 'b', ended: false, finished: false };
    const aEnd = this.#wire(this.#a, this.#b);
    const bEnd = this.#wire(this.#b, this.#a);
    this.#arm(this.#opts.idleTimeoutMs);
    // A FIN that arrived before the pair was made ('end' already emitted, e.g. while the caller read the
    // signalling or waited for the echo) must still be propagated.
    if (options.aEnded || a.readableEnded) aEnd();
    if (b.readableEnded) bEnd();
    // Callers may hand over paused sockets (after reading signalling): start the flow both ways.
    a.resume();
    b.resume();
    // A side may already be gone by the time the pair is made.
    for (const side of [this.#a, this.#b]) {
      if (side.socket.destroyed) queueMicrotask(() => this.#abort(side, undefined));
    }
  }

  get mode(): 'streams' {
    return 'streams';
  }

  get bytesAToB(): number {
    return this.#aToB;
  }

  get bytesBToA(): number {
    return this.#bToA;
  }

  get closed(): boolean {
    return this.#closed;
  }

  #wire(from: Side, to: Side): () => void {
    const src = from.socket;
    const dst = to.socket;
    const onData = (chunk: Buffer): void => {
      if (from.name === 'a') this.#aToB += chunk.length;
      else this.#bToA += chunk.length;
      this.#lastActivity = this.#now();
      if (!dst.write(chunk)) src.pause();
      if (!this.#handingOver && this.#aToB + this.#bToA >= this.#handOverAt) {
        this.#handingOver = true;
        queueMicrotask(() => this.#handOver());
      }
    };
    const onDrain = (): void => {
      if (!this.#closed) src.resume();
    };
    const onEnd = (): void => {
      if (from.ended) return;
      // A reset that came in behind queued bytes looks like EOF to libuv: it must stay a reset.
      const reset = pendingError(this.#sockets, src);
      if (reset) {
        this.#abort(from, reset);
        return;
      }
      from.ended = true;
      this.#lastActivity = this.#now();
      // Our FIN on dst ends that direction gracefully: from here on, everything towards dst is in its
      // kernel buffer. Clear SO_LINGER now, not at the end: Node closes a socket by itself once both of its
      // halves are done (its peer's FIN may come later, while our bytes are still unacknowledged), and a
      // close with linger 0 (MP_FASTCLOSE on MPTCP) would drop them. If the process dies now, the other
      // direction still ends in a reset: src keeps its linger 0 until its own FIN.
      lingerOff(this.#sockets, dst);
      // Propagate the half-close once everything read so far is queued on the other side.
      dst.end(() => {
        to.finished = true;
        this.#maybeDone();
      });
      this.#maybeDone();
    };
    const onError = (err: Error): void => this.#abort(from, err);
    const onClose = (hadError: boolean): void => {
      if (this.#closed || hadError) return; // an error is handled by onError
      // A socket that closes with both of its halves done (its peer's FIN read, ours flushed) is simply
      // finished (Node closes such a socket by itself), even while our FIN on the other socket is still
      // being flushed. Closed any earlier, it cut the conversation.
      if (from.ended && from.finished) this.#maybeDone();
      else this.#abort(from, undefined);
    };
    src.on('data', onData);
    dst.on('drain', onDrain);
    src.on('end', onEnd);
    src.on('error', onError);
    src.on('close', onClose);
    this.#cleanups.push(() => {
      src.off('data', onData);
      dst.off('drain', onDrain);
      src.off('end', onEnd);
      src.off('error', onError);
      src.off('close', onClose);
    });
    return onEnd;
  }

  /** Stops relaying without touching the sockets (paused, nothing lost) and emits 'handover'. */
  #handOver(): void {
    if (this.#closed) return;
    // A half-closed pair is near its end: it stays here.
    if (this.#a.ended || this.#b.ended || this.#a.socket.destroyed || this.#b.socket.destroyed) return;
    this.#a.socket.pause();
    this.#b.socket.pause();
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    for (const c of this.#cleanups) c();
    this.#cleanups = [];
    this.emit('handover', { aToB: this.#aToB, bToA: this.#bToA });
  }

  #maybeDone(): void {
    if (this.#closed) return;
    if (this.#a.ended && this.#b.ended && this.#a.finished && this.#b.finished) {
      this.#finish('done', undefined);
      lingerOff(this.#sockets, this.#a.socket, this.#b.socket);
      this.#a.socket.destroy();
      this.#b.socket.destroy();
    }
  }

  #arm(ms: number): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#onTimer(), Math.max(1, ms));
    this.#timer.unref();
  }

  #onTimer(): void {
    if (this.#closed) return;
    const halfOpen = this.#a.ended || this.#b.ended;
    const limit = halfOpen ? this.#opts.halfCloseTimeoutMs : this.#opts.idleTimeoutMs;
    const idleFor = this.#now() - this.#lastActivity;
    if (idleFor >= limit) {
      this.#finish('idle-timeout', undefined);
      this.#a.socket.resetAndDestroy();
      this.#b.socket.resetAndDestroy();
      return;
    }
    this.#arm(limit - idleFor);
  }

  #abort(from: Side, err: Error | undefined): void {
    if (this.#closed) return;
    this.#finish(failureOutcome(from.name, err), err);
    const other = from === this.#a ? this.#b : this.#a;
    other.socket.resetAndDestroy();
    from.socket.destroy();
  }

  /** Graceful: half-close both sides now and let pending bytes drain; destroy after closeTimeoutMs. */
  close(): void {
    if (this.#closed) return;
    this.#a.socket.end();
    this.#b.socket.end();
    const t = setTimeout(() => {
      if (this.#closed) return;
      this.#finish('close-timeout', undefined);
      this.#a.socket.resetAndDestroy();
      this.#b.socket.resetAndDestroy();
    }, this.#opts.closeTimeoutMs);
    t.unref();
    this.#cleanups.push(() => clearTimeout(t));
  }

  /** Immediate: reset both sides. */
  destroy(err?: Error): void {
    if (this.#closed) return;
    this.#finish('aborted', err);
    this.#a.socket.resetAndDestroy();
    this.#b.socket.resetAndDestroy();
  }

  #finish(outcome: RelayOutcome, error: Error | undefined): void {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    for (const c of this.#cleanups) c();
    this.#cleanups = [];
    // Late errors from the sockets being torn down must not become uncaught exceptions.
    this.#a.socket.on('error', noop);
    this.#b.socket.on('error', noop);
    const stats: RelayStats = { aToB: this.#aToB, bToA: this.#bToA, outcome, durationMs: this.#now() - this.#started };
    if (error) stats.error = error;
    this.emit('close', stats);
  }
}

function noop(): void {}
