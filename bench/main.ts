/**
 * `npm run bench`: mpconvert against kernel MPTCP (the ceiling), shadowsocks-libev and socat, in one run, on the
 * same lab topologies. Writes bench/results/latest.{json,md}, aggregation.svg, failover.svg and prints the table.
 *
 * Flags: `--help` (USAGE below); an unknown flag or a malformed value is refused with the usage (exit status 2).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs as utilParseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { labImplementation, labUp, type Lab } from './lib/lab.js';
import { memoryBytes } from './lib/proc.js';
import { failover, roundTrips, goodput, idleMemory, idleFootprint, holdIdle, requestResponse, startServers, type FailoverRun, type GoodputRun, type RrRun, type Direction } from './lib/measure.js';
import { aggregationSvg, directionTargets, failoverSvg, markdown, stat, type Results, type Stat, type Topology } from './lib/report.js';
import { deploy, needsLabMptcpRouting, SYSTEMS, type Deployment, type SystemName } from './lib/systems.js';
import { summariseProfile } from './lib/profile.js';
import { diffHeap, renderHeapDiff, summariseHeap, type HeapGroup } from './lib/heap.js';
import { setupPerWorkerCount } from './lib/workers.js';
import { UDP_SYSTEMS, deployUdp, udpNeedsLabMptcpRouting, udpRun, type UdpRun, type UdpSystemName } from './lib/udp.js';
import { MANY_SYSTEMS, manyCpeFigure, type ManySystem } from './lib/manycpe.js';

const FIGURES = ['relay', 'setup', 'memory', 'aggregation', 'failover', 'udp'] as const;
/** Figures run only when --only names them (the many-CPE figure takes several minutes). */
const EXTRA_FIGURES = ['manycpe'] as const;
type Figure = (typeof FIGURES)[number] | (typeof EXTRA_FIGURES)[number];

interface Options {
  runs: number;
  seconds: number;
  setupMs: number;
  concurrency: number;
  memoryConnections: number;
  socatMemoryConnections: number;
  failoverSeconds: number;
  failoverRuns: number;
  systems: SystemName[];
  only: Set<Figure>;
  topologies: Topology[];
  /** Directions of the aggregation, relay and failover runs (up = upload, down = download with iperf3 -R). */
  directions: Direction[];
  /** TCP congestion controls the shaped tests run under (every namespace of the lab, every system). */
  ccs: string[];
  profile: boolean;
  /** `--heap`: the concentrator's JavaScript heap per idle connection, by constructor (bench/lib/heap.ts). */
  heap: boolean;
  /** `--render`: rewrite latest.md and the charts from latest.json; `--help`: print the usage. */
  render: boolean;
  help: boolean;
  out: string;
  /** With the setup figure: mpconvert's setup once per concentrator worker count (bench/lib/workers.ts). */
  workers: number[] | undefined;
  /** The many-CPE figure: CPEs, and the shared server link's rate in Mbit/s. */
  cpes: number;
  serverLinkMbps: number;
}

/** The flags `npm run bench` takes (every value a string; node:util parseArgs refuses anything else). */
const FLAGS = {
  help: { type: 'boolean' },
  quick: { type: 'boolean' },
  profile: { type: 'boolean' },
  heap: { type: 'boolean' },
  render: { type: 'boolean' },
  runs: { type: 'string' },
  seconds: { type: 'string' },
  'setup-ms': { type: 'string' },
  concurrency: { type: 'string' },
  connections: { type: 'string' },
  'failover-runs': { type: 'string' },
  systems: { type: 'string' },
  only: { type: 'string' },
  topologies: { type: 'string' },
  directions: { type: 'string' },
  cc: { type: 'string' },
  out: { type: 'string' },
  workers: { type: 'string' },
  cpes: { type: 'string' },
  'server-link': { type: 'string' },
} as const;

/** The usage text: the block at the top of this file. */
export const USAGE = `usage: node dist/bench/main.js [--runs 3] [--seconds 3] [--quick] [--systems kernel,mpconvert,shadowsocks,socat]
         [--only relay,setup,memory,aggregation,failover,udp] [--concurrency N] [--connections N]
         [--failover-runs N] [--setup-ms MS] [--profile] [--heap] [--render] [--out DIR]
         [--topologies 50+50,80+20,4x25,50@10+50@40,80@5+20@60] [--cc reno,bbr] [--directions up,down]
         [--workers 1,2]   (with setup: mpconvert's setup per concentrator worker count)
         [--only manycpe [--cpes 50] [--server-link 500]]
Experiments: MPC_BENCH_CONCENTRATOR_YAML (lines appended to the mpconvert concentrator's configuration) and
MPC_BENCH_CPE_ARGS (extra \`mpconvert cpe\` flags, space-separated). Method and results: docs/performance.md.`;

/** A command line the bench cannot run: printed without a stack, exit status 2. */
class UsageError extends Error {}

function parseArgs(argv: string[]): Options {
  let values: ReturnType<typeof utilParseArgs<{ args: string[]; options: typeof FLAGS; strict: true }>>['values'];
  try {
    ({ values } = utilParseArgs({ args: argv, options: FLAGS, strict: true, allowPositionals: false }));
  } catch (err) {
    throw new UsageError(`${(err as Error).message}\n${USAGE}`);
  }
  const get = (name: Exclude<keyof typeof FLAGS, 'help' | 'quick' | 'profile' | 'heap' | 'render'>) => values[name];
  const quick = values.quick === true;
  const o: Options = {
    runs: Number(get('runs') ?? (quick ? 1 : 3)),
    seconds: Number(get('seconds') ?? (quick ? 2 : 3)),
    setupMs: Number(get('setup-ms') ?? (quick ? 1_000 : 2_000)),
    concurrency: Number(get('concurrency') ?? 32),
    memoryConnections: Number(get('connections') ?? (quick ? 2_000 : 8_500)),
    socatMemoryConnections: quick ? 200 : 1_000,
    failoverSeconds: 12,
    failoverRuns: Number(get('failover-runs') ?? (quick ? 1 : 2)),
    systems: (get('systems')?.split(',') ?? [...SYSTEMS]) as SystemName[],
    only: new Set((get('only')?.split(',') ?? [...FIGURES]) as Figure[]),
    topologies: [
      { name: '50+50', ratesMbps: [50, 50] },
      { name: '80+20', ratesMbps: [80, 20] },
      { name: '4x25', ratesMbps: [25, 25, 25, 25] },
      // Real round-trip times (the lab's delay line): DSL + LTE, and fibre + a slow, far LTE.
      { name: '50@10+50@40', ratesMbps: [50, 50], rttMs: [10, 40] },
      { name: '80@5+20@60', ratesMbps: [80, 20], rttMs: [5, 60] },
    ].filter((t) => get('topologies')?.split(',').includes(t.name) ?? true),
    directions: (get('directions')?.split(',') ?? ['up', 'down']) as Direction[],
    ccs: get('cc')?.split(',') ?? defaultCongestionControls(),
    profile: values.profile === true,
    heap: values.heap === true,
    render: values.render === true,
    help: values.help === true,
    out: get('out') ?? fileURLToPath(new URL('../../bench/results/', import.meta.url)),
    workers: get('workers')?.split(',').map(Number),
    cpes: Number(get('cpes') ?? 50),
    serverLinkMbps: Number(get('server-link') ?? 500),
  };
  for (const [flag, v] of [['runs', o.runs], ['setup-ms', o.setupMs], ['concurrency', o.concurrency], ['connections', o.memoryConnections], ['failover-runs', o.failoverRuns]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new UsageError(`--${flag}: ${get(flag)} is not a positive whole number`);
  }
  if (!(o.seconds > 0)) throw new UsageError(`--seconds: ${get('seconds')} is not a duration in seconds`);
  for (const n of o.workers ?? []) if (!Number.isInteger(n) || n < 1) throw new UsageError(`--workers: ${n} is not a worker count`);
  for (const d of o.directions) if (d !== 'up' && d !== 'down') throw new UsageError(`--directions: ${d} is not up or down`);
  for (const s of o.systems) if (!SYSTEMS.includes(s) && !(o.only.size === 1 && o.only.has('manycpe'))) throw new UsageError(`unknown system ${s}; known: ${SYSTEMS.join(', ')}`);
  if (!Number.isInteger(o.cpes) || o.cpes < 1 || o.cpes > 99) throw new UsageError(`--cpes: ${o.cpes} is not 1..99`);
  if (!(o.serverLinkMbps > 0)) throw new UsageError(`--server-link: ${o.serverLinkMbps} is not a rate in Mbit/s`);
  const known: readonly string[] = [...FIGURES, ...EXTRA_FIGURES];
  for (const f of o.only) if (!known.includes(f)) throw new UsageError(`unknown figure ${f}; known: ${known.join(', ')}`);
  const usable = congestionControls();
  for (const cc of o.ccs) if (!usable.includes(cc)) throw new UsageError(`congestion control ${cc} cannot be set in a namespace here; usable: ${usable.join(', ')} (net.ipv4.tcp_allowed_congestion_control)`);
  if (o.ccs.length === 0) throw new UsageError('--cc: at least one congestion control');
  return o;
}

/**
 * The congestion controls a lab namespace may select: available in this kernel and allowed without
 * CAP_NET_ADMIN over the initial namespace (a container's root lacks it), net.ipv4.tcp_allowed_congestion_control.
 */
function congestionControls(): string[] {
  const read = (f: string) => readFileSync(`/proc/sys/net/ipv4/${f}`, 'utf8').trim().split(/\s+/);
  const available = read('tcp_available_congestion_control');
  const allowed = new Set(read('tcp_allowed_congestion_control'));
  return available.filter((cc) => allowed.has(cc));
}

/**
 * The shaped tests run under a loss-based congestion control (cubic, Linux's and Debian's default; reno where
 * cubic cannot be selected) and under BBR when it is there: the two behave very differently on MPTCP subflows
 * (docs/performance.md, "Aggregation and the congestion control").
 */
function defaultCongestionControls(): string[] {
  const usable = congestionControls();
  const loss = ['cubic', 'reno'].find((cc) => usable.includes(cc));
  return [...(loss ? [loss] : []), ...(usable.includes('bbr') ? ['bbr'] : [])];
}

const t0 = Date.now();
const log = (msg: string) => process.stderr.write(`[bench ${((Date.now() - t0) / 1000).toFixed(0).padStart(3)}s] ${msg}\n`);
const errText = (e: unknown) => (e instanceof Error ? e.message : String(e)).split('\n').slice(0, 3).join(' ').slice(0, 300);

function version(cmd: string, args: string[], re: RegExp): string {
  try {
    const out = execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
    return re.exec(out)?.[1] ?? out.split('\n')[0]!.trim();
  } catch (e) {
    const out = String((e as { stdout?: Buffer }).stdout ?? '') + String((e as { stderr?: Buffer }).stderr ?? '');
    return re.exec(out)?.[1] ?? 'unknown';
  }
}

/**
 * Bench-wide namespace settings, the same for every system: enough ports and TIME_WAIT reuse for the setup test;
 * the congestion control of every TCP socket and MPTCP subflow when `cc` is given (else the namespace default,
 * which new namespaces take from the host).
 */
async function tune(lab: Lab, cc?: string): Promise<void> {
  const hosts = [lab.hosts.client, lab.hosts.cpe, lab.hosts.concentrator, ...lab.hosts.servers];
  for (const h of hosts) {
    await h.exec('sysctl', ['-qw', 'net.ipv4.tcp_tw_reuse=1', 'net.ipv4.ip_local_port_range=10000 65000'], { allowFailure: true });
    if (cc) await h.exec('sysctl', ['-qw', `net.ipv4.tcp_congestion_control=${cc}`]);
  }
  // TFO server side on the concentrator (ss-server --fast-open needs it; mpconvert sets it itself).
  await lab.hosts.concentrator.exec('sysctl', ['-qw', 'net.ipv4.tcp_fastopen=3'], { allowFailure: true });
}

async function withLab<T>(rates: Array<number>, mptcpRouting: boolean, fn: (lab: Lab) => Promise<T>, cc?: string, rttMs?: number[]): Promise<T> {
  const lab = await labUp({ uplinks: rates.map((r, i) => ({ rate: r === 0 ? 0 : `${r}mbit`, ...(rttMs?.[i] ? { rttMs: rttMs[i] } : {}) })), servers: 1, mptcpRouting });
  try {
    await tune(lab, cc);
    return await fn(lab);
  } finally {
    await lab.down();
  }
}

/** Every lab the groups need, up together; `labFor(system)` picks a system's lab. All are removed at the end. */
async function withLabs<T>(rates: Array<number>, groups: Array<{ mptcpRouting: boolean; systems: SystemName[] }>, cc: string, fn: (labFor: (s: SystemName) => Lab) => Promise<T>, rttMs?: number[]): Promise<T> {
  const labs = new Map<SystemName, Lab>();
  const open = async (i: number): Promise<T> => {
    const g = groups[i];
    if (!g) return fn((s) => labs.get(s)!);
    return withLab(rates, g.mptcpRouting, async (lab) => {
      for (const s of g.systems) labs.set(s, lab);
      return open(i + 1);
    }, cc, rttMs);
  };
  return open(0);
}

/** Groups the systems by the lab they need (with or without the lab's plain-MPTCP routing). */
function labGroups(systems: SystemName[]): Array<{ mptcpRouting: boolean; systems: SystemName[] }> {
  const withR = systems.filter(needsLabMptcpRouting);
  const without = systems.filter((s) => !needsLabMptcpRouting(s));
  return [
    ...(withR.length ? [{ mptcpRouting: true, systems: withR }] : []),
    ...(without.length ? [{ mptcpRouting: false, systems: without }] : []),
  ];
}

async function withDeployment<T>(system: SystemName, lab: Lab, uplinks: number, fn: (d: Deployment) => Promise<T>, diag: { cpuProfileDir?: string; heapSnapshotDir?: string } = {}): Promise<T> {
  const d = await deploy(system, { lab, uplinks, ...diag });
  try {
    const servers = await startServers(d);
    try {
      return await fn(d);
    } finally {
      await servers.stop();
    }
  } finally {
    await d.stop();
  }
}

async function repeat<T>(n: number, fn: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = [];
  for (let i = 0; i < n; i++) out.push(await fn(i));
  return out;
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  if (o.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  mkdirSync(o.out, { recursive: true });
  const r: Results = {
    meta: {
      date: new Date().toISOString(),
      kernel: release(),
      cpus: cpus().length,
      node: process.version,
      tools: {
        iperf3: version('iperf3', ['--version'], /iperf (\S+)/),
        'shadowsocks-libev': version('ss-server', ['-h'], /shadowsocks-libev (\S+)/),
        socat: version('socat', ['-V'], /socat version (\S+)/),
        openvpn: version('openvpn', ['--version'], /OpenVPN (\S+)/),
      },
      settings: {
        runs: o.runs,
        seconds: o.seconds,
        warmupSeconds: 1,
        setupMs: o.setupMs,
        concurrency: o.concurrency,
        memoryConnections: o.memoryConnections,
        socatMemoryConnections: o.socatMemoryConnections,
        failoverRuns: o.failoverRuns,
        congestionControls: o.ccs,
        loadAverageAtStart: loadavg()[0],
        systems: o.systems,
        figures: [...o.only],
      },
      notes: [
        'Goodput: iperf3, one TCP connection between the LAN client and the server, after 1 s of warm-up: upload (client to server) and, with --directions, download (iperf3 -R, the server sends); uplink load from the sending side of each uplink (the CPE end for uploads, the concentrator end for downloads). Relay and failover run in the same directions; a download failover is read from the intervals of the iperf3 client, which receives.',
        `Congestion control: the shaped tests (aggregation, failover) set it in every namespace of the lab, for every system (${o.ccs.join(', ')}; failover under ${o.ccs[0]}); the unshaped ones (relay, setup, memory) keep the host's default (${readFileSync('/proc/sys/net/ipv4/tcp_congestion_control', 'utf8').trim()}).`,
        'Uplink load: tc byte counters of the CPE uplinks read 0.3 s after the warm-up and 0.2 s before the end of each aggregation run.',
        'Relay CPU: utime + stime of every relay process on the CPE and the concentrator (and their reaped children), per GB of goodput.',
        'Setup: a Node load generator, 32 concurrent workers, one 100-byte request and a 100-byte response per connection, the server closes.',
        'Round trips: counted on a packet capture of one exchange on the CPE uplinks (no netem on this kernel to time them): each answer from the concentrator side to a SYN or payload the CPE side sent, up to the first response payload.',
        'Memory: concentrator process memory with N idle relayed connections open, minus the same process before; kernel socket buffers are not process memory. mpconvert (Node) is read again each second for up to 60 s, until V8 has collected the garbage of opening them (its memory reducer runs a full collection some 30 s after the allocations stop), and the lowest reading counts; the row below gives its reading 1 s after they were held, as every system is read. The memory figure runs on a fresh deployment of each system (a garbage-collected relay would reuse the heap the relay and setup tests grew); for mpconvert the baseline there, and the CPE idle after the relay and setup tests (read before that deployment stops), are the lowest reading of each over 40 s of idleness.',
        'Memory: 8,500 rather than 10,000 connections: a relay holds 2 descriptors per relayed connection, the hard RLIMIT_NOFILE of this machine is 20,000 (not raisable inside its container), and the mpconvert concentrator protects itself at 90% of its limit (each new connection then sheds the oldest one still in signalling: shed-fd-limit), which 9,500 reached. socat forks a process per connection: 1,000 connections, sum of PSS.',
        'Bench-wide namespace settings for every system: net.ipv4.tcp_tw_reuse=1, ip_local_port_range 10000–65000, tcp_fastopen=3 on the concentrator.',
        'mpconvert runs with sessionLog off, log level warn and its admission limits lifted (defaults: 500 new connections/s and 4096 connections per CPE).',
        'UDP: on two 50 Mbit/s uplinks under the first congestion control, iperf3 -u at 150 Mbit/s (1,200-byte datagrams) from the LAN client to the server, its received rate as goodput; at the same time a 20 pps probe to a UDP echo server on the server, its round-trip times (p50, p95) as the latency of a small flow under that load.',
      ],
    },
    aggregation: [],
    relay: {},
    setup: {},
    memory: {},
    failover: null,
    targets: [],
    deployments: {},
  };

  if (o.profile) {
    await profileRun(o);
    return;
  }
  if (o.heap) {
    await heapRun(o);
    return;
  }
  if (o.render) {
    // Rewrites latest.md and the charts from latest.json (after a change to the report format).
    const saved = JSON.parse(readFileSync(join(o.out, 'latest.json'), 'utf8')) as Results;
    saved.targets = targets(saved);
    writeOutputs(o.out, saved);
    return;
  }

  // Unshaped, 2 uplinks: relay, setup, memory.
  if (o.only.has('relay') || o.only.has('setup') || o.only.has('memory')) {
    for (const g of labGroups(o.systems)) {
      log(`lab: 2 unshaped uplinks (${g.mptcpRouting ? 'lab MPTCP routing' : 'routing by the mpconvert CPE'})`);
      await withLab([0, 0], g.mptcpRouting, async (lab) => {
        for (const sys of g.systems) {
          let cpeStart: number | null = null;
          let cpeAfterLoad: number | null = null;
          try {
            await withDeployment(sys, lab, 2, async (d) => {
              r.deployments[sys] = d.note;
              // The CPE relay's footprint just after it started, before any connection.
              const cpeStartBytes = d.cpeRoot === undefined ? null : memoryBytes(d.cpeRoot).bytes;
              for (const direction of o.only.has('relay') ? o.directions : []) {
                const figure = direction === 'up' ? r.relay : (r.relayDownload ??= {});
                const name = `relay ${sys}${direction === 'down' ? ' download' : ''}`;
                try {
                  const runs = await repeat(o.runs, () => goodput(d, o.seconds, 1, undefined, direction));
                  figure[sys] = { goodputMbps: stat(runs.map((x) => x.mbps)), cpuSecondsPerGB: stat(runs.map((x) => x.cpuSecondsPerGB)) };
                  log(`${name}: ${runs.map((x) => `${x.mbps.toFixed(0)} Mbit/s ${x.cpuSecondsPerGB?.toFixed(2) ?? '-'} s/GB`).join(', ')}`);
                } catch (e) {
                  figure[sys] = { goodputMbps: null, cpuSecondsPerGB: null, error: errText(e) };
                  log(`${name}: ERROR ${errText(e)}`);
                }
              }
              if (o.only.has('setup')) {
                try {
                  // Warm-up, not counted: one full-length run (TFO cookies, caches, and the JIT of the Node daemons,
                  // whose first run here was about half as fast as the third).
                  await requestResponse(d, o.setupMs, o.concurrency);
                  const runs = await repeat(o.runs, () => requestResponse(d, o.setupMs, o.concurrency));
                  const rts = await repeat(o.runs, () => roundTrips(lab, d));
                  r.setup[sys] = {
                    cps: stat(runs.map((x) => x.cps)),
                    cpuMsPerConnection: stat(runs.map((x) => x.cpuMsPerConnection ?? null)),
                    ttfbP50Ms: stat(runs.map((x) => x.ttfbP50)),
                    ttfbP99Ms: stat(runs.map((x) => x.ttfbP99)),
                    errors: runs.reduce((s, x) => s + x.errors, 0),
                    roundTrips: stat(rts),
                  };
                  log(`setup ${sys}: ${runs.map((x) => `${x.cps.toFixed(0)}/s ${x.cpuMsPerConnection?.toFixed(3) ?? '-'} ms CPU p50 ${x.ttfbP50?.toFixed(2)} ms p99 ${x.ttfbP99?.toFixed(2)} ms err ${x.errors}`).join(', ')}; round trips ${rts.join(', ')}`);
                } catch (e) {
                  r.setup[sys] = { cps: null, ttfbP50Ms: null, ttfbP99Ms: null, errors: 0, roundTrips: null, error: errText(e) };
                  log(`setup ${sys}: ERROR ${errText(e)}`);
                }
              }
              // The CPE's idle footprint after the relay and setup tests (a garbage-collected one once it settled).
              if (o.only.has('memory') && sys !== 'kernel') {
                cpeStart = cpeStartBytes;
                cpeAfterLoad = await idleFootprint(d);
              }
            });
            // Memory per idle connection on fresh processes: a garbage-collected relay would otherwise reuse the
            // heap the earlier tests grew, and a later collection of their garbage would hide the connections' cost.
            if (o.only.has('memory') && sys !== 'kernel') {
              await withDeployment(sys, lab, 2, async (d) => {
                try {
                  const n = sys === 'socat' ? o.socatMemoryConnections : o.memoryConnections;
                  const m = await idleMemory(d, n);
                  r.memory[sys] = { ...m, bytesPerConnection: stat([m.settledBytesPerConnection]), justOpenedBytesPerConnection: stat([m.bytesPerConnection]), cpeStartBytes: cpeStart, cpeIdleBytes: cpeAfterLoad };
                  log(`memory ${sys}: ${m.connections} held (${m.errors} errors${m.errors ? ` ${JSON.stringify(m.errorKinds ?? {})}` : ''}), ${(m.baselineBytes / 1048576).toFixed(1)} -> ${(m.loadedBytes / 1048576).toFixed(1)} MiB, ${m.bytesPerConnection.toFixed(0)} B/connection (${m.measure})${m.settleSeconds ? `; ${m.settledBytesPerConnection.toFixed(0)} B/connection after ${m.settleSeconds} s idle` : ''}; CPE idle after the load ${cpeAfterLoad === null ? '-' : (cpeAfterLoad / 1048576).toFixed(1)} MiB`);
                } catch (e) {
                  r.memory[sys] = { connections: 0, errors: 0, baselineBytes: 0, loadedBytes: 0, bytesPerConnection: null, measure: '', error: errText(e) };
                  log(`memory ${sys}: ERROR ${errText(e)}`);
                }
              });
            }
          } catch (e) {
            const error = errText(e);
            log(`${sys}: deployment failed: ${error}`);
            r.relay[sys] ??= { goodputMbps: null, cpuSecondsPerGB: null, error };
            if (o.only.has('relay') && o.directions.includes('down')) (r.relayDownload ??= {})[sys] ??= { goodputMbps: null, cpuSecondsPerGB: null, error };
            r.setup[sys] ??= { cps: null, ttfbP50Ms: null, ttfbP99Ms: null, errors: 0, roundTrips: null, error };
            if (sys !== 'kernel') r.memory[sys] ??= { connections: 0, errors: 0, baselineBytes: 0, loadedBytes: 0, bytesPerConnection: null, measure: '', error };
          }
        }
      });
    }
  }

  if (o.workers && o.only.has('setup')) {
    log(`lab: 2 unshaped uplinks, mpconvert setup per concentrator worker count (${o.workers.join(', ')})`);
    await withLab([0, 0], false, async (lab) => {
      r.workers = await setupPerWorkerCount(lab, o.workers ?? [], o, log);
    });
  }

  // Shaped topologies under each congestion control: aggregation, and failover on the first topology (two
  // equal uplinks) under the first congestion control.
  if (o.only.has('aggregation') || o.only.has('failover')) {
    const failTopo = o.topologies[0]!;
    const failRuns: Record<Direction, Partial<Record<SystemName, FailoverRun[]>>> = { up: {}, down: {} };
    const failErr: Record<Direction, Partial<Record<SystemName, string>>> = { up: {}, down: {} };
    const cutAt = 4;
    const restoreAt = 8;
    for (const cc of o.ccs) {
      for (const topo of o.topologies) {
        const doAgg = o.only.has('aggregation');
        const doFail = o.only.has('failover') && topo === failTopo && cc === o.ccs[0];
        if (!doAgg && !doFail) continue;
        const sum = topo.ratesMbps.reduce((s, x) => s + x, 0);
        const entries: Array<Results['aggregation'][number]> = [];
        const groups = labGroups(o.systems);
        log(`labs: uplinks ${topo.name} Mbit/s, ${cc} (${groups.map((g) => (g.mptcpRouting ? 'lab MPTCP routing' : 'routing by the mpconvert CPE')).join(' + ')})`);
        // Every lab this topology needs is up at once, so the systems' runs can be interleaved: run 1 of each
        // system, then run 2 of each (in a rotated order), ... Time-correlated noise on a shared machine then
        // spreads over all systems instead of landing on whichever system ran last.
        await withLabs(topo.ratesMbps, groups, cc, async (labFor) => {
          for (const direction of doAgg ? o.directions : []) {
            const entry: Results['aggregation'][number] = { topology: topo, cc, direction, sumMbps: sum, systems: {} };
            entries.push(entry);
            const runs: Partial<Record<SystemName, GoodputRun[]>> = {};
            const ttfb: Partial<Record<SystemName, RrRun[]>> = {};
            const errors: Partial<Record<SystemName, string>> = {};
            for (let run = 0; run < o.runs; run++) {
              const order = o.systems.map((_, i) => o.systems[(i + run) % o.systems.length]!);
              for (const sys of order) {
                if (errors[sys]) continue;
                try {
                  await withDeployment(sys, labFor(sys), topo.ratesMbps.length, async (d) => {
                    r.deployments[sys] ??= d.note;
                    (runs[sys] ??= []).push(await goodput(d, o.seconds, 1, { lab: labFor(sys), uplinks: topo.ratesMbps.length }, direction));
                    // Where the uplinks have real RTTs, what a user feels first: the time to the first byte.
                    if (topo.rttMs && cc === o.ccs[0] && direction === o.directions[0]) (ttfb[sys] ??= []).push(await requestResponse(d, o.setupMs, 8));
                  });
                } catch (e) {
                  errors[sys] = errText(e);
                  log(`aggregation ${topo.name} ${cc} ${direction} ${sys}: ERROR ${errText(e)}`);
                }
              }
            }
            for (const sys of o.systems) {
              const got = runs[sys] ?? [];
              if (errors[sys] || got.length === 0) {
                entry.systems[sys] = { goodputMbps: null, ratio: null, error: errors[sys] ?? 'no run' };
                continue;
              }
              // Each uplink's wire rate over its tbf rate (frames with headers, so a full uplink reads about 1.0).
              const uplinkLoad = topo.ratesMbps.map((rate, i) => stat(got.map((x) => (x.uplinkMbps ? x.uplinkMbps[i]! / rate : null))));
              entry.systems[sys] = { goodputMbps: stat(got.map((x) => x.mbps)), ratio: stat(got.map((x) => x.mbps / sum)), uplinkLoad };
              const rr = ttfb[sys];
              if (rr?.length) {
                entry.systems[sys]!.ttfbP50Ms = stat(rr.map((x) => x.ttfbP50));
                entry.systems[sys]!.ttfbP99Ms = stat(rr.map((x) => x.ttfbP99));
                log(`ttfb ${topo.name} ${sys}: p50 ${rr.map((x) => x.ttfbP50?.toFixed(1)).join(', ')} ms, p99 ${rr.map((x) => x.ttfbP99?.toFixed(1)).join(', ')} ms`);
              }
              log(`aggregation ${topo.name} ${cc} ${direction} ${sys}: ${got.map((x) => `${x.mbps.toFixed(1)} (iperf3 summary ${x.summaryMbps.toFixed(1)}) [${x.uplinkMbps?.map((m) => m.toFixed(1)).join('+') ?? '?'} on the wire]`).join(', ')} Mbit/s of ${sum}`);
            }
          }
          // Each direction on a fresh deployment.
          for (const direction of doFail ? o.directions : []) {
            for (const sys of o.systems) {
              const name = `failover ${sys}${direction === 'down' ? ' download' : ''}`;
              try {
                await withDeployment(sys, labFor(sys), topo.ratesMbps.length, async (d) => {
                  r.deployments[sys] ??= d.note;
                  const runs = await repeat(o.failoverRuns, () =>
                    failover(labFor(sys), d, { seconds: o.failoverSeconds, cutAt, restoreAt, cut: 1, survivorMbps: topo.ratesMbps[1]!, sumMbps: sum, direction }),
                  );
                  failRuns[direction][sys] = runs;
                  log(`${name}: recovery ${runs.map((x) => x.recoverySeconds?.toFixed(2) ?? 'never').join(', ')} s, rejoin ${runs.map((x) => x.rejoinSeconds?.toFixed(2) ?? 'never').join(', ')} s`);
                });
              } catch (e) {
                failErr[direction][sys] = errText(e);
                log(`${name}: ERROR ${errText(e)}`);
              }
            }
          }
        }, topo.rttMs);
        r.aggregation.push(...entries);
      }
    }
    for (const direction of o.only.has('failover') ? o.directions : []) {
      const figure: NonNullable<Results['failover']> = { topology: failTopo, cc: o.ccs[0]!, cut: 1, cutAt, restoreAt, systems: {} };
      if (direction === 'up') r.failover = figure;
      else r.failoverDownload = figure;
      for (const sys of o.systems) {
        const runs = failRuns[direction][sys];
        const error = failErr[direction][sys];
        if (!runs) {
          if (error) figure.systems[sys] = { recoverySeconds: null, rejoinSeconds: null, never: 0, series: [], error };
          continue;
        }
        // The chart shows the run with the median recovery time.
        const sorted = [...runs].sort((a, b) => (a.recoverySeconds ?? 1e9) - (b.recoverySeconds ?? 1e9));
        figure.systems[sys] = {
          recoverySeconds: stat(runs.map((x) => x.recoverySeconds)),
          rejoinSeconds: stat(runs.map((x) => x.rejoinSeconds)),
          never: runs.filter((x) => x.recoverySeconds === null).length,
          neverRejoined: runs.filter((x) => x.rejoinSeconds === null).length,
          series: sorted[(sorted.length - 1) >> 1]!.series,
        };
      }
    }
  }

  if (o.only.has('udp')) await udpFigure(o, r);
  if (o.only.has('manycpe')) {
    const systems = MANY_SYSTEMS.filter((s) => o.systems.includes(s as SystemName));
    r.manycpe = await manyCpeFigure({ cpes: o.cpes, serverLinkMbps: o.serverLinkMbps, seconds: Math.max(5, o.seconds), setupMs: 4_000, concurrencyPerCpe: 4, idlePerCpe: 20, parallelStarts: 4, systems: systems as ManySystem[], log }, () => loadavg()[0]!);
  }

  r.targets = targets(r);
  r.meta.tools['lab'] = labImplementation;
  r.meta.settings['loadAverageAtEnd'] = loadavg()[0];
  r.meta.durationSeconds = Math.round((Date.now() - t0) / 1000);
  // `--only manycpe` adds its rows to the last full results instead of replacing them; a run without it keeps
  // the last many-CPE rows (they carry their own date).
  const out = o.only.size === 1 && r.manycpe ? { ...previous(o.out), manycpe: r.manycpe } : { ...r, manycpe: r.manycpe ?? previous(o.out).manycpe ?? null };
  writeFileSync(join(o.out, 'latest.json'), JSON.stringify(out, null, 2) + '\n');
  writeOutputs(o.out, out);
  log(`done in ${r.meta.durationSeconds} s; results in ${o.out}`);
}

/** The UDP figure (bench/lib/udp.ts): each system's runs on two 50 Mbit/s uplinks, one lab per routing mode. */
async function udpFigure(o: Options, r: Results): Promise<void> {
  const topology: Topology = { name: '50+50', ratesMbps: [50, 50] };
  const loadMbps = 150;
  const cc = o.ccs[0]!;
  const runs: Partial<Record<UdpSystemName, UdpRun[]>> = {};
  const errors: Partial<Record<UdpSystemName, string>> = {};
  const notes: Partial<Record<UdpSystemName, string>> = {};
  for (const mptcpRouting of [true, false]) {
    const systems = UDP_SYSTEMS.filter((s) => udpNeedsLabMptcpRouting(s) === mptcpRouting);
    log(`lab: UDP, uplinks ${topology.name} Mbit/s, ${cc} (${mptcpRouting ? 'lab MPTCP routing' : 'routing by the mpconvert CPE'})`);
    await withLab(topology.ratesMbps, mptcpRouting, async (lab) => {
      for (const sys of systems) {
        try {
          const d = await deployUdp(sys, lab, topology.ratesMbps.length);
          notes[sys] = d.note;
          try {
            runs[sys] = await repeat(o.runs, () => udpRun(d, Math.max(6, o.seconds + 3), loadMbps));
          } finally {
            await d.stop();
          }
          log(`udp ${sys}: ${runs[sys]!.map((x) => `${x.goodputMbps.toFixed(1)} Mbit/s (loss ${x.lossPercent.toFixed(1)}%), probe p50 ${x.probeP50Ms.toFixed(1)} ms p95 ${x.probeP95Ms.toFixed(1)} ms, ${(100 * x.probeAnswered).toFixed(0)}% answered`).join('; ')}`);
        } catch (e) {
          errors[sys] = errText(e);
          log(`udp ${sys}: ERROR ${errText(e)}`);
        }
      }
    }, cc);
  }
  r.udp = { topology, cc, loadMbps, systems: {}, deployments: notes };
  for (const sys of UDP_SYSTEMS) {
    const got = runs[sys] ?? [];
    r.udp.systems[sys] = errors[sys] || got.length === 0
      ? { goodputMbps: null, probeP50Ms: null, probeP95Ms: null, probeAnsweredPercent: null, error: errors[sys] ?? 'no run' }
      : {
          goodputMbps: stat(got.map((x) => x.goodputMbps)),
          probeP50Ms: stat(got.map((x) => x.probeP50Ms)),
          probeP95Ms: stat(got.map((x) => x.probeP95Ms)),
          probeAnsweredPercent: stat(got.map((x) => 100 * x.probeAnswered)),
        };
  }
}

/** The saved results (latest.json), or these results' empty shape when there are none. */
function previous(out: string): Results {
  try {
    return JSON.parse(readFileSync(join(out, 'latest.json'), 'utf8')) as Results;
  } catch {
    return { meta: { date: new Date().toISOString(), kernel: release(), cpus: cpus().length, node: process.version, tools: {}, settings: {}, notes: [] }, aggregation: [], relay: {}, setup: {}, memory: {}, failover: null, targets: [], deployments: {} };
  }
}

function writeOutputs(out: string, r: Results): void {
  const md = `## Benchmark results\n\n${markdown(r)}`;
  writeFileSync(join(out, 'latest.md'), md);
  writeFileSync(join(out, 'aggregation.svg'), aggregationSvg(r));
  writeFileSync(join(out, 'failover.svg'), failoverSvg(r));
  process.stdout.write(md);
}

/** Relative difference the aggregation figures cannot resolve (see targets()). */
const RESOLUTION = 0.01;

function targets(r: Results): Results['targets'] {
  const out: Results['targets'] = [];
  const m = (s: Stat | null | undefined) => s?.median;
  const pct = (x: number) => `${x >= 0 ? '+' : ''}${(100 * x).toFixed(1)}%`;
  const add = (target: string, value: number | undefined, goal: number | undefined, higherBetter: boolean, show: (v: number) => string) => {
    if (value === undefined || goal === undefined || !Number.isFinite(value) || !Number.isFinite(goal) || goal === 0) {
      out.push({ target, value: '—', met: null, gap: '—' });
      return;
    }
    const met = higherBetter ? value >= goal : value <= goal;
    // Gap: how far from the goal, relative to the goal (positive = better than the goal).
    const gap = higherBetter ? value / goal - 1 : goal / value - 1;
    out.push({ target, value: show(value), met, gap: pct(gap) });
  };
  for (const a of r.aggregation) {
    const s = a.systems;
    const mp = m(s.mpconvert?.ratio);
    const k = m(s.kernel?.ratio);
    add(`aggregation ${a.topology.name} ${a.cc ?? ''}${a.direction === 'down' ? ' download' : ''}: >= 0.99x kernel`, mp !== undefined && k ? mp / k : undefined, 0.99, true, (v) => `${v.toFixed(3)}x`);
    const peers = [s.shadowsocks?.ratio, s.socat?.ratio].filter((x): x is Stat => !!x);
    const best = peers.length ? peers.reduce((a, b) => (b.median > a.median ? b : a)) : undefined;
    add(`aggregation ${a.topology.name} ${a.cc ?? ''}${a.direction === 'down' ? ' download' : ''}: >= both peers`, mp, best?.median, true, (v) => v.toFixed(3));
    // Below the better peer, but by less than the bench can resolve: less than RESOLUTION (the medians of one
    // system on one topology move by about that much between bench runs even when every uplink is full), or
    // each median inside the other's min–max range.
    const last = out[out.length - 1]!;
    const mine = s.mpconvert?.ratio;
    const inside = (a: Stat, b: Stat) => a.median >= b.min && a.median <= b.max;
    if (last.met === false && mine && best && (mine.median >= best.median * (1 - RESOLUTION) || (inside(mine, best) && inside(best, mine)))) last.met = 'tie';
  }
  const g = (x: SystemName) => m(r.relay[x]?.goodputMbps);
  const c = (x: SystemName) => m(r.relay[x]?.cpuSecondsPerGB);
  add('relay goodput >= socat', g('mpconvert'), g('socat'), true, (v) => `${v.toFixed(0)} Mbit/s`);
  add('relay CPU per GB <= socat', c('mpconvert'), c('socat'), false, (v) => `${v.toFixed(2)} s/GB`);
  const ssg = g('shadowsocks');
  add('relay goodput >= 3x shadowsocks-libev', g('mpconvert'), ssg === undefined ? undefined : 3 * ssg, true, (v) => `${v.toFixed(0)} Mbit/s`);
  const ssc = c('shadowsocks');
  add('relay CPU per GB <= 1/3 of shadowsocks-libev', c('mpconvert'), ssc === undefined ? undefined : ssc / 3, false, (v) => `${v.toFixed(2)} s/GB`);
  const cps = (x: SystemName) => m(r.setup[x]?.cps);
  const sc = cps('socat');
  add('connections/s >= 0.9x socat', cps('mpconvert'), sc === undefined ? undefined : 0.9 * sc, true, (v) => `${v.toFixed(0)}/s`);
  // Round two (connection setup ahead of the peers): at least shadowsocks-libev's rate and latencies.
  add('relay goodput >= 0.5x kernel', g('mpconvert'), g('kernel') === undefined ? undefined : 0.5 * g('kernel')!, true, (v) => `${v.toFixed(0)} Mbit/s`);
  // Round two (issue 17, downloads): the relay as a download, failover under 0.5 s each way.
  out.push(...directionTargets(r));
  add('connections/s >= shadowsocks-libev', cps('mpconvert'), cps('shadowsocks'), true, (v) => `${v.toFixed(0)}/s`);
  const ttfb = (x: SystemName, p: 'ttfbP50Ms' | 'ttfbP99Ms') => m(r.setup[x]?.[p]);
  const cpuConn = (x: SystemName) => m(r.setup[x]?.cpuMsPerConnection);
  add('setup CPU per connection <= shadowsocks-libev', cpuConn('mpconvert'), cpuConn('shadowsocks'), false, (v) => `${v.toFixed(3)} ms`);
  add('time to first byte p50 <= shadowsocks-libev', ttfb('mpconvert', 'ttfbP50Ms'), ttfb('shadowsocks', 'ttfbP50Ms'), false, (v) => `${v.toFixed(2)} ms`);
  add('time to first byte p99 <= shadowsocks-libev', ttfb('mpconvert', 'ttfbP99Ms'), ttfb('shadowsocks', 'ttfbP99Ms'), false, (v) => `${v.toFixed(2)} ms`);
  const rt = (x: SystemName) => m(r.setup[x]?.roundTrips);
  const kr = rt('kernel');
  // "No extra round trip": no more round trips to the first byte than a direct MPTCP connection (+0.25 for noise).
  add('round trips to first byte <= direct connection (kernel)', rt('mpconvert'), kr === undefined ? undefined : kr + 0.25, false, (v) => v.toFixed(2));
  add('round trips to first byte: 1 (0-RTT)', rt('mpconvert'), 1.25, false, (v) => v.toFixed(2));
  add('memory per idle connection < 8 KiB', m(r.memory.mpconvert?.bytesPerConnection), 8192, false, (v) => `${(v / 1024).toFixed(1)} KiB`);
  add('CPE memory, idle after the relay and setup tests <= 48 MiB', r.memory.mpconvert?.cpeIdleBytes ?? undefined, 48 * 1048576, false, (v) => `${(v / 1048576).toFixed(1)} MiB`);
  if (r.udp) {
    const u = r.udp.systems;
    const peers = [m(u.openvpn?.goodputMbps), m(u.shadowsocks?.goodputMbps)].filter((x): x is number => x !== undefined);
    add('UDP goodput >= the best peer (OpenVPN over mptcpize, shadowsocks-libev)', m(u.mpconvert?.goodputMbps), peers.length ? Math.max(...peers) : undefined, true, (v) => `${v.toFixed(1)} Mbit/s`);
    const ov = m(u.openvpn?.probeP50Ms);
    add('UDP probe p50 under load <= 1/2 of OpenVPN over mptcpize', m(u.mpconvert?.probeP50Ms), ov === undefined ? undefined : ov / 2, false, (v) => `${v.toFixed(1)} ms`);
  }
  return out;
}

/** `--profile`: the relay and setup tests through mpconvert with `node --cpu-prof` on the CPE and the concentrator; prints the hot spots. */
async function profileRun(o: Options): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'mpc-bench-prof-'));
  try {
    await withLab([0, 0], false, async (lab) => {
      await withDeployment('mpconvert', lab, 2, async (d) => {
        if (o.only.has('relay')) {
          const runs = await repeat(o.runs, () => goodput(d, o.seconds));
          log(`profiled relay: ${runs.map((x) => `${x.mbps.toFixed(0)} Mbit/s`).join(', ')}`);
        }
        if (o.only.has('setup')) {
          const s = await requestResponse(d, o.setupMs, o.concurrency);
          log(`profiled setup: ${s.cps.toFixed(0)} connections/s`);
        }
      }, { cpuProfileDir: dir });
    });
    let text = '';
    for (const role of ['cpe', 'concentrator']) {
      const file = readdirSync(join(dir, role)).find((f) => f.endsWith('.cpuprofile'));
      if (!file) throw new Error(`no CPU profile was written for the ${role}`);
      const raw = readFileSync(join(dir, role, file), 'utf8');
      // The raw profile too, for Chrome DevTools or a closer look (inclusive times, call trees).
      writeFileSync(join(o.out, `${role}.cpuprofile`), raw);
      text += summariseProfile(JSON.parse(raw), role === 'cpe' ? 'CPE' : 'Concentrator') + '\n';
    }
    writeFileSync(join(o.out, 'profile.md'), text);
    process.stdout.write(text);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * `--heap`: two heap snapshots of the mpconvert concentrator (SIGUSR2, `--heapsnapshot-signal`), one before and
 * one with `--connections` idle relayed connections held, compared by constructor: bench/results/heap.md.
 */
async function heapRun(o: Options): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'mpc-bench-heap-'));
  const snapshots = () => readdirSync(dir).filter((f) => f.endsWith('.heapsnapshot')).sort();
  const snap = async (pid: number, n: number): Promise<Map<string, HeapGroup>> => {
    process.kill(pid, 'SIGUSR2');
    const deadline = Date.now() + 120_000;
    // The file appears when the snapshot starts and is complete once the process answers again (its size is stable).
    let last = -1;
    for (;;) {
      const f = snapshots()[n];
      const size = f ? statSync(join(dir, f)).size : -1;
      if (f && size > 0 && size === last) return summariseHeap(JSON.parse(readFileSync(join(dir, f), 'utf8')));
      last = size;
      if (Date.now() > deadline) throw new Error('the concentrator wrote no heap snapshot within 120 s');
      await new Promise((r) => setTimeout(r, 1_000));
    }
  };
  try {
    await withLab([0, 0], false, async (lab) => {
      await withDeployment('mpconvert', lab, 2, async (d) => {
        const pid = d.concentratorRoot!;
        const mib = () => (memoryBytes(pid).bytes / 2 ** 20).toFixed(1);
        const rss0 = mib();
        const before = await snap(pid, 0);
        const rss1 = mib();
        const text = await holdIdle(d, o.memoryConnections, async (held) => {
          const rss2 = mib();
          const after = await snap(pid, 1);
          // A snapshot collects garbage first: VmRSS after it says how much of the growth was garbage not yet collected.
          const rss3 = mib();
          return renderHeapDiff(diffHeap(before, after, held), held) + `\nVmRSS of the concentrator, MiB: ${rss0} at start, ${rss1} after the first snapshot, ${rss2} with ${held} held, ${rss3} after the second snapshot (its full GC).\n`;
        });
        writeFileSync(join(o.out, 'heap.md'), text);
        process.stdout.write(text);
      }, { heapSnapshotDir: dir });
    });
  } finally {
    // MPC_BENCH_KEEP_HEAP=1 keeps the two snapshots next to heap.md (for a retainer analysis in DevTools).
    if (process.env['MPC_BENCH_KEEP_HEAP']) for (const f of snapshots()) writeFileSync(join(o.out, f), readFileSync(join(dir, f)));
    rmSync(dir, { recursive: true, force: true });
  }
}

let stopping = false;
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    if (stopping) return;
    stopping = true;
    log(`${sig}: cleaning up`);
    // The lab removes its namespaces and children on these signals too; give it a moment, then leave.
    setTimeout(() => process.exit(130), 3_000).unref();
  });
}

main().catch((e: unknown) => {
  if (e instanceof UsageError) {
    process.stderr.write(`${e.message}\n`);
    process.exitCode = 2;
    return;
  }
  log(`failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  process.exitCode = 1;
});
