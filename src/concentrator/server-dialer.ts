/**
 * Dials servers for the concentrator. MPTCP first, so that a server that speaks MPTCP gets it end to end and
 * MP_CAPABLE is never stripped; the kernel falls back to TCP by itself for servers that do not. Servers whose
 * MPTCP SYNs were dropped (the connection came up only after the kernel retried without MP_CAPABLE, or not
 * at all) go into a cache, and later connections to them use plain TCP at once (draft-nam-mptcp-deployment-considerations section 5.6.1).
 *
 * Optionally (`tcpServersTtlMs` > 0; off by default, since the draft asks that MP_CAPABLE is never stripped) a
 * server that answered MPTCP with plain TCP (address and port) is dialled with TCP for a while: the section's
 * "mechanism to disable relaying MP_CAPABLE to some remote hosts". On this kernel a server leg in MPTCP
 * fallback reads at about half the rate of a TCP socket once the CPE side pushes back (docs/performance.md,
 * "The download relay and the server leg in MPTCP fallback").
 */
import type { Socket } from 'node:net';
import type { Sockets } from '../platform/types.js';
import type { Logger } from '../log.js';
import { RESET_ON_CLOSE } from '../relay/index.js';
import type { DialSpec } from '../platform/types.js';
import { MpconvertError } from '../errors.js';
import type { PortBlockRefusal, PortLease } from './port-blocks.js';

export type ServerTransport = 'mptcp' | 'tcp-fallback' | 'tcp-cached' | 'tcp-learned' | 'tcp';

export interface ServerDialResult {
  socket: Socket;
  transport: ServerTransport;
}

export interface ServerDialerOptions {
  sockets: Sockets;
  logger: Logger;
  mptcp: boolean;
  connectTimeoutMs: number;
  cacheTtlMs: number;
  cacheSize: number;
  slowFallbackMs: number;
  /** Servers (address and port) that answered without MP_CAPABLE are dialled with TCP this long; 0 = never. */
  tcpServersTtlMs?: number;
  now?: () => number;
}

export interface ServerDialRequest {
  host: string;
  port: number;
  family: 4 | 6;
  localAddress?: string | undefined;
  /** The local address is not this host's (transparent source): IP_TRANSPARENT / IPV6_TRANSPARENT before bind. */
  transparent?: boolean | undefined;
  tos?: number | undefined;
  signal?: AbortSignal | undefined;
  /** Bind this source port (with localAddress) instead of letting the kernel pick one at connect. */
  ports?: PortLease | undefined;
}

/** Ports tried for one dial before giving up (each refused port is cooled down by the lease). */
const MAX_PORT_TRIES = 32;

/** The CPE's port blocks have no port left that the kernel accepts. */
export class PortBlocksError extends MpconvertError {
  constructor(readonly refusal: PortBlockRefusal, tried: number) {
    super('MPC_ERR_PORT_BLOCKS', `Cannot bind a source port from the CPE's port blocks: ${refusal} (${tried} tried)`);
  }
}

/** A bounded map with expiry: the oldest entry goes first when full. */
export class ExpiringSet {
  readonly #entries = new Map<string, number>();
  constructor(
    private readonly ttlMs: number,
    private readonly max: number,
    private readonly now: () => number = Date.now,
  ) {}

  has(key: string): boolean {
    const until = this.#entries.get(key);
    if (until === undefined) return false;
    if (until <= this.now()) {
      this.#entries.delete(key);
      return false;
    }
    return true;
  }

  add(key: string): void {
    this.#entries.delete(key);
    if (this.#entries.size >= this.max) {
      const oldest = this.#entries.keys().next();
      if (!oldest.done) this.#entries.delete(oldest.value);
    }
    this.#entries.set(key, this.now() + this.ttlMs);
  }

  delete(key: string): void {
    this.#entries.delete(key);
  }

  clear(): void {
    this.#entries.clear();
  }

  get size(): number {
    return this.#entries.size;
  }

  keys(): string[] {
    return [...this.#entries.keys()];
  }
}

export class ServerDialer {
  readonly #o: ServerDialerOptions;
  readonly #now: () => number;
  readonly brokenMptcp: ExpiringSet;
  /** Servers that answered MPTCP with TCP, keyed `address port` (absent while `tcpServersTtlMs` is 0). */
  #tcpServers: ExpiringSet | undefined;
  #tcpServersTtlMs = 0;

  constructor(options: ServerDialerOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
    this.brokenMptcp = new ExpiringSet(options.cacheTtlMs, options.cacheSize, this.#now);
    this.setTcpServersTtl(options.tcpServersTtlMs ?? 0);
  }

  setMptcp(enabled: boolean): void {
    this.#o.mptcp = enabled;
  }

  /** A new lifetime for learned TCP servers (a reload); 0 forgets them and stops learning. */
  setTcpServersTtl(ttlMs: number): void {
    if (ttlMs === this.#tcpServersTtlMs) return;
    this.#tcpServersTtlMs = ttlMs;
    this.#tcpServers = ttlMs > 0 ? new ExpiringSet(ttlMs, this.#o.cacheSize, this.#now) : undefined;
  }

  /** Servers currently dialled with TCP because they answered without MP_CAPABLE (`address port`). */
  get tcpServers(): string[] {
    return this.#tcpServers?.keys() ?? [];
  }

  /**
   * One dial. With a port lease, the source port is bound explicitly (IP_BIND_ADDRESS_NO_PORT cannot choose
   * within a range) with SO_REUSEADDR, so a port whose last connection is in TIME_WAIT can be bound again; a
   * port the kernel refuses (EADDRINUSE at bind: another socket holds it; EADDRNOTAVAIL at connect: the same
   * 4-tuple is still in TIME_WAIT) is cooled down and the next one from the blocks is tried.
   */
  async #dial(spec: DialSpec, ports: PortLease | undefined): Promise<Socket> {
    if (!ports) return this.#o.sockets.dial(spec);
    let port: number | undefined = ports.port;
    for (let tried = 1; ; tried++) {
      try {
        return await this.#o.sockets.dial({ ...spec, localPort: port, bindAddressNoPort: false, reuseAddr: true });
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (code !== 'EADDRINUSE' && code !== 'EADDRNOTAVAIL') throw err;
        port = tried < MAX_PORT_TRIES ? ports.next() : undefined;
        if (port === undefined) throw new PortBlocksError(ports.refusal ?? 'port-block-limit', tried);
      }
    }
  }

  async dial(req: ServerDialRequest): Promise<ServerDialResult> {
    const base = {
      family: req.family,
      host: req.host,
      port: req.port,
      timeoutMs: this.#o.connectTimeoutMs,
      // If this process dies the server sees a reset, never a clean end of an upload cut short.
      linger: RESET_ON_CLOSE,
      ...(req.localAddress !== undefined ? { localAddress: req.localAddress, bindAddressNoPort: true } : {}),
      ...(req.transparent ? { transparent: true } : {}),
      ...(req.tos !== undefined ? { tos: req.tos } : {}),
      ...(req.signal !== undefined ? { signal: req.signal } : {}),
    };
    if (!this.#o.mptcp) return { socket: await this.#dial({ ...base, protocol: 'tcp' }, req.ports), transport: 'tcp' };
    if (this.brokenMptcp.has(req.host)) {
      return { socket: await this.#dial({ ...base, protocol: 'tcp' }, req.ports), transport: 'tcp-cached' };
    }
    const learned = this.#tcpServers;
    const key = learned ? `${req.host} ${req.port}` : '';
    if (learned?.has(key)) return { socket: await this.#dial({ ...base, protocol: 'tcp' }, req.ports), transport: 'tcp-learned' };
    const started = this.#now();
    let socket: Socket;
    try {
      socket = await this.#dial({ ...base, protocol: 'mptcp' }, req.ports);
    } catch (err) {
      // A timeout may be a middlebox that drops MPTCP SYNs while TCP passes: try TCP once, and remember the
      // server only if TCP gets through (an unreachable server is not an MPTCP problem).
      if ((err as { code?: string }).code === 'ETIMEDOUT' && !req.signal?.aborted) {
        const socket = await this.#dial({ ...base, protocol: 'tcp' }, req.ports);
        this.#remember(req.host, 'MPTCP connect timed out, TCP did not');
        return { socket, transport: 'tcp-cached' };
      }
      throw err;
    }
    if (this.#o.sockets.isMptcp(socket)) return { socket, transport: 'mptcp' };
    if (this.#now() - started >= this.#o.slowFallbackMs) this.#remember(req.host, 'MPTCP SYN was not answered; the kernel fell back to TCP');
    else learned?.add(key);
    return { socket, transport: 'tcp-fallback' };
  }

  #remember(host: string, why: string): void {
    if (!this.brokenMptcp.has(host)) this.#o.logger.info({ server: host, why }, 'server added to the MPTCP fallback cache');
    this.brokenMptcp.add(host);
  }
}
