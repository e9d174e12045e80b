/**
 * One intercepted LAN connection, converted: wait briefly for the client's first bytes, open an MPTCP
 * connection to a concentrator with the signalling and those bytes in the SYN (TFO), verify the echo before
 * sending anything more, then relay. If a concentrator does not confirm, it is cached as not capable and the
 * next one is tried, then a direct connection, replaying the kept bytes: nothing lost, nothing duplicated.
 */
import { isIP, type Socket } from 'node:net';
import type { Sockets, SpliceEngine } from '../platform/types.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../control/metrics.js';
import { randomBytes } from 'node:crypto';
import { encodeMpConvert, encodeConvertMessage, type Ie, type ConvertTlv } from '../protocol/index.js';
import { IE_TYPE_AUTHENTICATOR, encodeAuthenticator, signAuthenticator } from '../protocol/auth.js';
import { unmapAddress } from '../protocol/address.js';
import { RESET_ON_CLOSE, createRelay, type RelayHandle, type RelayStats } from '../relay/index.js';
import { parseEndpoint } from '../control/address.js';
import type { ConcentratorSelector } from './concentrators.js';
import type { ConcentratorTarget, CpeConfig, Credentials } from './config.js';
import { EchoVerifier, type EchoResult } from './echo.js';
import { TCPI_OPT } from '../platform/structs.js';
import { WARM_IE } from '../protocol/mp-convert.js';
import type { WarmPool } from './warm-pool.js';
import type { Pin } from './pinning.js';
import type { Flow } from '../policy/flow-class.js';
import { asksServerMptcp, directStep, serverMptcpAnswerAt, type ServerMptcpCache } from './server-mptcp.js';

export interface SessionContext {
  sockets: Sockets;
  logger: Logger;
  metrics: Metrics;
  selector: ConcentratorSelector;
  config: () => CpeConfig;
  /** Called with each relay (and what the operator sees of it) so the daemon can list, drain or abort it. */
  track: (relay: RelayHandle, info: RelayInfo) => void;
  /** Zero-copy relaying when the configuration asks for it ('splice'); absent: the stream relay. */
  splice?: SpliceEngine | undefined;
  /** The client's original destination; default: the transparent socket's local address (TPROXY). */
  originalDestination?: (client: Socket) => { address: string; port: number };
  /** The credentials towards a concentrator (read from its secret file at start); undefined = none. */
  credentials?: (target: ConcentratorTarget) => Credentials | undefined;
  /** Clock for the authenticator's timestamp (ms); default Date.now. */
  now?: () => number;
  /** Warm connections to take instead of dialling (src/cpe/warm-pool.ts); absent: always dial. */
  warm?: Pick<WarmPool, 'take'> | undefined;
  /** The flow-class pin of a connection to a concentrator of that family (src/cpe/pinning.ts); absent: none. */
  pin?: ((flow: Flow, family: 4 | 6) => Pin | undefined) | undefined;
  /** Servers known to speak MPTCP (serverMptcp: direct; src/cpe/server-mptcp.ts); absent: never direct. */
  serverMptcp?: ServerMptcpCache | undefined;
}


/** What a relayed connection is, for the operator (the CPE's connection list). */
export interface RelayInfo {
  client: Socket;
  upstream: Socket;
  src: { address: string; port: number };
  dst: { address: string; port: number };
  /** `concentrator ADDR`, `direct` (plain TCP fallback) or `direct-mptcp` (a server that speaks MPTCP). */
  via: string;
  /** Bytes sent upstream before the relay started. */
  sentBefore: number;
}

interface Kept {
  bytes: Buffer;
  /** The client sent FIN before the conversion was ready. */
  ended: boolean;
}

/** Collects the client's first bytes for at most `waitMs` (returns at the first chunk); leaves it paused. */
export function firstData(client: Socket, waitMs: number): Promise<Kept> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    let ended = false;
    const finish = () => {
      clearTimeout(timer);
      client.off('data', onData);
      client.off('end', onEnd);
      client.off('close', onClose);
      client.pause();
      resolve({ bytes: Buffer.concat(parts), ended });
    };
    const onData = (d: Buffer) => {
      parts.push(d);
      finish();
    };
    const onEnd = () => {
      ended = true;
      finish();
    };
    const onClose = () => finish();
    const timer = setTimeout(finish, waitMs);
    client.on('data', onData);
    client.once('end', onEnd);
    client.once('close', onClose);
  });
}

/** What the authenticator of one connection is made of: the key, the time (seconds) and a fresh nonce. */
export interface SigningInput extends Credentials {
  timestamp: number;
  nonce: Buffer;
}

/**
 * The signalling for one connection; with `auth`, the authenticator goes last (the last MP_CONVERT IE, or a
 * Cookie TLV after the Connect TLV) and its MAC covers all of it (docs/protocol.md, "Authenticator").
 */
export function signallingFor(
  target: Pick<ConcentratorTarget, 'format' | 'sourceIe'>,
  dst: { address: string; port: number },
  src?: { address: string; port: number },
  auth?: SigningInput,
  warm = false,
  askServerMptcp = false,
): Buffer {
  const authenticator = auth ? encodeAuthenticator({ keyId: auth.keyId, timestamp: auth.timestamp, nonce: auth.nonce }) : undefined;
  if (target.format === 'rfc8803') {
    const tlvs: ConvertTlv[] = [{ type: 'connect', address: dst.address, port: dst.port, options: Buffer.alloc(0) }];
    if (authenticator) tlvs.push({ type: 'cookie', cookie: authenticator });
    const msg = encodeConvertMessage({ tlvs });
    return auth ? signAuthenticator('rfc8803', msg, auth.secret) : msg;
  }
  const ies: Ie[] = warm ? [{ type: 0x82 }] : [];
  // The server MPTCP query right after any warm IE: the echo answers at serverMptcpAnswerAt(warm).
  if (askServerMptcp) ies.push({ type: 0x85, answer: 0 });
  ies.push({ type: 0, direction: 'destination', address: dst.address, port: dst.port });
  if (target.sourceIe && src) ies.push({ type: 0, direction: 'source', address: src.address, port: src.port });
  if (authenticator) ies.push({ type: IE_TYPE_AUTHENTICATOR, direction: 'destination', body: authenticator });
  const encoded = encodeMpConvert(ies);
  return auth ? signAuthenticator('mp-convert', encoded, auth.secret) : encoded;
}

/**
 * How one concentrator attempt ended. `refused`: the concentrator took the connection (handshake done) and
 * then refused it (reset, RFC 8803 Error TLV): it is reachable, only this connection is refused, and the
 * client is reset. `next`: no conversion through it (unreachable, or not capable): try the next one.
 */
type Attempt = { kind: 'relay'; socket: Socket; leftover: Buffer; serverMptcp?: boolean | undefined } | { kind: 'next' } | { kind: 'refused'; why: string };

/**
 * A dial error means "no handshake with the concentrator" (its SYN refused, timed out, not routable) unless
 * it is a reset of an established connection (ECONNRESET, EPIPE): then the concentrator refused this one.
 */
export function dialFailure(errno: string | undefined): 'unreachable' | 'refused' {
  return errno === 'ECONNRESET' || errno === 'EPIPE' ? 'refused' : 'unreachable';
}

/** Reads until the confirmation is settled; leaves the socket paused. */
function awaitEcho(sock: Socket, verifier: EchoVerifier, timeoutMs: number, sockets: Pick<Sockets, 'takeError'>): Promise<EchoResult | { status: 'timeout' | 'closed' | 'reset' }> {
  return new Promise((resolve) => {
    let got = 0;
    const finish = (r: EchoResult | { status: 'timeout' | 'closed' | 'reset' }) => {
      clearTimeout(timer);
      sock.off('data', onData);
      sock.off('end', onEnd);
      sock.off('error', onError);
      sock.pause();
      resolve(r);
    };
    const onData = (d: Buffer) => {
      got += d.length;
      const r = verifier.push(d);
      if (r.status !== 'need-more') finish(r);
    };
    // libuv reports a reset that arrives behind queued bytes as EOF: a pending socket error says which it was.
    const onEnd = () => {
      let reset = false;
      try {
        reset = sockets.takeError(sock) !== null;
      } catch {
        /* closed meanwhile: nothing to learn */
      }
      finish({ status: reset && got === 0 ? 'reset' : 'closed' });
    };
    // A reset before any byte is the concentrator's abort: it could not reach the destination.
    const onError = () => finish({ status: got === 0 ? 'reset' : 'closed' });
    const timer = setTimeout(() => finish({ status: 'timeout' }), timeoutMs);
    sock.on('data', onData);
    sock.once('end', onEnd);
    sock.on('error', onError);
    sock.resume();
  });
}

/** One intercepted LAN connection as the CPE's pipeline steps see it (set step by step). */
export interface ClientConversion {
  readonly client: Socket;
  readonly cfg: CpeConfig;
  /** classify: the original destination, the LAN client, its DSCP (and as a TOS byte when preserved), a logger naming both (made when first used). */
  dst: { address: string; port: number };
  src: { address: string; port: number };
  dscp: number;
  tos: number;
  readonly log: Logger;
  /** first-data: what the client sent before the conversion, split into what rides in the SYN and the rest. */
  kept: Kept;
  inSyn: Buffer;
  afterEcho: Buffer;
  /** concentrators: the flow-class pin towards the current candidate, if the flow is in a class. */
  pin?: Pin | undefined;
}

type StepResult = 'continue' | 'done';

/**
 * The CPE's conversion pipeline: classify -> first-data -> direct (a server known to speak MPTCP, src/cpe/server-mptcp.ts) -> concentrators (each candidate, best first) ->
 * fallback (direct TCP or refuse). Each step either finishes the connection (relayed, reset, refused) or
 * hands it to the next.
 */
export async function handleClient(client: Socket, ctx: SessionContext): Promise<void> {
  client.on('error', () => {});
  const conv = classify(client, ctx);
  if ((await firstDataStep(conv)) === 'done') return;
  if ((await directStep(conv, ctx, startRelay)) === 'done') return;
  if ((await concentratorsStep(conv, ctx)) === 'done') return;
  await fallbackStep(conv, ctx);
}

/** classify: where the client was going, who it is, its DSCP. */
function classify(client: Socket, ctx: SessionContext): ClientConversion {
  const cfg = ctx.config();
  const dst = ctx.originalDestination?.(client) ?? { address: unmapAddress(client.localAddress ?? ''), port: client.localPort ?? 0 };
  const src = { address: unmapAddress(client.remoteAddress ?? ''), port: client.remotePort ?? 0 };
  // A child logger costs a serialisation of its bindings: made on the first line this connection logs, if any.
  let log: Logger | undefined;
  // The interception ruleset put the client's DSCP in the SYN's mark (dscp << 8 | bit), inherited on accept.
  const dscp = cfg.preserveDscp || cfg.distribution.classes.length > 0 ? (ctx.sockets.getMark(client) >> 8) & 0x3f : 0;
  const tos = cfg.preserveDscp ? dscp << 2 : 0;
  const none = Buffer.alloc(0);
  return {
    client,
    cfg,
    dst,
    src,
    dscp,
    tos,
    get log() {
      return (log ??= ctx.logger.child({ client: `${src.address}:${src.port}`, destination: `${dst.address}:${dst.port}` }));
    },
    kept: { bytes: none, ended: false },
    inSyn: none,
    afterEcho: none,
  };
}

/** first-data: the client's first bytes (bounded wait), so they can ride in the SYN. */
async function firstDataStep(conv: ClientConversion): Promise<StepResult> {
  conv.kept = await firstData(conv.client, conv.cfg.firstDataWaitMs);
  if (conv.client.destroyed) return 'done';
  conv.inSyn = conv.kept.bytes.subarray(0, conv.cfg.synDataMax);
  conv.afterEcho = conv.kept.bytes.subarray(conv.inSyn.length);
  return 'continue';
}

/** concentrators: each usable one in turn, until one converts or refuses this connection. */
async function concentratorsStep(conv: ClientConversion, ctx: SessionContext): Promise<StepResult> {
  const { client } = conv;
  const log = () => conv.log;
  for (const target of ctx.selector.candidates()) {
    conv.pin = ctx.pin?.({ dscp: conv.dscp, dst: conv.dst }, parseEndpoint(target.address).family);
    if (conv.pin) log().debug({ class: conv.pin.class, uplink: conv.pin.uplink }, 'flow class: pinned to one uplink');
    // A warm connection has its subflows on every uplink already: a pinned flow dials its own.
    const warm = conv.pin ? undefined : ctx.warm?.take(target);
    let attempt = warm ? await tryWarm(target, warm, conv, ctx) : await tryConcentrator(target, conv, ctx);
    // A warm connection that did not confirm may have died idle: the client's bytes are kept, dial afresh.
    if (warm && attempt.kind !== 'relay' && !client.destroyed) attempt = await tryConcentrator(target, conv, ctx);
    if (client.destroyed) {
      if (attempt.kind === 'relay') attempt.socket.resetAndDestroy();
      return 'done';
    }
    if (attempt.kind === 'refused') {
      ctx.metrics.refused.inc({ reason: 'concentrator-refused' });
      log().debug({ why: attempt.why, concentrator: target.address }, 'the concentrator refused this connection: resetting the client');
      client.resetAndDestroy();
      return 'done';
    }
    if (attempt.kind === 'relay') {
      ctx.metrics.capability.inc({ result: 'ok' });
      if (attempt.serverMptcp && conv.cfg.serverMptcp.mode === 'direct' && ctx.serverMptcp?.learn(conv.dst)) {
        ctx.metrics.serverMptcp.inc({ event: 'learned' });
        log().debug('the concentrator reached the server over MPTCP: later connections to it go direct');
      }
      if (attempt.leftover.length > 0) client.write(attempt.leftover);
      if (conv.afterEcho.length > 0) attempt.socket.write(conv.afterEcho);
      startRelay(conv, attempt.socket, ctx, `concentrator ${target.address}`);
      return 'done';
    }
  }
  return 'continue';
}

/** fallback: no concentrator converted it: refuse, or plain TCP from the CPE itself, replaying every kept byte. */
async function fallbackStep(conv: ClientConversion, ctx: SessionContext): Promise<void> {
  const { client, cfg, dst, tos, kept } = conv;
  if (cfg.fallback === 'refuse') {
    ctx.metrics.fallback.inc({ to: 'refused' });
    client.resetAndDestroy();
    return;
  }
  let direct: Socket;
  try {
    direct = await ctx.sockets.dial({
      family: isIP(dst.address) as 4 | 6,
      protocol: 'tcp',
      host: dst.address,
      port: dst.port,
      timeoutMs: cfg.connectTimeoutMs,
      linger: RESET_ON_CLOSE,
      ...(tos ? { tos } : {}),
    });
  } catch (err) {
    ctx.metrics.fallback.inc({ to: 'direct-failed' });
    conv.log.debug({ err: (err as Error).message }, 'direct connection failed');
    client.resetAndDestroy();
    return;
  }
  if (client.destroyed) {
    direct.resetAndDestroy();
    return;
  }
  ctx.metrics.fallback.inc({ to: 'direct' });
  if (kept.bytes.length > 0) direct.write(kept.bytes);
  startRelay(conv, direct, ctx, 'direct');
}

async function tryConcentrator(target: ConcentratorTarget, conv: ClientConversion, ctx: SessionContext): Promise<Attempt> {
  const { client, cfg, dst, src, inSyn, tos } = conv;
  const ep = parseEndpoint(target.address);
  const creds = ctx.credentials?.(target);
  const ask = asksServerMptcp(cfg, target);
  const signalling = signallingFor(
    target,
    dst,
    src,
    creds ? { ...creds, timestamp: Math.floor((ctx.now ?? Date.now)() / 1000), nonce: randomBytes(16) } : undefined,
    false,
    ask,
  );
  const abort = new AbortController();
  const onClientGone = () => abort.abort();
  client.once('close', onClientGone);
  let sock: Socket;
  try {
    sock = await ctx.sockets.dial({
      family: ep.family,
      protocol: 'mptcp',
      host: ep.host,
      port: ep.port,
      fastOpen: target.zeroRtt ? 'no-cookie' : 'off',
      data: Buffer.concat([signalling, inSyn]),
      timeoutMs: cfg.connectTimeoutMs,
      signal: abort.signal,
      // If this process dies, the concentrator (and through it the server) sees MP_FASTCLOSE, not DATA_FIN.
      linger: RESET_ON_CLOSE,
      ...(tos ? { tos } : {}),
      ...(cfg.mss ? { maxSeg: cfg.mss } : {}),
      // Pinned (flow class): the initial subflow leaves from the uplink's address, the mark stops the joins.
      ...(conv.pin ? { mark: conv.pin.mark, localAddress: conv.pin.localAddress } : {}),
    });
  } catch (err) {
    client.off('close', onClientGone);
    if (client.destroyed) return { kind: 'next' };
    const errno = (err as { code?: string }).code;
    // Reset after the SYN/ACK (a refusal of the SYN would be ECONNREFUSED): what a SYN-cookie answer to data
    // in the SYN gets (a SYN flood). Once, without SYN data, before taking it as the concentrator's refusal.
    if (target.zeroRtt && errno === 'ECONNRESET') return retryWithoutSynData(target, conv, ctx);
    if (dialFailure(errno) === 'refused') {
      ctx.selector.markWorking(target);
      return { kind: 'refused', why: `reset after the handshake (${errno})` };
    }
    ctx.selector.markUnreachable(target);
    ctx.metrics.capability.inc({ result: 'unreachable' });
    conv.log.warn({ concentrator: target.address, err: (err as Error).message }, 'concentrator unreachable, trying the next');
    return { kind: 'next' };
  }
  sock.on('error', () => {});
  ctx.selector.markWorking(target);
  if (target.zeroRtt && !zeroRttLanded(ctx.sockets, sock)) {
    client.off('close', onClientGone);
    sock.resetAndDestroy();
    return retryWithoutSynData(target, conv, ctx);
  }
  if (!ctx.sockets.isMptcp(sock)) {
    client.off('close', onClientGone);
    // A connection the concentrator already reset (a refusal: rate limit, policy) no longer reports MPTCP
    // either; that is this connection refused, not a path that strips MPTCP.
    if (wasReset(ctx.sockets, sock)) {
      sock.resetAndDestroy();
      return { kind: 'refused', why: 'reset right after the handshake' };
    }
    // The path stripped MPTCP: no conversion is possible through it (and the concentrator would refuse).
    sock.resetAndDestroy();
    ctx.selector.markNotCapable(target);
    ctx.metrics.capability.inc({ result: 'tcp-fallback' });
    conv.log.warn({ concentrator: target.address }, 'MPTCP was not negotiated with the concentrator: cached as not capable');
    return { kind: 'next' };
  }
  const r = await awaitEcho(sock, new EchoVerifier(target.format, signalling, ask ? serverMptcpAnswerAt(false) : undefined), cfg.echoTimeoutMs, ctx.sockets);
  client.off('close', onClientGone);
  if (r.status === 'confirmed') return { kind: 'relay', socket: sock, leftover: r.leftover, serverMptcp: r.serverMptcp };
  sock.resetAndDestroy();
  if (r.status === 'reset') return { kind: 'refused', why: 'concentrator aborted before confirming' };
  if (r.status === 'refused') return { kind: 'refused', why: `Convert Error TLV ${r.errorCode}` };
  ctx.selector.markNotCapable(target);
  ctx.metrics.capability.inc({ result: r.status });
  conv.log.warn({ concentrator: target.address, result: r.status }, 'no valid echo from the concentrator: cached as not capable, falling back');
  return { kind: 'next' };
}

/**
 * A warm connection (src/cpe/warm-pool.ts) is already up, its subflows joined, its warm IE sent: the rest of
 * the signalling and the client's first bytes go at once, and the echo is checked as after a dial.
 */
async function tryWarm(target: ConcentratorTarget, sock: Socket, conv: ClientConversion, ctx: SessionContext): Promise<Attempt> {
  const { cfg, dst, src, inSyn, tos } = conv;
  const creds = ctx.credentials?.(target);
  const ask = asksServerMptcp(cfg, target);
  const signalling = signallingFor(target, dst, src, creds ? { ...creds, timestamp: Math.floor((ctx.now ?? Date.now)() / 1000), nonce: randomBytes(16) } : undefined, true, ask);
  try {
    if (tos) ctx.sockets.setTos(sock, tos);
  } catch {
    /* closed meanwhile: the echo wait sees it */
  }
  sock.write(Buffer.concat([signalling.subarray(WARM_IE.length), inSyn]));
  const r = await awaitEcho(sock, new EchoVerifier(target.format, signalling, ask ? serverMptcpAnswerAt(true) : undefined), cfg.echoTimeoutMs, ctx.sockets);
  if (r.status === 'confirmed') return { kind: 'relay', socket: sock, leftover: r.leftover, serverMptcp: r.serverMptcp };
  sock.resetAndDestroy();
  ctx.metrics.capability.inc({ result: 'warm-stale' });
  conv.log.debug({ concentrator: target.address, result: r.status }, 'warm connection did not confirm: dialling afresh');
  return { kind: 'next' };
}

/**
 * A SYN-cookie answer (the concentrator's SYN queue is full: a SYN flood) does not take the SYN data; the
 * connection is then reset or comes up as TCP, which the concentrator refuses. Once, at once, without SYN data.
 */
function retryWithoutSynData(target: ConcentratorTarget, conv: ClientConversion, ctx: SessionContext): Promise<Attempt> {
  ctx.metrics.capability.inc({ result: 'zero-rtt-retry' });
  conv.log.debug({ concentrator: target.address }, '0-RTT did not land (reset after the SYN/ACK, or SYN data not taken): retrying without data in the SYN');
  return tryConcentrator({ ...target, zeroRtt: false }, conv, ctx);
}

/**
 * The SYN/ACK acknowledged the SYN's data (tcpi_options SYN_DATA). A SYN-cookie answer never does; MPTCP stripped
 * on the path with the data taken is left to the MPTCP check that follows (a retry would not help it).
 */
/** The socket was reset by its peer (or is gone): its pending error, read once. */
function wasReset(sockets: Pick<Sockets, 'takeError'>, sock: Socket): boolean {
  if (sock.destroyed) return true;
  try {
    return sockets.takeError(sock) !== null;
  } catch {
    return true; // no descriptor any more: closed under us
  }
}

function zeroRttLanded(sockets: Sockets, sock: Socket): boolean {
  const info = sockets.tcpInfo(sock);
  // No tcp_info (not expected on Linux): nothing says it failed.
  return info === null || (info.options & TCPI_OPT.SYN_DATA) !== 0;
}

export function startRelay(conv: ClientConversion, upstream: Socket, ctx: SessionContext, via: string): void {
  const { client, kept, cfg, src, dst } = conv;
  const sentAlready = kept.bytes.length;
  const logger = ctx.logger;
  const engine = cfg.relayEngine === 'splice' ? ctx.splice : undefined;
  const relay = createRelay(client, upstream, { idleTimeoutMs: cfg.idleTimeoutS * 1000, aEnded: kept.ended, sockets: ctx.sockets }, engine);
  ctx.metrics.active.inc();
  ctx.track(relay, { client, upstream, src: conv.src, dst: conv.dst, via, sentBefore: sentAlready });
  relay.on('close', (stats: RelayStats) => {
    ctx.metrics.active.dec();
    ctx.metrics.connections.inc({ outcome: stats.outcome });
    ctx.metrics.relayed.inc({ engine: relay.mode });
    ctx.metrics.bytes.inc({ direction: 'up' }, stats.aToB + sentAlready);
    ctx.metrics.bytes.inc({ direction: 'down' }, stats.bToA);
    // The close handler lives as long as the connection: it keeps the addresses, not the conversion (nor its kept bytes).
    if (logger.isLevelEnabled('debug')) {
      logger.debug({ client: `${src.address}:${src.port}`, destination: `${dst.address}:${dst.port}`, via, up: stats.aToB + sentAlready, down: stats.bToA, outcome: stats.outcome, durationMs: stats.durationMs, relay: relay.mode }, 'connection closed');
    }
  });
}
