/**
 * UDP channels, concentrator side (docs/concentrator.md "UDP", docs/protocol.md section 4): the conversion
 * strategy for a connection whose signalling holds the transport IE with protocol 17, and the NAT that
 * serves every channel of every CPE.
 *
 * After the gates every connection passes (customer, mptcp, signalling, authenticate, limits), a channel is
 * confirmed (the echo) and from then on reads upstream frames. Per datagram, in order:
 *   size (`udp.maxDatagram`) -> destination gate (the same as TCP's: never an open relay) -> the mapping of
 *   (CPE identity, LAN flow id), created within `udp.maxMappingsPerCpe` / `udp.maxMappings` -> sent.
 * Each refusal drops that datagram and counts it (`mpconvert_udp_dropped_total{reason}`); a framing error
 * (bad magic, version, reserved bits, direction, length) aborts the channel: the stream lost its framing.
 *
 * NAT behaviour (RFC 4787): one UDP socket per mapping, bound to the CPE's paired source-pool address of the
 * destination's family, used for every destination: endpoint-independent mapping (REQ-1). Inbound datagrams
 * pass the configured filter (REQ-8: address-dependent by default). A mapping lives `udp.mappingLifetimeS`
 * after its last outbound datagram (REQ-5, REQ-6: inbound does not refresh it). Mappings belong to the CPE,
 * not to a channel: a channel re-opened over another uplink finds them again, and replies go to the channel
 * that carried the flow's latest datagram (or, if that one closed, the CPE's newest channel).
 */
import dgram from 'node:dgram';
import { EventEmitter } from 'node:events';
import { isIP, type Socket } from 'node:net';
import type { Logger } from '../log.js';
import type { Metrics } from '../control/metrics.js';
import type { Sockets } from '../platform/types.js';
import { unmapAddress } from '../protocol/address.js';
import { ProtocolError } from '../protocol/errors.js';
import { UdpFrameDecoder, encodeUdpFrame, type UdpFrame } from '../protocol/udp-frame.js';
import { refuse, type Refusal } from '../policy/refusals.js';
import { DatagramQueue } from '../relay/datagram-queue.js';
import type { RelayHandle, RelayStats } from '../relay/index.js';
import type { ConcentratorConfig } from './config.js';
import type { ConnectionContext } from './context.js';
import type { ConversionStrategy } from './conversion.js';
import { confirmation } from './signalling.js';
import type { SourceAddressStrategy, SourceHold } from './source-address.js';

export type UdpSettings = ConcentratorConfig['udp'];

/** Why a datagram was dropped (the `reason` label of mpconvert_udp_dropped_total). */
export type UdpDropReason =
  | 'oversized'
  | 'destination'
  | 'mappings-per-cpe'
  | 'mappings-total'
  | 'no-source-address'
  | 'family'
  | 'bind'
  | 'send'
  | 'filtered'
  | 'no-channel'
  | 'queue-full'
  | 'stale'
  | 'pending';

export interface UdpServiceDeps {
  sockets: Sockets;
  metrics: Metrics;
  logger: Logger;
  now: () => number;
  settings: () => UdpSettings;
  /** The destination gate, as TCP applies it (deny prefixes, own addresses, special purpose). */
  destination: (address: string) => Refusal | undefined;
  source: () => SourceAddressStrategy;
  sessionLog: (line: Record<string, unknown>) => void;
  /** Handshake wait of a 0-RTT connection (the TCP strategy's), before the echo is written. */
  established: (socket: Socket) => Promise<boolean>;
  stopping: () => boolean;
}

/** Datagrams held per mapping while its socket binds (the first ones of a flow). */
const PENDING_MAX = 16;

interface Mapping {
  key: string;
  identity: string;
  flow: number;
  family: 4 | 6;
  socket: dgram.Socket | undefined;
  pending: Array<{ address: string; port: number; payload: Buffer }>;
  hold: SourceHold;
  external: string | undefined;
  lastOut: number;
  /** Remote addresses (address-dependent) or address|port (address-and-port-dependent) this mapping sent to. */
  peers: Set<string>;
  channel: Channel | undefined;
  closed: boolean;
}

class Channel extends EventEmitter implements RelayHandle {
  closed = false;
  readonly mode = 'streams' as const;
  bytesAToB = 0;
  bytesBToA = 0;
  readonly queue: DatagramQueue;
  readonly started: number;
  constructor(
    readonly id: number,
    readonly identity: string,
    readonly socket: Socket,
    settings: UdpSettings,
    now: () => number,
    onDrop: (reason: UdpDropReason, n: number) => void,
  ) {
    super();
    this.started = now();
    this.queue = new DatagramQueue(socket, { maxBytes: settings.queueBytes, maxAgeMs: settings.queueMs, now, onDrop });
  }
  close(): void {
    this.destroy();
  }
  destroy(_err?: Error, outcome: RelayStats['outcome'] = 'aborted'): void {
    if (this.closed) return;
    this.closed = true;
    this.queue.close();
    this.socket.resetAndDestroy();
    this.emit('close', { aToB: this.bytesAToB, bToA: this.bytesBToA, outcome, durationMs: Date.now() - this.started } satisfies RelayStats);
  }
}

export class UdpChannelService {
  readonly #deps: UdpServiceDeps;
  readonly #mappings = new Map<string, Mapping>();
  readonly #perCpe = new Map<string, number>();
  /** Open channels per CPE identity, oldest first. */
  readonly #channels = new Map<string, Channel[]>();
  #sweeper: NodeJS.Timeout | undefined;
  readonly conversion: ConversionStrategy;

  constructor(deps: UdpServiceDeps) {
    this.#deps = deps;
    this.conversion = { name: 'udp', convert: (ctx) => this.#convert(ctx) };
  }

  get mappings(): number {
    return this.#mappings.size;
  }

  get channels(): number {
    let n = 0;
    for (const l of this.#channels.values()) n += l.length;
    return n;
  }

  start(): void {
    // A mapping may outlive its lifetime by at most one sweep period.
    this.#sweeper = setInterval(() => this.sweep(), 1_000);
    this.#sweeper.unref();
  }

  /** Closes every mapping whose lifetime ran out. */
  sweep(): void {
    const deadline = this.#deps.now() - this.#deps.settings().mappingLifetimeS * 1000;
    for (const m of this.#mappings.values()) if (m.lastOut < deadline) this.#closeMapping(m, 'expired');
  }

  /** Closes every channel and mapping. */
  stop(): void {
    if (this.#sweeper) clearInterval(this.#sweeper);
    for (const list of [...this.#channels.values()]) for (const c of [...list]) c.destroy();
    for (const m of [...this.#mappings.values()]) this.#closeMapping(m, 'stopping');
  }

  async #convert(ctx: ConnectionContext): Promise<Refusal | undefined> {
    const deps = this.#deps;
    const read = ctx.signalling;
    if (!read) throw new Error('UdpChannelService: run after the signalling step');
    if (!deps.source().acquireFor) return refuse('udp-source-mode');
    const socket = ctx.socket;
    if (!(await deps.established(socket))) return refuse(socket.destroyed ? 'client-gone' : 'handshake-timeout');
    if (socket.destroyed || deps.stopping()) return refuse(socket.destroyed ? 'client-gone' : 'stopping');
    const settings = deps.settings();
    try {
      deps.sockets.setNotSentLowat(socket, settings.notsentLowat);
    } catch (err) {
      deps.logger.debug({ err }, 'TCP_NOTSENT_LOWAT not set on a UDP channel');
    }
    if (settings.sendBuffer > 0) deps.sockets.setSendBuffer(socket, settings.sendBuffer);
    socket.setNoDelay(true);
    const m = deps.metrics;
    const channel = new Channel(ctx.id, ctx.identity, socket, settings, deps.now, (reason, n) => m.udpDropped.inc({ reason }, n));
    ctx.relay = channel;
    socket.write(confirmation(read));
    const list = this.#channels.get(ctx.identity) ?? [];
    list.push(channel);
    this.#channels.set(ctx.identity, list);
    m.udpChannels.inc();
    deps.sessionLog({ event: 'open', session: ctx.id, cpe: ctx.cpe, ...(ctx.keyId ? { keyId: ctx.keyId } : {}), transport: 'udp-channel', format: read.format });
    channel.once('close', (stats: RelayStats) => {
      m.udpChannels.dec();
      const l = this.#channels.get(ctx.identity);
      if (l) {
        const i = l.indexOf(channel);
        if (i >= 0) l.splice(i, 1);
        if (l.length === 0) this.#channels.delete(ctx.identity);
      }
      m.connections.inc({ outcome: stats.outcome });
      deps.sessionLog({ event: 'close', session: ctx.id, cpe: ctx.cpe, transport: 'udp-channel', bytesUp: stats.aToB, bytesDown: stats.bToA, durationMs: stats.durationMs, outcome: stats.outcome });
    });
    const decoder = new UdpFrameDecoder({ expect: 'upstream' });
    const onData = (chunk: Buffer) => {
      channel.bytesAToB += chunk.length;
      let frames: UdpFrame[];
      try {
        frames = decoder.push(chunk);
      } catch (err) {
        const code = err instanceof ProtocolError ? err.code : 'framing';
        m.udpChannelAborts.inc({ reason: code });
        deps.logger.debug({ session: ctx.id, cpe: ctx.cpe, err: (err as Error).message }, 'UDP channel aborted: framing error');
        channel.destroy(undefined, 'error-a');
        return;
      }
      for (const f of frames) this.#upstream(channel, f);
    };
    socket.on('data', onData);
    socket.once('end', () => channel.destroy(undefined, 'done'));
    socket.once('close', () => channel.destroy(undefined, 'reset-a'));
    socket.on('error', () => {});
    if (read.rest.length > 0) onData(read.rest);
    socket.resume();
    return undefined;
  }

  #drop(reason: UdpDropReason): void {
    this.#deps.metrics.udpDropped.inc({ reason });
  }

  #upstream(channel: Channel, f: UdpFrame): void {
    const deps = this.#deps;
    const settings = deps.settings();
    if (f.payload.length > settings.maxDatagram) return this.#drop('oversized');
    const address = unmapAddress(f.address);
    if (deps.destination(address)) return this.#drop('destination');
    const family = isIP(address) as 4 | 6;
    const key = `${channel.identity}\u0000${f.flow}`;
    let m = this.#mappings.get(key);
    if (m && m.family !== family) return this.#drop('family');
    if (!m) {
      const created = this.#createMapping(channel.identity, f.flow, family, key, settings);
      if (typeof created === 'string') return this.#drop(created);
      m = created;
    }
    m.channel = channel;
    m.lastOut = deps.now();
    if (settings.filtering !== 'endpoint-independent') m.peers.add(settings.filtering === 'address-dependent' ? address : `${address}|${f.port}`);
    deps.metrics.udpDatagrams.inc({ direction: 'up' });
    deps.metrics.udpBytes.inc({ direction: 'up' }, f.payload.length);
    if (!m.socket) {
      if (m.pending.length >= PENDING_MAX) return this.#drop('pending');
      m.pending.push({ address, port: f.port, payload: f.payload });
      return;
    }
    this.#send(m, address, f.port, f.payload);
  }

  #send(m: Mapping, address: string, port: number, payload: Buffer): void {
    m.socket?.send(payload, port, address, (err) => {
      if (err) this.#drop('send');
    });
  }

  #createMapping(identity: string, flow: number, family: 4 | 6, key: string, settings: UdpSettings): Mapping | UdpDropReason {
    const deps = this.#deps;
    if (this.#mappings.size >= settings.maxMappings) return 'mappings-total';
    const mine = this.#perCpe.get(identity) ?? 0;
    if (mine >= settings.maxMappingsPerCpe) return 'mappings-per-cpe';
    const hold = deps.source().acquireFor?.(identity, family);
    if (!hold || 'code' in hold) return 'no-source-address';
    const m: Mapping = {
      key,
      identity,
      flow,
      family,
      socket: undefined,
      pending: [],
      hold,
      external: hold.address,
      lastOut: deps.now(),
      peers: new Set(),
      channel: undefined,
      closed: false,
    };
    this.#mappings.set(key, m);
    this.#perCpe.set(identity, mine + 1);
    deps.metrics.udpMappings.inc();
    const s = dgram.createSocket({ type: family === 4 ? 'udp4' : 'udp6', ipv6Only: family === 6 });
    s.on('error', (err) => {
      deps.logger.debug({ err, identity, flow }, 'UDP mapping socket error');
      if (!m.socket) {
        this.#drop('bind');
        this.#closeMapping(m, 'bind');
      }
    });
    s.on('message', (msg, rinfo) => this.#downstream(m, msg, rinfo));
    s.bind({ address: hold.address ?? (family === 4 ? '0.0.0.0' : '::'), port: 0 }, () => {
      if (m.closed) {
        s.close();
        return;
      }
      m.socket = s;
      const a = s.address();
      m.external = `${a.address}:${a.port}`;
      for (const p of m.pending.splice(0)) this.#send(m, p.address, p.port, p.payload);
    });
    return m;
  }

  #downstream(m: Mapping, payload: Buffer, rinfo: dgram.RemoteInfo): void {
    const settings = this.#deps.settings();
    const address = unmapAddress(rinfo.address);
    if (settings.filtering === 'address-dependent' && !m.peers.has(address)) return this.#drop('filtered');
    if (settings.filtering === 'address-and-port-dependent' && !m.peers.has(`${address}|${rinfo.port}`)) return this.#drop('filtered');
    let channel = m.channel;
    if (!channel || channel.closed) {
      const list = this.#channels.get(m.identity);
      channel = list?.[list.length - 1];
      m.channel = channel;
    }
    if (!channel) return this.#drop('no-channel');
    let frame: Buffer;
    try {
      frame = encodeUdpFrame({ direction: 'downstream', flow: m.flow, address, port: rinfo.port, payload });
    } catch {
      return this.#drop('oversized');
    }
    this.#deps.metrics.udpDatagrams.inc({ direction: 'down' });
    this.#deps.metrics.udpBytes.inc({ direction: 'down' }, payload.length);
    channel.bytesBToA += frame.length;
    channel.queue.push(frame, m.flow);
  }

  #closeMapping(m: Mapping, why: string): void {
    if (m.closed) return;
    m.closed = true;
    this.#mappings.delete(m.key);
    const n = (this.#perCpe.get(m.identity) ?? 1) - 1;
    if (n <= 0) this.#perCpe.delete(m.identity);
    else this.#perCpe.set(m.identity, n);
    this.#deps.metrics.udpMappings.dec();
    m.hold.release();
    m.pending = [];
    try {
      m.socket?.close();
    } catch {
      /* already closed */
    }
    this.#deps.logger.trace({ identity: m.identity, flow: m.flow, why }, 'UDP mapping closed');
  }

  status() {
    return { channels: this.channels, mappings: this.mappings };
  }
}
