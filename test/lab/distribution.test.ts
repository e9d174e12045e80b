/**
 * The overflow distribution scheme with kernel MPTCP and real transfers over two 50 Mbit/s uplinks: a
 * 20 Mbit/s flow stays on the primary uplink (the secondary carries under 5 % of its bytes), a bulk flow
 * makes the secondary join and fills both. Bytes per uplink from the uplinks' interface counters in the lab.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab } from '../../src/lab/index.js';
import { labCapabilityMissing, IN_CI } from '../support/capabilities.js';
import { CLI, Proc, TOOL, start } from '../support/lab-procs.js';
import { deterministicSha256 } from '../support/tools/stream-util.js';

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

const MB = 1024 * 1024;
const CONC4 = '198.18.200.1';

describe('traffic distribution: overflow (lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  let conc: Proc;
  let http: Proc;
  let cpe: Proc;
  const dir = mkdtempSync(join(tmpdir(), 'mpc-dist-'));

  const rxBytes = async () => (await lab.status()).uplinks.map((u) => u.rxBytes);
  async function download(size: number, seed: string) {
    const r = await lab.hosts.client.exec('bash', ['-o', 'pipefail', '-c', `curl -sS --fail 'http://${lab.hosts.servers[0]!.v4}:8080/bytes/${size}?seed=${seed}' | sha256sum`], { timeoutMs: 120_000 });
    return r.stdout.split(' ')[0];
  }

  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: '50mbit' }, { rate: '50mbit' }], servers: 1 });
    http = start(lab.hosts.servers[0]!, [TOOL('http-server'), JSON.stringify({ host: '::', port: 8080 })]);
    conc = start(lab.hosts.concentrator, [CLI, 'concentrator', '--listen', `${CONC4}:5000`, '--allow', '198.18.0.0/15', '--allow', '2001:db8::/32']);
    const cfg = join(dir, 'cpe.yaml');
    writeFileSync(cfg, `lan: [lan0]\nuplinks: [{interface: up1}, {interface: up2}]\nconcentrators:\n  - address: "${CONC4}:5000"\n` +
      `distribution: {scheme: overflow, overflow: {primary: up1, capacityMbit: 50, joinAbove: 0.8, leaveBelow: 0.5, holdS: 3}}\n`);
    await Promise.all([http.waitLine((l) => l.includes('ready')), conc.waitLine((l) => l.startsWith('ready'))]);
    cpe = start(lab.hosts.cpe, [CLI, 'cpe', '--config', cfg]);
    await cpe.waitLine((l) => l.startsWith('ready'), 30_000);
  });

  after(async () => {
    await cpe?.stop();
    await conc?.stop();
    await http?.stop();
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  test('a 20 Mbit/s flow stays on the primary (< 5 % on the secondary); a bulk flow makes the secondary join', { timeout: 180_000 }, async () => {
    // 20 Mbit/s paced by the sender (iperf3 -R: the server sends at -b), 6 s.
    const srv = new Proc(lab.hosts.servers[0]!.spawn('iperf3', ['-s', '-1', '--forceflush', '-B', lab.hosts.servers[0]!.v4]));
    await srv.waitLine((l) => l.includes('Server listening'), 10_000);
    const before1 = await rxBytes();
    const r = await lab.hosts.client.exec('iperf3', ['-c', lab.hosts.servers[0]!.v4, '-R', '-b', '20M', '-t', '6', '-J'], { timeoutMs: 60_000 });
    await srv.stop();
    const got = (JSON.parse(r.stdout) as { end: { sum_received: { bytes: number } } }).end.sum_received.bytes;
    assert.ok(got > 6 * 20e6 / 8 * 0.9, `iperf3 received ${got} bytes`);
    const after1 = await rxBytes();
    const d1 = after1.map((b, i) => b - before1[i]!);
    const share2 = d1[1]! / (d1[0]! + d1[1]!);
    process.stdout.write(`# overflow, 20 Mbit/s flow: up1 ${(d1[0]! / MB).toFixed(1)} MiB, up2 ${(d1[1]! / MB).toFixed(2)} MiB (${(share2 * 100).toFixed(1)} %)\n`);
    const eps = (await lab.hosts.cpe.exec('ip', ['mptcp', 'endpoint', 'show'])).stdout;
    const why = () => `\nendpoints:\n${eps}\nthe CPE's log:\n${cpe.stderr.split('\n').filter((l) => /overflow|mode|distribution/.test(l)).join('\n')}`;
    assert.ok(share2 < 0.05, `the secondary carried ${(share2 * 100).toFixed(1)} % of a 20 Mbit/s flow${why()}`);

    const size2 = 80 * MB;
    const t0 = Date.now();
    assert.equal(await download(size2, 'bulk'), deterministicSha256('bulk', size2));
    const secs = (Date.now() - t0) / 1000;
    const after2 = await rxBytes();
    const d2 = after2.map((b, i) => b - after1[i]!);
    const bulk2 = d2[1]! / (d2[0]! + d2[1]!);
    process.stdout.write(`# overflow, bulk flow: up1 ${(d2[0]! / MB).toFixed(1)} MiB, up2 ${(d2[1]! / MB).toFixed(1)} MiB (${(bulk2 * 100).toFixed(1)} %), ${((size2 * 8) / secs / 1e6).toFixed(1)} Mbit/s\n`);
    assert.ok(bulk2 > 0.25, `the secondary carried only ${(bulk2 * 100).toFixed(1)} % of a bulk flow`);
    assert.match(cpe.stderr, /overflow: the other uplinks join/);
  });

  test('active-backup: a backup uplink carries nothing while the primary works and the rest of a transfer when it fails', { timeout: 180_000 }, async () => {
    await cpe.stop();
    const cfg = join(dir, 'cpe-backup.yaml');
    writeFileSync(cfg, `lan: [lan0]\nuplinks: [{interface: up1}, {interface: up2, mode: backup}]\nconcentrators:\n  - address: "${CONC4}:5000"\n`);
    cpe = start(lab.hosts.cpe, [CLI, 'cpe', '--config', cfg]);
    await cpe.waitLine((l) => l.startsWith('ready'), 30_000);
    const a0 = await rxBytes();
    assert.equal(await download(20 * MB, 'ab'), deterministicSha256('ab', 20 * MB));
    const a1 = await rxBytes();
    const share = (a1[1]! - a0[1]!) / (a1[0]! - a0[0]! + a1[1]! - a0[1]!);
    process.stdout.write(`# active-backup: up2 carried ${(share * 100).toFixed(1)} % of a 20 MiB download\n`);
    assert.ok(share < 0.05, `${(share * 100).toFixed(1)} %`);
    const dl = download(40 * MB, 'ab-cut');
    dl.catch(() => {});
    for (const deadline = Date.now() + 30_000; (await rxBytes())[0]! - a1[0]! < 5 * MB; ) {
      if (Date.now() > deadline) throw new Error('the download did not start');
      await new Promise((r) => setTimeout(r, 100));
    }
    await lab.uplinkDown(1);
    assert.equal(await dl, deterministicSha256('ab-cut', 40 * MB), 'the transfer survived the cut on its backup subflow');
    const a2 = await rxBytes();
    process.stdout.write(`# active-backup: up2 carried ${((a2[1]! - a1[1]!) / MB).toFixed(1)} MiB after up1 was cut\n`);
    assert.ok(a2[1]! - a1[1]! > 10 * MB);
    await lab.uplinkUp(1);
  });

  test('a volume quota: past it the metered uplink carries nothing more, failover still uses it, the usage survives a restart', { timeout: 240_000 }, async () => {
    await cpe.stop();
    const quotaFile = join(dir, 'quota.json');
    const cfg = join(dir, 'cpe-quota.yaml');
    const QUOTA = 8 * MB;
    writeFileSync(cfg, `lan: [lan0]\nuplinks: [{interface: up1}, {interface: up2, quota: {bytes: ${QUOTA}, period: month}}]\nadmin: "127.0.0.1:9091"\n` +
      `quotaStateFile: "${quotaFile}"\nconcentrators:\n  - address: "${CONC4}:5000"\n`);
    cpe = start(lab.hosts.cpe, [CLI, 'cpe', '--config', cfg]);
    await cpe.waitLine((l) => l.startsWith('ready'), 30_000);

    // A bulk download uses both uplinks until up2's quota is used up, then only up1.
    const b0 = await rxBytes();
    const size = 60 * MB;
    assert.equal(await download(size, 'quota'), deterministicSha256('quota', size));
    const b1 = await rxBytes();
    const up2 = b1[1]! - b0[1]!;
    process.stdout.write(`# quota 8 MiB on up2, 60 MiB download: up1 ${((b1[0]! - b0[0]!) / MB).toFixed(1)} MiB, up2 ${(up2 / MB).toFixed(1)} MiB\n`);
    assert.ok(up2 > 4 * MB, `up2 carried ${up2} bytes before its quota`);
    assert.ok(up2 < QUOTA + 12 * MB, `up2 carried ${(up2 / MB).toFixed(1)} MiB: past its quota by more than two seconds of traffic`);
    assert.match(cpe.stderr, /quota used up/);
    // The next download stays off up2.
    const size2 = 20 * MB;
    assert.equal(await download(size2, 'quota2'), deterministicSha256('quota2', size2));
    const b2 = await rxBytes();
    const share = (b2[1]! - b1[1]!) / (b2[0]! - b1[0]! + b2[1]! - b1[1]!);
    process.stdout.write(`# after the quota: up2 carried ${(share * 100).toFixed(1)} % of a 20 MiB download\n`);
    assert.ok(share < 0.05, `${(share * 100).toFixed(1)} %`);

    // Failover: up1 fails in the middle of a download; the backup uplink (past its quota) carries the rest.
    const size3 = 40 * MB;
    const dl = download(size3, 'failover');
    dl.catch(() => {});
    const c0 = await rxBytes();
    for (const deadline = Date.now() + 30_000; (await rxBytes())[0]! - c0[0]! < 5 * MB; ) {
      if (Date.now() > deadline) throw new Error('the download did not start');
      await new Promise((r) => setTimeout(r, 100));
    }
    await lab.uplinkDown(1);
    assert.equal(await dl, deterministicSha256('failover', size3), 'the download survived the cut');
    const c1 = await rxBytes();
    process.stdout.write(`# failover past the quota: up2 carried ${((c1[1]! - c0[1]!) / MB).toFixed(1)} MiB of the 40 MiB after up1 was cut\n`);
    assert.ok(c1[1]! - c0[1]! > 10 * MB);
    await lab.uplinkUp(1);

    // The usage is kept across a restart: still over quota after it.
    await cpe.stop();
    const saved = JSON.parse(readFileSync(quotaFile, 'utf8')) as { uplinks: Record<string, { bytes: number }> };
    assert.ok(saved.uplinks['up2']!.bytes >= QUOTA, JSON.stringify(saved));
    cpe = start(lab.hosts.cpe, [CLI, 'cpe', '--config', cfg]);
    await cpe.waitLine((l) => l.startsWith('ready'), 30_000);
    const st = JSON.parse((await lab.hosts.cpe.exec('curl', ['-sS', 'http://127.0.0.1:9091/status'])).stdout) as { distribution: { quotas: Record<string, { used: number; over: boolean }> } };
    assert.equal(st.distribution.quotas['up2']!.over, true, JSON.stringify(st.distribution));
    assert.ok(st.distribution.quotas['up2']!.used >= saved.uplinks['up2']!.bytes);
  });
});
