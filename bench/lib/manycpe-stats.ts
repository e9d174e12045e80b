/**
 * The pure parts of the many-CPE figure (bench/lib/manycpe.ts): Jain's fairness index, percentiles, merging the
 * request/response results of many clients, reading iperf3's JSON. Unit-tested (test/unit/bench/manycpe.test.ts).
 */

/**
 * Jain's fairness index of the allocations x1..xn: (sum x)^2 / (n * sum x^2), from 1/n (one gets everything)
 * to 1 (all equal) (R. Jain, D. Chiu, W. Hawe, DEC-TR-301, 1984). All zero (nothing moved): null.
 */
export function jainIndex(xs: readonly number[]): number | null {
  if (xs.length === 0) return null;
  let sum = 0;
  let squares = 0;
  for (const x of xs) {
    if (!Number.isFinite(x) || x < 0) throw new RangeError(`Cannot compute Jain's index: allocation ${x} is not a finite non-negative number`);
    sum += x;
    squares += x * x;
  }
  return squares === 0 ? null : (sum * sum) / (xs.length * squares);
}

/** Nearest-rank percentile of an ascending array (p in 0..100); null when empty. */
export function percentile(sorted: readonly number[], p: number): number | null {
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

/** One rr-client's JSON line with `startAt` and `samples` (bench/tools/rr-client.ts). */
export interface RrClientOut {
  completed: number;
  errors: number;
  cps: number;
  startedAt: number;
  endedAt: number;
  ttfbs: number[];
  errorKinds?: Record<string, number>;
}

export interface MergedRr {
  /** Connections completed by every client together. */
  completed: number;
  errors: number;
  /** completed / (last client's end - first client's start). */
  cps: number;
  /** The span the clients ran over, s, and how far apart their starts were, ms. */
  seconds: number;
  startSpreadMs: number;
  /** Time to first byte over every connection of every client, ms. */
  ttfbP50: number | null;
  ttfbP99: number | null;
  /** Each client's connections/s, and Jain's index over them (how evenly the CPEs were served). */
  perCpeCps: number[];
  cpsJain: number | null;
  errorKinds: Record<string, number>;
}

/** Merges the clients' results (a client that printed nothing counts as 0 connections and one error). */
export function mergeRr(outs: ReadonlyArray<RrClientOut | null>): MergedRr {
  const ok = outs.filter((o): o is RrClientOut => o !== null);
  const start = Math.min(...ok.map((o) => o.startedAt));
  const end = Math.max(...ok.map((o) => o.endedAt));
  const seconds = ok.length ? Math.max(1e-3, (end - start) / 1000) : 0;
  const completed = ok.reduce((s, o) => s + o.completed, 0);
  const all = ok.flatMap((o) => o.ttfbs).sort((a, b) => a - b);
  const errorKinds: Record<string, number> = {};
  for (const o of ok) for (const [k, n] of Object.entries(o.errorKinds ?? {})) errorKinds[k] = (errorKinds[k] ?? 0) + n;
  const missing = outs.length - ok.length;
  if (missing > 0) errorKinds['no-output'] = missing;
  const perCpeCps = outs.map((o) => (o === null ? 0 : o.cps));
  return {
    completed,
    errors: ok.reduce((s, o) => s + o.errors, 0) + missing,
    cps: seconds ? completed / seconds : 0,
    seconds,
    startSpreadMs: ok.length ? Math.max(...ok.map((o) => o.startedAt)) - start : 0,
    ttfbP50: percentile(all, 50),
    ttfbP99: percentile(all, 99),
    perCpeCps,
    cpsJain: jainIndex(perCpeCps),
    errorKinds,
  };
}

/**
 * An iperf3 client's JSON (-J) as goodput in Mbit/s: `end.sum_received` (the receiver's count, after the -O
 * warm-up) in either direction. Throws with iperf3's own error, or when the output is not its JSON.
 */
export function iperfReceivedMbps(stdout: string): number {
  let j: { error?: string; end?: { sum_received?: { bits_per_second?: number } } };
  try {
    j = JSON.parse(stdout) as typeof j;
  } catch {
    throw new Error(`Cannot parse iperf3 output: not JSON (${stdout.slice(0, 200).trim() || 'empty'})`);
  }
  if (typeof j !== 'object' || j === null) throw new Error('Cannot parse iperf3 output: not an object');
  if (j.error) throw new Error(`iperf3: ${j.error}`);
  const bps = j.end?.sum_received?.bits_per_second;
  if (typeof bps !== 'number' || !Number.isFinite(bps)) throw new Error('Cannot parse iperf3 output: no end.sum_received.bits_per_second');
  return bps / 1e6;
}

export interface FairnessRun {
  /** Each CPE's goodput, Mbit/s, in CPE order; a CPE whose iperf3 failed counts 0. */
  perCpeMbps: number[];
  sumMbps: number;
  minMbps: number;
  maxMbps: number;
  jain: number | null;
  failed: number;
  errors: string[];
}

export function fairness(results: ReadonlyArray<number | Error>): FairnessRun {
  const perCpeMbps = results.map((r) => (r instanceof Error ? 0 : r));
  const errors = results.filter((r): r is Error => r instanceof Error).map((e) => e.message);
  return {
    perCpeMbps,
    sumMbps: perCpeMbps.reduce((s, x) => s + x, 0),
    minMbps: perCpeMbps.length ? Math.min(...perCpeMbps) : 0,
    maxMbps: perCpeMbps.length ? Math.max(...perCpeMbps) : 0,
    jain: jainIndex(perCpeMbps),
    failed: errors.length,
    errors: [...new Set(errors)].slice(0, 3),
  };
}

/** The named counters of `nft -j list counters table ...`: name -> bytes. */
export function nftCounterBytes(json: string): Map<string, number> {
  let j: { nftables?: Array<{ counter?: { name?: string; bytes?: number } }> };
  try {
    j = JSON.parse(json) as typeof j;
  } catch {
    throw new Error(`Cannot parse nft counters: not JSON (${json.slice(0, 200).trim() || 'empty'})`);
  }
  const out = new Map<string, number>();
  for (const item of j.nftables ?? []) {
    const c = item.counter;
    if (c && typeof c.name === 'string' && typeof c.bytes === 'number') out.set(c.name, c.bytes);
  }
  return out;
}
