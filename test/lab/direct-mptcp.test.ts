/**
 * Direct MPTCP to servers (serverMptcp: direct; docs/cpe.md, "Direct MPTCP to servers") with real kernel MPTCP:
 * the server runs the test's HTTP server under `mptcpize run`. With direct mode on, the first LAN connection goes
 * through the concentrator (whose echo answers that its server leg is MPTCP), the second goes from the CPE to the
 * server itself, over both uplinks (the server sees subflows from both uplink addresses); with the default
 * (maintain) both go through the concentrator; a server restarted without MPTCP makes the direct dial come up
 * as plain TCP, and the connection falls back to the concentrator. Hashes first, then counter deltas.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab } from '../../src/lab/index.js';
import { labCapabilityMissing, IN_CI, requireTool } from '../support/capabilities.js';
import { CLI, Proc, TOOL, start } from '../support/lab-procs.js';
import { deterministicSha256 } from '../support/tools/stream-util.js';
import { metric } from '../support/metrics.js';

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

const MB = 1024 * 1024;
const UPLINK_ADDRESSES = ['198.18.1.2', '198.18.2.2'];
/** The concentrator's address on the internet segment: where its server legs come from. */
const CONC_INET = '198.19.0.1';

describe('CPE direct MPTCP to servers (lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  const procs: Proc[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'mpc-direct-'));
  let cpe: Proc | undefined;
  let http: Proc | undefined;
  let srv: string;

  const startCpe = async (extra: string) => {
    await cpe?.stop();
    const file = join(dir, `cpe-${Date.now()}.yaml`);
    writeFileSync(file, `lan: [lan0]\nuplinks: [{interface: up1}, {interface: up2}]\nadmin: "127.0.0.1:9091"\nconcentrators:\n  - address: "198.18.200.1:5000"\n${extra}`);
    cpe = start(lab.hosts.cpe, [CLI, 'cpe', '--config', file]);
    procs.push(cpe);
    await cpe.waitLine((l) => l.startsWith('ready'), 30_000);
  };
  /** The HTTP server tool, under `mptcpize run` (MPTCP sockets through LD_PRELOAD) or plain. */
  const startHttp = async (mptcp: boolean) => {
    await http?.stop();
    const server = lab.hosts.servers[0]!;
    const args = [TOOL('http-server'), JSON.stringify({ host: '0.0.0.0', port: 8080 })];
    http = mptcp ? new Proc(server.spawn('mptcpize', ['run', process.execPath, ...args])) : start(server, args);
    procs.push(http);
    await http.waitLine((l) => l.includes('ready'));
  };
  const cpeMetrics = async () => (await lab.hosts.cpe.exec('curl', ['-s', 'http://127.0.0.1:9091/metrics'])).stdout;
  const concMetrics = async () => (await lab.hosts.concentrator.exec('curl', ['-s', 'http://127.0.0.1:9090/metrics'])).stdout;
  /** The CPE's and the concentrator's counters, for deltas. */
  const counters = async () => {
    const [c, k] = await Promise.all([cpeMetrics(), concMetrics()]);
    return {
      learned: metric(c, 'mpconvert_server_mptcp_total', 'event="learned"'),
      direct: metric(c, 'mpconvert_server_mptcp_total', 'event="direct"'),
      fallback: metric(c, 'mpconvert_server_mptcp_total', 'event="fallback"'),
      concConverted: metric(k, 'mpconvert_server_leg_total'),
      concMptcp: metric(k, 'mpconvert_server_leg_total', 'transport="mptcp"'),
    };
  };
  const deltas = (a: Awaited<ReturnType<typeof counters>>, b: Awaited<ReturnType<typeof counters>>) =>
    Object.fromEntries(Object.entries(b).map(([k, v]) => [k, v - a[k as keyof typeof a]]));

  /**
   * A download from the LAN client (its sha256), while the server's established TCP connections to port 8080
   * are sampled: their peer addresses (the subflows the server sees) and the server's MPTCP sockets.
   */
  const download = async (seed: string, size: number) => {
    const peers = new Set<string>();
    let mptcpSockets = 0;
    let done = false;
    const watching = (async () => {
      while (!done) {
        const [tcp, mp] = await Promise.all([
          lab.hosts.servers[0]!.exec('ss', ['-Htn', 'state', 'established', '( sport = :8080 )']),
          lab.hosts.servers[0]!.exec('ss', ['-HMn', 'state', 'established']),
        ]);
        for (const line of tcp.stdout.split('\n')) {
          const peer = line.trim().split(/\s+/)[3];
          if (peer) peers.add(peer.slice(0, peer.lastIndexOf(':')));
        }
        mptcpSockets = Math.max(mptcpSockets, mp.stdout.split('\n').filter((l) => l.includes(':8080')).length);
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    try {
      const url = `http://${srv}:8080/bytes/${size}?seed=${seed}`;
      const r = await lab.hosts.client
        .exec('bash', ['-o', 'pipefail', '-c', `curl -sS --fail --max-time 60 '${url}' | sha256sum`], { timeoutMs: 90_000 })
        .catch((err: unknown) => {
          throw new Error(`${(err as Error).message}\nthe CPE's log:\n${cpe?.stderr.slice(-3000) ?? ''}`);
        });
      return { sha: r.stdout.split(' ')[0], peers, mptcpSockets };
    } finally {
      done = true;
      await watching;
    }
  };

  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: '50mbit' }, { rate: '50mbit' }], servers: 1 });
    srv = lab.hosts.servers[0]!.v4;
    writeFileSync(join(dir, 'conc.yaml'), 'listen: ["198.18.200.1:5000"]\nallow: ["198.18.0.0/15"]\nadmin: "127.0.0.1:9090"\n');
    const conc = start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', join(dir, 'conc.yaml')]);
    procs.push(conc);
    await conc.waitLine((l) => l.startsWith('ready'), 30_000);
  });
  after(async () => {
    for (const p of procs.reverse()) await p.stop();
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  test('maintain (the default): both connections to an MPTCP server go through the concentrator', { timeout: 120_000 }, async (t) => {
    if (!requireTool(t, 'mptcpize')) return;
    await startHttp(true);
    await startCpe('');
    const c0 = await counters();
    for (const seed of ['maintain1', 'maintain2']) {
      const r = await download(seed, 4 * MB);
      assert.equal(r.sha, deterministicSha256(seed, 4 * MB), seed);
      assert.deepEqual([...r.peers], [CONC_INET], `${seed}: the server saw only the concentrator`);
    }
    const d = deltas(c0, await counters());
    assert.deepEqual(d, { learned: 0, direct: 0, fallback: 0, concConverted: 2, concMptcp: 2 }, 'both converted, the server legs MPTCP, nothing direct');
  });

  test('direct: the first connection goes through the concentrator and learns, the second goes CPE to server over both uplinks', { timeout: 120_000 }, async (t) => {
    if (!requireTool(t, 'mptcpize')) return;
    await startHttp(true);
    await startCpe('serverMptcp: { mode: direct }\n');
    const c0 = await counters();
    const first = await download('direct1', 4 * MB);
    assert.equal(first.sha, deterministicSha256('direct1', 4 * MB));
    assert.deepEqual([...first.peers], [CONC_INET], 'the first: through the concentrator');
    const c1 = await counters();
    assert.deepEqual(deltas(c0, c1), { learned: 1, direct: 0, fallback: 0, concConverted: 1, concMptcp: 1 });
    const status = JSON.parse((await lab.hosts.cpe.exec('curl', ['-s', 'http://127.0.0.1:9091/status'])).stdout) as { serverMptcp: unknown };
    assert.deepEqual(status.serverMptcp, { mode: 'direct', cached: 1 });
    const second = await download('direct2', 24 * MB);
    assert.equal(second.sha, deterministicSha256('direct2', 24 * MB));
    assert.deepEqual([...second.peers].sort(), UPLINK_ADDRESSES, 'the server saw subflows from both uplink addresses, never the concentrator');
    assert.ok(second.mptcpSockets >= 1, 'the server\'s socket is MPTCP (ss -M)');
    assert.deepEqual(deltas(c1, await counters()), { learned: 0, direct: 1, fallback: 0, concConverted: 0, concMptcp: 0 }, 'the concentrator saw only the first connection');
  });

  test('direct: a server restarted without MPTCP: the direct dial comes up as plain TCP, the connection falls back to the concentrator', { timeout: 120_000 }, async (t) => {
    if (!requireTool(t, 'mptcpize')) return;
    // The CPE of the previous test knows the server as MPTCP-capable; make sure it does (a fresh CPE learns it).
    await startHttp(true);
    await startCpe('serverMptcp: { mode: direct }\n');
    const seedFirst = 'learn';
    assert.equal((await download(seedFirst, MB)).sha, deterministicSha256(seedFirst, MB));
    await startHttp(false);
    const c0 = await counters();
    const r = await download('plain1', 4 * MB);
    assert.equal(r.sha, deterministicSha256('plain1', 4 * MB));
    assert.ok(r.peers.has(CONC_INET), 'relayed by the concentrator');
    assert.deepEqual(deltas(c0, await counters()), { learned: 0, direct: 0, fallback: 1, concConverted: 1, concMptcp: 0 }, 'fell back, the concentrator answered that its (TCP) leg is not MPTCP');
    // Dropped from the cache and not learnt again: the next one goes to the concentrator at once.
    const c1 = await counters();
    assert.equal((await download('plain2', MB)).sha, deterministicSha256('plain2', MB));
    assert.deepEqual(deltas(c1, await counters()), { learned: 0, direct: 0, fallback: 0, concConverted: 1, concMptcp: 0 });
  });
});
