/**
 * The many-CPE figure (`node dist/bench/main.js --only manycpe [--cpes 50] [--server-link 500]`, issue 17): one
 * concentrator serving N CPEs at once in the lab's many-CPE topology (src/lab/many.ts: N CPE namespaces, each with
 * its LAN client and two unshaped uplinks, one server behind a shared tbf-shaped link). Per system, in a lab of
 * its own:
 * - memory: the concentrator's VmRSS alone, then with every CPE up and its client holding `idlePerCpe` idle
 *   relayed connections (per CPE: the difference / N), and again idle after the load;
 * - setup: every client opens short request/response connections (bench/tools/rr-client.ts) at the same
 *   wall-clock moment: total connections/s, time to first byte p50/p99 over all connections of all CPEs;
 * - fairness: every client runs one iperf3 upload at once to its own iperf3 server on the server, then one
 *   download (-R): per-CPE goodput, sum, min/max and Jain's index.
 * Systems: mpconvert (concentrator with the bench's lifted limits, as deployMpconvert) and shadowsocks-libev
 * (ss-redir in each CPE namespace behind an nft redirect, one ss-server; the CPEs' kernel MPTCP endpoints and
 * policy routing made here, as the lab's mptcpRouting does in the classic topology).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { Lab, manyCpeAddressing, type LabHost } from '../../src/lab/index.js';
import { inBatches } from '../../src/lab/many.js';
import { Proc, cpuSeconds, memoryBytes, spawnIn } from './proc.js';
import { CLI, CONC_ADDR, CPE_NODE_ARGS } from './systems.js';
import { fairness, iperfReceivedMbps, mergeRr, nftCounterBytes, type FairnessRun, type MergedRr, type RrClientOut } from './manycpe-stats.js';

const TOOLS = fileURLToPath(new URL('../tools/', import.meta.url));
export const MANY_SYSTEMS = ['mpconvert', 'shadowsocks'] as const;
export type ManySystem = (typeof MANY_SYSTEMS)[number];

const RR_PORT = 7000;
/**
 * The CPE side (CPE daemons, LAN clients) runs at the lowest priority. In the field every CPE is a machine of its
 * own; here 50 CPE daemons and 50 clients share the cores with the one concentrator, and the kernel's fair
 * scheduler would give the concentrator 1/100 of the CPU: the figure would measure the lab, not the concentrator.
 */
const CPE_SIDE = ['nice', '-n', '19'];
/** iperf3 server of CPE c listens on IPERF_BASE + c (one iperf3 server runs one test at a time). */
const IPERF_BASE = 5300;

export interface ManyCpeOptions {
  cpes: number;
  /** tbf rate of the shared concentrator-server link, Mbit/s. */
  serverLinkMbps: number;
  /** Seconds measured per iperf3 run (after a 1 s warm-up, -O 1). */
  seconds: number;
  setupMs: number;
  /** rr-client workers per CPE's client. */
  concurrencyPerCpe: number;
  /** Idle relayed connections each client holds for the memory figure. */
  idlePerCpe: number;
  /** CPE daemons started at once. */
  parallelStarts: number;
  systems: ManySystem[];
  log: (msg: string) => void;
}

export interface ManyCpeSystemResult {
  /** Seconds from the first CPE start to the last CPE ready. */
  startSeconds: number | null;
  memory: {
    concBaselineBytes: number;
    concIdleBytes: number;
    /** (concIdleBytes - concBaselineBytes) / cpes. */
    perCpeBytes: number;
    idleConnections: number;
    concAfterBytes: number | null;
    /** Mean VmRSS of one CPE daemon (ss-redir for shadowsocks) while idle. */
    cpeMeanBytes: number;
  } | null;
  /**
   * concCpuMsPerConnection: the concentrator's CPU time (utime + stime) during the measured run / connections;
   * concCpuShare: that CPU time / the run's wall time (1 = one core busy all the time).
   */
  setup: Omit<MergedRr, 'perCpeCps'> & { minCpeCps: number; maxCpeCps: number; concCpuMsPerConnection: number | null; concCpuShare: number } | null;
  /** Per CPE: wire rate on its uplinks over a common window; iperfSumMbps: the sum of iperf3's own goodputs. */
  fairness: { up: (FairnessRun & { iperfSumMbps: number }) | null; down: (FairnessRun & { iperfSumMbps: number }) | null };
  note: string;
  error?: string;
}

export interface ManyCpeResults {
  date: string;
  cpes: number;
  uplinksPerCpe: number;
  serverLinkMbps: number;
  seconds: number;
  setupMs: number;
  concurrencyPerCpe: number;
  idlePerCpe: number;
  loadAverage: { start: number; end: number };
  durationSeconds: number;
  systems: Partial<Record<ManySystem, ManyCpeSystemResult>>;
}

interface ManyDeployment {
  note: string;
  concentratorRoot: number;
  cpeRoots: number[];
  startSeconds: number;
  stop(): Promise<void>;
}

/** Settings every namespace of the figure gets, for every system: ports for the setup test, TFO on the concentrator. */
async function tune(lab: Lab): Promise<void> {
  const hosts = [lab.hosts.concentrator, ...lab.hosts.servers, ...lab.hosts.clients, ...lab.hosts.cpes];
  await inBatches(hosts, 8, (h) => h.exec('sysctl', ['-qw', 'net.ipv4.tcp_tw_reuse=1', 'net.ipv4.ip_local_port_range=10000 65000'], { allowFailure: true }));
  await lab.hosts.concentrator.exec('sysctl', ['-qw', 'net.ipv4.tcp_fastopen=3'], { allowFailure: true });
}

/** Starts one daemon per host, `parallel` at a time; resolves with the seconds until the last was ready. */
async function startAll(hosts: LabHost[], parallel: number, start: (h: LabHost, c: number) => Promise<void>): Promise<number> {
  const t0 = Date.now();
  await inBatches(hosts, parallel, (h, j) => start(h, j + 1));
  return (Date.now() - t0) / 1000;
}

async function deployMpconvert(lab: Lab, o: ManyCpeOptions): Promise<ManyDeployment> {
  const dir = mkdtempSync(join(tmpdir(), 'mpc-bench-many-'));
  const config = join(dir, 'concentrator.yaml');
  // As deployMpconvert (bench/lib/systems.ts): production limits lifted, no session log.
  writeFileSync(config, [
    `listen: ["${CONC_ADDR}:5000"]`,
    'allow: ["198.18.0.0/15"]',
    'limits: { maxConnections: 200000, maxConnectionsPerCpe: 200000, newConnectionsPerSecondPerCpe: 0 }',
    'sessionLog: false',
    'shutdownDrainS: 0',
    'logLevel: warn',
    '',
  ].join('\n'));
  const procs: Proc[] = [];
  const stop = async () => {
    // 50 CPE daemons at nice 19 on a loaded machine take a while to stop; a SIGKILLed one leaves its ledger file.
    await Promise.all(procs.splice(1).map((p) => p.halt(30_000)));
    for (const p of procs.splice(0)) await p.halt(8_000);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const conc = spawnIn(lab.hosts.concentrator, 'mpconvert concentrator', process.execPath, [CLI, 'concentrator', '--config', config]);
    procs.push(conc);
    await conc.waitFor(/^ready/m, 60_000);
    const uplinkArgs = Array.from({ length: lab.uplinks.length }, (_, i) => ['--uplink', `up${i + 1}`]).flat();
    const startSeconds = await startAll(lab.hosts.cpes, o.parallelStarts, async (h, c) => {
      const cpe = spawnIn(h, `mpconvert cpe ${c}`, CPE_SIDE[0]!, [...CPE_SIDE.slice(1), process.execPath, ...CPE_NODE_ARGS, CLI, 'cpe', '--lan', 'lan0', ...uplinkArgs, '--concentrator', `${CONC_ADDR}:5000`, '--instance', 'bench', '--log-level', 'warn']);
      procs.push(cpe);
      await cpe.waitFor(/^ready/m, 120_000);
    });
    return {
      note: `${o.cpes} \`mpconvert cpe\` daemons (one per CPE namespace, ${o.parallelStarts} started at a time) + one \`mpconvert concentrator\` (limits lifted, sessionLog off, log level warn); transparent (TPROXY on each CPE), 0-RTT`,
      concentratorRoot: conc.pid,
      cpeRoots: procs.slice(1).map((p) => p.pid),
      startSeconds,
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

async function deployShadowsocks(lab: Lab, o: ManyCpeOptions): Promise<ManyDeployment> {
  const key = randomBytes(12).toString('hex');
  const table = `mpconvert_bench_${randomBytes(3).toString('hex')}`;
  const common = ['-k', key, '-m', 'aes-128-gcm', '--mptcp', '--fast-open', '-n', '20000'];
  const procs: Proc[] = [];
  const stop = async () => {
    await Promise.all(procs.splice(1).map((p) => p.halt()));
    for (const p of procs.splice(0)) await p.halt();
    // The nft tables and routing live in the lab's namespaces: removed with them.
  };
  try {
    // Kernel MPTCP for ss-redir's connections: per-uplink policy routing and a subflow endpoint per uplink (the
    // lab's mptcpRouting, classic topology), limits on both ends.
    await lab.hosts.concentrator.exec('ip', ['mptcp', 'limits', 'set', 'subflows', '8', 'add_addr_accepted', '8']);
    await inBatches(lab.hosts.cpes, 8, async (h, j) => {
      const m = manyCpeAddressing(j + 1);
      const lines = lab.uplinks.flatMap((_, k) => {
        const a = m.uplink(k + 1);
        return [`rule add from ${a.cpeV4} table ${100 + a.index}`, `route add default via ${a.concV4} dev ${a.cpeDev} table ${100 + a.index}`, `mptcp endpoint add ${a.cpeV4} dev ${a.cpeDev} subflow`];
      });
      await h.exec('ip', ['-batch', '-'], { input: [...lines, 'mptcp limits set subflows 8 add_addr_accepted 8'].join('\n') + '\n' });
      await h.exec('nft', ['-f', '-'], {
        input: `table ip ${table} {\n  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    iifname "lan0" ip daddr 198.19.0.0/16 meta l4proto tcp redirect to :1080\n  }\n}\n`,
      });
    });
    const ssServer = spawnIn(lab.hosts.concentrator, 'ss-server', 'ss-server', ['-s', CONC_ADDR, '-p', '8388', ...common]);
    procs.push(ssServer);
    await ssServer.waitFor(/listening at/);
    const startSeconds = await startAll(lab.hosts.cpes, o.parallelStarts, async (h, c) => {
      const p = spawnIn(h, `ss-redir ${c}`, CPE_SIDE[0]!, [...CPE_SIDE.slice(1), 'ss-redir','-s', CONC_ADDR, '-p', '8388', '-b', '0.0.0.0', '-l', '1080', ...common]);
      procs.push(p);
      await p.waitFor(/listening at/, 60_000);
    });
    return {
      note: `${o.cpes} ss-redir (one per CPE namespace, behind an nft redirect; kernel MPTCP endpoints on both uplinks) + one ss-server, both --mptcp --fast-open, aes-128-gcm; transparent`,
      concentratorRoot: ssServer.pid,
      cpeRoots: procs.slice(1).map((p) => p.pid),
      startSeconds,
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** The server's nft table that counts each CPE's upload bytes (named counter `cpe{c}`, by its iperf3 port). */
const COUNT_TABLE = 'mpconvert_bench_many';

/** iperf3 servers (one per CPE) and the request/response server, on the server. */
async function startServers(lab: Lab, cpes: number): Promise<() => Promise<void>> {
  const server = lab.hosts.servers[0]!;
  const procs: Proc[] = [];
  const stop = async () => {
    await Promise.all(procs.splice(0).map((p) => p.halt()));
    // The table goes with the lab's namespace too; removed here so the next system's run starts at 0.
    await server.exec('nft', ['delete', 'table', 'inet', COUNT_TABLE], { allowFailure: true });
  };
  try {
    const counters = Array.from({ length: cpes }, (_, j) => `  counter cpe${j + 1} {}\n`).join('');
    const rules = Array.from({ length: cpes }, (_, j) => `    tcp dport ${IPERF_BASE + j + 1} counter name "cpe${j + 1}"\n`).join('');
    await server.exec('nft', ['-f', '-'], { input: `table inet ${COUNT_TABLE} {\n${counters}  chain input {\n    type filter hook input priority 0; policy accept;\n${rules}  }\n}\n` });
    const rr = spawnIn(server, 'rr-server', process.execPath, [`${TOOLS}rr-server.js`, JSON.stringify({ host: server.v4, port: RR_PORT })]);
    procs.push(rr);
    for (let c = 1; c <= cpes; c++) procs.push(spawnIn(server, `iperf3 -s ${c}`, 'iperf3', ['-s', '--forceflush', '-B', server.v4, '-p', String(IPERF_BASE + c)]));
    await rr.waitFor(/"ready"/);
    for (const p of procs.slice(1)) await p.waitFor(/Server listening/);
  } catch (err) {
    await stop();
    throw err;
  }
  return stop;
}

/** Every client holds `perCpe` idle relayed connections; resolves with the holders once all are held. */
async function holdIdle(lab: Lab, perCpe: number): Promise<{ held: number; stop: () => Promise<void> }> {
  const server = lab.hosts.servers[0]!;
  const holders: Proc[] = [];
  const stop = async () => {
    await Promise.all(holders.splice(0).map((p) => p.halt()));
  };
  try {
    let held = 0;
    await inBatches(lab.hosts.clients, 8, async (h, j) => {
      const p = spawnIn(h, `rr-client idle ${j + 1}`, CPE_SIDE[0]!, [...CPE_SIDE.slice(1), process.execPath, `${TOOLS}rr-client.js`, JSON.stringify({ mode: 'idle', host: server.v4, port: RR_PORT, count: perCpe, concurrency: perCpe, timeoutMs: 20_000 })]);
      holders.push(p);
      const got = await p.waitJson<{ held: number }>((v) => 'held' in v, 60_000);
      held += got.held;
    });
    return { held, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/**
 * Starts a program in every client namespace (8 at a time: a loaded machine starts 50 processes slowly), waits
 * until each has printed `armed`, then releases them all at once with a line on their stdin: the barrier that
 * makes the clients of every CPE begin together. Resolves with each one's stdout lines once all have exited
 * (those still running after `timeoutMs` are stopped).
 */
async function together(lab: Lab, argv: (j: number) => [string, string[]], timeoutMs: number, during?: () => Promise<unknown>): Promise<string[][]> {
  const procs: Proc[] = [];
  try {
    await inBatches(lab.hosts.clients, 8, async (h, j) => {
      const [cmd, args] = argv(j);
      const p = new Proc(`${cmd} ${j + 1} (${h.name})`, h.spawn(CPE_SIDE[0]!, [...CPE_SIDE.slice(1), cmd, ...args], { stdio: ['pipe', 'pipe', 'pipe'] }));
      procs[j] = p;
      await p.waitFor(/armed/, 60_000);
    });
    for (const p of procs) p.child.stdin!.write('go\n');
    const measuring = during?.();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(procs.map((p) => p.exited)), new Promise((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
    await measuring;
    return procs.map((p) => p.lines.filter((l) => !l.includes('armed')));
  } finally {
    await Promise.all(procs.filter(Boolean).map((p) => p.halt()));
  }
}

/** The clients' request/response run, and the concentrator's CPU seconds and the wall seconds from the release to the last client's end. */
async function setupRun(lab: Lab, o: ManyCpeOptions, concentratorRoot: number): Promise<MergedRr & { concCpuSeconds: number; wallSeconds: number }> {
  const server = lab.hosts.servers[0]!;
  const args = JSON.stringify({ mode: 'rr', host: server.v4, port: RR_PORT, durationMs: o.setupMs, concurrency: o.concurrencyPerCpe, barrier: true, samples: true, timeoutMs: 10_000 });
  let cpu0 = 0;
  let t0 = 0;
  const outs = await together(lab, () => [process.execPath, [`${TOOLS}rr-client.js`, args]], o.setupMs + 60_000, async () => {
    cpu0 = cpuSeconds([concentratorRoot]);
    t0 = Date.now();
  });
  const concCpuSeconds = cpuSeconds([concentratorRoot]) - cpu0;
  const wallSeconds = (Date.now() - t0) / 1000;
  const merged = mergeRr(outs.map((lines) => {
    try {
      return JSON.parse(lines[lines.length - 1] ?? '') as RrClientOut;
    } catch {
      return null;
    }
  }));
  return { ...merged, concCpuSeconds, wallSeconds };
}

/**
 * Each CPE's bytes so far, counted after the shared link's bottleneck: uploads as the server receives them (its
 * nft counter per iperf3 port), downloads as they leave the concentrator on the CPE's uplinks (tx of c{c}u{u}).
 * Counting before the bottleneck would count what fills the buffers in front of it.
 */
async function cpeBytes(lab: Lab, reverse: boolean): Promise<number[]> {
  if (!reverse) {
    const r = await lab.hosts.servers[0]!.exec('nft', ['-j', 'list', 'counters', 'table', 'inet', COUNT_TABLE]);
    const bytes = nftCounterBytes(r.stdout);
    return lab.hosts.cpes.map((_, j) => bytes.get(`cpe${j + 1}`) ?? 0);
  }
  const r = await lab.hosts.concentrator.exec('ip', ['-j', '-s', 'link', 'show']);
  const links = JSON.parse(r.stdout) as Array<{ ifname: string; stats64?: { tx?: { bytes?: number } } }>;
  const tx = new Map(links.map((l) => [l.ifname, l.stats64?.tx?.bytes ?? 0]));
  return lab.hosts.cpes.map((_, j) => lab.uplinks.reduce((s, _u, k) => s + (tx.get(manyCpeAddressing(j + 1).uplink(k + 1).concDev) ?? 0), 0));
}

/** Warm-up after the release before the common window opens, s. */
const WINDOW_START_S = 1.5;

/**
 * One iperf3 per client at once (upload, or download with -R) for `seconds` + 2.5 s. Each CPE's rate is read
 * over one common window of `seconds` (opening 1.5 s after the release) from byte counters after the
 * bottleneck (cpeBytes: IP packets, headers included), so that every CPE is measured over the same interval
 * whatever its iperf3's own timing; iperf3's receiver goodputs are kept as a cross-check of the sum.
 */
async function fairnessRun(lab: Lab, o: ManyCpeOptions, reverse: boolean): Promise<FairnessRun & { iperfSumMbps: number }> {
  const server = lab.hosts.servers[0]!;
  const window: number[][] = [];
  const sample = async () => {
    const t0 = Date.now();
    await new Promise((r) => setTimeout(r, WINDOW_START_S * 1000));
    window.push(await cpeBytes(lab, reverse));
    const t1 = Date.now();
    await new Promise((r) => setTimeout(r, o.seconds * 1000 - (t1 - t0 - WINDOW_START_S * 1000)));
    window.push(await cpeBytes(lab, reverse));
    return (Date.now() - t1) / 1000;
  };
  let windowSeconds = o.seconds;
  // iperf3 has no start barrier of its own: a shell waits for the line, then becomes iperf3.
  const outs = await together(
    lab,
    (j) => ['sh', ['-c', 'echo armed; read go; exec iperf3 "$@"', 'sh', '-c', server.v4, '-p', String(IPERF_BASE + j + 1), '-J', '-t', String(o.seconds + 2.5), '-O', '1', ...(reverse ? ['-R'] : [])]],
    (o.seconds + 3) * 1000 + 30_000,
    async () => {
      windowSeconds = await sample();
    },
  );
  const iperf = outs.map((lines) => {
    try {
      return iperfReceivedMbps(lines.join('\n'));
    } catch (err) {
      return err instanceof Error ? err : new Error(String(err));
    }
  });
  const [a, b] = window;
  const perCpe = iperf.map((it, j) => (it instanceof Error ? it : ((b![j]! - a![j]!) * 8) / 1e6 / windowSeconds));
  return { ...fairness(perCpe), iperfSumMbps: iperf.reduce<number>((s, x) => s + (x instanceof Error ? 0 : x), 0) };
}

const MiB = 1048576;

async function measureSystem(lab: Lab, system: ManySystem, o: ManyCpeOptions): Promise<ManyCpeSystemResult> {
  const out: ManyCpeSystemResult = { startSeconds: null, memory: null, setup: null, fairness: { up: null, down: null }, note: '' };
  const stopServers = await startServers(lab, o.cpes);
  try {
    // The concentrator alone (before any CPE) is the baseline: deploy it, read it, then the CPEs.
    const d = await (system === 'mpconvert' ? deployMpconvert : deployShadowsocks)(lab, o);
    out.note = d.note;
    out.startSeconds = d.startSeconds;
    o.log(`manycpe ${system}: ${o.cpes} CPEs ready in ${d.startSeconds.toFixed(1)} s`);
    try {
      // Baseline: no CPE has opened a connection yet (a CPE holds none while idle; no warm pool); after the
      // startup's garbage had a moment to be collected.
      await new Promise((r) => setTimeout(r, 2_000));
      const concBaselineBytes = memoryBytes(d.concentratorRoot).bytes;
      const idle = await holdIdle(lab, o.idlePerCpe);
      let concIdleBytes: number;
      let cpeMeanBytes: number;
      try {
        await new Promise((r) => setTimeout(r, 2_000)); // let the relays settle (buffers freed, timers armed), as idleMemory does
        concIdleBytes = memoryBytes(d.concentratorRoot).bytes;
        cpeMeanBytes = d.cpeRoots.reduce((s, p) => s + memoryBytes(p).bytes, 0) / d.cpeRoots.length;
      } finally {
        await idle.stop();
      }
      out.memory = { concBaselineBytes, concIdleBytes, perCpeBytes: (concIdleBytes - concBaselineBytes) / o.cpes, idleConnections: idle.held, concAfterBytes: null, cpeMeanBytes };
      o.log(`manycpe ${system}: concentrator ${(concBaselineBytes / MiB).toFixed(1)} MiB alone, ${(concIdleBytes / MiB).toFixed(1)} MiB with ${o.cpes} CPEs holding ${idle.held} idle connections (${(out.memory.perCpeBytes / 1024).toFixed(0)} KiB per CPE); CPE ${(cpeMeanBytes / MiB).toFixed(1)} MiB each`);

      // Warm-up (JIT, caches), not counted; then the measured run.
      await setupRun(lab, { ...o, setupMs: Math.min(1_000, o.setupMs) }, d.concentratorRoot);
      const s = await setupRun(lab, o, d.concentratorRoot);
      const { perCpeCps, concCpuSeconds, wallSeconds, ...rest } = s;
      out.setup = { ...rest, minCpeCps: Math.min(...perCpeCps), maxCpeCps: Math.max(...perCpeCps), concCpuMsPerConnection: s.completed ? (1000 * concCpuSeconds) / s.completed : null, concCpuShare: concCpuSeconds / wallSeconds };
      o.log(`manycpe ${system}: setup ${s.cps.toFixed(0)} connections/s over ${s.seconds.toFixed(1)} s (starts ${s.startSpreadMs} ms apart), ttfb p50 ${s.ttfbP50?.toFixed(2)} ms p99 ${s.ttfbP99?.toFixed(2)} ms, per CPE ${out.setup.minCpeCps.toFixed(0)}-${out.setup.maxCpeCps.toFixed(0)}/s (Jain ${s.cpsJain?.toFixed(3)}), errors ${s.errors} ${JSON.stringify(s.errorKinds)}; concentrator CPU ${out.setup.concCpuMsPerConnection?.toFixed(2)} ms per connection, ${(100 * out.setup.concCpuShare).toFixed(0)}% of a core`);

      for (const reverse of [false, true]) {
        // The iperf3 servers finish their previous test a moment after the clients did ("server is busy").
        if (reverse) await new Promise((r) => setTimeout(r, 1_000));
        const f = await fairnessRun(lab, o, reverse);
        out.fairness[reverse ? 'down' : 'up'] = f;
        o.log(`manycpe ${system}: ${reverse ? 'download' : 'upload'} sum ${f.sumMbps.toFixed(1)} Mbit/s on the uplinks (iperf3: ${f.iperfSumMbps.toFixed(1)}) of ${o.serverLinkMbps}, per CPE ${f.minMbps.toFixed(2)}-${f.maxMbps.toFixed(2)}, Jain ${f.jain?.toFixed(3)}, ${f.failed} failed ${f.errors.join('; ')}`);
      }
      await new Promise((r) => setTimeout(r, 1_000));
      out.memory.concAfterBytes = memoryBytes(d.concentratorRoot).bytes;
    } finally {
      await d.stop();
    }
  } finally {
    await stopServers();
  }
  return out;
}

/** Runs the figure for each system, each in a many-CPE lab of its own (removed at the end, also on failure). */
export async function manyCpeFigure(o: ManyCpeOptions, loadavg: () => number): Promise<ManyCpeResults> {
  const t0 = Date.now();
  const r: ManyCpeResults = {
    date: new Date().toISOString(),
    cpes: o.cpes,
    uplinksPerCpe: 2,
    serverLinkMbps: o.serverLinkMbps,
    seconds: o.seconds,
    setupMs: o.setupMs,
    concurrencyPerCpe: o.concurrencyPerCpe,
    idlePerCpe: o.idlePerCpe,
    loadAverage: { start: loadavg(), end: 0 },
    durationSeconds: 0,
    systems: {},
  };
  for (const system of o.systems) {
    const tl = Date.now();
    let lab: Lab | undefined;
    try {
      lab = await Lab.up({ topology: 'many', cpes: o.cpes, uplinks: [{ rate: 0 }, { rate: 0 }], serverRate: `${o.serverLinkMbps}mbit` });
      o.log(`manycpe ${system}: lab of ${lab.namespaces.length} namespaces up in ${((Date.now() - tl) / 1000).toFixed(1)} s`);
      await tune(lab);
      r.systems[system] = await measureSystem(lab, system, o);
    } catch (e) {
      const error = (e instanceof Error ? e.message : String(e)).split('\n').slice(0, 3).join(' ').slice(0, 300);
      o.log(`manycpe ${system}: ERROR ${error}`);
      r.systems[system] = { startSeconds: null, memory: null, setup: null, fairness: { up: null, down: null }, note: '', error };
    } finally {
      await lab?.down();
    }
  }
  r.loadAverage.end = loadavg();
  r.durationSeconds = Math.round((Date.now() - t0) / 1000);
  return r;
}
