/**
 * The platform layer's interfaces: everything the roles need from the kernel (sockets Node's `net` cannot
 * make, MPTCP introspection, nftables, `ip mptcp`, policy routing, sysctls). Roles depend on these types only;
 * the composition root picks the Linux implementation (`createLinuxPlatform()` in ./linux/index.ts).
 */
import type net from 'node:net';

export type Family = 4 | 6;

/** Options applied to a socket before bind/connect/listen. */
export interface SocketSpec {
  family: Family;
  protocol: 'mptcp' | 'tcp';
  /** IP_TRANSPARENT / IPV6_TRANSPARENT (TPROXY listeners, non-local source addresses). */
  transparent?: boolean;
  /** IP_FREEBIND / IPV6_FREEBIND. */
  freebind?: boolean;
  reuseAddr?: boolean;
  reusePort?: boolean;
  /** IP_BIND_ADDRESS_NO_PORT: bind to an address now, pick the port at connect (no 4-tuple exhaustion). */
  bindAddressNoPort?: boolean;
  /** SO_MARK (fwmark for policy routing). */
  mark?: number;
  /** IP_TOS / IPV6_TCLASS byte: DSCP << 2 (ECN bits are the kernel's). */
  tos?: number;
  /** TCP_MAXSEG. */
  maxSeg?: number;
  /** SO_LINGER { on, seconds }; seconds 0 makes close() send an RST. */
  linger?: { onoff: boolean; seconds: number };
}

export interface ListenSpec extends SocketSpec {
  host: string;
  port: number;
  /** listen() backlog, default 511. */
  backlog?: number;
  /** TCP_FASTOPEN queue length on the listener (0/undefined = no TFO). */
  fastOpenQueue?: number;
  /** TCP_FASTOPEN_NO_COOKIE on the listener: accept data in the SYN without a cookie. */
  fastOpenNoCookie?: boolean;
  /** Accepted sockets keep their writable side open after the peer's FIN (settable later on the Server too). */
  allowHalfOpen?: boolean;
}

/** A listening net.Server; `allowHalfOpen` is a real (if untyped in @types/node 20) Server property. */
export type ListeningServer = net.Server & { allowHalfOpen: boolean };

export interface DialSpec extends SocketSpec {
  /** IP literal (no name resolution in the platform layer). */
  host: string;
  port: number;
  localAddress?: string;
  localPort?: number;
  /**
   * TCP Fast Open for `data`: 'no-cookie' = TCP_FASTOPEN_CONNECT + TCP_FASTOPEN_NO_COOKIE (data in the first
   * SYN); 'cookie' = TCP_FASTOPEN_CONNECT only (data in the SYN once a cookie is cached); 'off' (default) =
   * data is written right after the handshake.
   */
  fastOpen?: 'no-cookie' | 'cookie' | 'off';
  /** Bytes to send in the SYN (TFO) or, without TFO, right after the handshake. */
  data?: Buffer;
  /** Connect timeout; default 30 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** struct mptcp_info (SOL_MPTCP / MPTCP_INFO), decoded. Fields after `csumEnabled` exist on newer kernels. */
export interface MptcpInfo {
  /** Additional subflows (the initial one is not counted). */
  subflows: number;
  addAddrSignal: number;
  addAddrAccepted: number;
  subflowsMax: number;
  addAddrSignalMax: number;
  addAddrAcceptedMax: number;
  flags: number;
  fallback: boolean;
  remoteKeyReceived: boolean;
  token: number;
  writeSeq: bigint;
  sndUna: bigint;
  rcvNxt: bigint;
  localAddrUsed?: number;
  localAddrMax?: number;
  csumEnabled?: boolean;
  retransmits?: number;
  bytesRetrans?: number;
  bytesSent?: number;
  bytesReceived?: number;
  bytesAcked?: number;
  /** All subflows, the initial one included (kernel >= 6.10). */
  subflowsTotal?: number;
  lastDataSentMs?: number;
  lastDataRecvMs?: number;
  lastAckRecvMs?: number;
}

/** The basics of struct tcp_info. Times in microseconds as the kernel gives them. */
export interface TcpInfo {
  state: number;
  caState: number;
  retransmits: number;
  probes: number;
  backoff: number;
  options: number;
  sndWscale: number;
  rcvWscale: number;
  rtoUs: number;
  sndMss: number;
  rcvMss: number;
  unacked: number;
  lost: number;
  retrans: number;
  pmtu: number;
  rttUs: number;
  rttVarUs: number;
  sndCwnd: number;
  advMss: number;
  totalRetrans: number;
  bytesAcked?: number;
  bytesReceived?: number;
  segsOut?: number;
  segsIn?: number;
  minRttUs?: number;
  bytesSent?: number;
  bytesRetrans?: number;
}

export interface SocketAddress {
  family: Family;
  address: string;
  port: number;
}

export interface SubflowInfo {
  /** Subflow id (from MPTCP_FULL_INFO), when the kernel gives it. */
  id?: number;
  local: SocketAddress;
  remote: SocketAddress;
  tcp: TcpInfo | null;
}

export interface Sockets {
  /** A bound, listening server; the fd is owned by the Server (close() releases it). */
  listen(spec: ListenSpec): Promise<ListeningServer>;
  /**
   * Resolves when the connection is ESTABLISHED (SYN/ACK seen), `data` having been sent in the SYN when TFO
   * applies (else right after the handshake). Rejects with a PlatformError ('ECONNREFUSED', 'ETIMEDOUT',
   * 'ENETUNREACH', 'ABORT_ERR', ...) and never leaks the fd. The socket has allowHalfOpen = true.
   */
  dial(spec: DialSpec): Promise<net.Socket>;
  /** null when the socket is not MPTCP or fell back to TCP. */
  mptcpInfo(socket: net.Socket): MptcpInfo | null;
  /** Per subflow: addresses and tcp_info; [] when not MPTCP. */
  subflows(socket: net.Socket): SubflowInfo[];
  /** Still MPTCP (no fallback to TCP). */
  isMptcp(socket: net.Socket): boolean;
  setTos(socket: net.Socket, tos: number): void;
  getTos(socket: net.Socket): number;
  setMark(socket: net.Socket, mark: number): void;
  getMark(socket: net.Socket): number;
  /** tcp_info of a TCP socket (or of an MPTCP socket that fell back); null when unavailable. */
  tcpInfo(socket: net.Socket): TcpInfo | null;
  /**
   * SO_LINGER. `0`: close() resets the connection (RST; MP_FASTCLOSE on MPTCP), also when the kernel closes it
   * because the process died; `null`: off (close() sends FIN after whatever is still queued). No-op on a
   * socket that is already closed.
   */
  setLinger(socket: net.Socket, seconds: number | null): void;
  /** The socket's pending error (SO_ERROR, which clears it) as an errno name ('ECONNRESET'); null: none, or closed. */
  takeError(socket: net.Socket): string | null;
  /**
   * TCP_NOTSENT_LOWAT: the kernel takes more bytes only while fewer than `bytes` are unsent (a UDP channel
   * keeps its queue in the application, where old datagrams can be dropped). Throws when the socket has none.
   */
  setNotSentLowat(socket: net.Socket, bytes: number): void;
  /**
   * SO_SNDBUF (the kernel doubles it for its bookkeeping). On an MPTCP socket the kernel applies it to every
   * subflow, whose send queue (unsent and in flight) it then bounds: without it a subflow queues up to its
   * autotuned buffer (megabytes), and a UDP channel's datagrams wait behind it.
   */
  setSendBuffer(socket: net.Socket, bytes: number): void;
}

export type NftFamily = 'ip' | 'ip6' | 'inet' | 'arp' | 'bridge' | 'netdev';

export interface NftTableRef {
  family: NftFamily;
  name: string;
  handle?: number;
}

export interface MptcpEndpoint {
  address: string;
  id: number;
  dev?: string;
  port?: number;
  /** 'signal' | 'subflow' | 'backup' | 'fullmesh' | 'implicit' */
  flags: string[];
}

export interface MptcpEndpointSpec {
  address: string;
  id?: number;
  dev?: string;
  port?: number;
  flags: Array<'signal' | 'subflow' | 'backup' | 'fullmesh'>;
}

export interface MptcpLimits {
  subflows: number;
  addAddrAccepted: number;
}

export interface RuleSpec {
  family: Family;
  priority: number;
  table: number | string;
  from?: string;
  to?: string;
  /** fwmark, optionally with a mask. */
  fwmark?: number;
  fwmask?: number;
  iif?: string;
  oif?: string;
}

/** One entry of `ip -j rule show`, as iproute2 prints it. */
export interface RuleEntry {
  priority: number;
  src?: string;
  srclen?: number;
  dst?: string;
  dstlen?: number;
  table?: string;
  fwmark?: string;
  fwmask?: string;
  /** Input / output interface selectors (`ip -j rule` prints them as iif / oif). */
  iif?: string;
  oif?: string;
  [key: string]: unknown;
}

export interface RouteSpec {
  family: Family;
  table: number | string;
  /** Prefix or 'default'. */
  dst: string;
  /** 'unicast' (default), 'local' (TPROXY), 'blackhole', 'unreachable'. */
  type?: 'unicast' | 'local' | 'blackhole' | 'unreachable';
  via?: string;
  dev?: string;
  src?: string;
  metric?: number;
}

/** One entry of `ip -j route show`, as iproute2 prints it. */
export interface RouteEntry {
  dst: string;
  type?: string;
  gateway?: string;
  dev?: string;
  prefsrc?: string;
  metric?: number;
  [key: string]: unknown;
}

export interface AddressEntry {
  ifname: string;
  ifindex: number;
  operstate?: string;
  addr_info: Array<{ family: string; local: string; prefixlen: number; scope?: string; [key: string]: unknown }>;
  [key: string]: unknown;
}

/** Kernel configuration; every call runs in the namespace the KernelConfig was created for. */
export interface KernelConfig {
  readonly netns: string | undefined;
  nft: {
    /**
     * Atomically replaces table `family name` with `rulesetText` (the table's body: chains, sets, maps; or a
     * whole `table FAMILY NAME { ... }` declaration of that same table) in one `nft -f` transaction.
     */
    applyTable(family: NftFamily, name: string, rulesetText: string): Promise<void>;
    /** Idempotent: no error when the table does not exist. */
    deleteTable(family: NftFamily, name: string): Promise<void>;
    listTables(): Promise<NftTableRef[]>;
    /** `nft -j list table`: the JSON objects (table, chains, rules, sets), or null when it does not exist. */
    getTable(family: NftFamily, name: string): Promise<unknown[] | null>;
    /** `nft add element`: adds elements (`addr . port timeout 60s`) to a set of a table (optional: fakes may leave it out). */
    addSetElements?(family: NftFamily, name: string, set: string, elements: readonly string[]): Promise<void>;
  };
  mptcp: {
    endpoints(): Promise<MptcpEndpoint[]>;
    addEndpoint(spec: MptcpEndpointSpec): Promise<void>;
    deleteEndpoint(id: number): Promise<void>;
    /** `ip mptcp endpoint change id ID backup|nobackup`: sets or clears the backup flag (MP_PRIO on live subflows). */
    setEndpointBackup(id: number, backup: boolean): Promise<void>;
    flushEndpoints(): Promise<void>;
    limits(): Promise<MptcpLimits>;
    setLimits(limits: Partial<MptcpLimits>): Promise<void>;
  };
  routes: {
    addRule(spec: RuleSpec): Promise<void>;
    /** Idempotent. */
    deleteRule(spec: RuleSpec): Promise<void>;
    listRules(family: Family): Promise<RuleEntry[]>;
    /** `ip route replace` (idempotent). */
    addRoute(spec: RouteSpec): Promise<void>;
    /** Idempotent. */
    deleteRoute(spec: RouteSpec): Promise<void>;
    listRoutes(table: number | string, family: Family): Promise<RouteEntry[]>;
    /** Idempotent. */
    flushTable(table: number | string, family: Family): Promise<void>;
    listAddresses(dev?: string): Promise<AddressEntry[]>;
  };
  sysctl: {
    get(name: string): Promise<string>;
    set(name: string, value: string): Promise<void>;
  };
  /**
   * Calls `onChange` soon after a link, address or route changes (netlink events); optional, polling is the
   * fallback. `onError` reports a watch that stopped and is being restarted. close() ends it for good.
   */
  watchLinks?(onChange: () => void, onError: (err: Error) => void): LinkWatch;
  /** Byte and packet counters of every interface of the namespace (/proc/net/dev); optional. Cheap: no process. */
  linkCounters?(): LinkCounters[];
}

/** One interface's counters since it was created (the kernel's rtnl_link_stats64). */
export interface LinkCounters {
  ifname: string;
  rxBytes: number;
  rxPackets: number;
  txBytes: number;
  txPackets: number;
}

export interface LinkWatch {
  close(): void;
}

/** How a spliced pair ended (the relay's outcomes; `a`/`b` name the side that failed). */
export type SpliceOutcome = 'done' | 'idle-timeout' | 'reset-a' | 'reset-b' | 'error-a' | 'error-b' | 'aborted' | 'close-timeout';

export interface SpliceResult {
  outcome: SpliceOutcome;
  /** Bytes moved from a to b and from b to a by the engine. */
  aToB: number;
  bToA: number;
  /** errno name of a failure ('ECONNRESET', ...). */
  errno?: string;
}

export interface SplicePairOptions {
  /** No byte either way for this long: both sides are reset ('idle-timeout'). */
  idleTimeoutMs: number;
  /** The same once one direction has finished (half-closed pair). */
  halfCloseTimeoutMs: number;
  /** After close(): how long to flush before resetting ('close-timeout'). */
  closeTimeoutMs: number;
}

/** A pair of sockets whose bytes the engine moves; the caller still owns (and eventually destroys) both sockets. */
export interface SplicePair {
  /** Settles once the engine has let go of both descriptors: only then may the caller close the sockets. */
  readonly done: Promise<SpliceResult>;
  /** Live byte counts (a to b, b to a). */
  readonly aToB: number;
  readonly bToA: number;
  /** Graceful: stop reading, flush what is in flight, send FIN both ways; 'done' (or 'close-timeout'). */
  close(): void;
  /** Immediate: let go of both descriptors now ('aborted'). */
  abort(): void;
}

/**
 * Zero-copy relaying: bytes move between two connected sockets inside the kernel (splice(2) through a pipe),
 * off the event loop. The sockets must be idle in Node (not reading, nothing buffered or queued): the engine
 * reads and writes their descriptors directly until `done`. FIN is propagated as shutdown(SHUT_WR) (DATA_FIN
 * on an MPTCP socket); the engine never closes a socket.
 */
export interface SpliceEngine {
  pair(a: net.Socket, b: net.Socket, options: SplicePairOptions): SplicePair;
  /** Pairs still running end 'aborted'; then the engine releases its thread and descriptors. Idempotent. */
  close(): Promise<void>;
}

/** The process's own resources as the kernel accounts them. */
export interface ProcessResources {
  /** Open descriptors and the soft RLIMIT_NOFILE (Infinity when unlimited). Not for the hot path: it reads /proc. */
  descriptors(): { open: number; limit: number };
}

export interface Platform {
  sockets: Sockets;
  kernel: KernelConfig;
  resources: ProcessResources;
  /** Absent where the platform has no zero-copy path. */
  splice?: SpliceEngine;
  /** Transparent UDP interception for the CPE; absent where the platform has none. */
  transparentUdp?: TransparentUdpFactory;
}

export interface UdpEndpoint {
  address: string;
  port: number;
}

/** A datagram a LAN client sent, taken by TPROXY: `source` is the client, `destination` the server. */
export interface InterceptedDatagram {
  source: UdpEndpoint;
  destination: UdpEndpoint;
  payload: Buffer;
}

export interface TransparentUdpSpec {
  /** The TPROXY port (the nft rule's `tproxy ... to`), on 127.0.0.1 and [::1]. */
  port: number;
  families: ReadonlyArray<4 | 6>;
  /** A reply socket (one per server endpoint and LAN client) unused this long is closed. */
  replyIdleMs: number;
  /** At most this many reply sockets; beyond, the oldest is closed. */
  maxReplySockets: number;
  /**
   * Receive and send buffer of the TPROXY sockets (default 512 KiB: a buffer is a queue, kept short; it fills
   * only while the thread cannot read, and 256 KiB overflowed under CPU contention at 80 Mbit/s).
   */
  bufferBytes?: number;
}

/**
 * Transparent UDP interception (CPE): datagrams that TPROXY diverted, with their original destination, and
 * answers sent to LAN clients from the server's address and port (IP_TRANSPARENT). Node's dgram can do
 * neither (no IP_RECVORIGDSTADDR, no bind to a non-local address), so the Linux backend does it in a thread
 * of its own over the FFI adapter.
 */
export interface TransparentUdp {
  /** Batches of intercepted datagrams, in arrival order, with the time (ms, Date.now) they were read. */
  onDatagrams(handler: (batch: InterceptedDatagram[], at: number) => void): void;
  /** Datagrams dropped inside the backend (reply send failed, no reply socket, truncated), by reason. */
  onDropped(handler: (reason: string, n: number) => void): void;
  /** Sends `payload` to the LAN client `to` with `from` (the server) as its source address and port. */
  send(from: UdpEndpoint, to: UdpEndpoint, payload: Buffer): void;
  /** Closes every socket and the thread. Idempotent. */
  close(): Promise<void>;
}

export interface TransparentUdpFactory {
  open(spec: TransparentUdpSpec): Promise<TransparentUdp>;
}
