/**
 * Pure decoders for the kernel structs the platform layer reads with getsockopt (include/uapi/linux/mptcp.h,
 * include/uapi/linux/tcp.h, sockaddr_in/in6). Buffers in, typed objects out; no I/O. The kernel copies
 * min(its size, our size) bytes, so every decoder takes the length the kernel returned and fills only the
 * fields that fit: older kernels give shorter structs, and a length that cuts a field is rejected.
 */
import type { Family, MptcpInfo, SocketAddress, SubflowInfo, TcpInfo } from './types.js';
import { bytesToIpv6 } from '../protocol/address.js';

export class StructError extends Error {
  readonly code = 'MPC_ERR_STRUCT';
  constructor(message: string) {
    super(message);
    this.name = 'StructError';
  }
}

export const AF_INET = 2;
export const AF_INET6 = 10;

export const MPTCP_INFO_FLAG_FALLBACK = 0x1;
export const MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED = 0x2;

/*
 * struct mptcp_info {                       offset
 *   __u8  mptcpi_subflows;                     0
 *   __u8  mptcpi_add_addr_signal;              1
 *   __u8  mptcpi_add_addr_accepted;            2
 *   __u8  mptcpi_subflows_max;                 3
 *   __u8  mptcpi_add_addr_signal_max;          4
 *   __u8  mptcpi_add_addr_accepted_max;        5   (16-bit hole)
 *   __u32 mptcpi_flags;                        8
 *   __u32 mptcpi_token;                       12
 *   __u64 mptcpi_write_seq;                   16
 *   __u64 mptcpi_snd_una;                     24
 *   __u64 mptcpi_rcv_nxt;                     32   (end of the 5.7 struct: 40 bytes)
 *   __u8  mptcpi_local_addr_used;             40
 *   __u8  mptcpi_local_addr_max;              41
 *   __u8  mptcpi_csum_enabled;                42   (8-bit hole)
 *   __u32 mptcpi_retransmits;                 44
 *   __u64 mptcpi_bytes_retrans;               48
 *   __u64 mptcpi_bytes_sent;                  56
 *   __u64 mptcpi_bytes_received;              64
 *   __u64 mptcpi_bytes_acked;                 72
 *   __u8  mptcpi_subflows_total;              80
 *   __u8  mptcpi_endp_add_addr_max; u8 reserved[2];
 *   __u32 mptcpi_last_data_sent;              84
 *   __u32 mptcpi_last_data_recv;              88
 *   __u32 mptcpi_last_ack_recv;               92
 * };                                          96
 */
export const MPTCP_INFO_SIZE = 96;
const MPTCP_INFO_MIN = 40;

function view(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

function u64n(dv: DataView, off: number): number {
  return Number(dv.getBigUint64(off, true));
}

/** Decodes `len` bytes of struct mptcp_info (len = what getsockopt returned). */
export function decodeMptcpInfo(buf: Uint8Array, len = buf.byteLength): MptcpInfo {
  if (len > buf.byteLength) throw new StructError(`Cannot parse mptcp_info: length ${len} exceeds buffer ${buf.byteLength}`);
  if (len < MPTCP_INFO_MIN) throw new StructError(`Cannot parse mptcp_info: ${len} bytes, at least ${MPTCP_INFO_MIN} needed`);
  const dv = view(buf);
  const flags = dv.getUint32(8, true);
  const info: MptcpInfo = {
    subflows: dv.getUint8(0),
    addAddrSignal: dv.getUint8(1),
    addAddrAccepted: dv.getUint8(2),
    subflowsMax: dv.getUint8(3),
    addAddrSignalMax: dv.getUint8(4),
    addAddrAcceptedMax: dv.getUint8(5),
    flags,
    fallback: (flags & MPTCP_INFO_FLAG_FALLBACK) !== 0,
    remoteKeyReceived: (flags & MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED) !== 0,
    token: dv.getUint32(12, true),
    writeSeq: dv.getBigUint64(16, true),
    sndUna: dv.getBigUint64(24, true),
    rcvNxt: dv.getBigUint64(32, true),
  };
  if (len >= 43) {
    info.localAddrUsed = dv.getUint8(40);
    info.localAddrMax = dv.getUint8(41);
    info.csumEnabled = dv.getUint8(42) !== 0;
  }
  if (len >= 48) info.retransmits = dv.getUint32(44, true);
  if (len >= 80) {
    info.bytesRetrans = u64n(dv, 48);
    info.bytesSent = u64n(dv, 56);
    info.bytesReceived = u64n(dv, 64);
    info.bytesAcked = u64n(dv, 72);
  }
  if (len >= 81) info.subflowsTotal = dv.getUint8(80);
  if (len >= 96) {
    info.lastDataSentMs = dv.getUint32(84, true);
    info.lastDataRecvMs = dv.getUint32(88, true);
    info.lastAckRecvMs = dv.getUint32(92, true);
  }
  return info;
}

/*
 * struct tcp_info (the fields decoded here):
 *   0 u8 state, 1 ca_state, 2 retransmits, 3 probes, 4 backoff, 5 options, 6 snd_wscale:4|rcv_wscale:4
 *   8 u32 rto, 12 ato, 16 snd_mss, 20 rcv_mss, 24 unacked, 28 sacked, 32 lost, 36 retrans, 40 fackets,
 *   44 last_data_sent, 48 last_ack_sent, 52 last_data_recv, 56 last_ack_recv, 60 pmtu, 64 rcv_ssthresh,
 *   68 rtt, 72 rttvar, 76 snd_ssthresh, 80 snd_cwnd, 84 advmss, 88 reordering, 92 rcv_rtt, 96 rcv_space,
 *   100 total_retrans, 104 u64 pacing_rate, 112 max_pacing_rate, 120 bytes_acked, 128 bytes_received,
 *   136 u32 segs_out, 140 segs_in, 144 notsent_bytes, 148 min_rtt, 152 data_segs_in, 156 data_segs_out,
 *   160 u64 delivery_rate, 168 busy_time, 176 rwnd_limited, 184 sndbuf_limited, 192 u32 delivered,
 *   196 delivered_ce, 200 u64 bytes_sent, 208 bytes_retrans, ...
 */
export const TCP_INFO_SIZE = 232;
const TCP_INFO_MIN = 104;

export const TCP_STATES = [
  'UNKNOWN', 'ESTABLISHED', 'SYN_SENT', 'SYN_RECV', 'FIN_WAIT1', 'FIN_WAIT2', 'TIME_WAIT', 'CLOSE',
  'CLOSE_WAIT', 'LAST_ACK', 'LISTEN', 'CLOSING', 'NEW_SYN_RECV',
] as const;
/** tcpi_options bits. */
export const TCPI_OPT = { TIMESTAMPS: 1, SACK: 2, WSCALE: 4, ECN: 8, ECN_SEEN: 16, SYN_DATA: 32, USEC_TS: 64 } as const;

export function decodeTcpInfo(buf: Uint8Array, len = buf.byteLength): TcpInfo {
  if (len > buf.byteLength) throw new StructError(`Cannot parse tcp_info: length ${len} exceeds buffer ${buf.byteLength}`);
  if (len < TCP_INFO_MIN) throw new StructError(`Cannot parse tcp_info: ${len} bytes, at least ${TCP_INFO_MIN} needed`);
  const dv = view(buf);
  const u32 = (off: number) => dv.getUint32(off, true);
  const wscale = dv.getUint8(6);
  const info: TcpInfo = {
    state: dv.getUint8(0),
    caState: dv.getUint8(1),
    retransmits: dv.getUint8(2),
    probes: dv.getUint8(3),
    backoff: dv.getUint8(4),
    options: dv.getUint8(5),
    sndWscale: wscale & 0x0f,
    rcvWscale: wscale >> 4,
    rtoUs: u32(8),
    sndMss: u32(16),
    rcvMss: u32(20),
    unacked: u32(24),
    lost: u32(32),
    retrans: u32(36),
    pmtu: u32(60),
    rttUs: u32(68),
    rttVarUs: u32(72),
    sndCwnd: u32(80),
    advMss: u32(84),
    totalRetrans: u32(100),
  };
  if (len >= 136) {
    info.bytesAcked = u64n(dv, 120);
    info.bytesReceived = u64n(dv, 128);
  }
  if (len >= 144) {
    info.segsOut = u32(136);
    info.segsIn = u32(140);
  }
  if (len >= 152) info.minRttUs = u32(148);
  if (len >= 216) {
    info.bytesSent = u64n(dv, 200);
    info.bytesRetrans = u64n(dv, 208);
  }
  return info;
}

/*
 * struct sockaddr_in  { u16 family (host order); be16 port; u8 addr[4]; u8 zero[8]; }          16 bytes
 * struct sockaddr_in6 { u16 family; be16 port; be32 flowinfo; u8 addr[16]; u32 scope_id; }     28 bytes
 */
export function decodeSockaddr(buf: Uint8Array): SocketAddress {
  if (buf.byteLength < 2) throw new StructError('Cannot parse sockaddr: shorter than its family field');
  const dv = view(buf);
  const family = dv.getUint16(0, true);
  if (family === AF_INET) {
    if (buf.byteLength < 8) throw new StructError('Cannot parse sockaddr_in: truncated');
    return { family: 4, port: dv.getUint16(2, false), address: `${buf[4]}.${buf[5]}.${buf[6]}.${buf[7]}` };
  }
  if (family === AF_INET6) {
    if (buf.byteLength < 24) throw new StructError('Cannot parse sockaddr_in6: truncated');
    return { family: 6, port: dv.getUint16(2, false), address: formatIpv6(buf.subarray(8, 24)) };
  }
  throw new StructError(`Cannot parse sockaddr: unsupported family ${family}`);
}

/** RFC 5952 text of 16 bytes (IPv4-mapped addresses as ::ffff:a.b.c.d): the protocol module's formatter. */
export function formatIpv6(b: Uint8Array): string {
  if (b.byteLength !== 16) throw new StructError(`Cannot format IPv6 address: ${b.byteLength} bytes`);
  return bytesToIpv6(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

/** Encodes a sockaddr_in / sockaddr_in6 for bind/connect. */
export function encodeSockaddr(family: Family, address: string, port: number): Buffer {
  if (!Number.isInteger(port) || port < 0 || port > 0xffff) throw new StructError(`Cannot encode sockaddr: bad port ${port}`);
  if (family === 4) {
    const parts = address.split('.');
    if (parts.length !== 4 || !parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255)) {
      throw new StructError(`Cannot encode sockaddr_in: '${address}' is not an IPv4 address`);
    }
    const b = Buffer.alloc(16);
    b.writeUInt16LE(AF_INET, 0);
    b.writeUInt16BE(port, 2);
    parts.forEach((p, i) => (b[4 + i] = Number(p)));
    return b;
  }
  const b = Buffer.alloc(28);
  b.writeUInt16LE(AF_INET6, 0);
  b.writeUInt16BE(port, 2);
  parseIpv6(address).copy(b, 8);
  return b;
}

/** Parses an IPv6 literal (with optional embedded IPv4 tail) into 16 bytes. */
export function parseIpv6(text: string): Buffer {
  const bad = () => new StructError(`Cannot parse IPv6 address '${text}'`);
  let s = text;
  const pct = s.indexOf('%');
  if (pct >= 0) s = s.slice(0, pct);
  let tail: number[] = [];
  const lastColon = s.lastIndexOf(':');
  if (s.includes('.')) {
    const v4 = s.slice(lastColon + 1).split('.');
    if (v4.length !== 4 || !v4.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255)) throw bad();
    tail = [(Number(v4[0]) << 8) | Number(v4[1]), (Number(v4[2]) << 8) | Number(v4[3])];
    // Keep what precedes the dotted quad, without its separating ':' unless that is part of a '::'.
    s = s.slice(0, lastColon + 1);
    if (!s.endsWith('::')) s = s.slice(0, -1);
  }
  const halves = s.split('::');
  if (halves.length > 2) throw bad();
  const parse = (h: string | undefined) => (h ? h.split(':').map((w) => {
    if (!/^[0-9a-fA-F]{1,4}$/.test(w)) throw bad();
    return parseInt(w, 16);
  }) : []);
  const head = parse(halves[0]);
  const rest = halves.length === 2 ? parse(halves[1]) : [];
  const total = head.length + rest.length + tail.length;
  let words: number[];
  if (halves.length === 2) {
    if (total > 7) throw bad();
    words = [...head, ...new Array<number>(8 - total).fill(0), ...rest, ...tail];
  } else {
    if (total !== 8) throw bad();
    words = [...head, ...tail];
  }
  const out = Buffer.alloc(16);
  words.forEach((w, i) => out.writeUInt16BE(w, i * 2));
  return out;
}

/*
 * struct mptcp_subflow_data {            (aligned 8)
 *   __u32 size_subflow_data;   // in: sizeof this header (16)
 *   __u32 num_subflows;        // out: how many subflows exist
 *   __u32 size_kernel;         // out: the kernel's element size
 *   __u32 size_user;           // in: our element size; out: min(kernel, user)
 * };  followed by elements of size_user bytes each (struct tcp_info, or struct mptcp_subflow_addrs)
 */
export const SUBFLOW_DATA_HEADER = 16;
/* struct mptcp_subflow_addrs { union { sockaddr_storage local }; union { sockaddr_storage remote }; } */
export const SUBFLOW_ADDRS_SIZE = 256;
const SOCKADDR_STORAGE = 128;

/** The getsockopt buffer for MPTCP_TCPINFO / MPTCP_SUBFLOW_ADDRS: header + room for `count` elements. */
export function subflowDataRequest(elementSize: number, count: number): Buffer {
  const buf = Buffer.alloc(SUBFLOW_DATA_HEADER + elementSize * count);
  buf.writeUInt32LE(SUBFLOW_DATA_HEADER, 0);
  buf.writeUInt32LE(elementSize, 12);
  return buf;
}

export interface SubflowData {
  numSubflows: number;
  sizeKernel: number;
  sizeUser: number;
  /** Elements present in the buffer (min(numSubflows, what fit)). */
  elements: Buffer[];
}

/** Splits a filled mptcp_subflow_data buffer (len = what getsockopt returned) into its elements. */
export function decodeSubflowData(buf: Buffer, len = buf.byteLength): SubflowData {
  if (len > buf.byteLength) throw new StructError(`Cannot parse mptcp_subflow_data: length ${len} exceeds buffer`);
  if (len < SUBFLOW_DATA_HEADER) throw new StructError(`Cannot parse mptcp_subflow_data: ${len} bytes, header is ${SUBFLOW_DATA_HEADER}`);
  const headerSize = buf.readUInt32LE(0);
  if (headerSize !== SUBFLOW_DATA_HEADER) throw new StructError(`Cannot parse mptcp_subflow_data: header size ${headerSize}`);
  const numSubflows = buf.readUInt32LE(4);
  const sizeKernel = buf.readUInt32LE(8);
  const sizeUser = buf.readUInt32LE(12);
  const elements: Buffer[] = [];
  if (sizeUser > 0) {
    const fit = Math.floor((len - SUBFLOW_DATA_HEADER) / sizeUser);
    for (let i = 0; i < Math.min(numSubflows, fit); i++) {
      const off = SUBFLOW_DATA_HEADER + i * sizeUser;
      elements.push(buf.subarray(off, off + sizeUser));
    }
  }
  return { numSubflows, sizeKernel, sizeUser, elements };
}

export function decodeSubflowAddrs(el: Uint8Array): { local: SocketAddress; remote: SocketAddress } {
  if (el.byteLength < SUBFLOW_ADDRS_SIZE) throw new StructError(`Cannot parse mptcp_subflow_addrs: ${el.byteLength} bytes`);
  return {
    local: decodeSockaddr(el.subarray(0, SOCKADDR_STORAGE)),
    remote: decodeSockaddr(el.subarray(SOCKADDR_STORAGE, 2 * SOCKADDR_STORAGE)),
  };
}

/**
 * Pairs the two per-subflow arrays (MPTCP_SUBFLOW_ADDRS and MPTCP_TCPINFO list the subflows in the same
 * order); tcp_info is null where the arrays disagree in length (a subflow came or went between the calls).
 */
export function pairSubflows(addrs: SubflowData, tcp: SubflowData | null): SubflowInfo[] {
  const sameCount = tcp !== null && tcp.elements.length === addrs.elements.length;
  return addrs.elements.map((el, i) => {
    const a = decodeSubflowAddrs(el);
    const t = sameCount ? tcp.elements[i] : undefined;
    return { local: a.local, remote: a.remote, tcp: t && t.byteLength >= TCP_INFO_MIN ? decodeTcpInfo(t) : null };
  });
}

/*
 * struct mptcp_full_info {                 offset
 *   __u32 size_tcpinfo_kernel;    out         0
 *   __u32 size_tcpinfo_user;      in/out      4
 *   __u32 size_sfinfo_kernel;     out         8
 *   __u32 size_sfinfo_user;       in/out     12
 *   __u32 num_subflows;           out        16
 *   __u32 size_arrays_user;       in/out     20   elements of room in each array
 *   __aligned_u64 subflow_info;   in         24   user pointer to struct mptcp_subflow_info[]
 *   __aligned_u64 tcp_info;       in         32   user pointer to struct tcp_info[]
 *   struct mptcp_info mptcp_info; out        40
 * };                                        136
 * struct mptcp_subflow_info { __u32 id; (4 bytes pad) struct mptcp_subflow_addrs addrs @8; }   264 bytes
 */
export const FULL_INFO_SIZE = 40 + MPTCP_INFO_SIZE;
export const SUBFLOW_INFO_SIZE = 8 + SUBFLOW_ADDRS_SIZE;

/** The MPTCP_FULL_INFO request; the caller writes the two array addresses with `setFullInfoPointers`. */
export function fullInfoRequest(count: number): Buffer {
  const buf = Buffer.alloc(FULL_INFO_SIZE);
  buf.writeUInt32LE(TCP_INFO_SIZE, 4);
  buf.writeUInt32LE(SUBFLOW_INFO_SIZE, 12);
  buf.writeUInt32LE(count, 20);
  return buf;
}

export function setFullInfoPointers(req: Buffer, subflowInfo: bigint, tcpInfo: bigint): void {
  req.writeBigUInt64LE(subflowInfo, 24);
  req.writeBigUInt64LE(tcpInfo, 32);
}

export interface FullInfo {
  mptcp: MptcpInfo;
  numSubflows: number;
  subflows: SubflowInfo[];
}

/**
 * Decodes MPTCP_FULL_INFO: `req` as the kernel filled it (len = what getsockopt returned), `sfinfo` and
 * `tcpinfo` the two arrays it pointed to.
 */
export function decodeFullInfo(req: Buffer, len: number, sfinfo: Buffer, tcpinfo: Buffer): FullInfo {
  if (len > req.byteLength) throw new StructError('Cannot parse mptcp_full_info: length exceeds buffer');
  if (len < 40 + MPTCP_INFO_MIN) throw new StructError(`Cannot parse mptcp_full_info: ${len} bytes`);
  const sizeTcp = req.readUInt32LE(4);
  const sizeSf = req.readUInt32LE(12);
  const numSubflows = req.readUInt32LE(16);
  const arrays = req.readUInt32LE(20);
  if (sizeSf > SUBFLOW_INFO_SIZE || sizeTcp > TCP_INFO_SIZE) throw new StructError('Cannot parse mptcp_full_info: element size grew');
  const n = Math.min(numSubflows, arrays);
  if (sfinfo.byteLength < n * sizeSf || tcpinfo.byteLength < n * sizeTcp) {
    throw new StructError('Cannot parse mptcp_full_info: arrays shorter than announced');
  }
  const subflows: SubflowInfo[] = [];
  for (let i = 0; i < n; i++) {
    const sf = sfinfo.subarray(i * sizeSf, (i + 1) * sizeSf);
    const t = tcpinfo.subarray(i * sizeTcp, (i + 1) * sizeTcp);
    const addrs = decodeSubflowAddrs(sf.subarray(8));
    subflows.push({ id: sf.readUInt32LE(0), ...addrs, tcp: sizeTcp >= TCP_INFO_MIN ? decodeTcpInfo(t) : null });
  }
  return { mptcp: decodeMptcpInfo(req.subarray(40), len - 40), numSubflows, subflows };
}
