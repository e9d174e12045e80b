/**
 * The lab's delay line (this kernel has no netem): per-uplink round-trip times are what was asked for,
 * within 10%, the delay line is not the bottleneck at the bench's rates, uplink faults still cut the link,
 * and down() leaves no namespace and no delay-line process behind.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Lab, listNamespaces } from '../../src/lab/index.js';
import { IN_CI, labCapabilityMissing, requireTool } from '../support/capabilities.js';

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

/** Uplink 1: a shaped DSL-like link; uplink 2: unshaped, long RTT (the delay line's own capacity). */
const UPLINKS = [
  { rate: '50mbit', rttMs: 20 },
  { rate: 0 as const, rttMs: 80 },
];
const RTT = UPLINKS.map((u) => u.rttMs);

/** Median of `count` ping round trips, ms (the first, which pays for ARP, is left out). */
async function pingMedian(lab: Lab, to: string, count = 11, dev?: string): Promise<{ median: number; received: number }> {
  const r = await lab.hosts.cpe.exec('ping', ['-n', '-c', String(count), '-i', '0.2', '-W', '1', ...(dev ? ['-I', dev] : []), to], { allowFailure: true, timeoutMs: 30_000 });
  const times = [...r.stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1])).slice(1).sort((a, b) => a - b);
  return { median: times[Math.floor(times.length / 2)] ?? NaN, received: times.length };
}

describe('lab delay line', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  before(async () => {
    lab = await Lab.up({ uplinks: UPLINKS });
  });
  after(async () => {
    await lab?.down();
  });

  test('each uplink has its round-trip time, within 10%', async (t) => {
    if (!requireTool(t, 'ping')) return;
    for (const [j, rtt] of RTT.entries()) {
      const { median, received } = await pingMedian(lab, `198.18.${j + 1}.1`);
      assert.ok(received >= 8, `uplink ${j + 1}: pings answered (${received})`);
      assert.ok(Math.abs(median - rtt) <= rtt * 0.1, `uplink ${j + 1}: median RTT ${median} ms, configured ${rtt} ms`);
    }
  });

  /** iperf3 from the CPE to the concentrator over uplink i, the first second (slow start) left out. */
  async function goodput(i: number): Promise<number> {
    const server = lab.hosts.concentrator.spawn('iperf3', ['-s', '-1', '-B', `198.18.${i}.1`]);
    try {
      let out = '';
      for (let attempt = 0; attempt < 50 && !out.includes('bits_per_second'); attempt++) {
        const r = await lab.hosts.cpe.exec('iperf3', ['-c', `198.18.${i}.1`, '-B', `198.18.${i}.2`, '-t', '5', '-O', '1', '-J'], { allowFailure: true, timeoutMs: 30_000 });
        out = r.stdout;
        if (!out.includes('bits_per_second')) await new Promise((res) => setTimeout(res, 100)); // the server is not listening yet
      }
      const j = JSON.parse(out) as { end: { sum_received: { bits_per_second: number } } };
      return j.end.sum_received.bits_per_second / 1e6;
    } finally {
      server.kill('SIGKILL');
    }
  }

  test('the delay line is not the bottleneck: a 50 Mbit/s uplink is filled, an unshaped one carries 4x the bench rates', async (t) => {
    if (!requireTool(t, 'iperf3')) return;
    const shaped = await goodput(1);
    assert.ok(shaped >= 45, `goodput over the shaped 20 ms uplink: ${shaped.toFixed(1)} Mbit/s of 50`);
    const unshaped = await goodput(2);
    assert.ok(unshaped >= 200, `goodput through the unshaped 80 ms delay line: ${unshaped.toFixed(1)} Mbit/s`);
  });

  test('an uplink taken down through the delay line is cut both ways, and comes back', async (t) => {
    if (!requireTool(t, 'ping')) return;
    await lab.uplinkDown(1);
    const carrier = (await lab.hosts.concentrator.exec('ip', ['-j', 'link', 'show', 'acc1'])).stdout;
    assert.match(carrier, /NO-CARRIER|"operstate":"DOWN"|LOWERLAYERDOWN/, 'the concentrator side lost its carrier');
    assert.equal((await pingMedian(lab, '198.18.1.1', 3, 'up1')).received, 0, 'nothing crosses uplink 1');
    await lab.uplinkUp(1);
    assert.ok((await pingMedian(lab, '198.18.1.1', 4, 'up1')).received >= 2, 'back after uplinkUp');
  });

  test('down() removes the delay-line namespaces and their processes', async () => {
    const dls = lab.namespaces.filter((n) => /-dl\d+$/.test(n));
    assert.equal(dls.length, 2);
    const pids = dls.flatMap((n) => execFileSync('ip', ['netns', 'pids', n], { encoding: 'utf8' }).split('\n').filter(Boolean));
    assert.ok(pids.length >= 2, 'a delay-line process runs in each');
    await lab.down();
    const present = new Set(await listNamespaces());
    for (const n of dls) assert.ok(!present.has(n), `${n} removed`);
    const alive = (pid: string) => {
      try {
        // A zombie (killed, not reaped yet) counts as gone.
        return !/^\S+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
      } catch {
        return false;
      }
    };
    for (let i = 0; i < 40 && pids.some(alive); i++) await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(pids.filter(alive), [], 'every delay-line process is gone');
  });
});
