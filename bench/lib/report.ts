/** Statistics, the markdown table, and the two SVG charts (hand-written, no dependency). */
import { SYSTEMS, type SystemName } from './systems.js';
import { UDP_NAMES, UDP_SYSTEMS, type UdpSystemName } from './udp.js';
import type { WorkersRow } from './workers.js';
import type { ManyCpeResults } from './manycpe.js';
import { manyCpeMarkdown } from './manycpe-report.js';

export interface Stat {
  median: number;
  min: number;
  max: number;
  runs: number[];
}

export function stat(values: Array<number | null | undefined>): Stat | null {
  const v = values.filter((x): x is number => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const mid = v.length >> 1;
  const median = v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
  return { median, min: v[0]!, max: v[v.length - 1]!, runs: values.filter((x): x is number => typeof x === 'number') };
}

export type PerSystem<T> = Partial<Record<SystemName, T>>;

/** ", download" for download rows (upload is the default and unmarked). */
const dir = (a: { direction?: 'up' | 'down' }) => (a.direction === 'down' ? ', download' : '');

export interface Topology {
  name: string;
  ratesMbps: number[];
  /** Round-trip time of each uplink (the lab's delay line), ms; absent = no added delay. */
  rttMs?: number[];
}

export interface Results {
  meta: {
    date: string;
    kernel: string;
    cpus: number;
    node: string;
    tools: Record<string, string>;
    settings: Record<string, unknown>;
    notes: string[];
    durationSeconds?: number;
  };
  aggregation: Array<{
    topology: Topology;
    /** The TCP congestion control of every namespace (absent in results from before it was recorded). */
    cc?: string;
    /** up = upload (LAN client to server), down = download (iperf3 -R); absent in older results: up. */
    direction?: 'up' | 'down';
    sumMbps: number;
    /** uplinkLoad: each CPE uplink's wire rate over its tbf rate during the measured seconds. */
    systems: PerSystem<{ goodputMbps: Stat | null; ratio: Stat | null; uplinkLoad?: Array<Stat | null>; ttfbP50Ms?: Stat | null; ttfbP99Ms?: Stat | null; error?: string }>;
  }>;
  /** The relay figure as an upload; `relayDownload` the same as a download (iperf3 -R), absent in older results. */
  relay: PerSystem<{ goodputMbps: Stat | null; cpuSecondsPerGB: Stat | null; error?: string }>;
  relayDownload?: Results['relay'];
  setup: PerSystem<{
    cps: Stat | null;
    ttfbP50Ms: Stat | null;
    ttfbP99Ms: Stat | null;
    /** CPU of the relay processes (CPE + concentrator) per connection, ms (absent in results before it was measured). */
    cpuMsPerConnection?: Stat | null;
    errors: number;
    roundTrips: Stat | null;
    error?: string;
  }>;
  memory: PerSystem<{
    connections: number;
    errors: number;
    baselineBytes: number;
    loadedBytes: number;
    /** Once a garbage-collected relay collected the garbage of opening them (others: as read at once). */
    bytesPerConnection: Stat | null;
    /** Read 1 s after the connections were held (before the results of 2026-12-07 evening: the only figure). */
    justOpenedBytesPerConnection?: Stat | null;
    measure: string;
    /** The CPE relay's memory just after it started, and idle again after the relay and setup tests, bytes. */
    cpeStartBytes?: number | null;
    cpeIdleBytes?: number | null;
    error?: string;
  }>;
  failover: {
    topology: Topology;
    cc?: string;
    cut: number;
    cutAt: number;
    restoreAt: number;
    /** never: runs that never recovered; neverRejoined: runs that never reached 90% of the sum after the restore (absent in older results). */
    systems: PerSystem<{ recoverySeconds: Stat | null; rejoinSeconds: Stat | null; never: number; neverRejoined?: number; series: Array<[number, number]>; error?: string }>;
  } | null;
  /** The failover figure as a download (iperf3 -R, read at the client); `failover` is the upload. */
  failoverDownload?: Results['failover'];
  /** The UDP figure (bench/lib/udp.ts); absent in results from before it existed. */
  udp?: {
    topology: Topology;
    cc: string;
    loadMbps: number;
    systems: Partial<Record<UdpSystemName, { goodputMbps: Stat | null; probeP50Ms: Stat | null; probeP95Ms: Stat | null; probeAnsweredPercent?: Stat | null; error?: string }>>;
    deployments: Partial<Record<UdpSystemName, string>>;
  } | null;
  /** `--workers`: mpconvert's setup per concentrator worker count (bench/lib/workers.ts). */
  workers?: WorkersRow[];
  /** The many-CPE figure (bench/lib/manycpe.ts, `--only manycpe`); absent when not run. */
  manycpe?: ManyCpeResults | null;
  /** met: 'tie' = below the goal by less than the bench resolves (1%, or each median inside the other's min–max range). */
  targets: Array<{ target: string; value: string; met: boolean | 'tie' | null; gap: string }>;
  deployments: PerSystem<string>;
}

const fmt = (x: number, d: number) => (Math.abs(x) >= 1000 ? x.toFixed(0) : x.toFixed(d));
export function cell(s: Stat | null | undefined, d = 2, err?: string): string {
  if (err) return `error`;
  if (!s) return '—';
  if (s.runs.length <= 1 || s.min === s.max) return fmt(s.median, d);
  return `${fmt(s.median, d)} (${fmt(s.min, d)}–${fmt(s.max, d)})`;
}

const ratio = (a: Stat | null | undefined, b: Stat | null | undefined, d = 2): string => (a && b && b.median !== 0 ? `${(a.median / b.median).toFixed(d)}x` : '—');

const NAMES: Record<SystemName, string> = { kernel: 'kernel MPTCP (ceiling)', mpconvert: 'mpconvert', shadowsocks: 'shadowsocks-libev', socat: 'socat + mptcpize' };

export function markdown(r: Results): string {
  const L: string[] = [];
  const head = (cols: string[]) => {
    L.push(`| ${cols.join(' | ')} |`);
    L.push(`|${cols.map(() => '---').join('|')}|`);
  };
  const row = (cols: string[]) => L.push(`| ${cols.join(' | ')} |`);
  L.push(`Medians of ${String(r.meta.settings['runs'])} runs, (min–max) in brackets. ${r.meta.date}, Linux ${r.meta.kernel}, ${r.meta.cpus} CPUs (load average ${Number(r.meta.settings['loadAverageAtStart'] ?? 0).toFixed(1)} at start), Node ${r.meta.node}, lab: ${r.meta.tools['lab'] ?? '?'}.`);
  const busy = Math.max(Number(r.meta.settings['loadAverageAtStart'] ?? 0), Number(r.meta.settings['loadAverageAtEnd'] ?? 0));
  if (busy > 1.5) L.push(`\n**Warning:** the machine was busy (1-minute load average up to ${busy.toFixed(1)} on ${r.meta.cpus} CPUs): the figures, the shaped ones above all, are unreliable; re-run on a quiet machine.`);
  L.push('');
  L.push('**Aggregation**: goodput / sum of the uplink rates (tbf), LAN client to server, under each TCP congestion control (set in every namespace, for every system).');
  L.push('');
  head(['uplinks', 'congestion control', ...SYSTEMS.map((s) => NAMES[s]), 'mpconvert / kernel', 'mpconvert / shadowsocks', 'mpconvert / socat']);
  for (const a of r.aggregation) {
    const s = a.systems;
    row([
      `${a.topology.name} Mbit/s${dir(a)}`,
      a.cc ?? 'host default',
      ...SYSTEMS.map((x) => cell(s[x]?.ratio, 3, s[x]?.error)),
      ratio(s.mpconvert?.ratio, s.kernel?.ratio, 3),
      ratio(s.mpconvert?.ratio, s.shadowsocks?.ratio),
      ratio(s.mpconvert?.ratio, s.socat?.ratio),
    ]);
  }
  const delayed = r.aggregation.filter((a) => SYSTEMS.some((x) => a.systems[x]?.ttfbP50Ms));
  if (delayed.length > 0) {
    L.push('');
    L.push('**Time to first byte on uplinks with real round-trip times** (the lab\'s delay line; request-response connections from the LAN client, p50 / p99 in ms, lower is better).');
    L.push('');
    head(['uplinks (rate@RTT)', 'congestion control', ...SYSTEMS.map((s) => NAMES[s]), 'mpconvert / shadowsocks', 'mpconvert / socat']);
    for (const a of delayed) {
      const s = a.systems;
      const both = (x: SystemName) => (s[x]?.ttfbP50Ms ? `${cell(s[x]?.ttfbP50Ms, 1)} / ${cell(s[x]?.ttfbP99Ms, 1)}` : cell(null, 1, s[x]?.error));
      row([`${a.topology.name}`, a.cc ?? 'host default', ...SYSTEMS.map(both), ratio(s.shadowsocks?.ttfbP50Ms, s.mpconvert?.ttfbP50Ms), ratio(s.socat?.ttfbP50Ms, s.mpconvert?.ttfbP50Ms)]);
    }
  }
  if (r.aggregation.some((a) => SYSTEMS.some((x) => a.systems[x]?.uplinkLoad?.some(Boolean)))) {
    L.push('');
    L.push('**Uplink load** while measured: each CPE uplink\'s wire rate (frames with headers, from tc) / its tbf rate, medians, uplinks in order. About 1.00 = the uplink was full; below that, the sender left it idle.');
    L.push('');
    head(['uplinks', 'congestion control', ...SYSTEMS.map((s) => NAMES[s])]);
    for (const a of r.aggregation) {
      const load = (x: SystemName) => {
        const l = a.systems[x]?.uplinkLoad;
        return l?.length ? l.map((st) => (st ? st.median.toFixed(2) : '—')).join(' + ') : '—';
      };
      row([`${a.topology.name} Mbit/s${dir(a)}`, a.cc ?? 'host default', ...SYSTEMS.map(load)]);
    }
  }
  L.push('');
  L.push('**Relay** (2 unshaped uplinks), **setup**, **memory**, **failover**. In the mpconvert / X columns, above 1.00x means mpconvert is better (for lower-is-better rows the ratio is X / mpconvert).');
  L.push('');
  head(['figure', ...SYSTEMS.map((s) => NAMES[s]), 'mpconvert / shadowsocks', 'mpconvert / socat']);
  const line = (label: string, get: (x: SystemName) => Stat | null | undefined, d: number, err: (x: SystemName) => string | undefined, lowerBetter = false) => {
    const m = get('mpconvert');
    const rel = (o: SystemName) => (lowerBetter ? ratio(get(o), m) : ratio(m, get(o)));
    row([label, ...SYSTEMS.map((x) => cell(get(x), d, err(x))), rel('shadowsocks'), rel('socat')]);
  };
  line('goodput, Mbit/s', (x) => r.relay[x]?.goodputMbps, 0, (x) => r.relay[x]?.error);
  line('relay CPU, s per GB (CPE + concentrator)', (x) => r.relay[x]?.cpuSecondsPerGB, 2, (x) => r.relay[x]?.error, true);
  const rd = r.relayDownload;
  if (rd) {
    line('relay goodput, Mbit/s, download', (x) => rd[x]?.goodputMbps, 0, (x) => rd[x]?.error);
    line('relay CPU, s per GB (CPE + concentrator), download', (x) => rd[x]?.cpuSecondsPerGB, 2, (x) => rd[x]?.error, true);
  }
  line('connections per second', (x) => r.setup[x]?.cps, 0, (x) => r.setup[x]?.error);
  line('setup CPU per connection, ms (CPE + concentrator)', (x) => r.setup[x]?.cpuMsPerConnection, 3, (x) => r.setup[x]?.error, true);
  line('time to first byte p50, ms', (x) => r.setup[x]?.ttfbP50Ms, 2, (x) => r.setup[x]?.error, true);
  line('time to first byte p99, ms', (x) => r.setup[x]?.ttfbP99Ms, 2, (x) => r.setup[x]?.error, true);
  line('uplink round trips to first byte', (x) => r.setup[x]?.roundTrips, 2, (x) => r.setup[x]?.error, true);
  line('concentrator memory per idle connection, bytes', (x) => r.memory[x]?.bytesPerConnection, 0, (x) => r.memory[x]?.error, true);
  if (Object.values(r.memory).some((m) => m?.justOpenedBytesPerConnection)) {
    line('the same 1 s after opening them (before an idle GC), bytes', (x) => r.memory[x]?.justOpenedBytesPerConnection, 0, (x) => r.memory[x]?.error, true);
  }
  const mib = (b: number | null | undefined) => (b === null || b === undefined ? null : stat([b / 1048576]));
  line('CPE memory just after start, MiB', (x) => mib(r.memory[x]?.cpeStartBytes), 1, (x) => r.memory[x]?.error, true);
  line('CPE memory idle after the relay and setup tests, MiB', (x) => mib(r.memory[x]?.cpeIdleBytes), 1, (x) => r.memory[x]?.error, true);
  for (const [f, way] of [[r.failover, ''], [r.failoverDownload, ', download']] as const) {
    if (!f) continue;
    line(`failover: s until the survivor carries 90% (${f.topology.name}${f.cc ? `, ${f.cc}` : ''})${way}`, (x) => f.systems[x]?.recoverySeconds, 2, (x) => f.systems[x]?.error, true);
    line(`failover: s until both carry 90% after the restore${way}`, (x) => f.systems[x]?.rejoinSeconds, 2, (x) => f.systems[x]?.error, true);
  }
  L.push('');
  const mem = SYSTEMS.filter((x) => r.memory[x] && !r.memory[x]?.error)
    .map((x) => `${NAMES[x]} ${r.memory[x]!.connections} connections (${r.memory[x]!.measure})`)
    .join(', ');
  if (mem) L.push(`Memory measured with: ${mem}.`);
  if (r.workers?.length) {
    L.push('');
    L.push('**Setup per concentrator worker count** (mpconvert, `workers: N`, `transports: [tcp]`; CPU: the CPE and every concentrator process).');
    L.push('');
    head(['workers', 'connections per second', 'setup CPU per connection, ms', 'time to first byte p50, ms', 'p99, ms', 'errors', 'load average before']);
    for (const w of r.workers) row([String(w.workers), cell(w.cps, 0, w.error), cell(w.cpuMsPerConnection, 3, w.error), cell(w.ttfbP50Ms, 2, w.error), cell(w.ttfbP99Ms, 2, w.error), String(w.errors), w.loadAverage.toFixed(2)]);
  }
  if (r.udp) {
    const u = r.udp;
    L.push('');
    L.push(`**UDP** (${u.topology.name} Mbit/s, ${u.cc}): iperf3 -u at ${u.loadMbps} Mbit/s, its received rate, and the round trips of a 20 pps probe sharing the path meanwhile. In the mpconvert / X columns, above 1.00x means mpconvert is better.`);
    L.push('');
    head(['figure', ...UDP_SYSTEMS.map((s) => UDP_NAMES[s]), 'mpconvert / OpenVPN', 'mpconvert / shadowsocks']);
    const uline = (label: string, get: (x: UdpSystemName) => Stat | null | undefined, d: number, lowerBetter: boolean) => {
      const mine = get('mpconvert');
      const rel = (o: UdpSystemName) => (lowerBetter ? ratio(get(o), mine) : ratio(mine, get(o)));
      row([label, ...UDP_SYSTEMS.map((x) => cell(get(x), d, u.systems[x]?.error)), rel('openvpn'), rel('shadowsocks')]);
    };
    uline('UDP goodput, Mbit/s', (x) => u.systems[x]?.goodputMbps, 1, false);
    uline('probe round trip under load p50, ms', (x) => u.systems[x]?.probeP50Ms, 1, true);
    uline('probe round trip under load p95, ms', (x) => u.systems[x]?.probeP95Ms, 1, true);
    uline('probe datagrams answered under load, %', (x) => u.systems[x]?.probeAnsweredPercent, 0, false);
    for (const x of UDP_SYSTEMS) if (u.deployments[x]) L.push(`- ${UDP_NAMES[x]}: ${u.deployments[x]}`);
    for (const x of UDP_SYSTEMS) if (u.systems[x]?.error) L.push(`- ${UDP_NAMES[x]}: error: ${u.systems[x]!.error}`);
  }
  if (r.manycpe) {
    L.push('');
    L.push(...manyCpeMarkdown(r.manycpe));
  }
  L.push('');
  L.push('**Targets**');
  L.push('');
  head(['target', 'measured', 'met', 'gap']);
  for (const t of r.targets) row([t.target, t.value, t.met === null ? 'not measured' : t.met === 'tie' ? 'tie (within 1% or the runs\' spread)' : t.met ? 'yes' : '**no**', t.gap]);
  L.push('');
  L.push('How each system is deployed:');
  L.push('');
  for (const x of SYSTEMS) if (r.deployments[x]) L.push(`- ${NAMES[x]}: ${r.deployments[x]}`);
  for (const n of r.meta.notes) L.push(`- ${n}`);
  return L.join('\n') + '\n';
}

export type Target = Results['targets'][number];

/**
 * One row of the gap table: met, and the gap relative to the goal (positive = better than the goal); not measured
 * when either side is missing. An infinite value (never) is not met, with no gap.
 */
export function targetRow(target: string, value: number | undefined, goal: number | undefined, higherBetter: boolean, show: (v: number) => string): Target {
  if (value === undefined || goal === undefined || Number.isNaN(value) || !Number.isFinite(goal) || goal === 0) return { target, value: '—', met: null, gap: '—' };
  if (!Number.isFinite(value)) return { target, value: 'never', met: higherBetter === value > 0, gap: '—' };
  const gap = higherBetter ? value / goal - 1 : goal / value - 1;
  return { target, value: show(value), met: higherBetter ? value >= goal : value <= goal, gap: `${gap >= 0 ? '+' : ''}${(100 * gap).toFixed(1)}%` };
}

/**
 * Seconds of a failover figure of one system for the targets: the median over the runs, a run that never got
 * there counted as infinitely long (so most runs never: never). Undefined when not measured.
 */
export function failoverMedian(f: Results['failover'] | undefined, sys: SystemName, which: 'recovery' | 'rejoin', runs: number): number | undefined {
  const s = f?.systems[sys];
  if (!s || s.error) return undefined;
  const st = which === 'recovery' ? s.recoverySeconds : s.rejoinSeconds;
  const measured = st?.runs ?? [];
  // Older results did not count the rejoins that never happened: the runs that gave no figure.
  const never = which === 'recovery' ? s.never : (s.neverRejoined ?? Math.max(0, runs - measured.length));
  const v = [...measured, ...Array<number>(never).fill(Infinity)].sort((a, b) => a - b);
  if (v.length === 0) return undefined;
  const mid = v.length >> 1;
  return v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

/**
 * Issue 17's targets for both directions: the relay as a download at least 0.5x the kernel's (the upload's row
 * is the older 'relay goodput >= 0.5x kernel'), and mpconvert's failover, each way, under 0.5 s until the survivor
 * carries 90% of its rate and until both carry 90% of the sum after the restore.
 */
export function directionTargets(r: Results): Target[] {
  const out: Target[] = [];
  const m = (s: Stat | null | undefined) => s?.median;
  if (r.relayDownload) {
    const g = (x: SystemName) => m(r.relayDownload?.[x]?.goodputMbps);
    const k = g('kernel');
    out.push(targetRow('relay goodput >= 0.5x kernel, download', g('mpconvert'), k === undefined ? undefined : 0.5 * k, true, (v) => `${v.toFixed(0)} Mbit/s`));
  }
  const runs = Number(r.meta.settings['failoverRuns'] ?? 0);
  for (const [f, way] of [[r.failover, ''], [r.failoverDownload, ', download']] as const) {
    if (!f) continue;
    const s = (v: number) => `${v.toFixed(2)} s`;
    out.push(targetRow(`failover: s until the survivor carries 90% <= 0.5${way}`, failoverMedian(f, 'mpconvert', 'recovery', runs), 0.5, false, s));
    out.push(targetRow(`failover: s until both carry 90% after the restore <= 0.5${way}`, failoverMedian(f, 'mpconvert', 'rejoin', runs), 0.5, false, s));
  }
  return out;
}

const COLORS: Record<SystemName, string> = { kernel: '#555555', mpconvert: '#1f77b4', shadowsocks: '#d62728', socat: '#2ca02c' };
const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');

function legend(x: number, y: number, systems: readonly SystemName[]): string {
  return systems
    .map((s, i) => `<rect x="${x + i * 170}" y="${y}" width="12" height="12" fill="${COLORS[s]}"/><text x="${x + i * 170 + 16}" y="${y + 11}">${esc(NAMES[s])}</text>`)
    .join('');
}

/** Grouped bars: goodput / sum of rates per topology and system, with min–max whiskers. */
export function aggregationSvg(r: Results): string {
  const W = 760;
  const H = 360;
  const left = 50;
  const top = 40;
  const bottom = 300;
  const groupW = (W - left - 20) / Math.max(1, r.aggregation.length);
  const barW = Math.min(36, (groupW - 30) / SYSTEMS.length);
  const y = (v: number) => bottom - (Math.min(v, 1.1) / 1.1) * (bottom - top);
  const parts: string[] = [];
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    parts.push(`<line x1="${left}" x2="${W - 10}" y1="${y(t)}" y2="${y(t)}" stroke="#ddd"/><text x="${left - 6}" y="${y(t) + 4}" text-anchor="end">${t.toFixed(2)}</text>`);
  }
  r.aggregation.forEach((a, gi) => {
    const gx = left + gi * groupW + 15;
    SYSTEMS.forEach((s, si) => {
      const st = a.systems[s]?.ratio;
      const x = gx + si * barW;
      if (!st) return;
      parts.push(`<rect x="${x.toFixed(1)}" y="${y(st.median).toFixed(1)}" width="${(barW - 4).toFixed(1)}" height="${(bottom - y(st.median)).toFixed(1)}" fill="${COLORS[s]}"><title>${esc(NAMES[s])}: ${st.median.toFixed(3)}</title></rect>`);
      const cx = x + (barW - 4) / 2;
      parts.push(`<line x1="${cx}" x2="${cx}" y1="${y(st.min)}" y2="${y(st.max)}" stroke="#000"/>`);
      parts.push(`<text x="${cx}" y="${y(st.median) - 4}" text-anchor="middle" font-size="9">${st.median.toFixed(2)}</text>`);
    });
    parts.push(`<text x="${gx + (SYSTEMS.length * barW) / 2}" y="${bottom + 16}" text-anchor="middle">${esc(a.topology.name)}${a.cc ? ` ${esc(a.cc)}` : ' Mbit/s'}${a.direction === 'down' ? ' ↓' : ''}</text>`);
  });
  return svg(W, H, 'Aggregation: goodput / sum of uplink rates', [...parts, legend(left, H - 24, SYSTEMS)]);
}

/** Goodput over time per system, with the cut and the restore marked; the download (if measured) dashed. */
export function failoverSvg(r: Results): string {
  const W = 760;
  const H = 360;
  const left = 50;
  const top = 40;
  const bottom = 300;
  const f = r.failover ?? r.failoverDownload;
  const parts: string[] = [];
  if (f) {
    const series = [r.failover, r.failoverDownload].flatMap((g) => SYSTEMS.map((s) => [s, g?.systems[s]?.series ?? [], g === r.failoverDownload] as const));
    const tMax = Math.max(1, ...series.flatMap(([, v]) => v.map(([t]) => t)));
    const vMax = Math.max(10, ...series.flatMap(([, v]) => v.map(([, m]) => m))) * 1.1;
    const x = (t: number) => left + (t / tMax) * (W - left - 20);
    const y = (v: number) => bottom - (v / vMax) * (bottom - top);
    const step = vMax > 200 ? 50 : vMax > 100 ? 25 : 10;
    for (let v = 0; v <= vMax; v += step) parts.push(`<line x1="${left}" x2="${W - 20}" y1="${y(v)}" y2="${y(v)}" stroke="#eee"/><text x="${left - 6}" y="${y(v) + 4}" text-anchor="end">${v}</text>`);
    for (let t = 0; t <= tMax; t += 2) parts.push(`<text x="${x(t)}" y="${bottom + 16}" text-anchor="middle">${t}s</text>`);
    for (const [t, label] of [[f.cutAt, `up${f.cut} cut`], [f.restoreAt, `up${f.cut} restored`]] as const) {
      parts.push(`<line x1="${x(t)}" x2="${x(t)}" y1="${top}" y2="${bottom}" stroke="#999" stroke-dasharray="4 3"/><text x="${x(t) + 3}" y="${top + 10}">${label}</text>`);
    }
    for (const [s, v, down] of series) {
      if (!v.length) continue;
      parts.push(`<polyline fill="none" stroke="${COLORS[s]}" stroke-width="1.6"${down ? ' stroke-dasharray="5 3"' : ''} points="${v.map(([t, m]) => `${x(t).toFixed(1)},${y(m).toFixed(1)}`).join(' ')}"/>`);
    }
    parts.push(`<text x="12" y="${(top + bottom) / 2}" transform="rotate(-90 12 ${(top + bottom) / 2})" text-anchor="middle">Mbit/s</text>`);
  }
  const ways = r.failover && r.failoverDownload ? 'solid: upload, dashed: download' : r.failoverDownload ? 'download' : '';
  if (ways) parts.push(`<text x="${W - 20}" y="34" text-anchor="end">${ways}</text>`);
  const title = f ? `Failover: goodput while one of two uplinks (${f.topology.name} Mbit/s) is cut and restored` : 'Failover: not measured';
  return svg(W, H, title, [...parts, legend(left, H - 24, SYSTEMS)]);
}

function svg(w: number, h: number, title: string, parts: string[]): string {
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" font-family="sans-serif" font-size="11">\n` +
    `<rect width="${w}" height="${h}" fill="#fff"/>\n<text x="${w / 2}" y="20" text-anchor="middle" font-size="14">${esc(title)}</text>\n` +
    parts.join('\n') +
    '\n</svg>\n'
  );
}
