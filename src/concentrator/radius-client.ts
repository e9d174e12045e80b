/**
 * The RADIUS transport (RFC 2865 section 2.5, RFC 5080 section 2.2): UDP requests to a list of servers, each
 * sent up to 1 + `retries` times with `timeoutMs` between tries, then the next server (failover). The server
 * that answered last is tried first next time. Answers are matched by server address, port and Identifier,
 * and verified (Response Authenticator, Message-Authenticator: src/protocol/radius.ts) with the secret of the
 * server asked; an answer that does not verify is dropped and counted, and the wait goes on: a forged
 * Access-Accept changes nothing.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import type { Logger } from '../log.js';
import { RadiusCode, verifyResponse, type RadiusPacket, type ResponseCheck } from '../protocol/radius.js';
import { unmapAddress } from '../protocol/address.js';

export interface RadiusServer {
  host: string;
  authPort: number;
  acctPort: number;
  secret: Buffer;
}

export type RadiusKind = 'auth' | 'acct';

export interface RadiusAnswer {
  server: string;
  packet: RadiusPacket;
}

export interface RadiusClientOptions {
  servers: readonly RadiusServer[];
  timeoutMs: number;
  retries: number;
  /** Local address to send from (its family's socket only); absent: the kernel's choice. */
  sourceAddress?: string | undefined;
  /** Refuse answers without a Message-Authenticator (Access-Accept / Reject / Challenge). */
  requireMessageAuthenticator: boolean;
  logger: Logger;
  /** Each try's outcome: 'answer', 'timeout', 'invalid:<why>', 'unexpected-code', 'send-error'. */
  onResult?: (kind: RadiusKind, server: string, result: string) => void;
}

interface Pending {
  authenticator: Buffer;
  secret: Buffer;
  kind: RadiusKind;
  resolve: (p: RadiusPacket) => void;
}

/** A request built for one server: the packet and its Request Authenticator (to verify the answer). */
export type BuildRequest = (identifier: number, server: RadiusServer) => { packet: Buffer; authenticator: Buffer };

export class RadiusClient {
  #opts: RadiusClientOptions;
  #preferred = 0;
  readonly #sockets = new Map<4 | 6, UdpSocket>();
  /** `host|port|identifier` -> the request waiting for that answer. */
  readonly #pending = new Map<string, Pending>();
  readonly #nextId = new Map<string, number>();
  /** The timers of the tries waiting now: close() ends them at once. */
  readonly #waits = new Set<() => void>();
  #closed = false;

  constructor(opts: RadiusClientOptions) {
    this.#opts = opts;
  }

  /** New servers or timers (SIGHUP); requests in flight finish with what they started with. */
  reconfigure(opts: RadiusClientOptions): void {
    const same = opts.servers.length === this.#opts.servers.length && opts.servers.every((s, i) => s.host === this.#opts.servers[i]?.host);
    if (opts.sourceAddress !== this.#opts.sourceAddress) {
      // New sockets from the new address on the next request; answers to requests in flight on the old ones are lost (they fail over).
      for (const s of this.#sockets.values()) s.close();
      this.#sockets.clear();
    }
    this.#opts = opts;
    if (!same) this.#preferred = 0;
  }

  get pending(): number {
    return this.#pending.size;
  }

  /**
   * Sends a request built per server until one server gives a verified answer; undefined when none did
   * (every server, every try timed out), or the signal aborted the wait.
   */
  async request(kind: RadiusKind, build: BuildRequest, signal?: AbortSignal): Promise<RadiusAnswer | undefined> {
    const servers = this.#opts.servers;
    for (let n = 0; n < servers.length; n++) {
      const index = (this.#preferred + n) % servers.length;
      const server = servers[index] as RadiusServer;
      const packet = await this.#ask(kind, server, build, signal);
      if (signal?.aborted) return undefined;
      if (packet) {
        this.#preferred = index;
        return { server: server.host, packet };
      }
    }
    return undefined;
  }

  async #ask(kind: RadiusKind, server: RadiusServer, build: BuildRequest, signal?: AbortSignal): Promise<RadiusPacket | undefined> {
    if (this.#closed) return undefined;
    const port = kind === 'auth' ? server.authPort : server.acctPort;
    const host = unmapAddress(server.host);
    const dest = `${host}|${port}`;
    const identifier = this.#identifier(dest);
    if (identifier === undefined) {
      this.#opts.onResult?.(kind, host, 'no-identifier');
      return undefined;
    }
    const key = `${dest}|${identifier}`;
    const { packet, authenticator } = build(identifier, server);
    const socket = this.#socket(isIPv6(host) ? 6 : 4);
    let answered: RadiusPacket | undefined;
    let wake: () => void = () => {};
    this.#pending.set(key, {
      authenticator,
      secret: server.secret,
      kind,
      resolve: (p) => {
        answered = p;
        wake();
      },
    });
    const onAbort = () => wake();
    signal?.addEventListener('abort', onAbort);
    try {
      // The same packet (Identifier and Request Authenticator) on every retransmission (RFC 5080 section 2.2.1).
      for (let attempt = 0; attempt <= this.#opts.retries && !answered && !signal?.aborted && !this.#closed; attempt++) {
        try {
          socket.send(packet, port, host, (err) => {
            if (err) this.#opts.onResult?.(kind, host, 'send-error');
          });
        } catch {
          // The socket was closed under the request (a reload changed the source address): this try is lost.
          this.#opts.onResult?.(kind, host, 'send-error');
        }
        await new Promise<void>((resolve) => {
          const t = setTimeout(() => {
            this.#waits.delete(wake);
            resolve();
          }, this.#opts.timeoutMs);
          wake = () => {
            clearTimeout(t);
            this.#waits.delete(wake);
            resolve();
          };
          this.#waits.add(wake);
        });
        if (!answered && !signal?.aborted && !this.#closed) this.#opts.onResult?.(kind, host, 'timeout');
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      this.#pending.delete(key);
    }
    if (answered) this.#opts.onResult?.(kind, host, 'answer');
    return answered;
  }

  /** The next Identifier free towards one server port (at most 256 requests in flight to each). */
  #identifier(dest: string): number | undefined {
    const start = this.#nextId.get(dest) ?? Math.floor(Math.random() * 256);
    for (let i = 0; i < 256; i++) {
      const id = (start + i) % 256;
      if (!this.#pending.has(`${dest}|${id}`)) {
        this.#nextId.set(dest, (id + 1) % 256);
        return id;
      }
    }
    return undefined;
  }

  #socket(family: 4 | 6): UdpSocket {
    let s = this.#sockets.get(family);
    if (s) return s;
    s = createSocket(family === 6 ? 'udp6' : 'udp4');
    s.on('message', (msg, rinfo) => this.#onMessage(msg, unmapAddress(rinfo.address), rinfo.port));
    s.on('error', (err) => this.#opts.logger.warn({ err }, 'RADIUS socket error'));
    const src = this.#opts.sourceAddress;
    // Sends issued while the bind is in progress are queued by dgram until it completes.
    if (src && (isIPv6(src) ? 6 : 4) === family) s.bind({ address: src, port: 0 });
    s.unref();
    this.#sockets.set(family, s);
    return s;
  }

  #onMessage(msg: Buffer, host: string, port: number): void {
    if (msg.length < 20) return;
    const key = `${host}|${port}|${msg[1] as number}`;
    const p = this.#pending.get(key);
    if (!p) return; // late (its request gave up) or not ours
    const check: ResponseCheck = verifyResponse(msg, p.authenticator, p.secret, this.#opts.requireMessageAuthenticator && p.kind === 'auth');
    const kind = p.kind;
    if (!check.ok) {
      this.#opts.onResult?.(kind, host, `invalid:${check.why}`);
      this.#opts.logger.warn({ server: host, why: check.why }, 'RADIUS answer dropped: it does not verify with the shared secret (forged, corrupted, or a wrong secret)');
      return;
    }
    const code = check.packet.code;
    const fits = kind === 'auth' ? code === RadiusCode.AccessAccept || code === RadiusCode.AccessReject || code === RadiusCode.AccessChallenge : code === RadiusCode.AccountingResponse;
    if (!fits) {
      this.#opts.onResult?.(kind, host, 'unexpected-code');
      return;
    }
    p.resolve(check.packet);
  }

  /** Closes the sockets; requests in flight end with no answer. */
  close(): void {
    this.#closed = true;
    for (const wake of [...this.#waits]) wake();
    for (const s of this.#sockets.values()) s.close();
    this.#sockets.clear();
  }
}
