/**
 * The one FFI adapter (koffi over libc) for the socket calls Node's `net` lacks. Each wrapper throws a
 * PlatformError naming the call and the errno; nothing here keeps a descriptor: callers own what they get.
 * libc is loaded lazily, so importing the platform layer costs nothing until a socket is made.
 */
import koffi from 'koffi';
import { PlatformError } from '../errors.js';

export const AF_INET = 2;
export const AF_INET6 = 10;
export const SOCK_STREAM = 1;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const IPPROTO_TCP = 6;
export const IPPROTO_MPTCP = 262;

export const SOL_SOCKET = 1;
export const SOL_IP = 0;
export const SOL_IPV6 = 41;
export const SOL_TCP = 6;
export const SOL_MPTCP = 284;

export const SO = { REUSEADDR: 2, ERROR: 4, LINGER: 13, REUSEPORT: 15, MARK: 36, PROTOCOL: 38, DOMAIN: 39 } as const;
export const IP = { TOS: 1, FREEBIND: 15, TRANSPARENT: 19, BIND_ADDRESS_NO_PORT: 24 } as const;
export const IPV6 = { V6ONLY: 26, TCLASS: 67, TRANSPARENT: 75, FREEBIND: 78 } as const;
export const TCP = { MAXSEG: 2, INFO: 11, FASTOPEN: 23, FASTOPEN_CONNECT: 30, FASTOPEN_NO_COOKIE: 34 } as const;
export const MPTCP = { INFO: 1, TCPINFO: 2, SUBFLOW_ADDRS: 3, FULL_INFO: 4 } as const;

export const EINPROGRESS = 115;

interface Libc {
  socket(domain: number, type: number, protocol: number): number;
  setsockopt(fd: number, level: number, name: number, value: Buffer, len: number): number;
  getsockopt(fd: number, level: number, name: number, value: Buffer, len: Buffer): number;
  bind(fd: number, addr: Buffer, len: number): number;
  connect(fd: number, addr: Buffer, len: number): number;
  listen(fd: number, backlog: number): number;
  close(fd: number): number;
  getsockname(fd: number, addr: Buffer, len: Buffer): number;
  recv(fd: number, buf: Buffer, len: number, flags: number): number;
  eventfd(initval: number, flags: number): number;
  write(fd: number, buf: Buffer, len: number): number;
  send(fd: number, buf: Buffer, len: number, flags: number): number;
  ppoll(fds: Buffer, n: number, ts: Buffer | null, sigmask: null): number;
  if_nametoindex(name: string): number;
  sendto(fd: number, buf: Buffer, len: number, flags: number, addr: Buffer, addrLen: number): number;
}

let libc: Libc | undefined;
function lib(): Libc {
  if (libc) return libc;
  const l = koffi.load('libc.so.6');
  libc = {
    socket: l.func('int socket(int, int, int)'),
    setsockopt: l.func('int setsockopt(int, int, int, void *, uint32_t)'),
    getsockopt: l.func('int getsockopt(int, int, int, void *, void *)'),
    bind: l.func('int bind(int, void *, uint32_t)'),
    connect: l.func('int connect(int, void *, uint32_t)'),
    listen: l.func('int listen(int, int)'),
    close: l.func('int close(int)'),
    getsockname: l.func('int getsockname(int, void *, void *)'),
    recv: l.func('intptr_t recv(int, void *, uintptr_t, int)'),
    eventfd: l.func('int eventfd(unsigned int, int)'),
    write: l.func('intptr_t write(int, void *, uintptr_t)'),
    send: l.func('intptr_t send(int, void *, uintptr_t, int)'),
    ppoll: l.func('int ppoll(void *, uint64_t, void *, void *)'),
    if_nametoindex: l.func('unsigned int if_nametoindex(const char *)'),
    sendto: l.func('intptr_t sendto(int, void *, uintptr_t, int, void *, uint32_t)'),
  } as Libc;
  return libc;
}

/** Loads libc through koffi; throws when FFI is unavailable (used by the doctor). */
export function probeFfi(): void {
  lib();
}

function fail(call: string, detail?: string): never {
  const errno = koffi.errno();
  throw PlatformError.fromErrno(call, errno, detail === undefined ? undefined : { detail });
}

export function socket(family: 4 | 6, protocol: 'mptcp' | 'tcp'): number {
  const fd = lib().socket(family === 4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, protocol === 'mptcp' ? IPPROTO_MPTCP : IPPROTO_TCP);
  if (fd < 0) fail(`socket(${family === 4 ? 'AF_INET' : 'AF_INET6'}, ${protocol === 'mptcp' ? 'IPPROTO_MPTCP' : 'IPPROTO_TCP'})`);
  return fd;
}

export function close(fd: number): void {
  if (lib().close(fd) < 0) fail(`close(${fd})`);
}

export function setsockoptBuf(fd: number, level: number, name: number, value: Buffer, label: string): void {
  if (lib().setsockopt(fd, level, name, value, value.byteLength) < 0) fail(`setsockopt(${label})`);
}

export function setsockoptInt(fd: number, level: number, name: number, value: number, label: string): void {
  const b = Buffer.alloc(4);
  b.writeInt32LE(value | 0);
  setsockoptBuf(fd, level, name, b, label);
}

/** getsockopt into `buf`; returns the length the kernel wrote. */
export function getsockoptBuf(fd: number, level: number, name: number, buf: Buffer, label: string): number {
  const len = Buffer.alloc(4);
  len.writeUInt32LE(buf.byteLength);
  if (lib().getsockopt(fd, level, name, buf, len) < 0) fail(`getsockopt(${label})`);
  return len.readUInt32LE(0);
}

export function getsockoptInt(fd: number, level: number, name: number, label: string): number {
  const b = Buffer.alloc(4);
  getsockoptBuf(fd, level, name, b, label);
  return b.readInt32LE(0);
}

export function bind(fd: number, addr: Buffer, label: string): void {
  if (lib().bind(fd, addr, addr.byteLength) < 0) fail(`bind(${label})`);
}

/** Non-blocking connect: returns true when connected (or deferred by TFO), false on EINPROGRESS. */
export function connect(fd: number, addr: Buffer, label: string): boolean {
  if (lib().connect(fd, addr, addr.byteLength) === 0) return true;
  const errno = koffi.errno();
  if (errno === EINPROGRESS) return false;
  throw PlatformError.fromErrno(`connect(${label})`, errno);
}

export function listen(fd: number, backlog: number, label: string): void {
  if (lib().listen(fd, backlog) < 0) fail(`listen(${label})`);
}

export function getsockname(fd: number): Buffer {
  const buf = Buffer.alloc(128);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(buf.byteLength);
  if (lib().getsockname(fd, buf, len) < 0) fail(`getsockname(${fd})`);
  return buf.subarray(0, Math.min(len.readUInt32LE(0), buf.byteLength));
}

/** The address of a Buffer's memory, for structs that carry user pointers (MPTCP_FULL_INFO). */
export function addressOf(buf: Buffer): bigint {
  lib();
  return koffi.address(buf);
}

const MSG_PEEK = 0x2;
const MSG_DONTWAIT = 0x40;

/** Bytes already queued on a socket, without consuming them (e.g. the data a TFO SYN carried, at accept). */
export function peek(fd: number, max: number): Buffer {
  const buf = Buffer.alloc(max);
  const n = Number(lib().recv(fd, buf, max, MSG_PEEK | MSG_DONTWAIT));
  if (n < 0) {
    const errno = koffi.errno();
    if (errno === 11) return Buffer.alloc(0);
    throw PlatformError.fromErrno(`recv(${fd}, MSG_PEEK)`, errno);
  }
  return buf.subarray(0, n);
}

const EFD_NONBLOCK = 0o4000;
const EFD_CLOEXEC = 0o2000000;

/** A non-blocking eventfd (a counter another thread can wait on with epoll); the caller closes it. */
export function eventfd(): number {
  const fd = lib().eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) fail('eventfd()');
  return fd;
}

const ONE = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);

/** Adds 1 to an eventfd's counter (wakes its waiter); a counter that would overflow is already signalled. */
export function eventfdSignal(fd: number): void {
  if (Number(lib().write(fd, ONE, 8)) < 0) {
    const errno = koffi.errno();
    if (errno !== 11) throw PlatformError.fromErrno(`write(eventfd ${fd})`, errno);
  }
}

// AF_PACKET sockets and ppoll, for the lab's delay line (src/lab/delay-line.ts): raw Ethernet frames in and
// out of one interface. Blocking calls: for a process that does nothing else.
const AF_PACKET = 17;
const SOCK_RAW = 3;
const ETH_P_ALL = 0x0003;
const SOL_PACKET = 263;
const PACKET_IGNORE_OUTGOING = 23;
const PACKET_VNET_HDR = 15;
const SO_RCVBUF = 8;
const SO_SNDBUF = 7;
const SO_RCVBUFFORCE = 33;
const SO_SNDBUFFORCE = 32;
const POLLIN = 0x1;
const EAGAIN = 11;
const ENOBUFS = 105;

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

// AF_UNIX datagrams, for the service manager's notification socket (sd_notify: src/control/notify.ts).
const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const MSG_NOSIGNAL = 0x4000;
/** sizeof(sun_path) in struct sockaddr_un. */
const SUN_PATH_MAX = 108;

/** A non-blocking, close-on-exec AF_UNIX datagram socket (unbound); the caller closes it. */
export function unixDatagramSocket(): number {
  const fd = lib().socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) fail('socket(AF_UNIX, SOCK_DGRAM)');
  return fd;
}

/**
 * Sends one datagram to the AF_UNIX socket at `path`: a file system path, or an abstract name written with a
 * leading '@' (as $NOTIFY_SOCKET does).
 */
export function sendToUnix(fd: number, path: string, data: Buffer): void {
  const name = Buffer.from(path, 'utf8');
  if (name.length === 0 || name.length >= SUN_PATH_MAX) throw PlatformError.fromErrno(`sendto(${path})`, 36 /* ENAMETOOLONG */);
  // struct sockaddr_un: sa_family_t (u16), then sun_path; an abstract name starts with a NUL byte and its
  // length is exactly what the address length says.
  const abstract = path.startsWith('@');
  const addr = Buffer.alloc(2 + name.length + (abstract ? 0 : 1));
  addr.writeUInt16LE(AF_UNIX, 0);
  name.copy(addr, 2);
  if (abstract) addr[2] = 0;
  if (Number(lib().sendto(fd, data, data.byteLength, MSG_NOSIGNAL, addr, addr.byteLength)) < 0) fail(`sendto(${path})`);
}
