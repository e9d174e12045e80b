/**
 * Inbound bindings in the field lab (docs/concentrator.md and docs/cpe.md, "Inbound bindings"): a CPE in router
 * mode with a DSL uplink and an LTE uplink behind a carrier-grade NAT, an authenticated concentrator on a public
 * address. The CPE claims port 8080 on the concentrator for the HTTP server on its private LAN; a client in a
 * server namespace (the internet) downloads from it through the concentrator: every byte intact, over both
 * uplinks (the reverse connections' subflows come from the DSL address and from the CGN's address), at least
 * 1.8x what one uplink carries in the same direction. Then the refusals: a second CPE claiming the port, a CPE
 * over `bindings.maxPerCpe`, a binding on the concentrator's own listener port; and a binding that goes away with
 * its CPE.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FIELD, Lab, fieldAccess } from '../../src/lab/index.js';
import { claimFor } from '../../src/cpe/bindings.js';
import { labCapabilityMissing, IN_CI } from '../support/capabilities.js';
import { CLI, Proc, TOOL, runTool, start, type ClientOut } from '../support/lab-procs.js';
import { deterministicSha256 } from '../support/tools/stream-util.js';
import { metric } from '../support/metrics.js';

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

const MB = 1024 * 1024;
const CONC = FIELD.concentrator.v4;
const LTE = fieldAccess(2);
const SECRET = randomBytes(32);
const OTHER_SECRET = randomBytes(32);
const RATE = '50mbit';
const PORT = 8080;
const RTT_MS = 40;

interface CpeStatus {
  bindings: Array<{ port: number; ready: number; pool: number; relayed: number }>;
}
interface ConcStatus {
  bindings: Array<{ addresses: string[]; port: number; owner: string; idle: number; active: number }>;
}

describe('inbound bindings (field lab: DSL + LTE behind a CGN, authenticated concentrator)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  let conc: Proc | undefined;
  let lanHttp: Proc | undefined;
  let srvHttp: Proc | undefined;
  let cpe: Proc | undefined;
  const dir = mkdtempSync(join(tmpdir(), 'mpc-bind-'));
  const srv = () => lab.hosts.servers[0]!;

  const concMetrics = async () => (await lab.hosts.concentrator.exec('curl', ['-s', 'http://127.0.0.1:9090/metrics'])).stdout;
  const cpeMetrics = async () => (await lab.hosts.cpe.exec('curl', ['-s', 'http://127.0.0.1:9091/metrics'])).stdout;
  const refused = async (reason: string) => metric(await concMetrics(), 'mpconvert_refused_total', `reason="${reason}"`);
  const cpeStatus = async () => JSON.parse((await lab.hosts.cpe.exec('curl', ['-s', 'http://127.0.0.1:9091/status'])).stdout) as CpeStatus;
  const concStatus = async () => JSON.parse((await lab.hosts.concentrator.exec('curl', ['-s', 'http://127.0.0.1:9090/status'])).stdout) as ConcStatus;
  const poll = async (what: string, ok: () => Promise<boolean>, ms = 20_000) => {
    for (const t0 = Date.now(); Date.now() - t0 < ms; await new Promise((r) => setTimeout(r, 100))) if (await ok()) return;
    assert.fail(`timed out waiting for ${what}\nCPE: ${cpe?.stderr.slice(-2000)}\nconcentrator: ${conc?.stderr.slice(-2000)}`);
  };
  const txBytes = async (dev: string) =>
    (JSON.parse((await lab.hosts.cpe.exec('ip', ['-j', '-s', 'link', 'show', dev])).stdout) as Array<{ stats64: { tx: { bytes: number } } }>)[0]!.stats64.tx.bytes;

  async function startCpe(bindings: string): Promise<void> {
    await stopCpe();
    const file = join(dir, `cpe-${Date.now()}.yaml`);
    writeFileSync(
      file,
      `mode: router\nlan: [lan0]\nuplinks: [{interface: up1}, {interface: up2}]\nconcentrators:\n  - address: "${CONC}:5000"\n    keyId: cpe-field\n    secretFile: ${join(dir, 'cpe.secret')}\nbindings: ${bindings}\nadmin: "127.0.0.1:9091"\nshutdownDrainS: 1\n`,
    );
    cpe = start(lab.hosts.cpe, [CLI, 'cpe', '--config', file]);
    await cpe.waitLine((l) => l.startsWith('ready'), 30_000);
  }
  async function stopCpe(): Promise<void> {
    const p = cpe;
    cpe = undefined;
    if (!p) return;
    assert.equal(await p.stop(), 0, `the CPE stopped cleanly:\n${p.stderr.slice(-3000)}`);
  }
  /** The internet client: downloads from the binding; sha256 and curl's speed (bytes/s). */
  const download = async (size: number, seed: string) => {
    const r = await srv().exec('bash', ['-o', 'pipefail', '-c', `curl -sS --fail --max-time 60 -w '%{stderr}%{speed_download}' 'http://${CONC}:${PORT}/bytes/${size}?seed=${seed}' | sha256sum`], { timeoutMs: 90_000 });
    return { sha256: r.stdout.split(' ')[0] ?? '', speed: Number(r.stderr.trim().split(/\s+/).pop()) };
  };
  /** Peers of the concentrator's established subflows on port 5000, sampled while `until` runs. */
  async function concentratorPeers<T>(until: Promise<T>): Promise<{ result: T; peers: Set<string> }> {
    const peers = new Set<string>();
    let done = false;
    const watching = (async () => {
      while (!done) {
        const out = (await lab.hosts.concentrator.exec('ss', ['-Htn', 'state', 'established', '( sport = :5000 )'])).stdout;
        for (const line of out.split('\n')) {
          const peer = line.trim().split(/\s+/)[3];
          if (peer) peers.add(peer.slice(0, peer.lastIndexOf(':')));
        }
        await new Promise((r) => setTimeout(r, 150));
      }
    })();
    try {
      return { result: await until, peers };
    } finally {
      done = true;
      await watching;
    }
  }

  before(async () => {
    lab = await Lab.up({ topology: 'field', uplinks: [{ rate: RATE }, { rate: RATE, cgn: true }], servers: 1 });
    writeFileSync(
      join(dir, 'keys.yaml'),
      `keys:\n  - { id: cpe-field, secret: "hex:${SECRET.toString('hex')}" }\n  - { id: cpe-other, secret: "hex:${OTHER_SECRET.toString('hex')}" }\n`,
      { mode: 0o600 },
    );
    writeFileSync(join(dir, 'cpe.secret'), `hex:${SECRET.toString('hex')}\n`, { mode: 0o600 });
    writeFileSync(
      join(dir, 'concentrator.yaml'),
      `listen: ["${CONC}:5000"]\nallow: ["0.0.0.0/0", "::/0"]\nauth:\n  keysFile: ${join(dir, 'keys.yaml')}\nadmin: "127.0.0.1:9090"\nshutdownDrainS: 1\nbindings:\n  addresses: ["${CONC}"]\n  maxPerCpe: 2\n  graceS: 1\n`,
    );
    lanHttp = start(lab.hosts.client, [TOOL('http-server'), JSON.stringify({ host: lab.hosts.client.v4, port: 8080 })]);
    srvHttp = start(srv(), [TOOL('http-server'), JSON.stringify({ host: srv().v4, port: 8080 })]);
    conc = start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', join(dir, 'concentrator.yaml')]);
    await Promise.all([conc.waitLine((l) => l.startsWith('ready')), lanHttp.waitLine((l) => l.includes('ready')), srvHttp.waitLine((l) => l.includes('ready'))]);
    await startCpe(`[{port: ${PORT}, to: "${lab.hosts.client.v4}:8080", pool: 2}]`);
  });

  after(async () => {
    await cpe?.stop();
    await conc?.stop();
    await lanHttp?.stop();
    await srvHttp?.stop();
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  test('50 MB from the LAN server to an internet client through the binding: hash equal, >= 1.8x one uplink, a subflow through the CGN', { timeout: 300_000 }, async () => {
    await poll('the reverse pool ready at the CPE and parked at the concentrator', async () => {
      const [c, k] = [await cpeStatus(), await concStatus()];
      return c.bindings[0]?.ready === 2 && k.bindings.length === 1 && k.bindings[0]!.idle === 2 && k.bindings[0]!.owner === 'key:cpe-field';
    });
    const a1 = (await lab.dhcpAddress(1))!;
    // One uplink, the same direction (from the CPE out): the CPE itself uploads from its DSL address to a server.
    const single = await lab.hosts.cpe.exec('bash', ['-o', 'pipefail', '-c', `head -c ${30 * MB} /dev/zero | curl -sS --fail --interface ${a1} -T - -o /dev/null -w '%{speed_upload}' 'http://${srv().v4}:8080/upload'`], { timeoutMs: 90_000 });
    const one = Number(single.stdout);
    assert.ok(one > 0, `one-uplink upload: ${single.stdout} ${single.stderr}`);
    assert.equal((await download(2 * MB, 'first')).sha256, deterministicSha256('first', 2 * MB), 'a first inbound connection');
    let best = 0;
    for (let attempt = 1; attempt <= 2 && best / one < 1.8; attempt++) {
      await poll('the pool refilled', async () => (await cpeStatus()).bindings[0]?.ready === 2);
      const [conc0, cpe0, up2Before, cgnBefore] = [await concMetrics(), await cpeMetrics(), await txBytes('up2'), await refused('auth-missing')];
      const seed = `inbound${attempt}`;
      const { result: r, peers } = await concentratorPeers(download(50 * MB, seed));
      assert.equal(r.sha256, deterministicSha256(seed, 50 * MB), 'every byte, in order');
      best = Math.max(best, r.speed);
      assert.ok(peers.has(LTE.coreV4), `a subflow from the CGN address ${LTE.coreV4}: ${[...peers].join(', ')}`);
      assert.ok(peers.has(a1), `a subflow from the DSL address ${a1}: ${[...peers].join(', ')}`);
      const lteShare = ((await txBytes('up2')) - up2Before) / (50 * MB);
      assert.ok(lteShare > 0.3, `the CGN uplink carried ${(lteShare * 100).toFixed(0)} % of the download`);
      const [conc1, cpe1] = [await concMetrics(), await cpeMetrics()];
      assert.equal(metric(conc1, 'mpconvert_binding_inbound_total', 'outcome="relayed"') - metric(conc0, 'mpconvert_binding_inbound_total', 'outcome="relayed"'), 1, 'one internet connection relayed');
      assert.equal(metric(cpe1, 'mpconvert_binding_reverse_total', 'event="used"') - metric(cpe0, 'mpconvert_binding_reverse_total', 'event="used"'), 1, 'through one reverse connection');
      assert.equal(await refused('auth-missing'), cgnBefore, 'the reverse connections authenticated');
      process.stdout.write(`# attempt ${attempt}: one uplink ${(one * 8e-6).toFixed(1)} Mbit/s, inbound through the binding ${(r.speed * 8e-6).toFixed(1)} Mbit/s, LTE share ${(lteShare * 100).toFixed(0)} %\n`);
    }
    assert.ok(best / one >= 1.8, `ratio ${(best / one).toFixed(2)} < 1.8`);
  });

  test('a second CPE claiming the same port is refused; the owner keeps it', { timeout: 60_000 }, async () => {
    const before = await refused('binding-taken');
    const claim = claimFor(PORT, { keyId: 'cpe-other', secret: OTHER_SECRET, timestamp: Math.floor(Date.now() / 1000), nonce: randomBytes(16) });
    const out = await runTool<ClientOut>(srv(), 'mpc-client', { host: CONC, port: 5000, fastOpen: 'off', signallingHex: claim.toString('hex'), appHex: '', send: 0, head: claim.length, holdMs: 300, timeoutMs: 20_000 });
    assert.match(out.error ?? '', /ECONNRESET|EPIPE/, `refused: ${JSON.stringify(out)}`);
    assert.ok(!out.head, 'no echo');
    assert.equal(await refused('binding-taken'), before + 1, 'counted as binding-taken');
    const k = await concStatus();
    assert.equal(k.bindings.length, 1);
    assert.equal(k.bindings[0]!.owner, 'key:cpe-field');
  });

  test('over bindings.maxPerCpe and on the concentrator\'s own port: refused; when the CPE goes away its bindings close after graceS', { timeout: 120_000 }, async () => {
    const [limit0, port0] = [await refused('binding-limit'), await refused('binding-port')];
    const to = `"${lab.hosts.client.v4}:8080"`;
    await startCpe(`[{port: 8080, to: ${to}, pool: 1}, {port: 8081, to: ${to}, pool: 1}, {port: 8082, to: ${to}, pool: 1}, {port: 5000, to: ${to}, pool: 1}]`);
    await poll('the refusals counted', async () => (await refused('binding-limit')) > limit0 && (await refused('binding-port')) > port0);
    const k = await concStatus();
    assert.equal(k.bindings.length, 2, `two bindings (maxPerCpe 2): ${JSON.stringify(k.bindings)}`);
    assert.ok(k.bindings.every((b) => b.owner === 'key:cpe-field' && b.port !== 5000));
    assert.equal(metric(await cpeMetrics(), 'mpconvert_binding_reverse_total', 'event="failed"') > 0, true, 'the CPE counts its refused claims');
    // The CPE goes away: every reverse connection ends, the bindings close after graceS, the port is refused.
    await stopCpe();
    await poll('the bindings closed', async () => (await concStatus()).bindings.length === 0, 15_000);
    const r = await srv().exec('curl', ['-sS', '--max-time', '5', `http://${CONC}:${PORT}/bytes/10`], { allowFailure: true });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /Connection refused|Failed to connect/, r.stderr);
  });
});

/**
 * Transparent mode (the classic lab, where the concentrator is the access router; uplinks with a 40 ms round
 * trip): with `bindings: {}` a CPE's binding opens on the CPE's own address, an address that is not the
 * concentrator's. The return path's socket match delivers the internet client's SYN to the concentrator's
 * IP_TRANSPARENT listener instead of forwarding it to the CPE, and the download arrives through the reverse
 * connection. The internet client's first byte comes about one uplink round trip after it connected: the
 * binding adds no round trip over the uplinks (a direct connection to the CPE needs two: handshake, request).
 */
describe('inbound bindings on the CPE\'s own address (transparent mode, classic lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  const procs: Proc[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'mpc-bind-t-'));
  const concMetrics = async () => (await lab.hosts.concentrator.exec('curl', ['-s', 'http://127.0.0.1:9090/metrics'])).stdout;

  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: 0, rttMs: RTT_MS }, { rate: 0, rttMs: RTT_MS }], servers: 1 });
    writeFileSync(join(dir, 'conc.yaml'), 'listen: ["198.18.200.1:5000"]\nallow: ["198.18.0.0/15"]\nadmin: "127.0.0.1:9090"\nsourceAddress: { mode: transparent }\nbindings: {}\n');
    writeFileSync(
      join(dir, 'cpe.yaml'),
      `lan: [lan0]\nuplinks: [{interface: up1}, {interface: up2}]\nconcentrators: [{ address: "198.18.200.1:5000" }]\nbindings: [{ port: ${PORT}, to: "${lab.hosts.client.v4}:8080", pool: 2 }]\nadmin: "127.0.0.1:9091"\n`,
    );
    const http = start(lab.hosts.client, [TOOL('http-server'), JSON.stringify({ host: lab.hosts.client.v4, port: 8080 })]);
    const conc = start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', join(dir, 'conc.yaml')]);
    procs.push(http, conc);
    await Promise.all([conc.waitLine((l) => l.startsWith('ready'), 30_000), http.waitLine((l) => l.includes('ready'))]);
    const cpe = start(lab.hosts.cpe, [CLI, 'cpe', '--config', join(dir, 'cpe.yaml')]);
    procs.push(cpe);
    await cpe.waitLine((l) => l.startsWith('ready'), 30_000);
  });
  after(async () => {
    for (const p of procs.reverse()) await p.stop();
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  test('the binding opens on the CPE\'s WAN address; 20 MB from the LAN server reach a client in a server namespace through it', { timeout: 120_000 }, async () => {
    let bound = '';
    for (const t0 = Date.now(); Date.now() - t0 < 20_000 && !bound; await new Promise((r) => setTimeout(r, 100))) {
      const s = JSON.parse((await lab.hosts.concentrator.exec('curl', ['-s', 'http://127.0.0.1:9090/status'])).stdout) as ConcStatus;
      if (s.bindings[0]?.idle === 2) bound = s.bindings[0].addresses[0] ?? '';
    }
    assert.ok(['198.18.1.2', '198.18.2.2'].includes(bound), `the binding is on a CPE WAN address: '${bound}'`);
    const before = metric(await concMetrics(), 'mpconvert_binding_inbound_total', 'outcome="relayed"');
    const r = await lab.hosts.servers[0]!.exec('bash', ['-o', 'pipefail', '-c', `curl -sS --fail --max-time 60 'http://${bound}:${PORT}/bytes/${20 * MB}?seed=transparent' | sha256sum`], { timeoutMs: 90_000 });
    assert.equal(r.stdout.split(' ')[0], deterministicSha256('transparent', 20 * MB), 'every byte');
    assert.equal(metric(await concMetrics(), 'mpconvert_binding_inbound_total', 'outcome="relayed"') - before, 1, 'through the concentrator\'s binding');
  });

  test('the first byte comes one uplink round trip after the client connected, not two', { timeout: 120_000 }, async () => {
    let bound = '';
    for (const t0 = Date.now(); Date.now() - t0 < 20_000 && !bound; await new Promise((r) => setTimeout(r, 100))) {
      const s = JSON.parse((await lab.hosts.concentrator.exec('curl', ['-s', 'http://127.0.0.1:9090/status'])).stdout) as ConcStatus;
      if (s.bindings[0]?.idle === 2) bound = s.bindings[0].addresses[0] ?? '';
    }
    assert.ok(bound, 'the binding is ready');
    const ttfb: number[] = [];
    for (let i = 0; i < 7; i++) {
      for (const t0 = Date.now(); Date.now() - t0 < 10_000; await new Promise((r) => setTimeout(r, 50))) {
        const s = JSON.parse((await lab.hosts.concentrator.exec('curl', ['-s', 'http://127.0.0.1:9090/status'])).stdout) as ConcStatus;
        if ((s.bindings[0]?.idle ?? 0) >= 2) break;
      }
      // time_starttransfer - time_connect: from the client's handshake done to its first byte.
      const r = await lab.hosts.servers[0]!.exec('curl', ['-sS', '--fail', '-o', '/dev/null', '-w', '%{time_connect} %{time_starttransfer}', `http://${bound}:${PORT}/bytes/1000?seed=t${i}`]);
      const [connect, first] = r.stdout.split(' ').map(Number) as [number, number];
      ttfb.push((first - connect) * 1000);
    }
    const median = [...ttfb].sort((a, b) => a - b)[3]!;
    process.stdout.write(`# first byte after connect, ms: ${ttfb.map((x) => x.toFixed(1)).join(', ')} (median ${median.toFixed(1)}; uplink RTT ${RTT_MS})\n`);
    assert.ok(median >= RTT_MS * 0.9, `the request did cross the uplinks (${median.toFixed(1)} ms)`);
    assert.ok(median < RTT_MS * 1.5, `median ${median.toFixed(1)} ms: at most one uplink round trip plus the LAN (${ttfb.join(', ')})`);
  });
});
