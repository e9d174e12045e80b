/**
 * The send side of a UDP channel, role-agnostic: datagram semantics over a byte stream. Frames wait in an
 * application queue bounded in bytes and in time, and go to the socket in batches, the next only once the
 * kernel took the last (with TCP_NOTSENT_LOWAT the kernel in turn holds only a little unsent).
 * So the channel never builds seconds of queue behind a bulk flow: beyond `maxBytes` frames are dropped, and
 * a frame older than `maxAgeMs` when its turn comes is dropped instead of sent. Each drop is reported (the
 * owner counts it). A frame is written whole or not at all, so framing never breaks.
 * Which frame goes when the queue is full: frames may name their flow, and a flow that holds more than its
 * share of the queue (queued bytes / flows queued) loses its own oldest frame; otherwise the oldest frame
 * of the queue goes. A bulk flow then pays for its excess, and a small flow sharing the channel (a call, a
 * game, DNS) keeps its datagrams: without flows, plain drop-oldest took a third of a 20 pps probe's.
 */
import type { Socket } from 'node:net';

export type DatagramDropReason = 'queue-full' | 'stale';

export interface DatagramQueueOptions {
  maxBytes: number;
  maxAgeMs: number;
  now?: () => number;
  onDrop: (reason: DatagramDropReason, frames: number) => void;
}

const EMPTY = Buffer.alloc(0);

/** Bytes handed to the socket in one write. */
const WRITE_BATCH = 64 * 1024;

interface Queued {
  frame: Buffer;
  at: number;
  flow: number | undefined;
  /** Dropped where it stands (its flow's excess); skipped when its turn comes. */
  dropped: boolean;
}

export class DatagramQueue {
  readonly #socket: Socket;
  readonly #opts: DatagramQueueOptions;
  readonly #now: () => number;
  /** A ring would avoid shift(); the queue is short (bounded in bytes and time), and shift on it is cheap. */
  #queue: Queued[] = [];
  #head = 0;
  #bytes = 0;
  #frames = 0;
  /** Queued bytes per flow (frames pushed with a flow). */
  readonly #flowBytes = new Map<number, number>();
  /** The flow that last grew past the largest one seen: the candidate when a frame must go. */
  #heavy: number | undefined;
  #waiting = false;
  #closed = false;

  constructor(socket: Socket, opts: DatagramQueueOptions) {
    this.#socket = socket;
    this.#opts = opts;
    this.#now = opts.now ?? Date.now;
  }

  /** Bytes waiting in the application queue (not yet given to the socket). */
  get queuedBytes(): number {
    return this.#bytes;
  }

  get queuedFrames(): number {
    return this.#frames;
  }

  /** Queues one whole frame (of `flow`, when the owner tells flows apart) and sends what the socket takes now. */
  push(frame: Buffer, flow?: number): void {
    if (this.#closed) return;
    if (frame.length > this.#opts.maxBytes) {
      this.#opts.onDrop('queue-full', 1);
      return;
    }
    let dropped = 0;
    while (this.#bytes + frame.length > this.#opts.maxBytes && this.#head < this.#queue.length) {
      this.#dropOne(flow);
      dropped++;
    }
    if (dropped > 0) this.#opts.onDrop('queue-full', dropped);
    this.#queue.push({ frame, at: this.#now(), flow, dropped: false });
    this.#add(flow, frame.length);
    this.#pump();
  }

  #add(flow: number | undefined, bytes: number): void {
    this.#bytes += bytes;
    this.#frames += Math.sign(bytes);
    if (flow === undefined) return;
    const n = (this.#flowBytes.get(flow) ?? 0) + bytes;
    if (n === 0) this.#flowBytes.delete(flow);
    else this.#flowBytes.set(flow, n);
    if (bytes > 0 && flow !== this.#heavy && n > (this.#flowBytes.get(this.#heavy as number) ?? 0)) this.#heavy = flow;
  }

  /** Does `flow` hold at least its share of the queue (queued bytes / flows queued)? */
  #overShare(flow: number | undefined): boolean {
    const mine = flow === undefined ? 0 : (this.#flowBytes.get(flow) ?? 0);
    return mine > 0 && mine * this.#flowBytes.size >= this.#bytes;
  }

  /**
   * Makes room for one frame of `flow`: the oldest frame of `flow` when it holds at least its share, else of
   * the heaviest flow when that one does, else the queue's oldest frame.
   */
  #dropOne(flow: number | undefined): void {
    const victim = this.#overShare(flow) ? flow : this.#overShare(this.#heavy) ? this.#heavy : undefined;
    if (victim !== undefined) {
      // The victim holds at least its share, so many frames are its own: the scan ends near the head.
      for (let i = this.#head; i < this.#queue.length; i++) {
        const q = this.#queue[i] as Queued;
        if (q.dropped || q.flow !== victim) continue;
        q.dropped = true;
        this.#add(victim, -q.frame.length);
        q.frame = EMPTY;
        // Dropped entries are skipped when their turn comes; bounded here while the socket does not drain.
        while (this.#head < this.#queue.length && (this.#queue[this.#head] as Queued).dropped) this.#head++;
        if (this.#queue.length - this.#head > 4 * this.#frames + 1024) {
          this.#queue = this.#queue.slice(this.#head).filter((x) => !x.dropped);
          this.#head = 0;
        }
        return;
      }
    }
    while (this.#head < this.#queue.length) {
      const q = this.#queue[this.#head++] as Queued;
      if (q.dropped) continue;
      this.#add(q.flow, -q.frame.length);
      return;
    }
  }

  /** Drops whatever is queued; nothing more is sent. */
  close(): void {
    this.#closed = true;
    this.#queue = [];
    this.#head = 0;
    this.#bytes = 0;
    this.#frames = 0;
    this.#flowBytes.clear();
    this.#heavy = undefined;
  }

  /** The last write of a batch reached the kernel: everything before it did too. */
  readonly #onFlushed = (): void => {
    this.#waiting = false;
    this.#pump();
  };

  #pump(): void {
    if (this.#waiting || this.#closed) return;
    const s = this.#socket;
    if (s.destroyed || !s.writable) return;
    let stale = 0;
    const now = this.#now();
    // Whatever waits goes in one writev (up to WRITE_BATCH bytes); until the kernel has taken all of it (the
    // last write's callback), the rest waits here, where it can still be dropped.
    const batch: Buffer[] = [];
    let bytes = 0;
    while (this.#head < this.#queue.length && bytes < WRITE_BATCH) {
      const q = this.#queue[this.#head++] as Queued;
      if (q.dropped) continue;
      this.#add(q.flow, -q.frame.length);
      if (now - q.at > this.#opts.maxAgeMs) {
        stale++;
        continue;
      }
      batch.push(q.frame);
      bytes += q.frame.length;
    }
    if (this.#head === this.#queue.length) {
      this.#queue = [];
      this.#head = 0;
    } else if (this.#head > 1024) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
    if (stale > 0) this.#opts.onDrop('stale', stale);
    if (batch.length === 0) return;
    this.#waiting = true;
    s.cork();
    for (let i = 0; i < batch.length - 1; i++) s.write(batch[i] as Buffer);
    s.write(batch[batch.length - 1] as Buffer, this.#onFlushed);
    s.uncork();
  }
}
