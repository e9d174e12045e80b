/**
 * Downloads in the bench (issue 17): which iperf3 object carries the receiver's intervals with -R, read from a
 * captured iperf3 3.12 run (test/vectors/iperf3-intervals.json), and the relay / failover rows and targets of
 * the report for both directions.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { intervalSeries, receivedIntervals, receiverRate, secondsUntil, type IperfJson } from '../../../bench/lib/measure.js';
import { directionTargets, failoverSvg, markdown, stat, type Results } from '../../../bench/lib/report.js';

const captured = JSON.parse(readFileSync(new URL('../../../../test/vectors/iperf3-intervals.json', import.meta.url), 'utf8')) as { download: IperfJson; upload: IperfJson };

test('with -R the client\'s own intervals are the received side: the measured ones give the receiver\'s rate', () => {
  const iv = receivedIntervals(captured.download, 'down');
  assert.equal(iv.length, 8); // 4 omitted (-O 1) + 4 measured
  assert.ok(iv.every((x) => x.sender === false));
  const rate = receiverRate(iv);
  assert.ok(rate !== null && Math.abs(rate - 39.8474) < 1e-3, `rate ${rate}`);
  // The series for the failover chart: the measured intervals only, [end s, Mbit/s].
  assert.deepEqual(
    intervalSeries(iv).map(([t, v]) => [Number(t.toFixed(3)), Number(v.toFixed(2))]),
    [[0.25, 37.74], [0.5, 41.94], [0.75, 37.75], [1, 41.97]],
  );
});

test('with -R the server\'s output is the sender\'s (Retr, Cwnd columns) and is never read as received', () => {
  assert.match(captured.download.server_output_text ?? '', /sender\s*$/m);
  assert.deepEqual(receivedIntervals(captured.download, 'up'), []);
});

test('an upload is read at the server; its client intervals are the sender\'s and are refused as a download\'s', () => {
  const iv = receivedIntervals(captured.upload, 'up');
  assert.deepEqual(iv.map((x) => x.bits_per_second), [37.7e6, 41.9e6, 37.7e6, 41.7e6]);
  assert.throws(() => receivedIntervals(captured.upload, 'down'), /sender's intervals/);
});

test('failover seconds are read to 0.01 s off the drifting JSON interval ends, null when never reached', () => {
  // A download's series as the client reports it (ends a few microseconds past the 0.25 s grid).
  const series: Array<[number, number]> = [[8.000071, 47], [8.250069, 60], [8.500007, 91], [8.750082, 98]];
  assert.equal(secondsUntil(series, 8, 90), 0.5);
  // The interval ending within 0.25 s of the event does not count, even if it carries enough, and a few
  // microseconds of drift do not make it count (the upload's text intervals end at 8.25 exactly).
  assert.equal(secondsUntil([[8.25, 95], [8.5, 95]], 8, 90), 0.5);
  assert.equal(secondsUntil([[8.250069, 95], [8.500007, 95]], 8, 90), 0.5);
  assert.equal(secondsUntil(series, 8, 99), null);
});

const s = (...v: number[]) => stat(v);

function results(withDownload: boolean): Results {
  const failover = (recovery: number[], never: number, rejoin: number[], neverRejoined: number): NonNullable<Results['failover']> => ({
    topology: { name: '50+50', ratesMbps: [50, 50] },
    cc: 'reno',
    cut: 1,
    cutAt: 4,
    restoreAt: 8,
    systems: {
      mpconvert: { recoverySeconds: stat(recovery), rejoinSeconds: stat(rejoin), never, neverRejoined, series: [[4, 50], [4.25, 20], [4.5, 46]] },
      kernel: { recoverySeconds: s(0.5), rejoinSeconds: s(0.75), never: 0, neverRejoined: 0, series: [[4, 50], [4.25, 47]] },
    },
  });
  return {
    meta: { date: '2026-12-07T12:00:00Z', kernel: '6.1', cpus: 2, node: 'v20', tools: {}, settings: { runs: 2, failoverRuns: 2 }, notes: [] },
    aggregation: [],
    relay: { kernel: { goodputMbps: s(9000, 9400), cpuSecondsPerGB: null }, mpconvert: { goodputMbps: s(5000, 5200), cpuSecondsPerGB: s(1.9, 2.1) } },
    ...(withDownload ? { relayDownload: { kernel: { goodputMbps: s(9000), cpuSecondsPerGB: null }, mpconvert: { goodputMbps: s(4000), cpuSecondsPerGB: s(2.5) } } } : {}),
    setup: {},
    memory: {},
    failover: failover([0.25, 0.5], 0, [0.5, 0.75], 0),
    ...(withDownload ? { failoverDownload: failover([0.75], 1, [0.25, 0.5], 0) } : {}),
    targets: [],
    deployments: {},
  };
}

const rowOf = (md: string, label: string) => md.split('\n').find((l) => l.startsWith(`| ${label} |`));

test('the report shows relay and failover rows for each direction, the upload rows under their old names', () => {
  const md = markdown(results(true));
  assert.match(rowOf(md, 'goodput, Mbit/s') ?? '', /\| 9200 \(9000–9400\) \| 5100 \(5000–5200\) \|/);
  assert.match(rowOf(md, 'relay goodput, Mbit/s, download') ?? '', /\| 9000 \| 4000 \|/);
  assert.match(rowOf(md, 'relay CPU, s per GB (CPE + concentrator), download') ?? '', /\| — \| 2.50 \|/);
  assert.match(rowOf(md, 'failover: s until the survivor carries 90% (50+50, reno)') ?? '', /\| 0.50 \| 0.38 \(0.25–0.50\) \|/);
  assert.match(rowOf(md, 'failover: s until the survivor carries 90% (50+50, reno), download') ?? '', /\| 0.50 \| 0.75 \|/);
  assert.match(rowOf(md, 'failover: s until both carry 90% after the restore, download') ?? '', /\| 0.75 \| 0.38 \(0.25–0.50\) \|/);
  assert.match(failoverSvg(results(true)), /stroke-dasharray="5 3"/);
});

test('older results without downloads render as before: no download rows, no dashed series', () => {
  const md = markdown(results(false));
  assert.ok(rowOf(md, 'goodput, Mbit/s'));
  assert.ok(rowOf(md, 'failover: s until both carry 90% after the restore'));
  assert.doesNotMatch(md, /download/);
  assert.doesNotMatch(failoverSvg(results(false)), /dasharray="5 3"/);
});

test('targets: relay download >= 0.5x kernel, failover <= 0.5 s each way, a run that never recovered counts as never', () => {
  const t = Object.fromEntries(directionTargets(results(true)).map((x) => [x.target, x]));
  assert.deepEqual(Object.keys(t), [
    'relay goodput >= 0.5x kernel, download',
    'failover: s until the survivor carries 90% <= 0.5',
    'failover: s until both carry 90% after the restore <= 0.5',
    'failover: s until the survivor carries 90% <= 0.5, download',
    'failover: s until both carry 90% after the restore <= 0.5, download',
  ]);
  assert.deepEqual(t['relay goodput >= 0.5x kernel, download'], { target: 'relay goodput >= 0.5x kernel, download', value: '4000 Mbit/s', met: false, gap: '-11.1%' });
  assert.deepEqual(t['failover: s until the survivor carries 90% <= 0.5'], { target: 'failover: s until the survivor carries 90% <= 0.5', value: '0.38 s', met: true, gap: '+33.3%' });
  assert.equal(t['failover: s until both carry 90% after the restore <= 0.5']?.met, false);
  // Download: one run at 0.75 s and one that never recovered: the median of 0.75 and never is never.
  assert.deepEqual(t['failover: s until the survivor carries 90% <= 0.5, download'], { target: 'failover: s until the survivor carries 90% <= 0.5, download', value: 'never', met: false, gap: '—' });
  assert.deepEqual(t['failover: s until both carry 90% after the restore <= 0.5, download']?.met, true);
});

test('targets: nothing measured for downloads gives no download rows; an errored system is not measured', () => {
  assert.deepEqual(directionTargets(results(false)).map((x) => x.target), ['failover: s until the survivor carries 90% <= 0.5', 'failover: s until both carry 90% after the restore <= 0.5']);
  const r = results(true);
  r.failoverDownload!.systems.mpconvert = { recoverySeconds: null, rejoinSeconds: null, never: 0, series: [], error: 'iperf3 stalled' };
  const t = directionTargets(r).find((x) => x.target === 'failover: s until the survivor carries 90% <= 0.5, download');
  assert.equal(t?.met, null);
});
