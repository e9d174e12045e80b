/** The many-CPE figure's rows in bench/results/latest.md (bench/lib/manycpe.ts measures them). */
import type { ManyCpeResults, ManySystem } from './manycpe.js';

const NAMES: Record<ManySystem, string> = { mpconvert: 'mpconvert', shadowsocks: 'shadowsocks-libev' };
const SYSTEMS: ManySystem[] = ['mpconvert', 'shadowsocks'];

export function manyCpeMarkdown(m: ManyCpeResults): string[] {
  const L: string[] = [];
  const row = (cols: string[]) => L.push(`| ${cols.join(' | ')} |`);
  const shown = SYSTEMS.filter((s) => m.systems[s]);
  L.push(`**Many CPEs** (one run, ${m.date}): ${m.cpes} CPE namespaces, each with a LAN client and 2 unshaped uplinks, one concentrator, one server behind a shared link shaped to ${m.serverLinkMbps} Mbit/s (tbf, both directions); load average ${m.loadAverage.start.toFixed(1)} at the start, ${m.loadAverage.end.toFixed(1)} at the end; ${m.durationSeconds} s. In the last column above 1.00x means mpconvert is better.`);
  L.push('');
  row(['figure', ...shown.map((s) => NAMES[s]), ...(shown.length === 2 ? ['mpconvert / shadowsocks'] : [])]);
  L.push(`|${['figure', ...shown, ...(shown.length === 2 ? ['x'] : [])].map(() => '---').join('|')}|`);
  const line = (label: string, get: (s: ManySystem) => number | null | undefined, d: number, lowerBetter = false) => {
    const v = shown.map((s) => (m.systems[s]?.error ? 'error' : fmt(get(s), d)));
    const a = get('mpconvert');
    const b = get('shadowsocks');
    const rel = a !== null && a !== undefined && b !== null && b !== undefined && a !== 0 && b !== 0 ? ratioText(lowerBetter ? b / a : a / b) : '—';
    row([label, ...v, ...(shown.length === 2 ? [rel] : [])]);
  };
  const text = (label: string, get: (s: ManySystem) => string) => row([label, ...shown.map((s) => (m.systems[s]?.error ? 'error' : get(s))), ...(shown.length === 2 ? ['—'] : [])]);
  const sys = (s: ManySystem) => m.systems[s];
  line(`all ${m.cpes} CPE daemons ready, s`, (s) => sys(s)?.startSeconds, 1, true);
  line(`setup: connections/s, all CPEs at once (${m.concurrencyPerCpe} workers each)`, (s) => sys(s)?.setup?.cps, 0);
  line('setup: time to first byte p50, ms (every connection of every CPE)', (s) => sys(s)?.setup?.ttfbP50, 2, true);
  line('setup: time to first byte p99, ms', (s) => sys(s)?.setup?.ttfbP99, 2, true);
  text('setup: connections/s per CPE, min–max (Jain)', (s) => {
    const x = sys(s)?.setup;
    return x ? `${x.minCpeCps.toFixed(0)}–${x.maxCpeCps.toFixed(0)} (${fmt(x.cpsJain, 3)})` : '—';
  });
  line('setup: concentrator CPU per connection, ms (utime + stime / connections)', (s) => sys(s)?.setup?.concCpuMsPerConnection, 3, true);
  line('setup: concentrator CPU use while measured, share of one core', (s) => sys(s)?.setup?.concCpuShare, 2, true);
  line('setup: failed connections', (s) => sys(s)?.setup?.errors, 0, true);
  line('concentrator VmRSS alone, MiB', (s) => mib(sys(s)?.memory?.concBaselineBytes), 1, true);
  line(`concentrator VmRSS, ${m.cpes} CPEs up, ${m.idlePerCpe} idle connections each, MiB`, (s) => mib(sys(s)?.memory?.concIdleBytes), 1, true);
  line('concentrator memory per CPE (that, minus alone, / CPEs), KiB', (s) => kib(sys(s)?.memory?.perCpeBytes), 0, true);
  line('concentrator VmRSS idle after the load, MiB', (s) => mib(sys(s)?.memory?.concAfterBytes), 1, true);
  line('one CPE daemon VmRSS, idle, mean, MiB', (s) => mib(sys(s)?.memory?.cpeMeanBytes), 1, true);
  for (const dir of ['up', 'down'] as const) {
    const name = dir === 'up' ? 'upload' : 'download';
    line(`${name}: sum over the CPEs, Mbit/s of IP packets after the bottleneck (shared link ${m.serverLinkMbps})`, (s) => sys(s)?.fairness[dir]?.sumMbps, 1);
    line(`${name}: sum of iperf3's goodputs, Mbit/s`, (s) => sys(s)?.fairness[dir]?.iperfSumMbps, 1);
    text(`${name}: per CPE min–max, Mbit/s (fair share ${(m.serverLinkMbps / m.cpes).toFixed(1)})`, (s) => {
      const f = sys(s)?.fairness[dir];
      return f ? `${f.minMbps.toFixed(2)}–${f.maxMbps.toFixed(2)}${f.failed ? ` (${f.failed} failed)` : ''}` : '—';
    });
    line(`${name}: Jain's fairness index (1 = equal)`, (s) => sys(s)?.fairness[dir]?.jain, 3);
  }
  L.push('');
  for (const s of shown) L.push(`- ${NAMES[s]}: ${sys(s)?.error ? `error: ${sys(s)!.error}` : sys(s)!.note}`);
  L.push(`- Setup: every LAN client runs bench/tools/rr-client.ts for ${m.setupMs / 1000} s at the same moment (after a 1 s warm-up run); connections/s = all completed / (last end - first start). Fairness: one iperf3 per client to its own iperf3 server, all at once; each CPE's rate is counted after the shared link's bottleneck (uploads: an nft counter per CPE's iperf3 port on the server; downloads: the concentrator's tx on the CPE's uplinks; IP packets, headers included) over one common ${m.seconds} s window opening 1.5 s after the release, so every CPE is measured over the same interval; a CPE whose iperf3 failed counts 0; iperf3's own goodputs (each over its own interval, 1 s warm-up omitted) give the cross-check sum. Memory: VmRSS of the concentrator process (ss-server), 2 s after the idle connections are held (the baseline 2 s after the concentrator was ready). The CPE side (CPE daemons, LAN clients) runs under \`nice -n 19\`: in the field each CPE is its own machine; here they share 2 cores with the concentrator, whose fair share among 100 busy processes would otherwise be 1/100. Every client starts at once: each prints that it is armed, then all are released by a line on their stdin.`);
  return L;
}

const fmt = (x: number | null | undefined, d: number) => (x === null || x === undefined || !Number.isFinite(x) ? '—' : Math.abs(x) >= 1000 ? x.toFixed(0) : x.toFixed(d));
const mib = (b: number | null | undefined) => (b === null || b === undefined ? null : b / 1048576);
const kib = (b: number | null | undefined) => (b === null || b === undefined ? null : b / 1024);
/** 0.21x, and two significant digits below 0.1 (0.0034x) rather than 0.00x. */
const ratioText = (x: number) => `${x >= 0.1 ? x.toFixed(2) : x.toPrecision(2)}x`;
