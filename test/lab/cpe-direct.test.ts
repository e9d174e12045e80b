/**
 * CPE direct MPTCP to servers, the RFC 8803 signal (issue 16, "the same idea in explicit mode"; docs/cpe.md
 * "Direct MPTCP to servers"; the MP_CONVERT signal, the query IE, is test/lab/direct-mptcp.test.ts): LAN client (curl)
 * -> CPE (two 50 Mbit/s uplinks, RFC 8803 towards the concentrator) -> concentrator (`server.reportMptcp`) ->
 * an MPTCP-capable server (srv1, `mptcpize run` of the HTTP server) and a plain one (srv2). The server answers
 * with `x-peer`, the address it saw: the concentrator's (through it) or the CPE's uplink address (direct).
 *
 * Default (maintain): every connection goes through the concentrator and nothing is learnt. With
 * `serverMptcp.mode: direct`, the first
 * connection to the MPTCP server goes through the concentrator, whose Convert reply says the server speaks
 * MPTCP; the next one goes from the CPE straight to the server over both uplinks (the server's sockets show
 * both uplink addresses). A plain server is never dialled directly.
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
import { metric } from '../support/metrics.js';

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);
const labTest = (name: string, fn: () => Promise<void>) => test(name, { timeout: 180_000 }, fn);

const MB = 1024 * 1024;
const CONC = '198.18.200.1';
const CONC_SERVER_SIDE = '198.19.0.1';
const CPE_WAN = ['198.18.1.2', '198.18.2.2'];

describe('CPE direct MPTCP to servers a concentrator reported MPTCP-capable (lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  let conc: Proc;
  let cpe: Proc | undefined;
  const servers: Proc[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'mpc-direct-'));
  let mptcpServer: string;
  let plainServer: string;

  const cpeMetrics = async () => (await lab.hosts.cpe.exec('curl', ['-s', 'http://127.0.0.1:9091/metrics'])).stdout;
  const serverMptcp = async (event: string) => metric(await cpeMetrics(), 'mpconvert_server_mptcp_total', `event="${event}"`);
  const directCount = () => serverMptcp('direct');

  async function startCpe(direct: boolean): Promise<void> {
    if (cpe) assert.equal(await cpe.stop(), 0, 'the CPE stopped cleanly');
    const file = join(dir, `cpe-${Date.now()}.yaml`);
    writeFileSync(
      file,
      `lan: [lan0]\nuplinks: [{interface: up1}, {interface: up2}]\nadmin: "127.0.0.1:9091"\nfallback: refuse\nconcentrators:\n  - address: "${CONC}:5000"\n    format: rfc8803\n${direct ? 'serverMptcp: { mode: direct }\n' : ''}`,
    );
    cpe = start(lab.hosts.cpe, [CLI, 'cpe', '--config', file]);
    await cpe.waitLine((l) => l.startsWith('ready'), 30_000);
  }

  async function download(server: string, size: number, seed: string): Promise<{ sha256: string; peer: string }> {
    const headers = join(dir, `h-${seed}`);
    const r = await lab.hosts.client.exec('bash', ['-o', 'pipefail', '-c', `curl -sS --fail -D '${headers}' 'http://${server}:8080/bytes/${size}?seed=${seed}' | sha256sum`], { timeoutMs: 120_000 });
    const peer = /^x-peer: *(\S+)/im.exec(readFileSync(headers, 'utf8'))?.[1] ?? '';
    return { sha256: r.stdout.split(' ')[0] ?? '', peer };
  }

  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: '50mbit' }, { rate: '50mbit' }], servers: 2 });
    mptcpServer = lab.hosts.servers[0]!.v4;
    plainServer = lab.hosts.servers[1]!.v4;
    const args = JSON.stringify({ host: '::', port: 8080 });
    servers.push(new Proc(lab.hosts.servers[0]!.spawn('mptcpize', ['run', process.execPath, TOOL('http-server'), args])));
    servers.push(new Proc(lab.hosts.servers[1]!.spawn(process.execPath, [TOOL('http-server'), args])));
    for (const s of servers) await s.waitLine((l) => l.includes('ready'));
    const file = join(dir, 'conc.yaml');
    writeFileSync(file, `listen: ["${CONC}:5000"]\nallow: ["198.18.0.0/15"]\nadmin: "127.0.0.1:9090"\nserver:\n  reportMptcp: true\n`);
    conc = start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', file]);
    await conc.waitLine((l) => l.startsWith('ready'), 30_000);
  });

  after(async () => {
    await cpe?.stop();
    await conc?.stop();
    for (const s of servers) await s.stop().catch(() => null);
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  labTest('default (maintain): the second connection to an MPTCP server still goes through the concentrator', async () => {
    await startCpe(false);
    for (const seed of ['m1', 'm2']) {
      const r = await download(mptcpServer, MB, seed);
      assert.equal(r.sha256, deterministicSha256(seed, MB));
      assert.equal(r.peer, CONC_SERVER_SIDE, `${seed}: through the concentrator`);
    }
    assert.equal(await directCount(), 0, 'no direct MPTCP connection');
    assert.equal(await serverMptcp('learned'), 0, 'maintain learns nothing, though the replies carry MP_CAPABLE');
  });

  labTest('direct: first through the concentrator, which reports MPTCP; the second CPE to server over both uplinks', async () => {
    await startCpe(true);
    const first = await download(mptcpServer, MB, 'd1');
    assert.equal(first.sha256, deterministicSha256('d1', MB));
    assert.equal(first.peer, CONC_SERVER_SIDE, 'the first connection went through the concentrator (the server was not known yet)');
    assert.equal(await serverMptcp('learned'), 1, 'learnt from the Convert reply');
    const before = await directCount();
    const dl = download(mptcpServer, 50 * MB, 'd2');
    let seen = '';
    const deadline = Date.now() + 60_000;
    let both = false;
    while (!both && Date.now() < deadline) {
      const ss = (await lab.hosts.servers[0]!.exec('ss', ['-tnH', 'state', 'established', '( sport = :8080 )'])).stdout.replaceAll('[::ffff:', '').replaceAll(']:', ':');
      seen = ss;
      both = CPE_WAN.every((a) => ss.includes(` ${a}:`));
      if (!both) await new Promise((r) => setTimeout(r, 50));
    }
    const r = await dl;
    assert.equal(r.sha256, deterministicSha256('d2', 50 * MB), '50 MB intact');
    assert.ok(both, `the server had subflows from both uplink addresses; last seen:\n${seen}`);
    assert.ok(CPE_WAN.includes(r.peer), `the server saw the CPE (${r.peer}), not the concentrator`);
    assert.equal((await directCount()) - before, 1, 'counted as a direct MPTCP connection');
  });

  labTest('direct: a plain TCP server is never dialled directly', async () => {
    for (const seed of ['p1', 'p2']) {
      const r = await download(plainServer, MB, seed);
      assert.equal(r.sha256, deterministicSha256(seed, MB));
      assert.equal(r.peer, CONC_SERVER_SIDE, `${seed}: through the concentrator`);
    }
    assert.equal(await serverMptcp('learned'), 1, 'a plain server is not learnt (its reply has no MP_CAPABLE)');
  });
});
