/**
 * AF_PACKET sockets through koffi, for the lab's delay line (src/lab/delay-line.ts): raw Ethernet frames
 * in and out of one interface, and ppoll for waiting with sub-millisecond timeouts. Blocking calls: meant
 * for a process (or worker) that does nothing else.
 */
import koffi from 'koffi';
import { PlatformError } from '../errors.js';

const AF_PACKET = 17;
const SOCK_RAW = 3;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const ETH_P_ALL = 0x0003;
const SOL_PACKET = 263;
const PACKET_IGNORE_OUTGOING = 23;
const PACKET_VNET_HDR = 15;
const SOL_SOCKET = 1;
const SO_RCVBUF = 8;
const SO_SNDBUF = 7;
const SO_RCVBUFFORCE = 33;
const SO_SNDBUFFORCE = 32;
const POLLIN = 0x1;
const EAGAIN = 11;
const ENOBUFS = 105;

interface PacketLibc {
  socket(domain: number, type: number, protocol: number): number;
  bind(fd: number, addr: Buffer, len: number): number;
  setsockopt(fd: number, level: number, name: number, value: Buffer, len: number): number;
  if_nametoindex(name: string): number;
  recv(fd: number, buf: Buffer, len: number, flags: number): number;
  send(fd: number, buf: Buffer, len: number, flags: number): number;
  ppoll(fds: Buffer, n: number, ts: Buffer | null, sigmask: null): number;
  close(fd: number): number;
}

let libc: PacketLibc | undefined;
function lib(): PacketLibc {
  if (libc) return libc;
  const l = koffi.load('libc.so.6');
  libc = {
    socket: l.func('int socket(int, int, int)'),
    bind: l.func('int bind(int, void *, uint32_t)'),
    setsockopt: l.func('int setsockopt(int, int, int, void *, uint32_t)'),
    if_nametoindex: l.func('unsigned int if_nametoindex(const char *)'),
    recv: l.func('intptr_t recv(int, void *, uintptr_t, int)'),
    send: l.func('intptr_t send(int, void *, uintptr_t, int)'),
    ppoll: l.func('int ppoll(void *, uint64_t, void *, void *)'),
    close: l.func('int close(int)'),
  } as PacketLibc;
  return libc;
}

function fail(call: string): never {
  throw PlatformError.fromErrno(call, koffi.errno());
}

function intOpt(fd: number, level: number, name: number, value: number): number {
  const b = Buffer.alloc(4);
  b.writeInt32LE(value);
  return lib().setsockopt(fd, level, name, b, 4);
}

/** Bytes of the struct virtio_net_hdr that leads every frame read or written with PACKET_VNET_HDR. */
export const VNET_HDR_LEN = 10;

/**
 * A non-blocking AF_PACKET socket bound to `ifname`, all protocols, not seeing its own transmissions. With
 * PACKET_VNET_HDR every frame comes with (and is sent with) a virtio_net_hdr: checksum-offloaded and GSO
 * frames keep their offload state, so the kernel completes the checksum and segments on the way out.
 */
export function openPacketSocket(ifname: string, bufferBytes = 8 << 20): number {
  const c = lib();
  const ifindex = c.if_nametoindex(ifname);
  if (ifindex === 0) fail(`if_nametoindex(${ifname})`);
  const fd = c.socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, ((ETH_P_ALL & 0xff) << 8) | (ETH_P_ALL >> 8));
  if (fd < 0) fail('socket(AF_PACKET)');
  try {
    // struct sockaddr_ll: family u16, protocol be16, ifindex i32, hatype u16, pkttype u8, halen u8, addr[8].
    const sll = Buffer.alloc(20);
    sll.writeUInt16LE(AF_PACKET, 0);
    sll.writeUInt16BE(ETH_P_ALL, 2);
    sll.writeInt32LE(ifindex, 4);
    if (c.bind(fd, sll, sll.length) < 0) fail(`bind(AF_PACKET, ${ifname})`);
    if (intOpt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, 1) < 0) fail('setsockopt(PACKET_IGNORE_OUTGOING)');
    if (intOpt(fd, SOL_PACKET, PACKET_VNET_HDR, 1) < 0) fail('setsockopt(PACKET_VNET_HDR)');
    // Room for a bandwidth-delay product of frames either way (FORCE: root may exceed rmem_max).
    if (intOpt(fd, SOL_SOCKET, SO_RCVBUFFORCE, bufferBytes) < 0) intOpt(fd, SOL_SOCKET, SO_RCVBUF, bufferBytes);
    if (intOpt(fd, SOL_SOCKET, SO_SNDBUFFORCE, bufferBytes) < 0) intOpt(fd, SOL_SOCKET, SO_SNDBUF, bufferBytes);
  } catch (err) {
    c.close(fd);
    throw err;
  }
  return fd;
}

/** One frame into `buf`; 0 when none is waiting. */
export function recvFrame(fd: number, buf: Buffer): number {
  const n = lib().recv(fd, buf, buf.length, 0);
  if (n >= 0) return n;
  const e = koffi.errno();
  if (e === EAGAIN || e === 100 /* ENETDOWN */) return 0;
  fail('recv(AF_PACKET)');
}

/** Errors that drop one frame, as a wire would: queue full, the link down or gone, a frame too big. */
const DROPPED = new Set([EAGAIN, ENOBUFS, 100 /* ENETDOWN */, 6 /* ENXIO */, 90 /* EMSGSIZE */, 19 /* ENODEV */]);

/** Sends one frame; false when it was dropped (queue full, link down). */
export function sendFrame(fd: number, buf: Buffer, len: number): boolean {
  const n = lib().send(fd, buf, len, 0);
  if (n >= 0) return true;
  if (DROPPED.has(koffi.errno())) return false;
  fail('send(AF_PACKET)');
}

/** Waits until one of `fds` is readable or `timeoutNs` passed (undefined: forever); returns the readable ones. */
export function pollReadable(fds: readonly number[], timeoutNs: number | undefined): boolean[] {
  const p = Buffer.alloc(8 * fds.length);
  fds.forEach((fd, i) => {
    p.writeInt32LE(fd, i * 8);
    p.writeInt16LE(POLLIN, i * 8 + 4);
  });
  let ts: Buffer | null = null;
  if (timeoutNs !== undefined) {
    const t = Math.max(0, Math.floor(timeoutNs));
    ts = Buffer.alloc(16);
    ts.writeBigInt64LE(BigInt(Math.floor(t / 1e9)), 0);
    ts.writeBigInt64LE(BigInt(t % 1e9), 8);
  }
  const r = lib().ppoll(p, fds.length, ts, null);
  if (r < 0 && koffi.errno() !== 4 /* EINTR */) fail('ppoll');
  return fds.map((_, i) => (p.readInt16LE(i * 8 + 6) & POLLIN) !== 0);
}

export function closeFd(fd: number): void {
  lib().close(fd);
}
