/**
 * The transparent UDP thread (see ./transparent-udp.ts for the owner): one epoll loop over the TPROXY
 * sockets and the reply sockets, so that no datagram of the LAN waits for the main event loop to poll.
 *
 * - TPROXY sockets (one per family, bound to the tproxy address): recvmsg with IP_RECVORIGDSTADDR gives the
 *   LAN client's address (the peer) and the server's (the original destination).
 * - Reply sockets: one per (server endpoint, LAN client), bound with IP_TRANSPARENT to the server's address
 *   and port and connected to the client, made when the first answer is sent. Sent from it, an answer
 *   reaches the client from the server's address and port. Being connected, TPROXY's established lookup
 *   (net/netfilter/nf_tproxy_ipv4.c) hands it that flow's next datagrams too: they are read here as well,
 *   with both ends known from the socket. Closed after `replyIdleMs` without traffic, oldest first beyond
 *   `maxReplySockets`.
 *
 * Datagrams go to the owner in batches (one transferred buffer per wake-up); sends come in batches on the
 * MessagePort, read after the owner signals the eventfd that is in the epoll set.
 */
import { receiveMessageOnPort, workerData, type MessagePort } from 'node:worker_threads';
import { decodeSockaddr, encodeSockaddr } from '../structs.js';
import * as ffi from './ffi.js';

export interface TransparentUdpWorkerData {
  port: MessagePort;
  eventFd: number;
  listen: Array<{ family: 4 | 6; address: string; port: number }>;
  bufferBytes: number;
  replyIdleMs: number;
  maxReplySockets: number;
}

/** Flat metadata per datagram: [address, port, address, port, offset, length] (from, to). */
export type DatagramMeta = Array<string | number>;

export type TransparentUdpCommand = { op: 'send'; buf: ArrayBuffer; meta: DatagramMeta } | { op: 'exit' };

export type TransparentUdpReport =
  | { op: 'ready' }
  | { op: 'fatal'; message: string }
  | { op: 'datagrams'; buf: ArrayBuffer; meta: DatagramMeta; at: number }
  | { op: 'dropped'; reason: 'reply-send' | 'reply-socket' | 'truncated' | 'no-destination'; n: number };

interface Reply {
  fd: number;
  family: 4 | 6;
  from: { address: string; port: number };
  to: { address: string; port: number };
  key: string;
  last: number;
}

const BATCH_BYTES = 256 * 1024;
/** Datagrams read from one socket per wake-up before the others get their turn. */
const BUDGET = 64;

const data = workerData as TransparentUdpWorkerData;
const port = data.port;
const ep = ffi.epollCreate();
const listeners = new Map<number, 4 | 6>();
const replies = new Map<string, Reply>();
const replyByFd = new Map<number, Reply>();
const reader = new ffi.DatagramReader(65_536);
let exiting = false;

let batch = Buffer.allocUnsafe(BATCH_BYTES);
let batchOff = 0;
let meta: DatagramMeta = [];

function flush(): void {
  if (meta.length === 0) return;
  const ab = batch.buffer.slice(batch.byteOffset, batch.byteOffset + batchOff) as ArrayBuffer;
  port.postMessage({ op: 'datagrams', buf: ab, meta, at: Date.now() } satisfies TransparentUdpReport, [ab]);
  batch = Buffer.allocUnsafe(BATCH_BYTES);
  batchOff = 0;
  meta = [];
}

function emit(fromA: string, fromP: number, toA: string, toP: number, len: number): void {
  if (batchOff + len > BATCH_BYTES) flush();
  reader.data.copy(batch, batchOff, 0, len);
  meta.push(fromA, fromP, toA, toP, batchOff, len);
  batchOff += len;
}

const drops = { 'reply-send': 0, 'reply-socket': 0, truncated: 0, 'no-destination': 0 };

function readListener(fd: number): void {
  for (let i = 0; i < BUDGET; i++) {
    const n = reader.read(fd);
    if (n < 0) return;
    if (n > reader.data.length) {
      drops.truncated++;
      continue;
    }
    if (reader.origDst.length === 0) {
      drops['no-destination']++;
      continue;
    }
    const src = decodeSockaddr(reader.name.subarray(0, reader.nameLength));
    const dst = decodeSockaddr(reader.origDst);
    emit(src.address, src.port, dst.address, dst.port, n);
  }
}

function readReply(r: Reply, now: number): void {
  for (let i = 0; i < BUDGET; i++) {
    const n = reader.read(r.fd);
    if (n < 0) return;
    r.last = now;
    if (n > reader.data.length) {
      drops.truncated++;
      continue;
    }
    emit(r.to.address, r.to.port, r.from.address, r.from.port, n);
  }
}

function closeReply(r: Reply): void {
  ffi.epollDelete(ep, r.fd);
  ffi.closeFd(r.fd);
  replies.delete(r.key);
  replyByFd.delete(r.fd);
}

function replyFor(fromA: string, fromP: number, toA: string, toP: number, now: number): Reply | undefined {
  const key = `${fromA}|${fromP}|${toA}|${toP}`;
  const have = replies.get(key);
  if (have) return have;
  if (replies.size >= data.maxReplySockets) {
    const oldest = replies.values().next().value as Reply | undefined;
    if (oldest) closeReply(oldest);
  }
  const family: 4 | 6 = fromA.includes(':') ? 6 : 4;
  let fd: number;
  try {
    fd = ffi.transparentUdpSocket(family, encodeSockaddr(family, fromA, fromP), { connectTo: encodeSockaddr(family, toA, toP), label: `${fromA}:${fromP} -> ${toA}:${toP}` });
  } catch {
    drops['reply-socket']++;
    return undefined;
  }
  const r: Reply = { fd, family, from: { address: fromA, port: fromP }, to: { address: toA, port: toP }, key, last: now };
  replies.set(key, r);
  replyByFd.set(fd, r);
  ffi.epollAdd(ep, fd, ffi.EPOLLIN);
  return r;
}

function onCommand(c: TransparentUdpCommand, now: number): void {
  if (c.op === 'exit') {
    exiting = true;
    return;
  }
  const buf = Buffer.from(c.buf);
  const m = c.meta;
  for (let i = 0; i + 5 < m.length; i += 6) {
    const r = replyFor(m[i] as string, m[i + 1] as number, m[i + 2] as string, m[i + 3] as number, now);
    if (!r) continue;
    r.last = now;
    const off = m[i + 4] as number;
    const len = m[i + 5] as number;
    if (!ffi.sendDatagram(r.fd, off === 0 ? buf : buf.subarray(off), len)) drops['reply-send']++;
  }
}

function reportDrops(): void {
  for (const [reason, n] of Object.entries(drops) as Array<[keyof typeof drops, number]>) {
    if (n > 0) port.postMessage({ op: 'dropped', reason, n } satisfies TransparentUdpReport);
    drops[reason] = 0;
  }
}

function main(): void {
  try {
    for (const l of data.listen) {
      const fd = ffi.transparentUdpSocket(l.family, encodeSockaddr(l.family, l.address, l.port), { origDst: true, bufferBytes: data.bufferBytes, label: `${l.address}:${l.port}` });
      listeners.set(fd, l.family);
      ffi.epollAdd(ep, fd, ffi.EPOLLIN);
    }
    ffi.epollAdd(ep, data.eventFd, ffi.EPOLLIN);
  } catch (err) {
    port.postMessage({ op: 'fatal', message: (err as Error).message } satisfies TransparentUdpReport);
    for (const fd of listeners.keys()) ffi.closeFd(fd);
    return;
  }
  port.postMessage({ op: 'ready' } satisfies TransparentUdpReport);
  const events = Buffer.alloc(ffi.EPOLL_EVENT_SIZE * 256);
  const ready: number[] = [];
  let lastSweep = Date.now();
  while (!exiting) {
    ffi.epollWait(ep, events, ready, 1_000);
    const now = Date.now();
    for (const fd of ready) {
      if (fd === data.eventFd) {
        ffi.eventfdDrain(fd);
        for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port)) onCommand(m.message as TransparentUdpCommand, now);
        continue;
      }
      if (listeners.has(fd)) readListener(fd);
      else {
        const r = replyByFd.get(fd);
        if (r) readReply(r, now);
      }
    }
    flush();
    if (now - lastSweep >= 1_000) {
      lastSweep = now;
      for (const r of [...replies.values()]) if (now - r.last > data.replyIdleMs) closeReply(r);
      reportDrops();
    }
  }
  flush();
  for (const r of [...replies.values()]) closeReply(r);
  for (const fd of listeners.keys()) ffi.closeFd(fd);
  ffi.closeFd(ep);
  port.close();
}

main();
