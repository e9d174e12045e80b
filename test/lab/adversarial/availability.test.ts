/**
 * Adversarial suite, availability: a rate-limited CPE keeps converting (a refusal is not an outage), a
 * restarted concentrator is used again as soon as it is ready, one CPE holding connections open without
 * signalling cannot starve another (at a lowered descriptor limit) and every accept is counted, and a
 * group SIGTERM or a wrong listen address give clean, one-line outcomes. Real daemons, real kernel MPTCP.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab } from '../../../src/lab/index.js';
import { encodeMpConvert } from '../../../src/protocol/index.js';
import { labCapabilityMissing, IN_CI } from '../../support/capabilities.js';
import { CLI, Proc, TOOL, runTool, start } from '../../support/lab-procs.js';
import { deterministicSha256 } from '../../support/tools/stream-util.js';
import { byLabel, delta, sum } from '../../support/metrics.js';

const labTest = (name: string, fn: () => Promise<void>) => test(name, { timeout: 150_000 }, fn);
const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

const CONC = '198.18.200.1';

describe('adversarial: availability (lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  let conc: Proc | undefined;
  let cpe: Proc | undefined;
  let http: Proc;
  let srv: string;
  const dir = mkdtempSync(join(tmpdir(), 'mpc-adv-'));

  const concMetrics = async () => (await lab.hosts.concentrator.exec('curl', ['-s', 'http://127.0.0.1:9090/metrics'])).stdout;
  const cpeMetrics = async () => (await lab.hosts.cpe.exec('curl', ['-s', 'http://127.0.0.1:9091/metrics'])).stdout;

  async function startConcentrator(yaml: string, prefix: string[] = []): Promise<void> {
    await conc?.stop();
    const file = join(dir, `conc-${Date.now()}.yaml`);
    writeFileSync(file, `listen: ["${CONC}:5000"]\nallow: ["198.18.0.0/16"]\nadmin: "127.0.0.1:9090"\nshutdownDrainS: 1\n${yaml}`);
    conc = prefix.length
      ? new Proc(lab.hosts.concentrator.spawn(prefix[0]!, [...prefix.slice(1), process.execPath, CLI, 'concentrator', '--config', file]))
      : start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', file]);
    await conc.waitLine((l) => l.startsWith('ready'), 30_000);
  }

  async function startCpe(opts: { detached?: boolean } = {}): Promise<void> {
    await cpe?.stop();
    const file = join(dir, `cpe-${Date.now()}.yaml`);
    writeFileSync(file, `lan: [lan0]\nuplinks: [{interface: up1}, {interface: up2}]\nadmin: "127.0.0.1:9091"\nconcentrators:\n  - address: "${CONC}:5000"\n    zeroRtt: true\n`);
    cpe = new Proc(lab.hosts.cpe.spawn(process.execPath, [CLI, 'cpe', '--config', file], opts.detached ? { detached: true } : {}));
    await cpe.waitLine((l) => l.startsWith('ready'), 30_000);
  }

  /** curl in the LAN client; ok when the body's hash is right. */
  async function fetch(size: number, seed: string): Promise<boolean> {
    const r = await lab.hosts.client.exec('bash', ['-o', 'pipefail', '-c', `curl -sS --fail --max-time 20 'http://${srv}:8080/bytes/${size}?seed=${seed}' | sha256sum`], { timeoutMs: 30_000, allowFailure: true });
    return r.stdout.split(' ')[0] === deterministicSha256(seed, size);
  }

  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: '50mbit' }, { rate: '50mbit' }], servers: 1 });
    srv = lab.hosts.servers[0]!.v4;
    http = start(lab.hosts.servers[0]!, [TOOL('http-server'), JSON.stringify({ host: '::', port: 8080 })]);
    await http.waitLine((l) => l.includes('ready'));
  });

  after(async () => {
    await cpe?.stop();
    await conc?.stop();
    await http?.stop();
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  labTest('a rate-limited CPE: its refused connections are reset, its next connections still convert (never direct)', async () => {
    await startConcentrator('limits:\n  newConnectionsPerSecondPerCpe: 2\n');
    await startCpe();
    const c0 = byLabel(await concMetrics(), 'mpconvert_refused_total', 'reason');
    const p0 = await cpeMetrics();
    // A burst well over the bucket (2): some are refused by the concentrator.
    const burst = await Promise.all(Array.from({ length: 12 }, (_, i) => fetch(1000, `burst${i}`)));
    const refused = delta(c0, byLabel(await concMetrics(), 'mpconvert_refused_total', 'reason'));
    assert.ok((refused['rate-per-cpe'] ?? 0) >= 1, `the concentrator refused some of the burst: ${JSON.stringify(refused)}`);
    assert.ok(burst.filter(Boolean).length >= 1, 'some of the burst were served');
    // As soon as the bucket refills, connections convert again through the concentrator.
    let converted = false;
    for (const t0 = Date.now(); !converted && Date.now() - t0 < 5_000; ) {
      const before = byLabel(await concMetrics(), 'mpconvert_server_leg_total', 'transport');
      if (await fetch(1000, 'after')) converted = sum(delta(before, byLabel(await concMetrics(), 'mpconvert_server_leg_total', 'transport'))) === 1;
      else await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(converted, `a connection after the burst was converted by the concentrator; CPE capability ${JSON.stringify(delta(byLabel(p0, 'mpconvert_concentrator_capability_total', 'result'), byLabel(await cpeMetrics(), 'mpconvert_concentrator_capability_total', 'result')))}, fallback ${JSON.stringify(delta(byLabel(p0, 'mpconvert_fallback_total', 'to'), byLabel(await cpeMetrics(), 'mpconvert_fallback_total', 'to')))}`);
    const p1 = await cpeMetrics();
    const direct = delta(byLabel(p0, 'mpconvert_fallback_total', 'to'), byLabel(p1, 'mpconvert_fallback_total', 'to'));
    assert.deepEqual(direct, {}, 'no connection went direct (or was refused by the CPE) because of the refusals');
    const held = delta(byLabel(p0, 'mpconvert_concentrator_capability_total', 'result'), byLabel(p1, 'mpconvert_concentrator_capability_total', 'result'));
    assert.equal(held['unreachable'] ?? 0, 0, `the concentrator was never taken as unreachable: ${JSON.stringify(held)}`);
    assert.ok((delta(byLabel(p0, 'mpconvert_refused_total', 'reason'), byLabel(p1, 'mpconvert_refused_total', 'reason'))['concentrator-refused'] ?? 0) >= 1);
  });

  labTest('a restarted concentrator is converting again within 2 s of being ready (probe), not after the hold', async () => {
    await startConcentrator('');
    await startCpe();
    assert.ok(await fetch(1000, 'before'));
    await conc!.stop();
    conc = undefined;
    assert.ok(await fetch(1000, 'down'), 'while it is down the connection goes direct');
    assert.match(await cpeMetrics(), /mpconvert_fallback_total\{to="direct"[^}]*\} 1/);
    await startConcentrator('');
    const ready = Date.now();
    let convertedAfter = -1;
    while (convertedAfter < 0 && Date.now() - ready < 10_000) {
      await fetch(1000, 'back');
      if (sum(byLabel(await concMetrics(), 'mpconvert_server_leg_total', 'transport')) > 0) convertedAfter = Date.now() - ready;
      else await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(convertedAfter >= 0 && convertedAfter < 2_000, `converted again ${convertedAfter} ms after the concentrator was ready (unreachableHoldS is 30 s)`);
  });

  labTest('slowloris from one CPE at a low descriptor limit: the other CPE is served, every accept is counted', async () => {
    await cpe?.stop();
    cpe = undefined;
    // 512 descriptors; one CPE address opens 600 connections and never sends its signalling.
    await startConcentrator('signalling:\n  timeoutMs: 30000\n  maxPendingPerCpe: 100\n', ['prlimit', '--nofile=512:512', '--']);
    const before = byLabel(await concMetrics(), 'mpconvert_refused_total', 'reason');
    const flood = new Proc(lab.hosts.cpe.spawn(process.execPath, [TOOL('idle-client'), JSON.stringify({ host: CONC, port: 5000, localAddress: '198.18.1.2', count: 600, holdMs: 60_000 })]));
    const holding = JSON.parse(await flood.waitLine((l) => l.includes('holding'), 60_000)) as { holding: number; reset: number; failed: number };
    assert.equal(holding.holding, 100, `the concentrator holds exactly its per-CPE cap: ${JSON.stringify(holding)}`);
    // The other CPE address is served while the first one holds its connections.
    const ie = encodeMpConvert([{ type: 0, direction: 'destination', address: srv, port: 8080 }]).toString('hex');
    const req = Buffer.from(`GET /bytes/100000?seed=other HTTP/1.0\r\nHost: x\r\n\r\n`).toString('hex');
    for (let i = 0; i < 5; i++) {
      const r = await runTool<{ receivedSha256?: string; received?: number; error?: string }>(lab.hosts.cpe, 'mpc-client', { host: CONC, port: 5000, signallingHex: ie, appHex: req, localAddress: '198.18.2.2', head: ie.length / 2 });
      assert.equal(r.error, undefined, `the other CPE's connection ${i} was served: ${JSON.stringify(r)}`);
      assert.ok((r.received ?? 0) > 100_000, `connection ${i}: the echo, the headers and 100,000 bytes (${r.received})`);
    }
    await flood.stop('SIGTERM');
    // Every one of the 600 accepts ends in exactly one refusal counter (the 100 held ones when they close).
    let refused: Record<string, number> = {};
    for (const t0 = Date.now(); Date.now() - t0 < 15_000; await new Promise((r) => setTimeout(r, 100))) {
      refused = delta(before, byLabel(await concMetrics(), 'mpconvert_refused_total', 'reason'));
      if (sum(refused) >= 600) break;
    }
    assert.equal(refused['signalling-per-cpe'], 500, JSON.stringify(refused));
    assert.equal(sum(refused), 600, `every accept of the flood counted once: ${JSON.stringify(refused)}`);
    assert.ok(conc!.running, 'the concentrator is alive');
  });

  labTest('SIGTERM to the whole process group: the CPE stops cleanly, its link monitor is not restarted', async () => {
    await startConcentrator('');
    await startCpe({ detached: true });
    const pid = cpe!.child.pid!;
    process.kill(-pid, 'SIGTERM');
    const code = await cpe!.exited;
    const log = cpe!.stderr;
    cpe = undefined;
    assert.equal(code, 0, log.slice(-2000));
    assert.doesNotMatch(log, /link event|monitor ended/, 'no link monitor restart was logged');
    assert.doesNotMatch(log, /"stack"|\n\s+at /, 'no stack trace in the log');
  });

  labTest('a listen address that is not local: exit 1 and one log line that says so, no stack trace', async () => {
    await conc?.stop();
    conc = undefined;
    const p = start(lab.hosts.concentrator, [CLI, 'concentrator', '--listen', '198.18.250.1:5000', '--allow', '198.18.0.0/16']);
    const code = await p.exited;
    assert.equal(code, 1, p.stderr);
    const fatal = p.stderr.split('\n').filter((l) => l.includes('"level":60'));
    assert.equal(fatal.length, 1, p.stderr);
    assert.match(fatal[0]!, /listen 198\.18\.250\.1:5000: the address is not an address of this host/);
    assert.doesNotMatch(p.stderr, /"stack"|\n\s+at /, 'no stack trace');
  });
});
