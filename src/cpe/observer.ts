/**
 * What the CPE's operator sees per uplink and per converted connection, sampled once a second:
 *
 * - throughput each way per uplink: the interface's byte counters (/proc/net/dev through the kernel adapter),
 *   so it counts everything the uplink carries (converted, forwarded untouched, the CPE's own), as a WAN graph
 *   should; a ring of the last `historyLength` samples feeds the dashboard's charts;
 * - subflows per uplink, their smoothed RTT and retransmissions, and the converted bytes each uplink carried:
 *   MPTCP_FULL_INFO (one getsockopt per converted connection per sample, at most `maxSampled` per sample,
 *   in turns), each subflow put on the uplink whose address is its local address. Bytes are the deltas of
 *   tcp_info bytes_acked / bytes_received between samples, so what a connection moved in its last second
 *   before closing is not counted per uplink (it is in mpconvert_bytes_total);
 * - the share of converted bytes each uplink carried since start.
 *
 * Nothing here is on the relaying path: a slow sample delays only the next sample.
 */
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import type { KernelConfig, LinkCounters, Sockets, SubflowInfo } from '../platform/types.js';
import type { RelayHandle } from '../relay/index.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../control/metrics.js';
import type { UplinkState } from './uplinks.js';
import { TCP_STATES } from '../platform/structs.js';

/** A relayed LAN connection as the CPE keeps it for the operator. */
export interface ConnectionRecord {
  readonly id: number;
  readonly src: { address: string; port: number };
  readonly dst: { address: string; port: number };
  /** `concentrator ADDR` or `direct`. */
  readonly via: string;
  readonly startedAt: number;
  readonly client: Socket;
  readonly upstream: Socket;
  readonly relay: RelayHandle;
  /** Bytes the CPE sent before the relay started (they ride in the SYN or right after the echo). */
  readonly sentBefore: number;
}

export interface UplinkSample {
  /** Sample time, ms since the epoch. */
  t: number;
  /** Per uplink (configuration order): bytes/s received and sent on the interface during the last interval. */
  rx: number[];
  tx: number[];
  /** Per uplink: bytes through the interface (both directions) since the previous sample. */
  bytes: number[];
}

export interface SubflowView {
  id: number | null;
  uplink: string | null;
  local: string;
  remote: string;
  state: string;
  rttMs: number | null;
  retransmits: number;
  bytesSent: number | null;
  bytesReceived: number | null;
}

export interface UplinkView {
  interface: string;
  mode: 'subflow' | 'backup';
  up: boolean;
  ipv4: string | null;
  ipv6: string | null;
  gateway4: string | null;
  gateway6: string | null;
  /** Installed for conversion per family: the address's MPTCP endpoint id, and its routing (rule + table route) in place. */
  endpointId4: number | null;
  endpointId6: number | null;
  routed4: boolean;
  routed6: boolean;
  /** Interface throughput over the last interval, bytes/s. */
  rxBps: number;
  txBps: number;
  /** Interface byte counters since this CPE started. */
  rxBytes: number;
  txBytes: number;
  /** Subflows of converted connections on this uplink now, their mean smoothed RTT (ms), retransmissions since start. */
  subflows: number;
  rttMs: number | null;
  retransmits: number;
  /** Converted bytes this uplink carried since start (subflow tcp_info deltas), and its share of all uplinks'. */
  convertedBytesSent: number;
  convertedBytesReceived: number;
  share: number | null;
}

export interface ObserverDeps {
  kernel: Pick<KernelConfig, 'linkCounters'>;
  sockets: Pick<Sockets, 'subflows'>;
  metrics: Metrics;
  logger: Logger;
  uplinks: () => UplinkState[];
  connections: () => Iterable<ConnectionRecord>;
  now?: () => number;
}

export interface ObserverOptions {
  intervalMs?: number;
  historyLength?: number;
  /** Connections whose subflows are read per sample (in turns beyond that). */
  maxSampled?: number;
}

interface SubflowMark {
  sent: number;
  received: number;
  retrans: number;
}

interface UplinkTotals {
  rxBytes: number;
  txBytes: number;
  retransmits: number;
  sent: number;
  received: number;
  last: { rx: number; tx: number } | null;
  rxBps: number;
  txBps: number;
  subflows: number;
  rttMs: number | null;
}

/** The subflow's uplink: the uplink whose current address is the subflow's local address. */
export function uplinkOf(sf: Pick<SubflowInfo, 'local'>, uplinks: readonly UplinkState[]): string | null {
  for (const u of uplinks) if (u.ipv4?.address === sf.local.address || u.ipv6?.address === sf.local.address) return u.interface;
  return null;
}

const fmt = (a: { address: string; port: number }) => (a.address.includes(':') ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`);

export function subflowView(sf: SubflowInfo, uplinks: readonly UplinkState[]): SubflowView {
  const t = sf.tcp;
  return {
    id: sf.id ?? null,
    uplink: uplinkOf(sf, uplinks),
    local: fmt(sf.local),
    remote: fmt(sf.remote),
    state: t ? (TCP_STATES[t.state] ?? String(t.state)) : 'unknown',
    rttMs: t && t.rttUs > 0 ? t.rttUs / 1000 : null,
    retransmits: t?.totalRetrans ?? 0,
    bytesSent: t?.bytesAcked ?? null,
    bytesReceived: t?.bytesReceived ?? null,
  };
}

export class UplinkObserver extends EventEmitter<{ sample: [UplinkSample] }> {
  readonly #deps: ObserverDeps;
  readonly #now: () => number;
  readonly #intervalMs: number;
  readonly #historyLength: number;
  readonly #maxSampled: number;
  readonly #totals = new Map<string, UplinkTotals>();
  readonly #history: UplinkSample[] = [];
  /** Per connection id, per subflow key: the counters at the last sample. */
  #marks = new Map<number, Map<string, SubflowMark>>();
  readonly #pathRtt = new Map<string, number>();
  #cursor = 0;
  #lastAt = 0;
  #timer: NodeJS.Timeout | undefined;

  constructor(deps: ObserverDeps, opts: ObserverOptions = {}) {
    super();
    this.#deps = deps;
    this.#now = deps.now ?? Date.now;
    this.#intervalMs = opts.intervalMs ?? 1000;
    this.#historyLength = opts.historyLength ?? 300;
    this.#maxSampled = opts.maxSampled ?? 512;
  }

  get intervalMs(): number {
    return this.#intervalMs;
  }

  start(): void {
    if (this.#timer) return;
    this.sample();
    this.#timer = setInterval(() => this.sample(), this.#intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #total(name: string): UplinkTotals {
    let t = this.#totals.get(name);
    if (!t) {
      t = { rxBytes: 0, txBytes: 0, retransmits: 0, sent: 0, received: 0, last: null, rxBps: 0, txBps: 0, subflows: 0, rttMs: null };
      this.#totals.set(name, t);
    }
    return t;
  }

  /** One sample: interface counters, then the subflows of (up to maxSampled) converted connections. */
  sample(): UplinkSample {
    const { metrics } = this.#deps;
    const now = this.#now();
    const dt = this.#lastAt > 0 ? (now - this.#lastAt) / 1000 : 0;
    this.#lastAt = now;
    const uplinks = this.#deps.uplinks();
    let counters: LinkCounters[] = [];
    try {
      counters = this.#deps.kernel.linkCounters?.() ?? [];
    } catch (err) {
      this.#deps.logger.debug({ err }, 'cannot read the interface counters');
    }
    const bytes: number[] = [];
    for (const u of uplinks) {
      const t = this.#total(u.interface);
      const c = counters.find((x) => x.ifname === u.interface);
      bytes.push(0);
      metrics.uplinkUp.set({ uplink: u.interface }, u.up ? 1 : 0);
      metrics.uplinkBackup.set({ uplink: u.interface }, u.mode === 'backup' ? 1 : 0);
      if (!c) {
        t.last = null;
        t.rxBps = t.txBps = 0;
        continue;
      }
      if (t.last) {
        // A counter that went back: the interface was re-created; count from its new value.
        const drx = c.rxBytes >= t.last.rx ? c.rxBytes - t.last.rx : c.rxBytes;
        const dtx = c.txBytes >= t.last.tx ? c.txBytes - t.last.tx : c.txBytes;
        t.rxBytes += drx;
        t.txBytes += dtx;
        metrics.uplinkBytes.inc({ uplink: u.interface, direction: 'rx' }, drx);
        metrics.uplinkBytes.inc({ uplink: u.interface, direction: 'tx' }, dtx);
        bytes[bytes.length - 1] = drx + dtx;
        t.rxBps = dt > 0 ? drx / dt : 0;
        t.txBps = dt > 0 ? dtx / dt : 0;
      }
      t.last = { rx: c.rxBytes, tx: c.txBytes };
    }
    this.#sampleSubflows(uplinks);
    const s: UplinkSample = { t: now, rx: uplinks.map((u) => Math.round(this.#total(u.interface).rxBps)), tx: uplinks.map((u) => Math.round(this.#total(u.interface).txBps)), bytes };
    this.#history.push(s);
    if (this.#history.length > this.#historyLength) this.#history.shift();
    this.emit('sample', s);
    return s;
  }

  #sampleSubflows(uplinks: UplinkState[]): void {
    const { metrics, sockets } = this.#deps;
    const all = [...this.#deps.connections()];
    const perUplink = new Map<string, { n: number; rtt: number; rttN: number; minRtt: number }>();
    const n = Math.min(all.length, this.#maxSampled);
    const start = all.length > n ? this.#cursor % all.length : 0;
    this.#cursor = start + n;
    for (let i = 0; i < n; i++) {
      const c = all[(start + i) % all.length]!;
      if (c.upstream.destroyed || c.relay.closed) continue;
      let subflows: SubflowInfo[];
      try {
        subflows = sockets.subflows(c.upstream);
      } catch {
        continue; // closed between the listing and the call
      }
      const before = this.#marks.get(c.id) ?? new Map<string, SubflowMark>();
      const after = new Map<string, SubflowMark>();
      for (const sf of subflows) {
        const uplink = uplinkOf(sf, uplinks) ?? 'other';
        const key = `${sf.id ?? ''}/${fmt(sf.local)}/${fmt(sf.remote)}`;
        const t = sf.tcp;
        const mark: SubflowMark = { sent: t?.bytesAcked ?? 0, received: t?.bytesReceived ?? 0, retrans: t?.totalRetrans ?? 0 };
        const prev = before.get(key) ?? { sent: 0, received: 0, retrans: 0 };
        const ds = Math.max(0, mark.sent - prev.sent);
        const dr = Math.max(0, mark.received - prev.received);
        const dx = Math.max(0, mark.retrans - prev.retrans);
        const tot = this.#total(uplink);
        tot.sent += ds;
        tot.received += dr;
        tot.retransmits += dx;
        if (ds > 0) metrics.uplinkSubflowBytes.inc({ uplink, direction: 'up' }, ds);
        if (dr > 0) metrics.uplinkSubflowBytes.inc({ uplink, direction: 'down' }, dr);
        if (dx > 0) metrics.uplinkRetransmits.inc({ uplink }, dx);
        after.set(key, mark);
        const p = perUplink.get(uplink) ?? { n: 0, rtt: 0, rttN: 0, minRtt: Number.POSITIVE_INFINITY };
        p.n++;
        if (t && t.rttUs > 0 && t.state === 1) {
          p.rtt += t.rttUs / 1000;
          p.rttN++;
          // The RTT a new connection would see now (flow-class pinning): the lowest smoothed RTT of the uplink's
          // subflows, queueing included. (tcp_info min_rtt is not used: a join subflow's counts its handshake twice.)
          p.minRtt = Math.min(p.minRtt, t.rttUs / 1000);
        }
        perUplink.set(uplink, p);
      }
      this.#marks.set(c.id, after);
    }
    // Connections gone since the last sample; those not sampled this time keep their marks.
    const live = new Set(all.map((c) => c.id));
    for (const id of this.#marks.keys()) if (!live.has(id)) this.#marks.delete(id);
    if (n < all.length) return; // a partial turn: keep the last full counts
    for (const name of new Set([...uplinks.map((u) => u.interface), ...perUplink.keys()])) {
      const p = perUplink.get(name);
      const tot = this.#total(name);
      tot.subflows = p?.n ?? 0;
      tot.rttMs = p && p.rttN > 0 ? p.rtt / p.rttN : null;
      if (p && Number.isFinite(p.minRtt) && name !== 'other') this.#pathRtt.set(name, p.minRtt);
      metrics.uplinkSubflows.set({ uplink: name }, tot.subflows);
      if (tot.rttMs !== null) metrics.uplinkRtt.set({ uplink: name }, tot.rttMs / 1000);
      else metrics.uplinkRtt.remove({ uplink: name });
    }
    const sum = [...this.#totals.values()].reduce((a, t) => a + t.sent + t.received, 0);
    for (const [name, t] of this.#totals) if (sum > 0) metrics.uplinkShare.set({ uplink: name }, (t.sent + t.received) / sum);
  }

  /** The RTT (ms, the lowest smoothed RTT of its established subflows) last measured on each uplink; kept while it has none. */
  pathRtt(): ReadonlyMap<string, number> {
    return this.#pathRtt;
  }

  history(): UplinkSample[] {
    return [...this.#history];
  }

  view(): UplinkView[] {
    const uplinks = this.#deps.uplinks();
    const sum = [...this.#totals.values()].reduce((a, t) => a + t.sent + t.received, 0);
    return uplinks.map((u) => {
      const t = this.#total(u.interface);
      return {
        interface: u.interface,
        mode: u.mode,
        up: u.up,
        ipv4: u.ipv4?.address ?? null,
        ipv6: u.ipv6?.address ?? null,
        gateway4: u.ipv4?.gateway ?? null,
        gateway6: u.ipv6?.gateway ?? null,
        endpointId4: u.ipv4?.endpointId ?? null,
        endpointId6: u.ipv6?.endpointId ?? null,
        routed4: u.ipv4?.routed ?? false,
        routed6: u.ipv6?.routed ?? false,
        rxBps: Math.round(t.rxBps),
        txBps: Math.round(t.txBps),
        rxBytes: t.rxBytes,
        txBytes: t.txBytes,
        subflows: t.subflows,
        rttMs: t.rttMs === null ? null : Math.round(t.rttMs * 100) / 100,
        retransmits: t.retransmits,
        convertedBytesSent: t.sent,
        convertedBytesReceived: t.received,
        share: sum > 0 ? Math.round(((t.sent + t.received) / sum) * 1000) / 1000 : null,
      };
    });
  }
}
