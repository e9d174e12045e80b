/**
 * 0-RTT (the default) over uplinks with real round-trip times (the lab's delay line): every connection is
 * converted with its echo, none falls back. Linux 6.18 MPTCP loses data a passive-TFO listener sends before the
 * handshake's last ACK; without the concentrator waiting for that ACK before its first byte, the CPE never sees
 * the echo (5 s echo timeout, the concentrator cached as not capable, direct fallback).
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
import { metric } from '../support/metrics.js';

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

describe('0-RTT over uplinks with real RTTs (lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  const procs: Proc[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'mpc-0rtt-'));
  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: '50mbit', rttMs: 10 }, { rate: '50mbit', rttMs: 40 }], servers: 1 });
    const http = start(lab.hosts.servers[0]!, [TOOL('http-server'), JSON.stringify({ host: '::', port: 8080 })]);
    procs.push(http);
    writeFileSync(join(dir, 'conc.yaml'), 'listen: ["198.18.200.1:5000"]\nallow: ["198.18.0.0/15"]\nadmin: "127.0.0.1:9090"\n');
    const conc = start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', join(dir, 'conc.yaml')]);
    procs.push(conc);
    // The CPE's defaults: zeroRtt on.
    writeFileSync(join(dir, 'cpe.yaml'), 'lan: [lan0]\nuplinks: [{interface: up1}, {interface: up2}]\nadmin: "127.0.0.1:9091"\nconcentrators:\n  - address: "198.18.200.1:5000"\n');
    const cpe = start(lab.hosts.cpe, [CLI, 'cpe', '--config', join(dir, 'cpe.yaml')]);
    procs.push(cpe);
    await Promise.all([http.waitLine((l) => l.includes('ready')), conc.waitLine((l) => l.startsWith('ready'), 30_000), cpe.waitLine((l) => l.startsWith('ready'), 30_000)]);
  });
  after(async () => {
    for (const p of procs.reverse()) await p.stop();
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  test('five downloads through the CPE: hash equal, each converted with 0-RTT (echo confirmed), none direct', { timeout: 120_000 }, async () => {
    const before = (await lab.hosts.cpe.exec('curl', ['-s', 'http://127.0.0.1:9091/metrics'])).stdout;
    for (let i = 0; i < 5; i++) {
      const seed = `rtt${i}`;
      const r = await lab.hosts.client.exec('bash', ['-o', 'pipefail', '-c', `curl -sS --fail --max-time 30 'http://${lab.hosts.servers[0]!.v4}:8080/bytes/1000000?seed=${seed}' | sha256sum`], { timeoutMs: 40_000 });
      assert.equal(r.stdout.split(' ')[0], deterministicSha256(seed, 1_000_000), `download ${i}`);
    }
    const after = (await lab.hosts.cpe.exec('curl', ['-s', 'http://127.0.0.1:9091/metrics'])).stdout;
    const d = (name: string, label: string) => metric(after, name, label) - metric(before, name, label);
    assert.equal(d('mpconvert_concentrator_capability_total', 'result="ok"'), 5, 'every connection confirmed by its echo');
    assert.equal(d('mpconvert_concentrator_capability_total', 'result="timeout"'), 0, 'no echo timed out');
    assert.equal(d('mpconvert_fallback_total', 'to="direct"'), 0, 'nothing went direct');
    assert.equal(d('mpconvert_concentrator_capability_total', 'result="zero-rtt-retry"'), 0, 'the SYN data was taken each time (no retry without it)');
  });
});
