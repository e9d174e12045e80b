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
import { encodeMpConvert, encodeConvertMessage, type AddressIe } from '../protocol/index.js';
import { createRelay, type RelayHandle, type RelayStats } from '../relay/index.js';
import { parseEndpoint } from '../control/address.js';
import type { ConcentratorSelector } from './concentrators.js';
import type { ConcentratorTarget, CpeConfig } from './config.js';
import { EchoVerifier, type EchoResult } from './echo.js';
import { TCPI_OPT } from '../platform/structs.js';

export interface SessionContext {
  sockets: Sockets;
  logger: Logger;
  metrics: Metrics;
  selector: ConcentratorSelector;
  config: () => CpeConfig;
  /** Called with each relay so the daemon can drain or abort it on shutdown. */
  track: (relay: RelayHandle) => void;
  /** Zero-copy relaying when the configuration asks for it ('splice'); absent: the stream relay. */
  splice?: SpliceEngine | undefined;
  /** The client's original destination; default: the transparent socket's local address (TPROXY). */
  originalDestination?: (client: Socket) => { address: string; port: number };
}

const stripMapped = (a: string): string => (a.startsWith('::ffff:') && isIP(a.slice(7)) === 4 ? a.slice(7) : a);

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

export function signallingFor(target: ConcentratorTarget, dst: { address: string; port: number }, src?: { address: string; port: number }): Buffer {
  if (target.format === 'rfc8803') {
    return encodeConvertMessage({ tlvs: [{ type: 'connect', address: dst.address, port: dst.port, options: Buffer.alloc(0) }] });
  }
  const ies: AddressIe[] = [{ type: 0, direction: 'destination', address: dst.address, port: dst.port }];
  if (target.sourceIe && src) ies.push({ type: 0, direction: 'source', address: src.address, port: src.port });
  return encodeMpConvert(ies);
}

type Attempt = { kind: 'relay'; socket: Socket; leftover: Buffer } | { kind: 'next' } | { kind: 'destination-failed'; why: string };

/** Reads until the confirmation is settled; leaves the socket paused. */
function awaitEcho(sock: Socket, verifier: EchoVerifier, timeoutMs: number): Promise<EchoResult | { status: 'timeout' | 'closed' | 'reset' }> {
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
    const onEnd = () => finish({ status: 'closed' });
    // A reset before any byte is the concentrator's abort: it could not reach the destination.
    const onError = () => finish({ status: got === 0 ? 'reset' : 'closed' });
    const timer = setTimeout(() => finish({ status: 'timeout' }), timeoutMs);
    sock.on('data', onData);
    sock.once('end', onEnd);
    sock.on('error', onError);
    sock.resume();
  });
}

export async function handleClient(client: Socket, ctx: SessionContext): Promise<void> {
  const cfg = ctx.config();
  client.on('error', () => {});
  const dst = ctx.originalDestination?.(client) ?? { address: stripMapped(client.localAddress ?? ''), port: client.localPort ?? 0 };
  const src = { address: stripMapped(client.remoteAddress ?? ''), port: client.remotePort ?? 0 };
  const log = ctx.logger.child({ client: `${src.address}:${src.port}`, destination: `${dst.address}:${dst.port}` });
  let tos = 0;
  if (cfg.preserveDscp) {
    // The interception ruleset put the client's DSCP in the SYN's mark (dscp << 8 | bit), inherited on accept.
    const mark = ctx.sockets.getMark(client);
    tos = ((mark >> 8) & 0x3f) << 2;
  }
  const kept = await firstData(client, cfg.firstDataWaitMs);
  if (client.destroyed) return;
  const inSyn = kept.bytes.subarray(0, cfg.synDataMax);
  const afterEcho = kept.bytes.subarray(inSyn.length);

  for (const target of ctx.selector.candidates()) {
    const attempt = await tryConcentrator(target, client, ctx, cfg, dst, src, inSyn, tos, log);
    if (client.destroyed) {
      if (attempt.kind === 'relay') attempt.socket.resetAndDestroy();
      return;
    }
    if (attempt.kind === 'destination-failed') {
      ctx.metrics.refused.inc({ reason: 'destination-failed' });
      log.debug({ why: attempt.why }, 'concentrator could not reach the destination: resetting the client');
      client.resetAndDestroy();
      return;
    }
    if (attempt.kind === 'relay') {
      ctx.metrics.capability.inc({ result: 'ok' });
      if (attempt.leftover.length > 0) client.write(attempt.leftover);
      if (afterEcho.length > 0) attempt.socket.write(afterEcho);
      startRelay(client, attempt.socket, kept, ctx, cfg, log, `concentrator ${target.address}`, kept.bytes.length);
      return;
    }
  }
  if (cfg.fallback === 'refuse') {
    ctx.metrics.fallback.inc({ to: 'refused' });
    client.resetAndDestroy();
    return;
  }
  // Direct: plain TCP from the CPE itself, replaying everything the client sent so far.
  let direct: Socket;
  try {
    direct = await ctx.sockets.dial({
      family: isIP(dst.address) as 4 | 6,
      protocol: 'tcp',
      host: dst.address,
      port: dst.port,
      timeoutMs: cfg.connectTimeoutMs,
      ...(tos ? { tos } : {}),
    });
  } catch (err) {
    ctx.metrics.fallback.inc({ to: 'direct-failed' });
    log.debug({ err: (err as Error).message }, 'direct connection failed');
    client.resetAndDestroy();
    return;
  }
  if (client.destroyed) {
    direct.resetAndDestroy();
    return;
  }
  ctx.metrics.fallback.inc({ to: 'direct' });
  if (kept.bytes.length > 0) direct.write(kept.bytes);
  startRelay(client, direct, kept, ctx, cfg, log, 'direct', kept.bytes.length);
}

async function tryConcentrator(
  target: ConcentratorTarget,
  client: Socket,
  ctx: SessionContext,
  cfg: CpeConfig,
  dst: { address: string; port: number },
  src: { address: string; port: number },
  inSyn: Buffer,
  tos: number,
  log: Logger,
): Promise<Attempt> {
  const ep = parseEndpoint(target.address);
  const signalling = signallingFor(target, dst, src);
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
      ...(tos ? { tos } : {}),
      ...(cfg.mss ? { maxSeg: cfg.mss } : {}),
    });
  } catch (err) {
    client.off('close', onClientGone);
    if (client.destroyed) return { kind: 'next' };
    // Reset after the SYN/ACK (a refusal would be ECONNREFUSED): what a SYN-cookie answer to data in the SYN gets.
    if (target.zeroRtt && (err as { code?: string }).code === 'ECONNRESET') return retryWithoutSynData(target, client, ctx, cfg, dst, src, inSyn, tos, log);
    ctx.selector.markUnreachable(target);
    ctx.metrics.capability.inc({ result: 'unreachable' });
    log.warn({ concentrator: target.address, err: (err as Error).message }, 'concentrator unreachable, trying the next');
    return { kind: 'next' };
  }
  sock.on('error', () => {});
  ctx.selector.markWorking(target);
  if (target.zeroRtt && !zeroRttLanded(ctx.sockets, sock)) {
    client.off('close', onClientGone);
    sock.resetAndDestroy();
    return retryWithoutSynData(target, client, ctx, cfg, dst, src, inSyn, tos, log);
  }
  if (!ctx.sockets.isMptcp(sock)) {
    // The path stripped MPTCP: no conversion is possible through it (and the concentrator would refuse).
    client.off('close', onClientGone);
    sock.resetAndDestroy();
    ctx.selector.markNotCapable(target);
    ctx.metrics.capability.inc({ result: 'tcp-fallback' });
    log.warn({ concentrator: target.address }, 'MPTCP was not negotiated with the concentrator: cached as not capable');
    return { kind: 'next' };
  }
  const r = await awaitEcho(sock, new EchoVerifier(target.format, signalling), cfg.echoTimeoutMs);
  client.off('close', onClientGone);
  if (r.status === 'confirmed') return { kind: 'relay', socket: sock, leftover: r.leftover };
  sock.resetAndDestroy();
  if (r.status === 'reset') return { kind: 'destination-failed', why: 'concentrator aborted before confirming' };
  if (r.status === 'refused') return { kind: 'destination-failed', why: `Convert Error TLV ${r.errorCode}` };
  ctx.selector.markNotCapable(target);
  ctx.metrics.capability.inc({ result: r.status });
  log.warn({ concentrator: target.address, result: r.status }, 'no valid echo from the concentrator: cached as not capable, falling back');
  return { kind: 'next' };
}

/**
 * A SYN-cookie answer (the concentrator's SYN queue is full: a SYN flood) does not take the SYN data; the
 * connection is then reset or comes up as TCP, which the concentrator refuses. Once, at once, without SYN data.
 */
function retryWithoutSynData(
  target: ConcentratorTarget,
  client: Socket,
  ctx: SessionContext,
  cfg: CpeConfig,
  dst: { address: string; port: number },
  src: { address: string; port: number },
  inSyn: Buffer,
  tos: number,
  log: Logger,
): Promise<Attempt> {
  ctx.metrics.capability.inc({ result: 'zero-rtt-retry' });
  log.debug({ concentrator: target.address }, '0-RTT did not land (reset after the SYN/ACK, or SYN data not taken): retrying without data in the SYN');
  return tryConcentrator({ ...target, zeroRtt: false }, client, ctx, cfg, dst, src, inSyn, tos, log);
}

/**
 * The SYN/ACK acknowledged the SYN's data (tcpi_options SYN_DATA). A SYN-cookie answer never does; MPTCP stripped
 * on the path with the data taken is left to the MPTCP check that follows (a retry would not help it).
 */
function zeroRttLanded(sockets: Sockets, sock: Socket): boolean {
  const info = sockets.tcpInfo(sock);
  // No tcp_info (not expected on Linux): nothing says it failed.
  return info === null || (info.options & TCPI_OPT.SYN_DATA) !== 0;
}

function startRelay(client: Socket, upstream: Socket, kept: Kept, ctx: SessionContext, cfg: CpeConfig, log: Logger, via: string, sentAlready: number): void {
  const engine = cfg.relayEngine === 'splice' ? ctx.splice : undefined;
  const relay = createRelay(client, upstream, { idleTimeoutMs: cfg.idleTimeoutS * 1000, aEnded: kept.ended }, engine);
  ctx.metrics.active.inc();
  ctx.track(relay);
  relay.once('close', (stats: RelayStats) => {
    ctx.metrics.active.dec();
    ctx.metrics.connections.inc({ outcome: stats.outcome });
    ctx.metrics.relayed.inc({ engine: relay.mode });
    ctx.metrics.bytes.inc({ direction: 'up' }, stats.aToB + sentAlready);
    ctx.metrics.bytes.inc({ direction: 'down' }, stats.bToA);
    log.debug({ via, up: stats.aToB + sentAlready, down: stats.bToA, outcome: stats.outcome, durationMs: stats.durationMs, relay: relay.mode }, 'connection closed');
  });
}
