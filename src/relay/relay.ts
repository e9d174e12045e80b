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
 * - One idle lifetime for the pair: no byte in either direction for `idleTimeoutMs` aborts both (checked by one
 *   sweep over every relay, at most a quarter of the shortest limit late, at most 1 s).
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

/**
 * Who learns that a pair ended or was handed over, instead of the 'close' and 'handover' events: the splice
 * relay wrapping a stream relay (no listener closures and no event table for that).
 */
export interface RelaySink {
  relayClosed(stats: RelayStats): void;
  relayHandedOver(moved: HandOver): void;
}

/** Bounds of the idle sweep's period (see Relay.#watchIdle). */
const SWEEP_MIN_MS = 10;
const SWEEP_MAX_MS = 1_000;

/** The relay a socket belongs to (set while it relays; undefined after). */
const kRelay = Symbol('mpconvert.relay');
type Relayed = Socket & { [kRelay]?: Relay | undefined };

/**
 * An idle relayed connection costs memory for as long as it lives, and a busy box holds tens of thousands:
 * the listeners are five functions shared by every relay (the socket says which relay it belongs to), and
 * each side's state is four fields of the relay, not an object and ten closures.
 */
export class Relay extends EventEmitter<{ close: [RelayStats]; handover: [HandOver] }> {
  readonly #a: Relayed;
  readonly #b: Relayed;
  #aEnded = false; // a's FIN received
  #bEnded = false;
  #aFinished = false; // our FIN to a sent and flushed
  #bFinished = false;
  readonly #idleTimeoutMs: number;
  readonly #halfCloseTimeoutMs: number;
  readonly #closeTimeoutMs: number;
  readonly #sockets: RelaySockets | undefined;
  readonly #handOverAt: number;
  readonly #sink: RelaySink | undefined;
  #handingOver = false;
  readonly #now: () => number;
  readonly #started: number;
  #aToB = 0;
  #bToA = 0;
  #lastActivity: number;
  #closeTimer: NodeJS.Timeout | undefined;
  #closed = false;
  #wired = false;

  constructor(a: Socket, b: Socket, options: RelayOptions, sink?: RelaySink) {
    super();
    this.#now = options.now ?? Date.now;
    this.#idleTimeoutMs = options.idleTimeoutMs;
    this.#halfCloseTimeoutMs = options.halfCloseTimeoutMs ?? options.idleTimeoutMs;
    this.#closeTimeoutMs = options.closeTimeoutMs ?? 5_000;
    this.#started = this.#now();
    this.#lastActivity = this.#started;
    this.#handOverAt = options.handOverAfterBytes ?? Infinity;
    this.#sockets = options.sockets;
    this.#sink = sink;
    if (options.noDelay ?? true) {
      a.setNoDelay(true);
      b.setNoDelay(true);
    }
    this.#a = a;
    this.#b = b;
    this.#wire(a, b);
    this.#wire(b, a);
    this.#wired = true;
    Relay.#watchIdle(this);
    // A FIN that arrived before the pair was made ('end' already emitted, e.g. while the caller read the
    // signalling or waited for the echo) must still be propagated.
    if (options.aEnded || a.readableEnded) this.#onEnd(a);
    if (b.readableEnded) this.#onEnd(b);
    // Callers may hand over paused sockets (after reading signalling): start the flow both ways.
    a.resume();
    b.resume();
    // A side may already be gone by the time the pair is made.
    for (const s of [a, b]) {
      if (s.destroyed) queueMicrotask(() => this.#abort(s, undefined));
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

  // The shared listeners: `this` is the socket that emitted.
  static #data(this: Relayed, chunk: Buffer): void {
    const r = this[kRelay];
    if (r) r.#onData(this, chunk);
  }
  static #drain(this: Relayed): void {
    const r = this[kRelay];
    // `this` could take more: resume the side that feeds it.
    if (r && !r.#closed) (this === r.#a ? r.#b : r.#a).resume();
  }
  static #end(this: Relayed): void {
    const r = this[kRelay];
    if (r) r.#onEnd(this);
  }
  static #error(this: Relayed, err: Error): void {
    const r = this[kRelay];
    if (r) r.#abort(this, err);
  }
  static #close(this: Relayed, hadError: boolean): void {
    const r = this[kRelay];
    if (r) r.#onClose(this, hadError);
  }

  #wire(src: Relayed, dst: Relayed): void {
    src[kRelay] = this;
    src.on('data', Relay.#data);
    dst.on('drain', Relay.#drain);
    src.on('end', Relay.#end);
    src.on('error', Relay.#error);
    src.on('close', Relay.#close);
  }

  #unwire(): void {
    if (!this.#wired) return;
    this.#wired = false;
    for (const s of [this.#a, this.#b]) {
      s.off('data', Relay.#data);
      s.off('drain', Relay.#drain);
      s.off('end', Relay.#end);
      s.off('error', Relay.#error);
      s.off('close', Relay.#close);
      // Set, not deleted: a deleted property would turn every socket's shape into a slow dictionary.
      if (s[kRelay] === this) s[kRelay] = undefined;
    }
  }

  #onData(src: Relayed, chunk: Buffer): void {
    if (src === this.#a) this.#aToB += chunk.length;
    else this.#bToA += chunk.length;
    this.#lastActivity = this.#now();
    if (!(src === this.#a ? this.#b : this.#a).write(chunk)) src.pause();
    if (!this.#handingOver && this.#aToB + this.#bToA >= this.#handOverAt) {
      this.#handingOver = true;
      queueMicrotask(() => this.#handOver());
    }
  }

  #onEnd(src: Relayed): void {
    const isA = src === this.#a;
    if (isA ? this.#aEnded : this.#bEnded) return;
    // A reset that came in behind queued bytes looks like EOF to libuv: it must stay a reset.
    const reset = pendingError(this.#sockets, src);
    if (reset) {
      this.#abort(src, reset);
      return;
    }
    if (isA) this.#aEnded = true;
    else this.#bEnded = true;
    this.#lastActivity = this.#now();
    const dst = isA ? this.#b : this.#a;
    // Our FIN on dst ends that direction gracefully: from here on, everything towards dst is in its
    // kernel buffer. Clear SO_LINGER now, not at the end: Node closes a socket by itself once both of its
    // halves are done (its peer's FIN may come later, while our bytes are still unacknowledged), and a
    // close with linger 0 (MP_FASTCLOSE on MPTCP) would drop them. If the process dies now, the other
    // direction still ends in a reset: src keeps its linger 0 until its own FIN.
    lingerOff(this.#sockets, dst);
    // Propagate the half-close once everything read so far is queued on the other side.
    dst.end(() => {
      if (isA) this.#bFinished = true;
      else this.#aFinished = true;
      this.#maybeDone();
    });
    this.#maybeDone();
  }

  #onClose(src: Relayed, hadError: boolean): void {
    if (this.#closed || hadError) return; // an error is handled by the error listener
    // A socket that closes with both of its halves done (its peer's FIN read, ours flushed) is simply
    // finished (Node closes such a socket by itself), even while our FIN on the other socket is still
    // being flushed. Closed any earlier, it cut the conversation.
    const done = src === this.#a ? this.#aEnded && this.#aFinished : this.#bEnded && this.#bFinished;
    if (done) this.#maybeDone();
    else this.#abort(src, undefined);
  }

  /** Stops relaying without touching the sockets (paused, nothing lost) and emits 'handover'. */
  #handOver(): void {
    if (this.#closed) return;
    // A half-closed pair is near its end: it stays here.
    if (this.#aEnded || this.#bEnded || this.#a.destroyed || this.#b.destroyed) return;
    this.#a.pause();
    this.#b.pause();
    this.#closed = true;
    this.#stopTimers();
    this.#unwire();
    const moved = { aToB: this.#aToB, bToA: this.#bToA };
    if (this.#sink) this.#sink.relayHandedOver(moved);
    else this.emit('handover', moved);
  }

  #maybeDone(): void {
    if (this.#closed) return;
    if (this.#aEnded && this.#bEnded && this.#aFinished && this.#bFinished) {
      this.#finish('done', undefined);
      // Both sockets had SO_LINGER cleared when the FIN towards them was queued (#onEnd): nothing to clear.
      this.#a.destroy();
      this.#b.destroy();
    }
  }

  /*
   * One timer for every open relay's idle lifetime, not a Timeout per relay (an idle pair lives for hours and a
   * busy box holds tens of thousands): every `#sweepMs` each relay compares its last activity with its limit.
   * The period is a quarter of the shortest limit among the relays watched (at least 10 ms, at most 1 s), so
   * an idle pair is aborted at most that much after its limit.
   */
  static readonly #idle = new Set<Relay>();
  static #sweepTimer: NodeJS.Timeout | undefined;
  static #sweepMs = SWEEP_MAX_MS;

  static #watchIdle(r: Relay): void {
    Relay.#idle.add(r);
    const period = Math.min(SWEEP_MAX_MS, Math.max(SWEEP_MIN_MS, Math.floor(Math.min(r.#idleTimeoutMs, r.#halfCloseTimeoutMs) / 4)));
    if (Relay.#sweepTimer && period >= Relay.#sweepMs) return;
    if (Relay.#sweepTimer) clearInterval(Relay.#sweepTimer);
    Relay.#sweepMs = period;
    Relay.#sweepTimer = setInterval(Relay.#sweep, period);
    Relay.#sweepTimer.unref();
  }

  static #unwatchIdle(r: Relay): void {
    if (!Relay.#idle.delete(r) || Relay.#idle.size > 0 || !Relay.#sweepTimer) return;
    clearInterval(Relay.#sweepTimer);
    Relay.#sweepTimer = undefined;
    Relay.#sweepMs = SWEEP_MAX_MS;
  }

  static #sweep(this: void): void {
    // Deleting the current entry while iterating a Set is safe; an expired relay removes itself.
    for (const r of Relay.#idle) r.#checkIdle();
  }

  #checkIdle(): void {
    if (this.#closed) {
      Relay.#unwatchIdle(this);
      return;
    }
    const limit = this.#aEnded || this.#bEnded ? this.#halfCloseTimeoutMs : this.#idleTimeoutMs;
    if (this.#now() - this.#lastActivity < limit) return;
    this.#finish('idle-timeout', undefined);
    this.#a.resetAndDestroy();
    this.#b.resetAndDestroy();
  }

  #abort(from: Socket, err: Error | undefined): void {
    if (this.#closed) return;
    const isA = from === this.#a;
    this.#finish(failureOutcome(isA ? 'a' : 'b', err), err);
    (isA ? this.#b : this.#a).resetAndDestroy();
    from.destroy();
  }

  /** Graceful: half-close both sides now and let pending bytes drain; destroy after closeTimeoutMs. */
  close(): void {
    if (this.#closed || this.#closeTimer) return;
    this.#a.end();
    this.#b.end();
    this.#closeTimer = setTimeout(() => {
      if (this.#closed) return;
      this.#finish('close-timeout', undefined);
      this.#a.resetAndDestroy();
      this.#b.resetAndDestroy();
    }, this.#closeTimeoutMs);
    this.#closeTimer.unref();
  }

  /** Immediate: reset both sides. */
  destroy(err?: Error): void {
    if (this.#closed) return;
    this.#finish('aborted', err);
    this.#a.resetAndDestroy();
    this.#b.resetAndDestroy();
  }

  #stopTimers(): void {
    Relay.#unwatchIdle(this);
    if (this.#closeTimer) clearTimeout(this.#closeTimer);
    this.#closeTimer = undefined;
  }

  #finish(outcome: RelayOutcome, error: Error | undefined): void {
    this.#closed = true;
    this.#stopTimers();
    this.#unwire();
    // Late errors from the sockets being torn down must not become uncaught exceptions.
    this.#a.on('error', noop);
    this.#b.on('error', noop);
    const stats: RelayStats = { aToB: this.#aToB, bToA: this.#bToA, outcome, durationMs: this.#now() - this.#started };
    if (error) stats.error = error;
    if (this.#sink) this.#sink.relayClosed(stats);
    else this.emit('close', stats);
  }
}

function noop(): void {}
