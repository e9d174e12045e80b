/**
 * Dials servers for the concentrator. MPTCP first, so that a server that speaks MPTCP gets it end to end and
 * MP_CAPABLE is never stripped; the kernel falls back to TCP by itself for servers that do not. Servers whose
 * MPTCP SYNs were dropped (the connection came up only after the kernel retried without MP_CAPABLE, or not
 * at all) go into a cache, and later connections to them use plain TCP at once (draft-nam-mptcp-deployment-considerations section 5.6.1).
 */
import type { Socket } from 'node:net';
import type { Sockets } from '../platform/types.js';
import type { Logger } from '../log.js';
import { RESET_ON_CLOSE } from '../relay/index.js';

export type ServerTransport = 'mptcp' | 'tcp-fallback' | 'tcp-cached' | 'tcp';

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

  constructor(options: ServerDialerOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
    this.brokenMptcp = new ExpiringSet(options.cacheTtlMs, options.cacheSize, this.#now);
  }

  setMptcp(enabled: boolean): void {
    this.#o.mptcp = enabled;
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
    if (!this.#o.mptcp) return { socket: await this.#o.sockets.dial({ ...base, protocol: 'tcp' }), transport: 'tcp' };
    if (this.brokenMptcp.has(req.host)) {
      return { socket: await this.#o.sockets.dial({ ...base, protocol: 'tcp' }), transport: 'tcp-cached' };
    }
    const started = this.#now();
    let socket: Socket;
    try {
      socket = await this.#o.sockets.dial({ ...base, protocol: 'mptcp' });
    } catch (err) {
      // A timeout may be a middlebox that drops MPTCP SYNs while TCP passes: try TCP once, and remember the
      // server only if TCP gets through (an unreachable server is not an MPTCP problem).
      if ((err as { code?: string }).code === 'ETIMEDOUT' && !req.signal?.aborted) {
        const socket = await this.#o.sockets.dial({ ...base, protocol: 'tcp' });
        this.#remember(req.host, 'MPTCP connect timed out, TCP did not');
        return { socket, transport: 'tcp-cached' };
      }
      throw err;
    }
    if (this.#o.sockets.isMptcp(socket)) return { socket, transport: 'mptcp' };
    if (this.#now() - started >= this.#o.slowFallbackMs) this.#remember(req.host, 'MPTCP SYN was not answered; the kernel fell back to TCP');
    return { socket, transport: 'tcp-fallback' };
  }

  #remember(host: string, why: string): void {
    if (!this.brokenMptcp.has(host)) this.#o.logger.info({ server: host, why }, 'server added to the MPTCP fallback cache');
    this.brokenMptcp.add(host);
  }
}
