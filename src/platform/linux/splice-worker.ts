/**
 * The splice engine's thread (see ./splice.ts for the owner): one epoll loop that moves the bytes of every
 * pair inside the kernel, socket -> pipe -> socket with splice(2), never copying them into JavaScript.
 *
 * Per pair and direction (src -> dst) a pipe, taken from a small pool when the direction has bytes to move
 * and given back when it is empty again (an idle pair holds no pipe). Descriptors are registered edge-
 * triggered for input and output; on any event the pair's two directions are pumped until they block:
 * - read: splice(src -> pipe) while the pipe has room; 0 = the peer's FIN;
 * - write: splice(pipe -> dst) while the pipe holds bytes; EAGAIN waits for dst's next EPOLLOUT edge;
 * - FIN: once src ended and the pipe is empty, shutdown(dst, SHUT_WR) (DATA_FIN on MPTCP);
 * - both directions finished: 'done'; a failing splice: reset/error on that side; no byte for the idle
 *   limit: 'idle-timeout'.
 * The thread never closes a socket: it deregisters both and reports, and the owner closes them.
 *
 * Commands arrive on a MessagePort, read synchronously after the owner writes to an eventfd that is in the
 * epoll set (the thread is blocked in epoll_wait, not in its event loop). Reports go back on the port.
 */
import { receiveMessageOnPort, workerData, type MessagePort } from 'node:worker_threads';
import koffi from 'koffi';
import { isResetError } from '../errors.js';

export interface SpliceWorkerData {
  port: MessagePort;
  eventFd: number;
  pipeSize: number;
}

export type SpliceCommand =
  | { op: 'add'; id: number; a: number; b: number; idleMs: number; halfMs: number; closeMs: number; counters: SharedArrayBuffer }
  | { op: 'close'; id: number }
  | { op: 'abort'; id: number }
  | { op: 'exit' };

export type SpliceReport =
  | { op: 'ended'; id: number; outcome: string; aToB: number; bToA: number; errno?: number }
  | { op: 'fatal'; message: string };

const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLLIN = 0x1;
const EPOLLOUT = 0x4;
const EPOLLERR = 0x8;
const EPOLLRDHUP = 0x2000;
const EPOLLET = 0x80000000;
const SPLICE_F_MOVE = 1;
const SPLICE_F_NONBLOCK = 2;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const F_SETPIPE_SZ = 1031;
const F_GETPIPE_SZ = 1032;
const SOL_SOCKET = 1;
const SO_ERROR = 4;
const SHUT_WR = 1;
const EINTR = 4;
const EBADF = 9;
const EAGAIN = 11;
const ENOTCONN = 107;

// struct epoll_event is packed on x86-64 (12 bytes), naturally aligned elsewhere (16 bytes).
const EV_SIZE = process.arch === 'x64' ? 12 : 16;
const EV_DATA = process.arch === 'x64' ? 4 : 8;
const MAX_EVENTS = 256;
/** Iterations of one direction's pump per wake-up before other pairs get their turn. */
const BUDGET = 32;
const POOL_MAX = 64;

const libc = koffi.load('libc.so.6');
const sys = {
  epollCreate1: libc.func('int epoll_create1(int)') as (flags: number) => number,
  epollCtl: libc.func('int epoll_ctl(int, int, int, void *)') as (ep: number, op: number, fd: number, ev: Buffer | null) => number,
  epollWait: libc.func('int epoll_wait(int, void *, int, int)') as (ep: number, evs: Buffer, max: number, timeout: number) => number,
  splice: libc.func('intptr_t splice(int, void *, int, void *, uintptr_t, uint32_t)') as (i: number, io: null, o: number, oo: null, len: number, flags: number) => number | bigint,
  pipe2: libc.func('int pipe2(void *, int)') as (fds: Buffer, flags: number) => number,
  fcntl: libc.func('int fcntl(int, int, int)') as (fd: number, cmd: number, arg: number) => number,
  shutdown: libc.func('int shutdown(int, int)') as (fd: number, how: number) => number,
  close: libc.func('int close(int)') as (fd: number) => number,
  read: libc.func('intptr_t read(int, void *, uintptr_t)') as (fd: number, buf: Buffer, len: number) => number | bigint,
  getsockopt: libc.func('int getsockopt(int, int, int, void *, void *)') as (fd: number, level: number, name: number, v: Buffer, len: Buffer) => number,
};

interface Pipe {
  r: number;
  w: number;
  cap: number;
}

interface Direction {
  src: number;
  dst: number;
  srcSide: 'a' | 'b';
  dstSide: 'a' | 'b';
  pipe: Pipe | null;
  /** Bytes in the pipe. */
  queued: number;
  /** src sent its FIN (or the pair is closing: no more reading). */
  eof: boolean;
  /** Our FIN went out on dst. */
  shut: boolean;
  moved: number;
}

interface Pair {
  id: number;
  a: number;
  b: number;
  ab: Direction;
  ba: Direction;
  idleMs: number;
  halfMs: number;
  closeMs: number;
  closing: boolean;
  closeDeadline: number;
  last: number;
  counters: Float64Array;
  ended: boolean;
}

const { port, eventFd, pipeSize } = workerData as SpliceWorkerData;
const pairs = new Map<number, Pair>();
const byFd = new Map<number, Pair>();
const pool: Pipe[] = [];
const ready = new Set<Pair>();
const evbuf = Buffer.alloc(EV_SIZE * MAX_EVENTS);
const evone = Buffer.alloc(EV_SIZE);
const scratch = Buffer.alloc(8);
let now = Date.now();

function errno(): number {
  return koffi.errno();
}

function num(v: number | bigint): number {
  return typeof v === 'bigint' ? Number(v) : v;
}

function acquirePipe(): Pipe | null {
  const p = pool.pop();
  if (p) return p;
  const fds = Buffer.alloc(8);
  if (sys.pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) return null;
  const r = fds.readInt32LE(0);
  const w = fds.readInt32LE(4);
  sys.fcntl(w, F_SETPIPE_SZ, pipeSize); // best effort: the default (64 KiB) works too
  const cap = sys.fcntl(w, F_GETPIPE_SZ, 0);
  return { r, w, cap: cap > 0 ? cap : 65536 };
}

function releasePipe(d: Direction): void {
  const p = d.pipe;
  if (!p) return;
  d.pipe = null;
  if (d.queued === 0 && pool.length < POOL_MAX) pool.push(p);
  else {
    sys.close(p.r);
    sys.close(p.w);
  }
  d.queued = 0;
}

function outcomeFor(side: 'a' | 'b', e: number): string {
  return isResetError(e) ? `reset-${side}` : `error-${side}`;
}

function end(pair: Pair, outcome: string, e?: number): void {
  if (pair.ended) return;
  pair.ended = true;
  for (const fd of [pair.a, pair.b]) {
    // A number that now belongs to another pair (the socket was closed under us and the number reused) is not ours.
    if (byFd.get(fd) !== pair) continue;
    sys.epollCtl(ep, EPOLL_CTL_DEL, fd, null);
    byFd.delete(fd);
  }
  releasePipe(pair.ab);
  releasePipe(pair.ba);
  pairs.delete(pair.id);
  ready.delete(pair);
  const report: SpliceReport = { op: 'ended', id: pair.id, outcome, aToB: pair.ab.moved, bToA: pair.ba.moved };
  if (e !== undefined) report.errno = e;
  port.postMessage(report);
}

/** Moves what can be moved in one direction. Returns false when the pair ended. */
function pump(pair: Pair, d: Direction): boolean {
  for (let i = 0; i < BUDGET; i++) {
    let progress = false;
    if (!d.eof && !pair.closing) {
      if (!d.pipe) d.pipe = acquirePipe();
      if (!d.pipe) {
        end(pair, `error-${d.srcSide}`, errno());
        return false;
      }
      if (d.queued < d.pipe.cap) {
        const n = num(sys.splice(d.src, null, d.pipe.w, null, d.pipe.cap - d.queued, SPLICE_F_MOVE | SPLICE_F_NONBLOCK));
        if (n > 0) {
          d.queued += n;
          d.moved += n;
          pair.counters[d === pair.ab ? 0 : 1] = d.moved;
          pair.last = now;
          progress = true;
        } else if (n === 0) {
          d.eof = true;
          pair.last = now;
          progress = true;
        } else {
          const e = errno();
          // EAGAIN: src has nothing now (or the pipe is out of slots; the write below frees them).
          if (e !== EAGAIN && e !== EINTR) {
            end(pair, outcomeFor(d.srcSide, e), e);
            return false;
          }
        }
      }
    } else if (pair.closing && !d.eof) {
      d.eof = true;
    }
    if (d.queued > 0 && d.pipe) {
      const m = num(sys.splice(d.pipe.r, null, d.dst, null, d.queued, SPLICE_F_MOVE | SPLICE_F_NONBLOCK));
      if (m > 0) {
        d.queued -= m;
        progress = true;
      } else if (m < 0) {
        const e = errno();
        if (e !== EAGAIN && e !== EINTR) {
          end(pair, outcomeFor(d.dstSide, e), e);
          return false;
        }
      }
    }
    if (d.eof && d.queued === 0 && !d.shut) {
      d.shut = true;
      if (sys.shutdown(d.dst, SHUT_WR) < 0) {
        let e = errno();
        // ENOTCONN: dst is closed already. After a FIN exchange (MPTCP) that is fine; after a reset whose
        // EPOLLERR is still ahead of us in this batch it is the reset, which must not end the pair as 'done'.
        if (e === ENOTCONN) e = socketError(d.dst);
        if (e !== 0) {
          end(pair, outcomeFor(d.dstSide, e), e);
          return false;
        }
      }
      progress = true;
    }
    if (!progress) {
      if (d.queued === 0) releasePipe(d);
      return true;
    }
  }
  // Out of budget with work left: continue after the other pairs had theirs.
  ready.add(pair);
  return true;
}

function service(pair: Pair): void {
  if (pair.ended) return;
  if (!pump(pair, pair.ab)) return;
  if (!pump(pair, pair.ba)) return;
  if (pair.ab.shut && pair.ba.shut) end(pair, 'done');
}

function socketError(fd: number): number {
  const v = Buffer.alloc(4);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(4);
  if (sys.getsockopt(fd, SOL_SOCKET, SO_ERROR, v, len) < 0) return errno();
  return v.readInt32LE(0);
}

function add(c: Extract<SpliceCommand, { op: 'add' }>): void {
  const dir = (src: number, dst: number, srcSide: 'a' | 'b'): Direction => ({
    src, dst, srcSide, dstSide: srcSide === 'a' ? 'b' : 'a', pipe: null, queued: 0, eof: false, shut: false, moved: 0,
  });
  const pair: Pair = {
    id: c.id, a: c.a, b: c.b, ab: dir(c.a, c.b, 'a'), ba: dir(c.b, c.a, 'b'),
    idleMs: c.idleMs, halfMs: c.halfMs, closeMs: c.closeMs, closing: false, closeDeadline: 0, last: now,
    counters: new Float64Array(c.counters), ended: false,
  };
  pairs.set(pair.id, pair);
  for (const fd of [c.a, c.b]) {
    // Still registered to a running pair: its socket was closed without the engine letting go (the owner broke
    // the contract). epoll dropped the closed file by itself; that pair can only end.
    const stale = byFd.get(fd);
    if (stale) {
      byFd.delete(fd);
      end(stale, 'aborted', EBADF);
    }
  }
  for (const [fd, side] of [[c.a, 'a'], [c.b, 'b']] as const) {
    evone.fill(0);
    evone.writeUInt32LE((EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) >>> 0, 0);
    evone.writeInt32LE(fd, EV_DATA);
    if (sys.epollCtl(ep, EPOLL_CTL_ADD, fd, evone) < 0) {
      end(pair, `error-${side}`, errno());
      return;
    }
    byFd.set(fd, pair);
  }
  service(pair);
}

function commands(): boolean {
  // The eventfd counter only says "look at the port"; reset it, then take every queued command.
  sys.read(eventFd, scratch, 8);
  for (let m = receiveMessageOnPort(port); m !== undefined; m = receiveMessageOnPort(port)) {
    const c = m.message as SpliceCommand;
    if (c.op === 'add') add(c);
    else if (c.op === 'close') {
      const p = pairs.get(c.id);
      if (p && !p.closing) {
        p.closing = true;
        p.closeDeadline = now + p.closeMs;
        service(p);
      }
    } else if (c.op === 'abort') {
      const p = pairs.get(c.id);
      if (p) end(p, 'aborted');
    } else if (c.op === 'exit') {
      for (const p of [...pairs.values()]) end(p, 'aborted');
      return false;
    }
  }
  return true;
}

function sweep(): void {
  for (const p of [...pairs.values()]) {
    if (p.closing && now >= p.closeDeadline) end(p, 'close-timeout');
    else if (now - p.last >= (p.ab.eof || p.ba.eof ? p.halfMs : p.idleMs)) end(p, 'idle-timeout');
  }
}

const ep = sys.epollCreate1(O_CLOEXEC);
function fatal(message: string): never {
  port.postMessage({ op: 'fatal', message } satisfies SpliceReport);
  throw new Error(message);
}
if (ep < 0) fatal(`epoll_create1: errno ${errno()}`);
evone.fill(0);
evone.writeUInt32LE(EPOLLIN, 0);
evone.writeInt32LE(eventFd, EV_DATA);
if (sys.epollCtl(ep, EPOLL_CTL_ADD, eventFd, evone) < 0) fatal(`epoll_ctl(eventfd): errno ${errno()}`);

let running = true;
let nextSweep = Date.now() + 1000;
while (running) {
  const timeout = ready.size > 0 ? 0 : pairs.size > 0 ? Math.max(0, nextSweep - Date.now()) : -1;
  const n = sys.epollWait(ep, evbuf, MAX_EVENTS, timeout);
  now = Date.now();
  if (n < 0) {
    const e = errno();
    if (e === EINTR) continue;
    fatal(`epoll_wait: errno ${e}`);
  }
  for (let i = 0; i < n; i++) {
    const events = evbuf.readUInt32LE(i * EV_SIZE);
    const fd = evbuf.readInt32LE(i * EV_SIZE + EV_DATA);
    if (fd === eventFd) {
      if (!commands()) running = false;
      continue;
    }
    const pair = byFd.get(fd);
    if (!pair) continue;
    if (events & EPOLLERR) {
      const e = socketError(fd);
      if (e !== 0) {
        end(pair, outcomeFor(fd === pair.a ? 'a' : 'b', e), e);
        continue;
      }
    }
    ready.delete(pair);
    service(pair);
  }
  if (!running) break;
  for (const pair of [...ready]) {
    ready.delete(pair);
    service(pair);
  }
  if (now >= nextSweep) {
    sweep();
    nextSweep = now + 1000;
  }
}
for (const p of pool.splice(0)) {
  sys.close(p.r);
  sys.close(p.w);
}
sys.close(ep);
