/**
 * The CPE's warm pool over uplinks with real round-trip times (the lab's delay line): a LAN connection that
 * takes a warm connection gets its first byte one uplink round trip after it asked (a fresh 0-RTT conversion
 * needs two: the concentrator waits for the CPE's handshake ACK before its first byte); unused entries are
 * retired and replaced without the concentrator counting them as stalled signalling; a concentrator restart
 * kills the entries and the pool recovers with nothing lost.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab } from '../../src/lab/index.js';
import { labCapabilityMissing, IN_CI } from '../support/capabilities.js';
import { CLI, Proc, TOOL, start } from '../support/lab-procs.js';
import { deterministicSha256 } from '../support/tools/stream-util.js';
import { byLabel, metric } from '../support/metrics.js';

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

const RTT_MS = 40;

describe('warm pool (lab, uplinks with real RTTs)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  const procs: Proc[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'mpc-warm-'));
  let conc: Proc;
  let cpe: Proc;
  const startCpe = async (warmPool: number) => {
    writeFileSync(
      join(dir, 'cpe.yaml'),
      `lan: [lan0]\nuplinks: [{interface: up1}, {interface: up2}]\nadmin: "127.0.0.1:9091"\nconcentrators:\n  - { address: "198.18.200.1:5000", warmPool: ${warmPool}, warmIdleS: 4 }\n`,
    );
    cpe = start(lab.hosts.cpe, [CLI, 'cpe', '--config', join(dir, 'cpe.yaml')]);
    procs.push(cpe);
    await cpe.waitLine((l) => l.startsWith('ready'), 30_000);
  };
  const startConcentrator = async () => {
    conc = start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', join(dir, 'conc.yaml')]);
    procs.push(conc);
    await conc.waitLine((l) => l.startsWith('ready'), 30_000);
  };
  const cpeMetrics = async () => (await lab.hosts.cpe.exec('curl', ['-s', 'http://127.0.0.1:9091/metrics'])).stdout;
  const concMetrics = async () => (await lab.hosts.concentrator.exec('curl', ['-s', 'http://127.0.0.1:9090/metrics'])).stdout;
  const poll = async (what: string, ok: () => Promise<boolean>, ms = 20_000) => {
    for (const t0 = Date.now(); Date.now() - t0 < ms; await new Promise((r) => setTimeout(r, 50))) if (await ok()) return;
    assert.fail(`timed out waiting for ${what}`);
  };
  const poolReady = async () => {
    const s = JSON.parse((await lab.hosts.cpe.exec('curl', ['-s', 'http://127.0.0.1:9091/status'])).stdout) as { warmPool: Array<{ ready: number; size: number }> };
    return s.warmPool.length === 1 && s.warmPool[0]!.ready === s.warmPool[0]!.size;
  };
  /** A small download from the LAN client: its hash and curl's time to the first byte (ms). */
  const download = async (seed: string, size = 20_000) => {
    const url = `http://${lab.hosts.servers[0]!.v4}:8080/bytes/${size}?seed=${seed}`;
    const r = await lab.hosts.client.exec('bash', ['-o', 'pipefail', '-c', `curl -sS --fail --max-time 20 -o >(sha256sum >&2) -w '%{time_starttransfer}' '${url}'`], { timeoutMs: 30_000 });
    return { sha: r.stderr.trim().split(' ')[0], ttfbMs: Number(r.stdout) * 1000 };
  };

  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: '50mbit', rttMs: RTT_MS }, { rate: '50mbit', rttMs: RTT_MS }], servers: 1 });
    const http = start(lab.hosts.servers[0]!, [TOOL('http-server'), JSON.stringify({ host: '::', port: 8080 })]);
    procs.push(http);
    writeFileSync(join(dir, 'conc.yaml'), 'listen: ["198.18.200.1:5000"]\nallow: ["198.18.0.0/15"]\nadmin: "127.0.0.1:9090"\nsignalling: { timeoutMs: 1000, warmIdleS: 30 }\n');
    await startConcentrator();
    await Promise.all([http.waitLine((l) => l.includes('ready')), startCpe(2)]);
  });
  after(async () => {
    for (const p of procs.reverse()) await p.stop();
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

  test('a LAN connection takes a warm connection: hash equal, first byte one uplink round trip sooner than a fresh conversion', { timeout: 180_000 }, async (t) => {
    const before = await cpeMetrics();
    const ttfbs: number[] = [];
    for (let i = 0; i < 7; i++) {
      await poll('a full pool', poolReady);
      const seed = `warm${i}`;
      const r = await download(seed);
      assert.equal(r.sha, deterministicSha256(seed, 20_000), `download ${i}`);
      ttfbs.push(r.ttfbMs);
    }
    const after = await cpeMetrics();
    const d = (name: string, label: string) => metric(after, name, label) - metric(before, name, label);
    assert.equal(d('mpconvert_warm_connections_total', 'event="used"'), 7, 'each download took a warm connection');
    assert.equal(d('mpconvert_concentrator_capability_total', 'result="ok"'), 7, 'each confirmed by its echo');
    assert.equal(d('mpconvert_fallback_total', 'to="direct"'), 0);
    // The same downloads through the same CPE without a pool: fresh 0-RTT conversions, in the same conditions.
    await cpe.stop();
    await startCpe(0);
    const fresh: number[] = [];
    for (let i = 0; i < 7; i++) {
      const seed = `fresh${i}`;
      const r = await download(seed);
      assert.equal(r.sha, deterministicSha256(seed, 20_000), `fresh download ${i}`);
      fresh.push(r.ttfbMs);
    }
    await cpe.stop();
    await startCpe(2);
    // Warm: one round trip (40 ms) plus the processes; fresh 0-RTT: two (the concentrator waits for the CPE's handshake ACK).
    const show = (xs: number[]) => xs.map((x) => x.toFixed(1)).join(', ');
    t.diagnostic(`time to first byte, ms: warm ${show(ttfbs)}; fresh ${show(fresh)}`);
    assert.ok(median(ttfbs) <= median(fresh) - RTT_MS / 2, `warm median ${median(ttfbs).toFixed(1)} ms is a round trip below fresh ${median(fresh).toFixed(1)} ms (warm ${show(ttfbs)}; fresh ${show(fresh)})`);
  });

  test('unused warm connections are retired and replaced; the concentrator counts them as warm-unused, never as stalled signalling', { timeout: 60_000 }, async () => {
    const cpe0 = await cpeMetrics();
    const conc0 = await concMetrics();
    // warmIdleS 4: both entries retire within about 4 s and are replaced.
    await poll('two retirements', async () => metric(await cpeMetrics(), 'mpconvert_warm_connections_total', 'event="retired"') - metric(cpe0, 'mpconvert_warm_connections_total', 'event="retired"') >= 2);
    await poll('the concentrator counting them', async () => metric(await concMetrics(), 'mpconvert_refused_total', 'reason="warm-unused"') - metric(conc0, 'mpconvert_refused_total', 'reason="warm-unused"') >= 2);
    await poll('a full pool again', poolReady);
    const refused = byLabel(await concMetrics(), 'mpconvert_refused_total', 'reason');
    for (const reason of Object.keys(refused)) assert.ok(!reason.startsWith('signalling'), `no signalling refusal (${JSON.stringify(refused)})`);
    assert.equal(refused['warm-idle'] ?? 0, 0, 'retired by the CPE before the concentrator gave up on them');
  });

  test('a concentrator restart kills the warm connections; the pool recovers and the next download is converted', { timeout: 120_000 }, async () => {
    const before = await cpeMetrics();
    await conc.stop();
    await startConcentrator();
    await poll('dead entries noticed', async () => metric(await cpeMetrics(), 'mpconvert_warm_connections_total', 'event="died"') - metric(before, 'mpconvert_warm_connections_total', 'event="died"') >= 1);
    await poll('a full pool again', poolReady, 40_000);
    const r = await download('after-restart', 200_000);
    assert.equal(r.sha, deterministicSha256('after-restart', 200_000));
    const after = await cpeMetrics();
    assert.equal(metric(after, 'mpconvert_fallback_total', 'to="direct"') - metric(before, 'mpconvert_fallback_total', 'to="direct"'), 0, 'converted, not direct');
    assert.ok(metric(after, 'mpconvert_warm_connections_total', 'event="used"') - metric(before, 'mpconvert_warm_connections_total', 'event="used"') >= 1);
  });
});
