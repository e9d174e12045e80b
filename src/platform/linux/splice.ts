/**
 * The Linux SpliceEngine: owns one worker thread (./splice-worker.ts) that moves the bytes of every spliced
 * pair inside the kernel, and the eventfd that wakes it. Started at the first pair; close() ends it.
 *
 * Descriptor ownership: the sockets (and their fds) stay owned by their net.Socket objects. The engine only
 * borrows the numbers until a pair's `done` settles, which the thread sends after it has deregistered both
 * fds; closing a socket earlier could hand its number to a new connection the thread would then touch, so
 * the caller (src/relay/splice-relay.ts) closes them only after `done`.
 *
 * If the thread dies, every running pair ends 'aborted' and later pair() calls throw (callers fall back to
 * the stream relay).
 */
import type net from 'node:net';
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { PlatformError, errnoName } from '../errors.js';
import type { SpliceEngine, SpliceOutcome, SplicePair, SplicePairOptions, SpliceResult } from '../types.js';
import { close as closeFd, eventfd, eventfdSignal } from './ffi.js';
import { fdOf } from './sockets.js';
import type { SpliceCommand, SpliceReport, SpliceWorkerData } from './splice-worker.js';

export interface LinuxSpliceOptions {
  /** Pipe capacity per active direction (F_SETPIPE_SZ; default 256 KiB, at most fs.pipe-max-size). */
  pipeSize?: number;
}

interface Pending {
  resolve: (r: SpliceResult) => void;
  live: Float64Array;
}

export class LinuxSpliceEngine implements SpliceEngine {
  readonly #pipeSize: number;
  #worker: Worker | undefined;
  #port: MessagePort | undefined;
  #eventFd = -1;
  #nextId = 1;
  readonly #pending = new Map<number, Pending>();
  #failure: Error | undefined;
  #closed = false;
  #exited: Promise<void> | undefined;

  constructor(options: LinuxSpliceOptions = {}) {
    this.#pipeSize = options.pipeSize ?? 256 * 1024;
  }

  /** Pairs being moved now. */
  get active(): number {
    return this.#pending.size;
  }

  pair(a: net.Socket, b: net.Socket, options: SplicePairOptions): SplicePair {
    if (this.#closed) throw new PlatformError('splice', 'ESHUTDOWN', 108, { detail: 'the splice engine is closed' });
    if (this.#failure) throw new PlatformError('splice', 'EIO', 5, { detail: `the splice thread failed: ${this.#failure.message}`, cause: this.#failure });
    const fa = fdOf(a);
    const fb = fdOf(b);
    if (fa < 0 || fb < 0) throw new PlatformError('splice', 'EBADF', 9, { detail: 'a socket has no descriptor' });
    this.#start();
    const id = this.#nextId++;
    const counters = new SharedArrayBuffer(16);
    const live = new Float64Array(counters);
    const done = new Promise<SpliceResult>((resolve) => this.#pending.set(id, { resolve, live }));
    this.#send({ op: 'add', id, a: fa, b: fb, idleMs: options.idleTimeoutMs, halfMs: options.halfCloseTimeoutMs, closeMs: options.closeTimeoutMs, counters });
    return {
      done,
      get aToB() {
        return live[0] ?? 0;
      },
      get bToA() {
        return live[1] ?? 0;
      },
      close: () => this.#send({ op: 'close', id }),
      abort: () => this.#send({ op: 'abort', id }),
    };
  }

  async close(): Promise<void> {
    if (this.#closed) return this.#exited;
    this.#closed = true;
    if (!this.#worker) return;
    this.#send({ op: 'exit' });
    const worker = this.#worker;
    const t = setTimeout(() => void worker.terminate(), 2_000);
    await this.#exited;
    clearTimeout(t);
  }

  #start(): void {
    if (this.#worker) return;
    this.#eventFd = eventfd();
    const { port1, port2 } = new MessageChannel();
    const data: SpliceWorkerData = { port: port2, eventFd: this.#eventFd, pipeSize: this.#pipeSize };
    const worker = new Worker(new URL('./splice-worker.js', import.meta.url), { workerData: data, transferList: [port2] });
    this.#worker = worker;
    this.#port = port1;
    port1.on('message', (m: SpliceReport) => this.#onReport(m));
    // The daemon's servers keep the process alive, not the engine.
    port1.unref();
    worker.unref();
    this.#exited = new Promise((resolve) => {
      worker.once('error', (err) => this.#fail(err));
      worker.once('exit', (code) => {
        if (!this.#closed || this.#pending.size > 0) this.#fail(new Error(`the splice thread exited (code ${code})`));
        port1.close();
        if (this.#eventFd >= 0) closeFd(this.#eventFd);
        this.#eventFd = -1;
        resolve();
      });
    });
  }

  #send(c: SpliceCommand): void {
    if (!this.#port || this.#eventFd < 0) return;
    this.#port.postMessage(c);
    eventfdSignal(this.#eventFd);
  }

  #onReport(m: SpliceReport): void {
    if (m.op === 'fatal') {
      this.#fail(new Error(m.message));
      return;
    }
    const p = this.#pending.get(m.id);
    if (!p) return;
    this.#pending.delete(m.id);
    const r: SpliceResult = { outcome: m.outcome as SpliceOutcome, aToB: m.aToB, bToA: m.bToA };
    if (m.errno !== undefined) r.errno = errnoName(m.errno);
    p.resolve(r);
  }

  /**
   * The thread is gone: its pairs end 'aborted'. Their descriptors are no longer touched by anyone, so the
   * owner may close them.
   */
  #fail(err: Error): void {
    this.#failure ??= err;
    for (const [id, p] of this.#pending) {
      this.#pending.delete(id);
      p.resolve({ outcome: 'aborted', aToB: p.live[0] ?? 0, bToA: p.live[1] ?? 0, errno: 'EIO' });
    }
  }
}
