/**
 * Sockets on Linux: created and configured through the FFI adapter, then handed to Node's `net`
 * (`Server#listen({ fd })`, `new Socket({ fd })`), which owns the descriptor from then on. Until that hand-over
 * every error path closes the descriptor; after it, every error path destroys the Socket (which closes it).
 *
 * "Connected" signal for a non-blocking connect handed to `net.Socket` (verified on 6.18, TCP and MPTCP, with
 * and without TFO, with the SYN/ACK dropped for a second): a zero-length write. The kernel answers EAGAIN
 * while the socket is in SYN_SENT, so libuv waits for POLLOUT and completes the write once the handshake is
 * done (ESTABLISHED), or fails it with the connect error (ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH...). With
 * TCP_FASTOPEN_CONNECT, connect() returns 0 at once and the first write (the `data`) carries the SYN; the
 * zero-length write queued behind it again completes at ESTABLISHED.
 */
import net from 'node:net';
import { once } from 'node:events';
import { PlatformError, errnoName } from '../errors.js';
import {
  SUBFLOW_ADDRS_SIZE,
  TCP_INFO_SIZE,
  SUBFLOW_INFO_SIZE,
  MPTCP_INFO_SIZE,
  MPTCP_INFO_FLAG_FALLBACK,
  decodeFullInfo,
  decodeMptcpInfo,
  decodeSubflowData,
  decodeTcpInfo,
  encodeSockaddr,
  fullInfoRequest,
  pairSubflows,
  setFullInfoPointers,
  subflowDataRequest,
} from '../structs.js';
import type { DialSpec, Family, ListenSpec, ListeningServer, MptcpInfo, SocketSpec, Sockets, SubflowInfo, TcpInfo } from '../types.js';
import * as ffi from './ffi.js';

/** mptcp_info of the socket being asked about: decoded (copied out) before the next call. */
const infoScratch = Buffer.alloc(MPTCP_INFO_SIZE);

const EMPTY = Buffer.alloc(0);
const DEFAULT_CONNECT_TIMEOUT_MS = 30_000;

/** The descriptor behind a Node socket or server (Linux TCPWrap exposes it); -1 when closed. */
export function fdOf(handleOwner: net.Socket | net.Server): number {
  const fd = (handleOwner as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
  return typeof fd === 'number' ? fd : -1;
}

function requireFd(socket: net.Socket | net.Server, call: string): number {
  const fd = fdOf(socket);
  if (fd < 0) throw new PlatformError(call, 'EBADF', 9, { detail: 'the socket has no descriptor (closed?)' });
  return fd;
}

function label(host: string, port: number): string {
  return net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}

function checkHost(family: Family, host: string, call: string): void {
  if (net.isIP(host) !== family) {
    throw new PlatformError(call, 'EINVAL', 22, { detail: `'${host}' is not an IPv${family} literal` });
  }
}

/** Applies the SocketSpec options to a fresh descriptor (before bind/connect/listen). */
export function applySocketOptions(fd: number, spec: SocketSpec): void {
  const v4 = spec.family === 4;
  if (spec.reuseAddr) ffi.setsockoptInt(fd, ffi.SOL_SOCKET, ffi.SO.REUSEADDR, 1, 'SO_REUSEADDR');
  if (spec.reusePort) ffi.setsockoptInt(fd, ffi.SOL_SOCKET, ffi.SO.REUSEPORT, 1, 'SO_REUSEPORT');
  if (spec.transparent) {
    if (v4) ffi.setsockoptInt(fd, ffi.SOL_IP, ffi.IP.TRANSPARENT, 1, 'IP_TRANSPARENT');
    else ffi.setsockoptInt(fd, ffi.SOL_IPV6, ffi.IPV6.TRANSPARENT, 1, 'IPV6_TRANSPARENT');
  }
  if (spec.freebind) {
    if (v4) ffi.setsockoptInt(fd, ffi.SOL_IP, ffi.IP.FREEBIND, 1, 'IP_FREEBIND');
    else ffi.setsockoptInt(fd, ffi.SOL_IPV6, ffi.IPV6.FREEBIND, 1, 'IPV6_FREEBIND');
  }
  if (spec.bindAddressNoPort) ffi.setsockoptInt(fd, ffi.SOL_IP, ffi.IP.BIND_ADDRESS_NO_PORT, 1, 'IP_BIND_ADDRESS_NO_PORT');
  if (spec.mark !== undefined) ffi.setsockoptInt(fd, ffi.SOL_SOCKET, ffi.SO.MARK, spec.mark >>> 0, 'SO_MARK');
  if (spec.tos !== undefined) {
    try {
      setTosFd(fd, spec.family, spec.tos);
    } catch (err) {
      // Kernel MPTCP (6.18) has no IPV6_TCLASS: DSCP on IPv6 MPTCP sockets is best effort, not a dial failure.
      if (!(spec.family === 6 && spec.protocol === 'mptcp' && err instanceof PlatformError && err.code === 'EOPNOTSUPP')) throw err;
    }
  }
  if (spec.maxSeg !== undefined && spec.maxSeg > 0) ffi.setsockoptInt(fd, ffi.SOL_TCP, ffi.TCP.MAXSEG, spec.maxSeg, 'TCP_MAXSEG');
  if (spec.linger) setLingerFd(fd, spec.linger.onoff ? spec.linger.seconds : null);
}

/** struct linger { l_onoff, l_linger }: off, and on with 0 s (close() resets), the two the daemons use. */
const LINGER_OFF = Buffer.alloc(8);
const LINGER_RESET = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);

function setLingerFd(fd: number, seconds: number | null): void {
  if (seconds === null || seconds === 0) {
    ffi.setsockoptBuf(fd, ffi.SOL_SOCKET, ffi.SO.LINGER, seconds === null ? LINGER_OFF : LINGER_RESET, 'SO_LINGER');
    return;
  }
  const l = Buffer.alloc(8);
  l.writeInt32LE(1, 0);
  l.writeInt32LE(seconds, 4);
  ffi.setsockoptBuf(fd, ffi.SOL_SOCKET, ffi.SO.LINGER, l, 'SO_LINGER');
}

function setTosFd(fd: number, family: Family, tos: number): void {
  if (!Number.isInteger(tos) || tos < 0 || tos > 255) throw new PlatformError('setsockopt(IP_TOS)', 'EINVAL', 22, { detail: `tos ${tos}` });
  if (family === 4) {
    ffi.setsockoptInt(fd, ffi.SOL_IP, ffi.IP.TOS, tos, 'IP_TOS');
    return;
  }
  ffi.setsockoptInt(fd, ffi.SOL_IPV6, ffi.IPV6.TCLASS, tos, 'IPV6_TCLASS');
  // An AF_INET6 socket may carry IPv4-mapped traffic, which uses IP_TOS.
  try {
    ffi.setsockoptInt(fd, ffi.SOL_IP, ffi.IP.TOS, tos, 'IP_TOS');
  } catch {
    /* not supported on this socket: IPV6_TCLASS is what matters */
  }
}

function familyOfFd(fd: number): Family {
  return ffi.getsockoptInt(fd, ffi.SOL_SOCKET, ffi.SO.DOMAIN, 'SO_DOMAIN') === ffi.AF_INET6 ? 6 : 4;
}

export class LinuxSockets implements Sockets {
  async listen(spec: ListenSpec): Promise<ListeningServer> {
    checkHost(spec.family, spec.host, `listen(${label(spec.host, spec.port)})`);
    const where = label(spec.host, spec.port);
    const backlog = spec.backlog ?? 511;
    const fd = ffi.socket(spec.family, spec.protocol);
    try {
      applySocketOptions(fd, spec);
      if (spec.fastOpenQueue !== undefined && spec.fastOpenQueue > 0) {
        ffi.setsockoptInt(fd, ffi.SOL_TCP, ffi.TCP.FASTOPEN, spec.fastOpenQueue, 'TCP_FASTOPEN');
      }
      if (spec.fastOpenNoCookie) ffi.setsockoptInt(fd, ffi.SOL_TCP, ffi.TCP.FASTOPEN_NO_COOKIE, 1, 'TCP_FASTOPEN_NO_COOKIE');
      ffi.bind(fd, encodeSockaddr(spec.family, spec.host, spec.port), where);
      ffi.listen(fd, backlog, where);
    } catch (err) {
      ffi.close(fd);
      throw err;
    }
    const server = net.createServer({ allowHalfOpen: spec.allowHalfOpen ?? false }) as ListeningServer;
    // From here Node owns the descriptor: Server#listen({ fd }) opens a TCP handle on it and close() closes it.
    // It listen()s again with its own backlog, which for an fd comes only from the positional argument
    // (`options.backlog` is ignored there, and 511 is used): pass it positionally or the listen above is undone.
    server.listen({ fd }, backlog);
    try {
      await Promise.race([once(server, 'listening'), once(server, 'error').then(([e]) => Promise.reject(e))]);
    } catch (err) {
      server.close();
      throw PlatformError.fromNode(`listen(${where})`, err);
    }
    return server;
  }

  async dial(spec: DialSpec): Promise<net.Socket> {
    const where = label(spec.host, spec.port);
    checkHost(spec.family, spec.host, `connect(${where})`);
    if (spec.signal?.aborted) throw new PlatformError(`connect(${where})`, 'ABORT_ERR');
    const data = spec.data && spec.data.length > 0 ? spec.data : undefined;
    // TFO only with data to carry: a deferred connect with nothing to write would never send its SYN.
    const fastOpen = data !== undefined && spec.fastOpen !== undefined && spec.fastOpen !== 'off' ? spec.fastOpen : 'off';
    const fd = ffi.socket(spec.family, spec.protocol);
    try {
      applySocketOptions(fd, spec);
      if (spec.localAddress !== undefined || spec.localPort !== undefined) {
        const local = spec.localAddress ?? (spec.family === 4 ? '0.0.0.0' : '::');
        checkHost(spec.family, local, `bind(${label(local, spec.localPort ?? 0)})`);
        ffi.bind(fd, encodeSockaddr(spec.family, local, spec.localPort ?? 0), label(local, spec.localPort ?? 0));
      }
      if (fastOpen !== 'off') {
        ffi.setsockoptInt(fd, ffi.SOL_TCP, ffi.TCP.FASTOPEN_CONNECT, 1, 'TCP_FASTOPEN_CONNECT');
        if (fastOpen === 'no-cookie') ffi.setsockoptInt(fd, ffi.SOL_TCP, ffi.TCP.FASTOPEN_NO_COOKIE, 1, 'TCP_FASTOPEN_NO_COOKIE');
      }
      ffi.connect(fd, encodeSockaddr(spec.family, spec.host, spec.port), where);
    } catch (err) {
      ffi.close(fd);
      throw err;
    }
    // Node owns the descriptor from here; failures destroy the socket, which closes it.
    const socket = new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: true });
    return new Promise<net.Socket>((resolve, reject) => {
      let settled = false;
      const finish = (err?: PlatformError) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        spec.signal?.removeEventListener('abort', onAbort);
        socket.off('error', onError);
        if (err) {
          // A failed write is also reported as 'error' later: keep a listener so it is not an uncaught one.
          socket.on('error', () => {});
          socket.destroy();
          reject(err);
        } else {
          resolve(socket);
        }
      };
      const onError = (err: unknown) => finish(PlatformError.fromNode(`connect(${where})`, err));
      const onAbort = () => finish(new PlatformError(`connect(${where})`, 'ABORT_ERR'));
      const timer = setTimeout(
        () => finish(new PlatformError(`connect(${where})`, 'ETIMEDOUT', 110, { detail: `no answer in ${spec.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS} ms` })),
        spec.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
      );
      socket.on('error', onError);
      spec.signal?.addEventListener('abort', onAbort, { once: true });
      if (data) socket.write(data);
      socket.write(EMPTY, (err) => finish(err ? PlatformError.fromNode(`connect(${where})`, err) : undefined));
    });
  }

  mptcpInfo(socket: net.Socket): MptcpInfo | null {
    const fd = fdOf(socket);
    if (fd < 0) return null;
    // Fails (EOPNOTSUPP/ENOPROTOOPT) on plain TCP sockets and on MPTCP sockets that fell back to TCP.
    const len = ffi.getsockoptTry(fd, ffi.SOL_MPTCP, ffi.MPTCP.INFO, infoScratch);
    if (len < 40) return null;
    const info = decodeMptcpInfo(infoScratch, len);
    return info.fallback ? null : info;
  }

  /** Once or twice per connection: one getsockopt into a scratch buffer, only the fallback flag read. */
  isMptcp(socket: net.Socket): boolean {
    const fd = fdOf(socket);
    if (fd < 0) return false;
    const len = ffi.getsockoptTry(fd, ffi.SOL_MPTCP, ffi.MPTCP.INFO, infoScratch);
    return len >= 40 && (infoScratch.readUInt32LE(8) & MPTCP_INFO_FLAG_FALLBACK) === 0;
  }

  subflows(socket: net.Socket): SubflowInfo[] {
    const fd = fdOf(socket);
    if (fd < 0 || !this.isMptcp(socket)) return [];
    try {
      return fullInfoSubflows(fd);
    } catch (err) {
      if (!(err instanceof PlatformError) || (err.code !== 'EOPNOTSUPP' && err.code !== 'ENOPROTOOPT' && err.code !== 'EINVAL')) return [];
    }
    // Kernels before MPTCP_FULL_INFO (6.5): two calls, paired by position.
    try {
      return twoCallSubflows(fd);
    } catch {
      return [];
    }
  }

  tcpInfo(socket: net.Socket): TcpInfo | null {
    const fd = fdOf(socket);
    if (fd < 0) return null;
    const buf = Buffer.alloc(TCP_INFO_SIZE);
    try {
      const len = ffi.getsockoptBuf(fd, ffi.SOL_TCP, ffi.TCP.INFO, buf, 'TCP_INFO');
      return decodeTcpInfo(buf, len);
    } catch {
      return this.subflows(socket)[0]?.tcp ?? null;
    }
  }

  setTos(socket: net.Socket, tos: number): void {
    const fd = requireFd(socket, 'setsockopt(IP_TOS)');
    setTosFd(fd, familyOfFd(fd), tos);
  }

  getTos(socket: net.Socket): number {
    const fd = requireFd(socket, 'getsockopt(IP_TOS)');
    if (familyOfFd(fd) === 6 && !net.isIPv4(stripMapped(socket.remoteAddress ?? ''))) {
      try {
        return ffi.getsockoptInt(fd, ffi.SOL_IPV6, ffi.IPV6.TCLASS, 'IPV6_TCLASS') & 0xff;
      } catch (err) {
        // MPTCP sockets lack IPV6_TCLASS: the first subflow's IP_TOS is not reachable either, so fall through.
        if (!(err instanceof PlatformError) || err.code !== 'EOPNOTSUPP') throw err;
      }
    }
    return ffi.getsockoptInt(fd, ffi.SOL_IP, ffi.IP.TOS, 'IP_TOS') & 0xff;
  }

  setMark(socket: net.Socket, mark: number): void {
    ffi.setsockoptInt(requireFd(socket, 'setsockopt(SO_MARK)'), ffi.SOL_SOCKET, ffi.SO.MARK, mark >>> 0, 'SO_MARK');
  }

  getMark(socket: net.Socket): number {
    return ffi.getsockoptInt(requireFd(socket, 'getsockopt(SO_MARK)'), ffi.SOL_SOCKET, ffi.SO.MARK, 'SO_MARK') >>> 0;
  }

  setLinger(socket: net.Socket, seconds: number | null): void {
    const fd = fdOf(socket);
    if (fd >= 0) setLingerFd(fd, seconds);
  }

  setNotSentLowat(socket: net.Socket, bytes: number): void {
    ffi.setsockoptInt(requireFd(socket, 'setsockopt(TCP_NOTSENT_LOWAT)'), ffi.SOL_TCP, ffi.TCP.NOTSENT_LOWAT, bytes, 'TCP_NOTSENT_LOWAT');
  }

  setSendBuffer(socket: net.Socket, bytes: number): void {
    ffi.setsockoptInt(requireFd(socket, 'setsockopt(SO_SNDBUF)'), ffi.SOL_SOCKET, ffi.SO.SNDBUF, bytes, 'SO_SNDBUF');
  }

  takeError(socket: net.Socket): string | null {
    const fd = fdOf(socket);
    if (fd < 0) return null;
    const e = ffi.getsockoptInt(fd, ffi.SOL_SOCKET, ffi.SO.ERROR, 'SO_ERROR');
    return e === 0 ? null : errnoName(e);
  }
}

function stripMapped(a: string): string {
  return a.startsWith('::ffff:') && net.isIPv4(a.slice(7)) ? a.slice(7) : a;
}

/** One MPTCP_FULL_INFO call: a consistent snapshot with subflow ids. */
export function fullInfoSubflows(fd: number): SubflowInfo[] {
  let room = 8;
  for (let attempt = 0; attempt < 3; attempt++) {
    const req = fullInfoRequest(room);
    const sf = Buffer.alloc(room * SUBFLOW_INFO_SIZE);
    const tcp = Buffer.alloc(room * TCP_INFO_SIZE);
    setFullInfoPointers(req, ffi.addressOf(sf), ffi.addressOf(tcp));
    const len = ffi.getsockoptBuf(fd, ffi.SOL_MPTCP, ffi.MPTCP.FULL_INFO, req, 'MPTCP_FULL_INFO');
    const full = decodeFullInfo(req, len, sf, tcp);
    if (full.numSubflows <= room) return full.subflows;
    room = full.numSubflows + 4;
  }
  throw new PlatformError('getsockopt(MPTCP_FULL_INFO)', 'EAGAIN', 11, { detail: 'subflow count kept changing' });
}

/** MPTCP_SUBFLOW_ADDRS + MPTCP_TCPINFO, paired by position (kernels before MPTCP_FULL_INFO). */
export function twoCallSubflows(fd: number): SubflowInfo[] {
  const room = 16;
  const addrsReq = subflowDataRequest(SUBFLOW_ADDRS_SIZE, room);
  const addrsLen = ffi.getsockoptBuf(fd, ffi.SOL_MPTCP, ffi.MPTCP.SUBFLOW_ADDRS, addrsReq, 'MPTCP_SUBFLOW_ADDRS');
  const tcpReq = subflowDataRequest(TCP_INFO_SIZE, room);
  let tcp = null;
  try {
    const tcpLen = ffi.getsockoptBuf(fd, ffi.SOL_MPTCP, ffi.MPTCP.TCPINFO, tcpReq, 'MPTCP_TCPINFO');
    tcp = decodeSubflowData(tcpReq, tcpLen);
  } catch {
    /* addresses alone are still useful */
  }
  return pairSubflows(decodeSubflowData(addrsReq, addrsLen), tcp);
}
