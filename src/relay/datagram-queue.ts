/**
 * The send side of a UDP channel, role-agnostic: datagram semantics over a byte stream. Frames wait in an
 * application queue bounded in bytes and in time, and go to the socket in batches, the next only once the
 * kernel took the last (with TCP_NOTSENT_LOWAT the kernel in turn holds only a little unsent).
 * So the channel never builds seconds of queue behind a bulk flow: beyond `maxBytes` the oldest frames are
 * dropped, and a frame older than `maxAgeMs` when its turn comes is dropped instead of sent. Each drop is
 * reported (the owner counts it). A frame is written whole or not at all, so framing never breaks.
 */
import type { Socket } from 'node:net';

export type DatagramDropReason = 'queue-full' | 'stale';

export interface DatagramQueueOptions {
  maxBytes: number;
  maxAgeMs: number;
  now?: () => number;
  onDrop: (reason: DatagramDropReason, frames: number) => void;
}

/** Bytes handed to the socket in one write. */
const WRITE_BATCH = 64 * 1024;

interface Queued {
  frame: Buffer;
  at: number;
}

export class DatagramQueue {
  readonly #socket: Socket;
  readonly #opts: DatagramQueueOptions;
  readonly #now: () => number;
  /** A ring would avoid shift(); the queue is short (bounded in bytes and time), and shift on it is cheap. */
  #queue: Queued[] = [];
  #head = 0;
  #bytes = 0;
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
    return this.#queue.length - this.#head;
  }

  /** Queues one whole frame and sends what the socket takes now. */
  push(frame: Buffer): void {
    if (this.#closed) return;
    if (frame.length > this.#opts.maxBytes) {
      this.#opts.onDrop('queue-full', 1);
      return;
    }
    let dropped = 0;
    while (this.#bytes + frame.length > this.#opts.maxBytes && this.#head < this.#queue.length) {
      this.#bytes -= (this.#queue[this.#head++] as Queued).frame.length;
      dropped++;
    }
    if (dropped > 0) this.#opts.onDrop('queue-full', dropped);
    this.#queue.push({ frame, at: this.#now() });
    this.#bytes += frame.length;
    this.#pump();
  }

  /** Drops whatever is queued; nothing more is sent. */
  close(): void {
    this.#closed = true;
    this.#queue = [];
    this.#head = 0;
    this.#bytes = 0;
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
      this.#bytes -= q.frame.length;
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
