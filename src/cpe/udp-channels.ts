/**
 * UDP channels, CPE side (docs/cpe.md "UDP"): LAN UDP that the interception diverted (TPROXY into the
 * platform's transparent UDP sockets) goes, framed, over one long-lived MPTCP connection to the
 * concentrator, so it is aggregated over the uplinks and fails over with them; answers come back framed and
 * are sent to the LAN client from the server's address and port.
 *
 * - The channel is opened at start and re-opened (make before break) when an uplink, an address or the
 *   concentrator choice changes, and at once when it ends; no datagram waits for a handshake unless there is
 *   no channel at all (then it is dropped and counted: `no-channel`).
 * - UDP is offered when the concentrator echoes the channel's signalling (the transport IE, protocol 17).
 *   A concentrator that aborts it instead does not offer UDP: it is asked again after
 *   `udp.notOfferedRetryS`, and meanwhile the transparent UDP sockets are closed, so TPROXY does not match
 *   and LAN UDP is forwarded untouched, as without mpconvert.
 * - Each LAN flow (client address and port) has a flow id, kept across channels; the concentrator keeps one
 *   mapping per flow id, so a re-opened channel keeps the flows' external ports.
 * - Upstream, the channel's send queue is bounded in bytes and time (relay/datagram-queue.ts).
 */
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import type { Logger } from '../log.js';
import type { Metrics } from '../control/metrics.js';
import type { InterceptedDatagram, Sockets, TransparentUdp, TransparentUdpFactory, UdpEndpoint } from '../platform/types.js';
import { encodeMpConvert, type Ie } from '../protocol/index.js';
import { IE_TYPE_AUTHENTICATOR, encodeAuthenticator, signAuthenticator } from '../protocol/auth.js';
import { IE_TYPE_TRANSPORT, IPPROTO_UDP } from '../protocol/mp-convert.js';
import { ProtocolError } from '../protocol/errors.js';
import { UdpFrameDecoder, encodeUdpFrame, type UdpFrame } from '../protocol/udp-frame.js';
import { DatagramQueue } from '../relay/datagram-queue.js';
import { RESET_ON_CLOSE } from '../relay/index.js';
import { parseEndpoint } from '../control/address.js';
import type { ConcentratorSelector } from './concentrators.js';
import type { ConcentratorTarget, CpeConfig, Credentials } from './config.js';
import { EchoVerifier } from './echo.js';

export interface UdpChannelDeps {
  sockets: Sockets;
  logger: Logger;
  metrics: Metrics;
  transparentUdp: TransparentUdpFactory;
  selector: ConcentratorSelector;
  config: () => CpeConfig;
  credentials: (t: ConcentratorTarget) => Credentials | undefined;
  now?: () => number;
}

interface Flow {
  id: number;
  key: string;
  client: UdpEndpoint;
  last: number;
}

interface Channel {
  id: number;
  socket: Socket;
  target: ConcentratorTarget;
  queue: DatagramQueue;
  closed: boolean;
}

/** The signalling of a UDP channel: the transport IE (and the authenticator, last, when the CPE has a key). */
export function channelSignalling(creds: Credentials | undefined, now: number): Buffer {
  const ies: Ie[] = [{ type: IE_TYPE_TRANSPORT, protocol: IPPROTO_UDP }];
  if (!creds) return encodeMpConvert(ies);
  ies.push({ type: IE_TYPE_AUTHENTICATOR, direction: 'destination', body: encodeAuthenticator({ keyId: creds.keyId, timestamp: Math.floor(now / 1000), nonce: randomBytes(16) }) });
  return signAuthenticator('mp-convert', encodeMpConvert(ies), creds.secret);
}

/** How long an old channel stays open for answers in flight after a new one took over. */
const OLD_CHANNEL_GRACE_MS = 2_000;
const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 5_000;
/** With no channel for this long, the transparent sockets close: LAN UDP is forwarded untouched meanwhile. */
const NO_CHANNEL_RELEASE_MS = 5_000;

export class UdpChannelClient {
  readonly #deps: UdpChannelDeps;
  readonly #now: () => number;
  readonly #log: Logger;
  #tudp: TransparentUdp | undefined;
  #opening: Promise<TransparentUdp | undefined> | undefined;
  #current: Channel | undefined;
  readonly #all = new Set<Channel>();
  readonly #flows = new Map<string, Flow>();
  readonly #byId = new Map<number, Flow>();
  #nextFlow = 1;
  #nextChannel = 1;
  #connecting = false;
  #refreshWanted = false;
  #failures = 0;
  #retry: NodeJS.Timeout | undefined;
  #sweeper: NodeJS.Timeout | undefined;
  #noChannelSince: number | undefined;
  readonly #notOffered = new Map<string, number>();
  #stopping = false;

  constructor(deps: UdpChannelDeps) {
    this.#deps = deps;
    this.#now = deps.now ?? Date.now;
    this.#log = deps.logger.child({ component: 'udp' });
  }

  start(): void {
    this.#sweeper = setInterval(() => this.#sweep(), 1_000);
    this.#sweeper.unref();
    void this.#connect();
  }

  /** Uplinks, addresses or concentrators changed: open a new channel, then move the flows to it. */
  refresh(): void {
    if (this.#stopping) return;
    this.#notOffered.clear();
    if (this.#connecting) {
      this.#refreshWanted = true;
      return;
    }
    void this.#connect();
  }

  status() {
    return {
      channel: this.#current ? { concentrator: this.#current.target.address, queuedBytes: this.#current.queue.queuedBytes } : null,
      flows: this.#flows.size,
      intercepting: this.#tudp !== undefined,
    };
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    if (this.#retry) clearTimeout(this.#retry);
    if (this.#sweeper) clearInterval(this.#sweeper);
    for (const c of [...this.#all]) this.#closeChannel(c, 'stopping');
    await this.#release();
    this.#deps.metrics.udpMappings.set(0);
  }

  async #connect(): Promise<void> {
    if (this.#stopping || this.#connecting) return;
    this.#connecting = true;
    this.#refreshWanted = false;
    if (this.#retry) clearTimeout(this.#retry);
    this.#retry = undefined;
    let ok = false;
    try {
      ok = await this.#tryOpen();
    } catch (err) {
      this.#log.warn({ err }, 'could not open a UDP channel');
    } finally {
      this.#connecting = false;
    }
    if (this.#stopping) return;
    if (this.#refreshWanted) {
      void this.#connect();
      return;
    }
    if (!ok) {
      this.#failures++;
      const ms = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** Math.min(this.#failures, 10));
      this.#retry = setTimeout(() => void this.#connect(), ms);
      this.#retry.unref();
    } else this.#failures = 0;
  }

  #usable(): ConcentratorTarget[] {
    const now = this.#now();
    return this.#deps.selector.candidates().filter((t) => t.format === 'mp-convert' && (this.#notOffered.get(t.address) ?? 0) <= now);
  }

  /** One attempt over the usable concentrators, best first; true when a channel is up. */
  async #tryOpen(): Promise<boolean> {
    for (const target of this.#usable()) {
      const r = await this.#dial(target);
      if (r === 'up') return true;
    }
    return false;
  }

  async #dial(target: ConcentratorTarget): Promise<'up' | 'failed'> {
    const deps = this.#deps;
    const cfg = deps.config();
    const ep = parseEndpoint(target.address);
    const signalling = channelSignalling(deps.credentials(target), this.#now());
    let sock: Socket;
    try {
      sock = await deps.sockets.dial({
        family: ep.family,
        protocol: 'mptcp',
        host: ep.host,
        port: ep.port,
        fastOpen: target.zeroRtt ? 'no-cookie' : 'off',
        data: signalling,
        timeoutMs: cfg.connectTimeoutMs,
        linger: RESET_ON_CLOSE,
        ...(cfg.mss ? { maxSeg: cfg.mss } : {}),
      });
    } catch (err) {
      const errno = (err as { code?: string }).code;
      if (errno !== 'ECONNRESET' && errno !== 'EPIPE') deps.selector.markUnreachable(target);
      else this.#markNotOffered(target, `reset (${errno})`);
      this.#log.debug({ concentrator: target.address, err: (err as Error).message }, 'UDP channel: no connection');
      return 'failed';
    }
    sock.on('error', () => {});
    deps.selector.markWorking(target);
    if (!deps.sockets.isMptcp(sock)) {
      sock.resetAndDestroy();
      this.#markNotOffered(target, 'MPTCP not negotiated');
      return 'failed';
    }
    const echo = await awaitEcho(sock, new EchoVerifier('mp-convert', signalling), cfg.echoTimeoutMs);
    if (echo.status !== 'confirmed') {
      sock.resetAndDestroy();
      this.#markNotOffered(target, echo.status);
      return 'failed';
    }
    if (this.#stopping) {
      sock.resetAndDestroy();
      return 'failed';
    }
    const tudp = await this.#intercept();
    if (!tudp || this.#stopping) {
      sock.resetAndDestroy();
      return 'failed';
    }
    this.#adopt(sock, target, echo.leftover);
    return 'up';
  }

  #markNotOffered(target: ConcentratorTarget, why: string): void {
    const retryS = this.#deps.config().udp.notOfferedRetryS;
    this.#notOffered.set(target.address, this.#now() + retryS * 1000);
    this.#deps.metrics.udpChannelAborts.inc({ reason: 'not-offered' });
    this.#log.info({ concentrator: target.address, why, retryS }, 'UDP not offered by this concentrator: LAN UDP is forwarded untouched');
  }

  /** Opens the transparent UDP sockets (once); their datagrams feed the current channel. */
  async #intercept(): Promise<TransparentUdp | undefined> {
    if (this.#tudp) return this.#tudp;
    this.#opening ??= (async () => {
      const cfg = this.#deps.config();
      try {
        const t = await this.#deps.transparentUdp.open({
          port: cfg.tproxyPort,
          families: [4, 6],
          replyIdleMs: cfg.udp.flowIdleS * 1000,
          maxReplySockets: cfg.udp.maxFlows,
        });
        t.onDatagrams((batch, at) => this.#upstream(batch, at));
        t.onDropped((reason, n) => this.#deps.metrics.udpDropped.inc({ reason }, n));
        if (this.#stopping) {
          await t.close();
          return undefined;
        }
        this.#tudp = t;
        this.#log.info({ port: cfg.tproxyPort }, 'UDP interception on');
        return t;
      } catch (err) {
        this.#log.error({ err }, 'could not open the transparent UDP sockets: LAN UDP is forwarded untouched');
        return undefined;
      } finally {
        this.#opening = undefined;
      }
    })();
    return this.#opening;
  }

  async #release(): Promise<void> {
    const t = this.#tudp;
    this.#tudp = undefined;
    if (t) {
      await t.close();
      this.#log.info('UDP interception off: LAN UDP is forwarded untouched');
    }
  }

  #adopt(socket: Socket, target: ConcentratorTarget, leftover: Buffer): void {
    const cfg = this.#deps.config();
    const m = this.#deps.metrics;
    try {
      this.#deps.sockets.setNotSentLowat(socket, cfg.udp.notsentLowat);
    } catch (err) {
      this.#log.debug({ err }, 'TCP_NOTSENT_LOWAT not set on the UDP channel');
    }
    if (cfg.udp.sendBuffer > 0) this.#deps.sockets.setSendBuffer(socket, cfg.udp.sendBuffer);
    socket.setNoDelay(true);
    const channel: Channel = {
      id: this.#nextChannel++,
      socket,
      target,
      closed: false,
      queue: new DatagramQueue(socket, { maxBytes: cfg.udp.queueBytes, maxAgeMs: cfg.udp.queueMs, now: this.#now, onDrop: (reason, n) => m.udpDropped.inc({ reason }, n) }),
    };
    this.#all.add(channel);
    m.udpChannels.inc();
    const previous = this.#current;
    this.#current = channel;
    this.#noChannelSince = undefined;
    if (previous) setTimeout(() => this.#closeChannel(previous, 'replaced'), OLD_CHANNEL_GRACE_MS).unref();
    this.#log.info({ concentrator: target.address, channel: channel.id }, 'UDP channel up');
    const decoder = new UdpFrameDecoder({ expect: 'downstream' });
    const onData = (chunk: Buffer) => {
      let frames: UdpFrame[];
      try {
        frames = decoder.push(chunk);
      } catch (err) {
        m.udpChannelAborts.inc({ reason: err instanceof ProtocolError ? err.code : 'framing' });
        this.#log.warn({ err: (err as Error).message, channel: channel.id }, 'UDP channel aborted: framing error');
        this.#closeChannel(channel, 'framing');
        return;
      }
      for (const f of frames) this.#downstream(f);
    };
    socket.on('data', onData);
    socket.once('end', () => this.#closeChannel(channel, 'ended'));
    socket.once('close', () => this.#closeChannel(channel, 'closed'));
    if (leftover.length > 0) onData(leftover);
    socket.resume();
  }

  #closeChannel(c: Channel, why: string): void {
    if (c.closed) return;
    c.closed = true;
    c.queue.close();
    c.socket.resetAndDestroy();
    this.#all.delete(c);
    this.#deps.metrics.udpChannels.dec();
    if (this.#current === c) {
      this.#current = undefined;
      this.#noChannelSince = this.#now();
      this.#log.info({ channel: c.id, why }, 'UDP channel closed: re-opening');
      if (!this.#stopping) void this.#connect();
    }
  }

  #upstream(batch: InterceptedDatagram[], at: number): void {
    const m = this.#deps.metrics;
    const c = this.#current;
    if (!c) {
      m.udpDropped.inc({ reason: 'no-channel' }, batch.length);
      return;
    }
    const now = this.#now();
    // A batch that waited for the event loop longer than the channel's queue bound is as stale as a frame
    // that waited in the queue (the event loop fell behind the LAN: drop here, not seconds later).
    if (Date.now() - at > this.#deps.config().udp.queueMs) {
      m.udpDropped.inc({ reason: 'stale' }, batch.length);
      return;
    }
    const maxFlows = this.#deps.config().udp.maxFlows;
    for (const d of batch) {
      const key = `${d.source.address}|${d.source.port}`;
      let flow = this.#flows.get(key);
      if (!flow) {
        if (this.#flows.size >= maxFlows) {
          m.udpDropped.inc({ reason: 'max-flows' });
          continue;
        }
        flow = { id: this.#flowId(), key, client: d.source, last: now };
        this.#flows.set(key, flow);
        this.#byId.set(flow.id, flow);
        m.udpMappings.inc();
      }
      flow.last = now;
      let frame: Buffer;
      try {
        frame = encodeUdpFrame({ direction: 'upstream', flow: flow.id, address: d.destination.address, port: d.destination.port, payload: d.payload });
      } catch {
        m.udpDropped.inc({ reason: 'oversized' });
        continue;
      }
      m.udpDatagrams.inc({ direction: 'up' });
      m.udpBytes.inc({ direction: 'up' }, d.payload.length);
      c.queue.push(frame, flow.id);
    }
  }

  #flowId(): number {
    for (;;) {
      const id = this.#nextFlow;
      this.#nextFlow = id >= 0xffffffff ? 1 : id + 1;
      if (!this.#byId.has(id)) return id;
    }
  }

  #downstream(f: UdpFrame): void {
    const m = this.#deps.metrics;
    const flow = this.#byId.get(f.flow);
    if (!flow || !this.#tudp) {
      m.udpDropped.inc({ reason: 'unknown-flow' });
      return;
    }
    m.udpDatagrams.inc({ direction: 'down' });
    m.udpBytes.inc({ direction: 'down' }, f.payload.length);
    this.#tudp.send({ address: f.address, port: f.port }, flow.client, f.payload);
  }

  #sweep(): void {
    const now = this.#now();
    const idleMs = this.#deps.config().udp.flowIdleS * 1000;
    for (const f of this.#flows.values()) {
      if (now - f.last > idleMs) {
        this.#flows.delete(f.key);
        this.#byId.delete(f.id);
        this.#deps.metrics.udpMappings.dec();
      }
    }
    if (!this.#current && this.#tudp && this.#noChannelSince !== undefined && now - this.#noChannelSince > NO_CHANNEL_RELEASE_MS) void this.#release();
    if (!this.#current && !this.#connecting && !this.#retry) void this.#connect();
  }
}

type EchoOutcome = { status: 'confirmed'; leftover: Buffer } | { status: 'mismatch' | 'refused' | 'timeout' | 'closed' };

/** Reads until the echo of the channel's signalling is settled; leaves the socket paused. */
function awaitEcho(sock: Socket, verifier: EchoVerifier, timeoutMs: number): Promise<EchoOutcome> {
  return new Promise((resolve) => {
    const finish = (r: EchoOutcome) => {
      clearTimeout(timer);
      sock.off('data', onData);
      sock.off('end', onEnd);
      sock.off('close', onEnd);
      sock.pause();
      resolve(r);
    };
    const onData = (d: Buffer) => {
      const r = verifier.push(d);
      if (r.status === 'confirmed') finish({ status: 'confirmed', leftover: r.leftover });
      else if (r.status !== 'need-more') finish({ status: r.status });
    };
    const onEnd = () => finish({ status: 'closed' });
    const timer = setTimeout(() => finish({ status: 'timeout' }), timeoutMs);
    sock.on('data', onData);
    sock.once('end', onEnd);
    sock.once('close', onEnd);
    sock.resume();
  });
}
