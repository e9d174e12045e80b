/** The measurements: iperf3 goodput (with the relays' CPU), request/response setup, idle memory, failover. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Lab } from './lab.js';
import { readTcpSegments } from '../../src/lab/pcap.js';
import { uplinkAddressing } from '../../src/lab/addressing.js';
import { countRoundTrips } from './roundtrips.js';
import { cpuSeconds, memoryBytes, spawnIn, type Proc } from './proc.js';
import { cmdline, CONC_ADDR, IPERF_PORT, RR_PORT, type Deployment } from './systems.js';

const TOOLS = fileURLToPath(new URL('../tools/', import.meta.url));

/** Which way the bytes flow: up = LAN client to server (upload), down = server to LAN client (iperf3 -R). */
export type Direction = 'up' | 'down';

export interface Servers {
  iperf: Proc;
  rr: Proc;
  stop(): Promise<void>;
}

/** The measured servers of a deployment: iperf3 and the request/response server. */
export async function startServers(d: Deployment): Promise<Servers> {
  const [ic, ia] = cmdline(d.server, 'iperf3', ['-s', '--forceflush', '-i', '0.25', '-B', d.server.address, '-p', String(IPERF_PORT)]);
  const iperf = spawnIn(d.server.host, 'iperf3 -s', ic, ia);
  const [rc, ra] = cmdline(d.server, process.execPath, [ `${TOOLS}rr-server.js`, JSON.stringify({ host: d.server.address, port: RR_PORT })]);
  const rr = spawnIn(d.server.host, 'rr-server', rc, ra);
  const stop = async () => {
    await iperf.halt();
    await rr.halt();
  };
  try {
    await iperf.waitFor(/Server listening/);
    await rr.waitFor(/"ready"/);
  } catch (err) {
    await stop();
    throw err;
  }
  return { iperf, rr, stop };
}

interface IperfInterval {
  sum: Interval;
}
export interface IperfJson {
  end: { sum_received: { bits_per_second: number; bytes: number } };
  intervals?: IperfInterval[];
  server_output_json?: { intervals?: IperfInterval[] };
  server_output_text?: string;
  error?: string;
}

async function iperf(d: Deployment, args: string[], timeoutMs: number, direction: Direction = 'up'): Promise<IperfJson> {
  // The server finishes the previous test a moment after its client did; until then it refuses a new one.
  for (let attempt = 1; ; attempt++) {
    try {
      return await iperfOnce(d, args, timeoutMs, direction);
    } catch (err) {
      if (attempt >= 5 || !/server is busy/.test((err as Error).message)) throw err;
      await new Promise((r) => setTimeout(r, 500 * attempt));
    }
  }
}

async function iperfOnce(d: Deployment, args: string[], timeoutMs: number, direction: Direction): Promise<IperfJson> {
  const t = d.target(IPERF_PORT);
  const [c, a] = cmdline(d.client, 'iperf3', ['-c', t.address, '-p', String(t.port), '-J', ...(direction === 'down' ? ['-R'] : []), ...args]);
  const r = await d.client.host.exec(c, a, { timeoutMs, allowFailure: true });
  let j: IperfJson;
  try {
    j = JSON.parse(r.stdout) as IperfJson;
  } catch {
    // Killed by the timeout (code -1) with nothing printed: the transfer stalled.
    if (r.code === -1 && r.stdout.trim() === '') throw new Error(`iperf3 stalled: not finished after ${Math.round(timeoutMs / 1000)} s, killed`);
    throw new Error(`iperf3 printed no JSON: ${r.stdout.slice(0, 500)} ${r.stderr.slice(0, 500)}`);
  }
  if (j.error) throw new Error(`iperf3: ${j.error}`);
  return j;
}

/** The report interval of the bench's iperf3 servers (`-i`), seconds. */
const SERVER_INTERVAL_S = 0.25;

interface Interval {
  start: number;
  end: number;
  bits_per_second: number;
  omitted?: boolean;
  /** iperf3 -J marks whose figures an interval holds: true = the sending side's. */
  sender?: boolean;
}

/**
 * The receiver's report intervals of one run. Upload: the server receives; its intervals come back with
 * --get-server-output (as JSON, or as text from iperf3 3.12). Download (-R): the client receives and its own
 * `intervals` are the received side (iperf3 marks each sum `sender: false`; the server's output is then the
 * sender's, with Retr and Cwnd columns).
 */
export function receivedIntervals(j: IperfJson, direction: Direction): Interval[] {
  const iv = direction === 'down'
    ? (j.intervals ?? []).map((x) => x.sum)
    : (j.server_output_json?.intervals?.map((x) => x.sum) ?? parseServerIntervals(j.server_output_text ?? ''));
  if (iv.some((x) => x.sender === true)) throw new Error(`iperf3 ${direction === 'down' ? '-R ' : ''}gave the sender's intervals where the receiver's were expected`);
  return iv;
}

/**
 * Goodput as the receiver counted it in its full report intervals after the warm-up. iperf3's end-of-test figure
 * also counts the edges of the test, whose timing a relay shifts (the control connection goes through it too).
 * Null if the receiver reported fewer than two full intervals.
 */
export function receiverRate(intervals: Interval[] | undefined, length = SERVER_INTERVAL_S): number | null {
  const full = (intervals ?? []).filter((x) => !x.omitted && x.end - x.start >= length * 0.9);
  if (full.length < 2) return null;
  const bits = full.reduce((a, x) => a + x.bits_per_second * (x.end - x.start), 0);
  const secs = full.reduce((a, x) => a + (x.end - x.start), 0);
  return bits / secs / 1e6;
}

export interface GoodputRun {
  mbps: number;
  bytes: number;
  /** Wire rate (frames with their headers, tc's counters) of each CPE uplink during the measured seconds, Mbit/s. */
  uplinkMbps?: number[];
  /** iperf3's own end-of-test figure (sum_received), for comparison with `mbps`. */
  summaryMbps: number;
  /** CPU seconds of every relay process (CPE + concentrator) during the run; null without a relay. */
  cpuSeconds: number | null;
  cpuSecondsPerGB: number | null;
}

/**
 * Bytes sent so far by each uplink's egress qdisc (tc -s), in uplink order: the CPE's ends for uploads, the
 * concentrator's (acc{i}) for downloads.
 */
export async function uplinkTxBytes(lab: Lab, uplinks: number, direction: Direction = 'up'): Promise<number[]> {
  const out: number[] = [];
  for (let i = 1; i <= uplinks; i++) {
    const a = uplinkAddressing(i);
    const dev = direction === 'up' ? a.cpeDev : a.concDev;
    const host = direction === 'up' ? lab.hosts.cpe : lab.hosts.concentrator;
    const r = await host.exec('tc', ['-s', '-j', 'qdisc', 'show', 'dev', dev, 'root']);
    const q = (JSON.parse(r.stdout) as Array<{ bytes?: number }>)[0];
    if (typeof q?.bytes !== 'number') throw new Error(`no byte counter on ${dev}'s qdisc: ${r.stdout.slice(0, 200)}`);
    out.push(q.bytes);
  }
  return out;
}

/**
 * One iperf3 run of `seconds` (after `omit` seconds of warm-up). With `wire`, each CPE uplink's egress byte
 * counter is read twice while the measured seconds run (0.3 s after the warm-up, 0.2 s before the end): how
 * full every uplink was while measured.
 */
export async function goodput(d: Deployment, seconds: number, omit = 1, wire?: { lab: Lab; uplinks: number }, direction: Direction = 'up'): Promise<GoodputRun> {
  const reverse = direction === 'down';
  const before = d.relayRoots.length ? cpuSeconds(d.relayRoots) : 0;
  const samples: Array<Promise<{ at: number; bytes: number[] }>> = [];
  const timers = wire
    ? [omit + 0.3, omit + seconds - 0.2].map((t) =>
        setTimeout(() => {
          const p = uplinkTxBytes(wire.lab, wire.uplinks, direction).then((bytes) => ({ at: performance.now(), bytes }));
          p.catch(() => {});
          samples.push(p);
        }, t * 1000),
      )
    : [];
  let j: IperfJson;
  try {
    j = await iperf(d, ['-t', String(seconds), '-O', String(omit), ...(reverse ? [] : ['--get-server-output'])], (seconds + omit) * 1000 + 20_000, direction);
  } finally {
    for (const t of timers) clearTimeout(t);
  }
  const received = receiverRate(receivedIntervals(j, direction));
  let uplinkMbps: number[] | undefined;
  if (samples.length === 2) {
    const [a, b] = await Promise.all(samples);
    const s = (b!.at - a!.at) / 1000;
    uplinkMbps = b!.bytes.map((x, i) => ((x - a!.bytes[i]!) * 8) / 1e6 / s);
  }
  // Let socat reap the connection's child so its CPU time lands in the parent's cutime.
  if (d.system === 'socat') await new Promise((r) => setTimeout(r, 300));
  const cpu = d.relayRoots.length ? cpuSeconds(d.relayRoots) - before : null;
  const bytes = j.end.sum_received.bytes;
  // -O: the warm-up bytes are not in `bytes` but the CPU is in `cpu`: scale the CPU to the measured share.
  const cpuMeasured = cpu === null ? null : (cpu * seconds) / (seconds + omit);
  const summaryMbps = j.end.sum_received.bits_per_second / 1e6;
  return {
    mbps: received ?? summaryMbps,
    summaryMbps,
    bytes,
    ...(uplinkMbps ? { uplinkMbps } : {}),
    cpuSeconds: cpuMeasured,
    cpuSecondsPerGB: cpuMeasured === null || bytes === 0 ? null : cpuMeasured / (bytes / 1e9),
  };
}

export interface RrRun {
  completed: number;
  errors: number;
  cps: number;
  /** CPU time of the relay processes (CPE + concentrator, reaped children included) per completed connection, ms; null without relay processes. */
  cpuMsPerConnection?: number | null;
  ttfbP50: number | null;
  ttfbP99: number | null;
  errorKinds?: Record<string, number>;
}

/** Short request/response exchanges for `durationMs` with `concurrency` workers. */
export async function requestResponse(d: Deployment, durationMs: number, concurrency: number, maxConnections?: number): Promise<RrRun> {
  const t = d.target(RR_PORT);
  const [c, a] = cmdline(d.client, process.execPath, [`${TOOLS}rr-client.js`, JSON.stringify({ mode: 'rr', host: t.address, port: t.port, durationMs, concurrency, maxConnections })]);
  const before = d.relayRoots.length ? cpuSeconds(d.relayRoots) : 0;
  const r = await d.client.host.exec(c, a, { timeoutMs: durationMs + 30_000 });
  const cpu = d.relayRoots.length ? cpuSeconds(d.relayRoots) - before : null;
  const line = r.stdout.trim().split('\n').pop() ?? '';
  const run = JSON.parse(line) as RrRun;
  run.cpuMsPerConnection = cpu === null || run.completed === 0 ? null : (cpu * 1000) / run.completed;
  return run;
}

export interface MemoryRun {
  connections: number;
  errors: number;
  /** The connections that could not be held, by error code (absent in older results). */
  errorKinds?: Record<string, number>;
  baselineBytes: number;
  loadedBytes: number;
  bytesPerConnection: number;
  processes: number;
  measure: string;
  /** The CPE-side relay's memory before the load (its idle footprint: a router has little), bytes. */
  cpeIdleBytes: number | null;
  /**
   * Per connection once the process collected the garbage of opening them (a garbage-collected process: V8's
   * memory reducer runs a full collection some 30 s after the allocations stop); others: bytesPerConnection.
   */
  settledBytesPerConnection: number;
  /** Seconds waited for that (0: not a garbage-collected process). */
  settleSeconds: number;
}

/** How long a garbage-collected process may take to collect the garbage of opening the connections. */
const SETTLE_MAX_MS = 60_000;
/** How long the idle daemons are watched before the connections are opened (garbage-collected ones only). */
const BASELINE_SETTLE_MS = 40_000;

/** Concentrator-side relay memory with `count` idle relayed connections; the CPE's idle memory before them. */
export async function idleMemory(d: Deployment, count: number): Promise<MemoryRun> {
  const root = d.concentratorRoot;
  if (root === undefined) throw new Error('no concentrator process');
  let base = memoryBytes(root);
  const cpeIdleBytes = d.cpeRoot === undefined ? null : memoryBytes(d.cpeRoot).bytes;
  if (d.garbageCollected) {
    // A fresh process holds the garbage of its start: the baseline is its lowest reading over the time V8's memory
    // reducer needs to collect that (about 30 s after the allocations stop), so a later collection does not hide
    // part of what the connections cost.
    const t0 = Date.now();
    while (Date.now() - t0 < BASELINE_SETTLE_MS) {
      await new Promise((r) => setTimeout(r, 1_000));
      const b = memoryBytes(root);
      if (b.bytes < base.bytes) base = b;
    }
  }
  const { held, errors, errorKinds, loaded, settled, settleSeconds } = await holdIdle(d, count, async (n, errors, errorKinds) => {
    const loaded = memoryBytes(root);
    let settled = loaded.bytes;
    const t0 = Date.now();
    if (d.garbageCollected) {
      // Read each second, keep the lowest; done once the growth fell by a fifth (the collection ran) or at the bound.
      while (Date.now() - t0 < SETTLE_MAX_MS) {
        await new Promise((r) => setTimeout(r, 1_000));
        settled = Math.min(settled, memoryBytes(root).bytes);
        if (settled - base.bytes < 0.8 * (loaded.bytes - base.bytes)) break;
      }
    }
    return { held: n, errors, errorKinds, loaded, settled, settleSeconds: d.garbageCollected ? Math.round((Date.now() - t0) / 1000) : 0 };
  });
  return {
    settledBytesPerConnection: held > 0 ? (settled - base.bytes) / held : NaN,
    settleSeconds,
    connections: held,
    errors,
    errorKinds,
    baselineBytes: base.bytes,
    loadedBytes: loaded.bytes,
    bytesPerConnection: held > 0 ? (loaded.bytes - base.bytes) / held : NaN,
    processes: loaded.processes,
    measure: loaded.measure,
    cpeIdleBytes,
  };
}

/**
 * The CPE relay's memory now, bytes; a garbage-collected one is watched for BASELINE_SETTLE_MS and its lowest
 * reading counts (V8's memory reducer collects what earlier tests left some 30 s after they stopped).
 */
export async function idleFootprint(d: Deployment): Promise<number | null> {
  if (d.cpeRoot === undefined) return null;
  let low = memoryBytes(d.cpeRoot).bytes;
  if (!d.garbageCollected) return low;
  const t0 = Date.now();
  while (Date.now() - t0 < BASELINE_SETTLE_MS) {
    await new Promise((r) => setTimeout(r, 1_000));
    low = Math.min(low, memoryBytes(d.cpeRoot).bytes);
  }
  return low;
}

/** Holds `count` idle relayed connections from the LAN client (rr-client idle mode) while `fn` measures. */
export async function holdIdle<T>(d: Deployment, count: number, fn: (held: number, errors: number, errorKinds: Record<string, number>) => Promise<T>): Promise<T> {
  const t = d.target(RR_PORT);
  const [c, a] = cmdline(d.client, process.execPath, [ `${TOOLS}rr-client.js`, JSON.stringify({ mode: 'idle', host: t.address, port: t.port, count, concurrency: 100, timeoutMs: 20_000 })]);
  const holder = spawnIn(d.client.host, 'rr-client idle', c, a);
  try {
    const held = await holder.waitJson<{ held: number; errors: number; errorKinds?: Record<string, number> }>((v) => 'held' in v, 120_000);
    await new Promise((r) => setTimeout(r, 1_000)); // let the relay settle (buffers freed, timers armed)
    return await fn(held.held, held.errors, held.errorKinds ?? {});
  } finally {
    await holder.halt();
  }
}

export interface FailoverRun {
  /** Receiver goodput per interval: [t seconds since the test started, Mbit/s]. */
  series: Array<[number, number]>;
  cutAt: number;
  restoreAt: number;
  /** Seconds from the cut until an interval carries >= 90% of the survivor's rate; null if never. */
  recoverySeconds: number | null;
  /** Seconds from the restore until an interval carries >= 90% of the sum of the rates; null if never. */
  rejoinSeconds: number | null;
}

/**
 * One long iperf3 run with 0.25 s intervals; uplink `cut` goes down at `cutAt` and comes back at `restoreAt`
 * (seconds after the iperf3 client started). `direction` down: a download (iperf3 -R), read at the client.
 */
export async function failover(
  lab: Lab,
  d: Deployment,
  o: { seconds: number; cutAt: number; restoreAt: number; cut: number; survivorMbps: number; sumMbps: number; direction?: Direction },
): Promise<FailoverRun> {
  const timers: NodeJS.Timeout[] = [];
  const actions: Promise<void>[] = [];
  let cutDone = false;
  const t0 = Date.now();
  timers.push(setTimeout(() => actions.push(lab.uplinkDown(o.cut).then(() => void (cutDone = true))), o.cutAt * 1000));
  timers.push(setTimeout(() => actions.push(lab.uplinkUp(o.cut)), o.restoreAt * 1000));
  let j: IperfJson;
  try {
    const direction = o.direction ?? 'up';
    j = await iperf(d, ['-t', String(o.seconds), '-i', '0.25', ...(direction === 'up' ? ['--get-server-output'] : [])], o.seconds * 1000 + 30_000, direction);
  } finally {
    for (const t of timers) clearTimeout(t);
    await Promise.allSettled(actions);
    if (Date.now() - t0 < o.restoreAt * 1000 || cutDone) await lab.uplinkUp(o.cut).catch(() => {});
  }
  const series = intervalSeries(receivedIntervals(j, o.direction ?? 'up'));
  if (!series.length) throw new Error('iperf3 gave no intervals');
  return {
    series,
    cutAt: o.cutAt,
    restoreAt: o.restoreAt,
    recoverySeconds: secondsUntil(series, o.cutAt, 0.9 * o.survivorMbps),
    rejoinSeconds: secondsUntil(series, o.restoreAt, 0.9 * o.sumMbps),
  };
}

/**
 * Seconds from `from` until the end of the first interval that carries at least `mbps`, leaving out the one that
 * ends within 0.25 s of `from` (the bench's clock and iperf3's are a connection setup apart); null if none does.
 * To 0.01 s, for both the comparison and the figure: iperf3's JSON interval ends (a download's, read at the client) drift by
 * microseconds off the 0.25 s grid that its text output (an upload's, at the server) prints to 0.01 s, and
 * 0.500007 s must not read as over 0.5 s.
 */
export function secondsUntil(series: Array<[number, number]>, from: number, mbps: number): number | null {
  const after = series.map(([t, v]) => [Math.round((t - from) * 100) / 100, v] as const);
  return after.find(([dt, v]) => dt > 0.25 && v >= mbps)?.[0] ?? null;
}

/** iperf3's text intervals ("[  5]   0.25-0.50   sec  2.94 MBytes  98.6 Mbits/sec"); summary and omitted lines left out. */
export function parseServerIntervals(text: string): Interval[] {
  const unit: Record<string, number> = { '': 1, K: 1e3, M: 1e6, G: 1e9 };
  const out: Interval[] = [];
  for (const m of text.matchAll(/^\[\s*\d+\]\s+([\d.]+)-([\d.]+)\s+sec\s+[\d.]+\s+\w?Bytes\s+([\d.]+)\s+([KMG]?)bits\/sec\s*$/gm)) {
    out.push({ start: Number(m[1]), end: Number(m[2]), bits_per_second: Number(m[3]) * unit[m[4] ?? '']! });
  }
  return out;
}

/** Receiver intervals as [end seconds, Mbit/s]: omitted (warm-up) intervals and the short tail at the end left out. */
export function intervalSeries(intervals: Interval[]): Array<[number, number]> {
  return intervals.filter((x) => !x.omitted && x.end - x.start >= 0.1).map((x) => [x.end, x.bits_per_second / 1e6]);
}

/** Round trips to the first byte of one exchange, counted from a capture on the CPE's uplinks (see roundtrips.ts). */
export async function roundTrips(lab: Lab, d: Deployment): Promise<number | null> {
  await requestResponse(d, 200, 1, 3); // warm-up: TFO cookies, caches
  const dir = mkdtempSync(join(tmpdir(), 'mpc-bench-pcap-'));
  const file = join(dir, 'rt.pcap');
  const dump = spawnIn(lab.hosts.cpe, 'tcpdump', 'tcpdump', ['-i', 'any', '--immediate-mode', '-U', '-n', '-s', '200', '-w', file, 'tcp and host ' + CONC_ADDR]);
  try {
    await dump.waitFor(/listening on/);
    const r = await requestResponse(d, 2_000, 1, 1);
    if (r.completed !== 1) throw new Error(`the captured exchange failed: ${JSON.stringify(r.errorKinds)}`);
    await new Promise((res) => setTimeout(res, 200));
    await dump.halt();
    return countRoundTrips(readTcpSegments(file), CONC_ADDR);
  } finally {
    await dump.halt();
    if (!process.env.BENCH_KEEP_PCAP) rmSync(dir, { recursive: true, force: true });
  }
}
