/**
 * `--workers 1,2,...`: the mpconvert setup figure once per concentrator worker count (`workers: N`, SO_REUSEPORT
 * worker processes; docs/concentrator.md, "Worker processes"), on one lab, one deployment per count: connections
 * per second, CPU per connection (the CPE and every concentrator process, workers included) and time to first
 * byte. Every count runs with `transports: [tcp]` (what workers > 1 needs), 1 included, so the rows differ only
 * in the worker count.
 */
import { loadavg } from 'node:os';
import type { Lab } from './lab.js';
import { requestResponse, startServers, type RrRun } from './measure.js';
import { stat, type Stat } from './report.js';
import { deploy } from './systems.js';

export interface WorkersRow {
  workers: number;
  cps: Stat | null;
  cpuMsPerConnection: Stat | null;
  ttfbP50Ms: Stat | null;
  ttfbP99Ms: Stat | null;
  errors: number;
  /** The 1-minute load average just before the measured runs. */
  loadAverage: number;
  error?: string;
}

export async function setupPerWorkerCount(
  lab: Lab,
  counts: number[],
  o: { runs: number; setupMs: number; concurrency: number },
  log: (msg: string) => void,
): Promise<WorkersRow[]> {
  const rows: WorkersRow[] = [];
  const extra = process.env['MPC_BENCH_CONCENTRATOR_YAML'];
  try {
    for (const n of counts) {
      process.env['MPC_BENCH_CONCENTRATOR_YAML'] = [`workers: ${n}`, 'transports: [tcp]', extra ?? ''].join('\n');
      const d = await deploy('mpconvert', { lab, uplinks: 2 });
      try {
        const servers = await startServers(d);
        try {
          // Warm-up, not counted (TFO cookies, the JIT of every process): two runs per process, each of which
          // sees only its share of the connections (with one warm-up run, two workers were still 2x the CPU per
          // connection in the first measured run and came down over the next three).
          for (let i = 0; i < 2 * n; i++) await requestResponse(d, o.setupMs, o.concurrency);
          const load = loadavg()[0] ?? 0;
          const runs: RrRun[] = [];
          for (let i = 0; i < o.runs; i++) runs.push(await requestResponse(d, o.setupMs, o.concurrency));
          rows.push({
            workers: n,
            cps: stat(runs.map((x) => x.cps)),
            cpuMsPerConnection: stat(runs.map((x) => x.cpuMsPerConnection ?? null)),
            ttfbP50Ms: stat(runs.map((x) => x.ttfbP50)),
            ttfbP99Ms: stat(runs.map((x) => x.ttfbP99)),
            errors: runs.reduce((s, x) => s + x.errors, 0),
            loadAverage: load,
          });
          log(`setup mpconvert, workers ${n}: ${runs.map((x) => `${x.cps.toFixed(0)}/s ${x.cpuMsPerConnection?.toFixed(3) ?? '-'} ms CPU p50 ${x.ttfbP50?.toFixed(2)} ms err ${x.errors}`).join(', ')} (load average ${load.toFixed(2)})`);
        } finally {
          await servers.stop();
        }
      } catch (e) {
        const error = (e instanceof Error ? e.message : String(e)).split('\n')[0]!.slice(0, 300);
        rows.push({ workers: n, cps: null, cpuMsPerConnection: null, ttfbP50Ms: null, ttfbP99Ms: null, errors: 0, loadAverage: loadavg()[0] ?? 0, error });
        log(`setup mpconvert, workers ${n}: ERROR ${error}`);
      } finally {
        await d.stop();
      }
    }
  } finally {
    if (extra === undefined) delete process.env['MPC_BENCH_CONCENTRATOR_YAML'];
    else process.env['MPC_BENCH_CONCENTRATOR_YAML'] = extra;
  }
  return rows;
}
