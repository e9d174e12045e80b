/**
 * Conversion strategies: what the concentrator does with a connection once its signalling passed every
 * gate and its source address is chosen. Today one: explicit TCP (dial the server named by the signalling,
 * confirm, relay). The UDP channel and the on-path mode plug in here.
 */
import type { Socket } from 'node:net';
import { formatEndpoint } from '../control/address.js';
import type { Metrics } from '../control/metrics.js';
import type { Sockets, SpliceEngine } from '../platform/types.js';
import type { ProxyProtocolTargets } from '../policy/proxy-protocol.js';
import { unmapAddress } from '../protocol/address.js';
import { refuse, type Refusal } from '../policy/refusals.js';
import { createRelay, type RelayStats } from '../relay/index.js';
import type { ConnectionContext } from './context.js';
import { proxyHeader } from './proxy-header.js';
import { PortBlocksError, type ServerDialer, type ServerTransport } from './server-dialer.js';
import { confirmation } from './signalling.js';

export interface ConversionStrategy {
  readonly name: string;
  /** Resolves once the pair is relayed (ctx.relay set) or with the refusal; never throws for network failures. */
  convert(ctx: ConnectionContext): Promise<Refusal | undefined>;
  /**
   * The relay it made ended (called by the relay's one 'close' listener, the concentrator's, when the strategy
   * set `ctx.conversion`): its metrics and the session log's close line.
   */
  closed?(ctx: ConnectionContext, stats: RelayStats): void;
}

export interface ExplicitTcpDeps {
  sockets: Sockets;
  dialer: ServerDialer;
  metrics: Metrics;
  sessionLog: (line: Record<string, unknown>) => void;
  now: () => number;
  splice?: SpliceEngine | undefined;
  /** Read per connection, so a reload applies to new connections. */
  settings: () => { preserveDscp: boolean; idleTimeoutS: number; relayEngine: 'splice' | 'streams'; server: { reportMptcp: boolean } };
  stopping: () => boolean;
  /** Destinations whose server leg starts with a PROXY v2 header (compiled once per configuration). */
  proxyProtocol: () => ProxyProtocolTargets;
}

/** Explicit mode, TCP: the server leg is a TCP (or MPTCP) connection to the signalled destination. */
export class ExplicitTcpConversion implements ConversionStrategy {
  readonly name = 'tcp';
  constructor(private readonly deps: ExplicitTcpDeps) {}

  async convert(ctx: ConnectionContext): Promise<Refusal | undefined> {
    const { deps } = this;
    const { socket } = ctx;
    const dest = ctx.destination;
    const read = ctx.signalling;
    if (!dest || !read) throw new Error('ExplicitTcpConversion: run after the destination step');
    const settings = deps.settings();
    const dialled = await this.#dialServer(ctx, dest, settings.preserveDscp);
    if ('refusal' in dialled) return dialled.refusal;
    const { socket: server, transport } = dialled;
    if (socket.destroyed || deps.stopping()) {
      server.resetAndDestroy();
      return refuse(socket.destroyed ? 'client-gone' : 'stopping');
    }
    deps.metrics.serverLeg.inc({ transport });
    // A connection accepted from a TFO SYN is readable (and was dialled for) before the CPE's handshake ACK
    // has arrived; Linux 6.18 MPTCP loses data sent in that state (the CPE never sees the echo), so the first
    // byte waits for the handshake to complete. The server dial has still started one round trip earlier.
    if (!(await established(deps.sockets, socket, deps.now))) {
      server.resetAndDestroy();
      return refuse(socket.destroyed ? 'client-gone' : 'handshake-timeout');
    }
    if (socket.destroyed || deps.stopping()) {
      server.resetAndDestroy();
      return refuse(socket.destroyed ? 'client-gone' : 'stopping');
    }
    // Confirm (echo the IEs byte for byte, answering a server MPTCP query / Convert reply), then what the client sent after its signalling,
    // behind the PROXY header if this destination wants one (header and early bytes in one write: the spec
    // asks for the header at once).
    socket.write(confirmation(read, transport === 'mptcp', settings.server.reportMptcp));
    const header = deps.proxyProtocol().wants(dest.address, dest.port) ? proxyHeader(ctx, dest) : undefined;
    const first = header ? (read.rest.length > 0 ? Buffer.concat([header, read.rest]) : header) : read.rest;
    if (first.length > 0) server.write(first);
    const upPre = read.rest.length;
    // An idle relayed connection keeps its context for its whole life: let the signalling go (the format
    // stays in ctx.format, the early bytes' count in ctx.earlyUp).
    ctx.earlyUp = upPre;
    ctx.signalling = undefined;
    const external = server.localAddress ? formatEndpoint(unmapAddress(server.localAddress), server.localPort ?? 0) : undefined;
    ctx.serverLocal = external;
    deps.metrics.setup.observe((deps.now() - ctx.started) / 1000);
    deps.sessionLog({
      event: 'open',
      session: ctx.id,
      cpe: ctx.cpe,
      // The CPE's side of the MPTCP connection (RFC 6888 section 4: the internal address and port).
      ...(socket.remotePort !== undefined ? { cpePort: socket.remotePort } : {}),
      ...(ctx.keyId ? { keyId: ctx.keyId } : {}),
      external,
      destination: formatEndpoint(dest.address, dest.port),
      format: read.format,
      transport,
      ...(read.source ? { source: read.source.address } : {}),
      ...(read.source?.port !== undefined ? { sourcePort: read.source.port } : {}),
      ...(header ? { proxyProtocol: 'v2' } : {}),
    });
    deps.metrics.active.inc();
    ctx.relay = createRelay(socket, server, { idleTimeoutMs: settings.idleTimeoutS * 1000, sockets: deps.sockets }, settings.relayEngine === 'splice' ? deps.splice : undefined);
    ctx.conversion = this;
    return undefined;
  }

  closed(ctx: ConnectionContext, stats: RelayStats): void {
    const { deps } = this;
    const up = stats.aToB + (ctx.earlyUp ?? 0);
    const mode = ctx.relay?.mode ?? 'streams';
    deps.metrics.active.dec();
    deps.metrics.connections.inc({ outcome: stats.outcome });
    deps.metrics.relayed.inc({ engine: mode });
    deps.metrics.bytes.inc({ direction: 'up' }, up);
    deps.metrics.bytes.inc({ direction: 'down' }, stats.bToA);
    deps.sessionLog({
      event: 'close',
      session: ctx.id,
      cpe: ctx.cpe,
      external: ctx.serverLocal,
      destination: ctx.destination ? formatEndpoint(ctx.destination.address, ctx.destination.port) : undefined,
      bytesUp: up,
      bytesDown: stats.bToA,
      durationMs: stats.durationMs,
      outcome: stats.outcome,
      relay: mode,
    });
  }

  /**
   * The server leg. Its own function so that the abort controller and the early-close listener live in a
   * short-lived scope: a closure of convert() (the relay's close handler) keeps convert's scope for the whole
   * connection.
   */
  async #dialServer(ctx: ConnectionContext, dest: NonNullable<ConnectionContext['destination']>, preserveDscp: boolean): Promise<{ socket: Socket; transport: ServerTransport } | { refusal: Refusal }> {
    const { deps } = this;
    const { socket } = ctx;
    const abort = new AbortController();
    const onEarlyClose = () => abort.abort();
    socket.once('close', onEarlyClose);
    try {
      const tos = preserveDscp ? deps.sockets.getTos(socket) & 0xfc : 0;
      return await deps.dialer.dial({
        host: dest.address,
        port: dest.port,
        family: dest.family,
        localAddress: ctx.external,
        transparent: ctx.externalTransparent,
        ports: ctx.ports,
        tos: tos > 0 ? tos : undefined,
        signal: abort.signal,
      });
    } catch (err) {
      if (socket.destroyed) return { refusal: refuse('client-gone') };
      if (err instanceof PortBlocksError) return { refusal: refuse(err.refusal) };
      const errno = (err as { code?: string }).code ?? 'EUNKNOWN';
      return { refusal: refuse('dial', { qualifier: errno, convertError: dialErrorCode(errno), detail: { destination: formatEndpoint(dest.address, dest.port) } }) };
    } finally {
      socket.off('close', onEarlyClose);
    }
  }
}

/** TCP_SYN_RECV in tcp_info's state: the handshake's last ACK has not arrived yet. */
const TCP_SYN_RECV = 3;
/** How long the first byte may wait for the CPE's handshake ACK (it is one round trip behind the SYN). */
const HANDSHAKE_WAIT_MS = 5_000;

/**
 * Resolves true once the MPTCP connection's handshake is complete (at once for a connection that was accepted
 * after its handshake, the usual case without 0-RTT), false when the socket closed or the wait ran out. Polls
 * each millisecond: it waits at most about one round trip.
 *
 * Complete means the CPE's key arrived: MPTCP v1 carries the client's key only in the handshake's last ACK, and
 * the kernel sets MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED (msk->can_ack) when it does: one MPTCP_INFO read. Only
 * while that flag is still clear is the initial subflow's state read (the costlier MPTCP_FULL_INFO).
 */
export async function established(sockets: Sockets, socket: Socket, now: () => number): Promise<boolean> {
  const deadline = now() + HANDSHAKE_WAIT_MS;
  for (;;) {
    if (socket.destroyed) return false;
    let state: number | undefined;
    try {
      const info = sockets.mptcpInfo(socket);
      if (info === null || info.remoteKeyReceived) return true; // TCP fallback: nothing to wait for
      state = sockets.subflows(socket)[0]?.tcp?.state;
    } catch {
      return !socket.destroyed; // no subflow information (TCP fallback): nothing to wait for
    }
    if (state !== TCP_SYN_RECV) return true;
    if (now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** RFC 8803 section 6.2.8 error codes for a failed server connection. */
export function dialErrorCode(errno: string): number {
  switch (errno) {
    case 'ECONNREFUSED':
    case 'ECONNRESET':
      return 96; // Connection Reset
    case 'ETIMEDOUT':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'EHOSTDOWN':
      return 97; // Destination Unreachable
    case 'EMFILE':
    case 'ENFILE':
    case 'ENOBUFS':
    case 'ENOMEM':
    case 'EADDRNOTAVAIL':
      return 64; // Resource Exceeded
    default:
      return 65; // Network Failure
  }
}
