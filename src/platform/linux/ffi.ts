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

export const SO = { REUSEADDR: 2, ERROR: 4, SNDBUF: 7, LINGER: 13, REUSEPORT: 15, MARK: 36, PROTOCOL: 38, DOMAIN: 39 } as const;
export const IP = { TOS: 1, FREEBIND: 15, TRANSPARENT: 19, BIND_ADDRESS_NO_PORT: 24 } as const;
export const IPV6 = { V6ONLY: 26, TCLASS: 67, TRANSPARENT: 75, FREEBIND: 78 } as const;
export const TCP = { MAXSEG: 2, INFO: 11, FASTOPEN: 23, NOTSENT_LOWAT: 25, FASTOPEN_CONNECT: 30, FASTOPEN_NO_COOKIE: 34 } as const;
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
  recvmsg(fd: number, msg: Buffer, flags: number): number;
  epoll_create1(flags: number): number;
  epoll_ctl(ep: number, op: number, fd: number, ev: Buffer | null): number;
  epoll_wait(ep: number, evs: Buffer, max: number, timeout: number): number;
  read(fd: number, buf: Buffer, len: number): number;
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
    recvmsg: l.func('intptr_t recvmsg(int, void *, int)'),
    epoll_create1: l.func('int epoll_create1(int)'),
    epoll_ctl: l.func('int epoll_ctl(int, int, int, void *)'),
    epoll_wait: l.func('int epoll_wait(int, void *, int, int)'),
    read: l.func('intptr_t read(int, void *, uintptr_t)'),
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

// Scratch words for the calls below: each call is synchronous and this module's state is per thread, so one
// of each is enough and a connection's socket options allocate nothing.
const intWord = Buffer.alloc(4);
const lenWord = Buffer.alloc(4);

export function setsockoptInt(fd: number, level: number, name: number, value: number, label: string): void {
  intWord.writeInt32LE(value | 0);
  setsockoptBuf(fd, level, name, intWord, label);
}

/** getsockopt into `buf`; returns the length the kernel wrote. */
export function getsockoptBuf(fd: number, level: number, name: number, buf: Buffer, label: string): number {
  const n = getsockoptTry(fd, level, name, buf);
  if (n < 0) throw PlatformError.fromErrno(`getsockopt(${label})`, -n);
  return n;
}

/**
 * getsockopt into `buf` without throwing: the length the kernel wrote, or -errno. For the per-connection probes
 * whose failure is an answer (MPTCP_INFO on a socket that fell back to TCP), where building an error with its
 * stack for every connection showed in the setup profile.
 */
export function getsockoptTry(fd: number, level: number, name: number, buf: Buffer): number {
  lenWord.writeUInt32LE(buf.byteLength);
  if (lib().getsockopt(fd, level, name, buf, lenWord) < 0) return -koffi.errno();
  return lenWord.readUInt32LE(0);
}

export function getsockoptInt(fd: number, level: number, name: number, label: string): number {
  getsockoptBuf(fd, level, name, intWord, label);
  return intWord.readInt32LE(0);
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

// UDP sockets for the CPE's transparent UDP interception (./transparent-udp-worker.ts): a TPROXY socket that
// reads each datagram's original destination (IP_RECVORIGDSTADDR), and reply sockets bound to a non-local
// address (IP_TRANSPARENT) so that answers reach LAN clients from the server's address and port.
const IP_RECVORIGDSTADDR = 20;
const IPV6_RECVORIGDSTADDR = 74;
const EINTR = 4;

/**
 * A non-blocking transparent UDP socket bound to `address`:`port` (which need not be local); with
 * `origDst`, each datagram comes with its original destination; with `connectTo`, connected to that peer
 * (then TPROXY's established lookup gives it that flow's datagrams). The caller closes it.
 */
export function transparentUdpSocket(
  family: 4 | 6,
  bindAddr: Buffer,
  opts: { origDst?: boolean; connectTo?: Buffer; bufferBytes?: number; label: string },
): number {
  const c = lib();
  const fd = c.socket(family === 4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) fail(`socket(${family === 4 ? 'AF_INET' : 'AF_INET6'}, SOCK_DGRAM)`);
  try {
    setsockoptInt(fd, SOL_SOCKET, SO.REUSEADDR, 1, 'SO_REUSEADDR');
    if (family === 4) setsockoptInt(fd, SOL_IP, IP.TRANSPARENT, 1, 'IP_TRANSPARENT');
    else {
      setsockoptInt(fd, SOL_IPV6, IPV6.V6ONLY, 1, 'IPV6_V6ONLY');
      setsockoptInt(fd, SOL_IPV6, IPV6.TRANSPARENT, 1, 'IPV6_TRANSPARENT');
    }
    if (opts.origDst) {
      if (family === 4) setsockoptInt(fd, SOL_IP, IP_RECVORIGDSTADDR, 1, 'IP_RECVORIGDSTADDR');
      else setsockoptInt(fd, SOL_IPV6, IPV6_RECVORIGDSTADDR, 1, 'IPV6_RECVORIGDSTADDR');
    }
    if (opts.bufferBytes) {
      if (intOpt(fd, SOL_SOCKET, SO_RCVBUFFORCE, opts.bufferBytes) < 0) intOpt(fd, SOL_SOCKET, SO_RCVBUF, opts.bufferBytes);
      if (intOpt(fd, SOL_SOCKET, SO_SNDBUFFORCE, opts.bufferBytes) < 0) intOpt(fd, SOL_SOCKET, SO_SNDBUF, opts.bufferBytes);
    }
    bind(fd, bindAddr, opts.label);
    if (opts.connectTo && c.connect(fd, opts.connectTo, opts.connectTo.byteLength) < 0) fail(`connect(${opts.label})`);
  } catch (err) {
    c.close(fd);
    throw err;
  }
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

/**
 * recvmsg(2) with the buffers of one socket kept between calls (no allocation per datagram): the payload in
 * `data`, the peer in `name`, the original destination (IP_ORIGDSTADDR / IPV6_ORIGDSTADDR) in `origDst`.
 *
 * struct msghdr (LP64): name ptr @0, namelen u32 @8, iov ptr @16, iovlen @24, control ptr @32,
 * controllen @40, flags i32 @48 (56 bytes); struct iovec: base @0, len @8; struct cmsghdr: len @0 (size_t),
 * level i32 @8, type i32 @12, data @16.
 */
export class DatagramReader {
  readonly data: Buffer;
  readonly name = Buffer.alloc(128);
  readonly control = Buffer.alloc(256);
  readonly #msg = Buffer.alloc(56);
  readonly #iov = Buffer.alloc(16);
  /** The original destination's sockaddr after a read that carried one (else length 0). */
  origDst: Buffer = Buffer.alloc(0);
  nameLength = 0;

  constructor(maxBytes = 65_536) {
    lib();
    this.data = Buffer.alloc(maxBytes);
    this.#iov.writeBigUInt64LE(koffi.address(this.data), 0);
    this.#iov.writeBigUInt64LE(BigInt(maxBytes), 8);
    this.#msg.writeBigUInt64LE(koffi.address(this.name), 0);
    this.#msg.writeBigUInt64LE(koffi.address(this.#iov), 16);
    this.#msg.writeBigUInt64LE(1n, 24);
    this.#msg.writeBigUInt64LE(koffi.address(this.control), 32);
  }

  /** One datagram: its length, or -1 when none is waiting. A truncated datagram reports its full length. */
  read(fd: number): number {
    this.#msg.writeUInt32LE(this.name.length, 8);
    this.#msg.writeBigUInt64LE(BigInt(this.control.length), 40);
    this.#msg.writeInt32LE(0, 48);
    const MSG_TRUNC = 0x20;
    const n = Number(lib().recvmsg(fd, this.#msg, MSG_TRUNC));
    if (n < 0) {
      const e = koffi.errno();
      if (e === EAGAIN || e === EINTR) return -1;
      // A connected UDP socket reports an ICMP error of its peer on the next call: nothing to read.
      if (e === 111 /* ECONNREFUSED */ || e === 113 /* EHOSTUNREACH */ || e === 101 /* ENETUNREACH */) return -1;
      fail(`recvmsg(${fd})`);
    }
    this.nameLength = this.#msg.readUInt32LE(8);
    const clen = Number(this.#msg.readBigUInt64LE(40));
    this.origDst = Buffer.alloc(0);
    for (let off = 0; off + 16 <= clen; ) {
      const len = Number(this.control.readBigUInt64LE(off));
      if (len < 16 || off + len > clen) break;
      const level = this.control.readInt32LE(off + 8);
      const type = this.control.readInt32LE(off + 12);
      if ((level === SOL_IP && type === IP_RECVORIGDSTADDR) || (level === SOL_IPV6 && type === IPV6_RECVORIGDSTADDR)) {
        this.origDst = this.control.subarray(off + 16, off + len);
      }
      off += (len + 7) & ~7;
    }
    return n;
  }
}

/** send(2) on a connected datagram socket: false when the datagram was dropped (buffer full, peer gone). */
export function sendDatagram(fd: number, buf: Buffer, len: number): boolean {
  const n = lib().send(fd, buf, len, 0x4000 /* MSG_NOSIGNAL */);
  if (n >= 0) return true;
  const e = koffi.errno();
  if (DROPPED.has(e) || e === 111 /* ECONNREFUSED */ || e === 113 || e === 101 || e === 22 /* EINVAL */) return false;
  fail(`send(${fd})`);
}

// epoll, for a thread that waits on many descriptors at once.
export const EPOLLIN = 0x1;
/** struct epoll_event is packed on x86-64 (12 bytes), naturally aligned elsewhere (16 bytes). */
export const EPOLL_EVENT_SIZE = process.arch === 'x64' ? 12 : 16;
const EPOLL_DATA_OFFSET = process.arch === 'x64' ? 4 : 8;

export function epollCreate(): number {
  const ep = lib().epoll_create1(SOCK_CLOEXEC);
  if (ep < 0) fail('epoll_create1');
  return ep;
}

/** Registers `fd` for `events`, with the fd itself as the event's data. */
export function epollAdd(ep: number, fd: number, events: number): void {
  const ev = Buffer.alloc(EPOLL_EVENT_SIZE);
  ev.writeUInt32LE(events >>> 0, 0);
  ev.writeUInt32LE(fd, EPOLL_DATA_OFFSET);
  if (lib().epoll_ctl(ep, 1 /* EPOLL_CTL_ADD */, fd, ev) < 0) fail(`epoll_ctl(ADD, ${fd})`);
}

export function epollDelete(ep: number, fd: number): void {
  lib().epoll_ctl(ep, 2 /* EPOLL_CTL_DEL */, fd, null);
}

/** Waits up to `timeoutMs` (-1: forever); the fds that are ready, in `out`; returns how many. */
export function epollWait(ep: number, events: Buffer, out: number[], timeoutMs: number): number {
  const max = Math.floor(events.length / EPOLL_EVENT_SIZE);
  const n = lib().epoll_wait(ep, events, max, timeoutMs);
  if (n < 0) {
    if (koffi.errno() === EINTR) return 0;
    fail('epoll_wait');
  }
  out.length = 0;
  for (let i = 0; i < n; i++) out.push(events.readUInt32LE(i * EPOLL_EVENT_SIZE + EPOLL_DATA_OFFSET));
  return n;
}

/** Reads (and so resets) an eventfd's counter; false when it was not signalled. */
export function eventfdDrain(fd: number): boolean {
  const b = Buffer.alloc(8);
  return Number(lib().read(fd, b, 8)) === 8;
}
