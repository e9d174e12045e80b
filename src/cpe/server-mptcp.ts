/**
 * Direct MPTCP to servers that speak it (`serverMptcp.mode: direct`; docs/cpe.md, "Direct MPTCP to servers").
 * The concentrator's server leg dials MPTCP first and tells the CPE whether that leg negotiated MPTCP, by one of
 * two signals (docs/protocol.md section 1.7): an MP_CONVERT concentrator answers the server MPTCP query IE the
 * CPE puts in its signalling; an RFC 8803 one (with `server.reportMptcp`) adds an Extended TCP Header TLV with
 * MP_CAPABLE to its reply (src/protocol/server-options.ts). Both feed this one cache of servers (bounded, with a
 * TTL, flushed on an uplink change or a reload, like the concentrator capability cache).
 * A later connection to such a server is an MPTCP connection from the CPE itself, over every uplink (its MPTCP
 * endpoints and per-uplink routing), relayed to the LAN client like a converted one: a client and a multipath
 * server with one MCP on the path (draft-nam-mptcp-deployment-considerations, figure 2). A direct dial that fails or
 * comes up as plain TCP drops the entry, and the connection goes through the concentrator as before.
 */
import { isIP, type Socket } from 'node:net';
import { ExpiringSet } from '../concentrator/server-dialer.js';
import { SERVER_MPTCP_ANSWER_OFFSET, WARM_IE } from '../protocol/mp-convert.js';
import { RESET_ON_CLOSE } from '../relay/index.js';
import type { ConcentratorTarget, CpeConfig } from './config.js';
import type { ClientConversion, SessionContext } from './session.js';

type Destination = { address: string; port: number };

/** Servers (address and port) whose concentrator server leg negotiated MPTCP. */
export class ServerMptcpCache {
  #set: ExpiringSet;
  readonly #now: () => number;

  constructor(settings: CpeConfig['serverMptcp'], now: () => number = Date.now) {
    this.#now = now;
    this.#set = new ExpiringSet(settings.cacheTtlS * 1000, settings.cacheSize, now);
  }

  static key(dst: Destination): string {
    return `${dst.address} ${dst.port}`;
  }

  has(dst: Destination): boolean {
    return this.#set.has(ServerMptcpCache.key(dst));
  }

  /** Remembers (or refreshes) the server; false if it was known already. */
  learn(dst: Destination): boolean {
    const known = this.has(dst);
    this.#set.add(ServerMptcpCache.key(dst));
    return !known;
  }

  drop(dst: Destination): void {
    this.#set.delete(ServerMptcpCache.key(dst));
  }

  /** Forgets everything (an uplink or address changed); returns how many entries were dropped. */
  flush(): number {
    const n = this.#set.size;
    this.#set.clear();
    return n;
  }

  /** New settings (a reload): starts empty. */
  configure(settings: CpeConfig['serverMptcp']): number {
    const n = this.flush();
    this.#set = new ExpiringSet(settings.cacheTtlS * 1000, settings.cacheSize, this.#now);
    return n;
  }

  get size(): number {
    return this.#set.size;
  }
}

/**
 * The connection asks its concentrator about the server leg: direct mode, MP_CONVERT. RFC 8803 has no query:
 * its concentrators say it unasked, in the reply's Extended TCP Header TLV (read by src/cpe/echo.ts).
 */
export function asksServerMptcp(cfg: Pick<CpeConfig, 'serverMptcp'>, target: Pick<ConcentratorTarget, 'format'>): boolean {
  return cfg.serverMptcp.mode === 'direct' && target.format === 'mp-convert';
}

/** Where the query's Answer octet sits in the signalling signallingFor builds (the query follows a warm IE). */
export function serverMptcpAnswerAt(warm: boolean): number {
  return (warm ? WARM_IE.length : 0) + SERVER_MPTCP_ANSWER_OFFSET;
}

/**
 * The direct step of the CPE's pipeline (after first-data, before the concentrators): for a server known to
 * speak MPTCP, dial it over MPTCP from the CPE and relay. 'continue': not known, a pinned flow (a flow class
 * keeps its uplink through the concentrator), or the dial failed / was plain TCP (entry dropped).
 */
export async function directStep(
  conv: ClientConversion,
  ctx: SessionContext,
  relay: (conv: ClientConversion, upstream: Socket, ctx: SessionContext, via: string) => void,
): Promise<'continue' | 'done'> {
  const cache = ctx.serverMptcp;
  const { client, cfg, dst, tos, kept } = conv;
  if (!cache || cfg.serverMptcp.mode !== 'direct' || !cache.has(dst)) return 'continue';
  const family = isIP(dst.address) as 4 | 6;
  if (ctx.pin?.({ dscp: conv.dscp, dst }, family)) return 'continue';
  const abort = new AbortController();
  const onClientGone = () => abort.abort();
  client.once('close', onClientGone);
  let sock: Socket;
  try {
    sock = await ctx.sockets.dial({
      family,
      protocol: 'mptcp',
      host: dst.address,
      port: dst.port,
      timeoutMs: cfg.connectTimeoutMs,
      signal: abort.signal,
      linger: RESET_ON_CLOSE,
      ...(tos ? { tos } : {}),
      ...(cfg.mss ? { maxSeg: cfg.mss } : {}),
    });
  } catch (err) {
    client.off('close', onClientGone);
    if (client.destroyed) return 'done';
    cache.drop(dst);
    ctx.metrics.serverMptcp.inc({ event: 'fallback' });
    conv.log.info({ err: (err as Error).message }, 'direct MPTCP dial to the server failed: dropped from the server MPTCP cache, through the concentrator');
    return 'continue';
  }
  client.off('close', onClientGone);
  sock.on('error', () => {});
  if (client.destroyed) {
    sock.resetAndDestroy();
    return 'done';
  }
  if (!ctx.sockets.isMptcp(sock)) {
    // The server (or the path) no longer speaks MPTCP: the concentrator keeps the connection multipath.
    sock.resetAndDestroy();
    cache.drop(dst);
    ctx.metrics.serverMptcp.inc({ event: 'fallback' });
    conv.log.info('the server answered the direct dial with plain TCP: dropped from the server MPTCP cache, through the concentrator');
    return 'continue';
  }
  ctx.metrics.serverMptcp.inc({ event: 'direct' });
  if (kept.bytes.length > 0) sock.write(kept.bytes);
  relay(conv, sock, ctx, 'direct-mptcp');
  return 'done';
}
