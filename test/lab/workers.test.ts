/**
 * The concentrator with `workers: 2` (a primary and one forked worker on the same SO_REUSEPORT listeners), in
 * the lab with real kernel MPTCP: a real CPE over two uplinks converts many downloads (hashes, both processes
 * accepted some, every MPTCP connection got its MP_JOIN subflow); per-CPE limits and the source pool are one
 * state across both processes (held connections from hand-driven clients); a killed worker is restarted and
 * counted; SIGTERM leaves no process behind.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab } from '../../src/lab/index.js';
import { encodeMpConvert } from '../../src/protocol/index.js';
import { labCapabilityMissing, IN_CI } from '../support/capabilities.js';
import { CLI, Proc, TOOL, start, type ServerOut, reloadConfig } from '../support/lab-procs.js';
import { deterministicSha256 } from '../support/tools/stream-util.js';
import { signallingFor } from '../../src/cpe/session.js';
import { randomBytes } from 'node:crypto';

const labTest = (name: string, fn: () => Promise<void>) => test(name, { timeout: 150_000 }, fn);

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

const CONC = '198.18.200.1';
const UP1 = '198.18.1.2';
const UP2 = '198.18.2.2';
const ie = (address: string, port: number) => encodeMpConvert([{ type: 0, direction: 'destination', address, port }]).toString('hex');

interface WorkerStatus {
  worker: number;
  pid: number;
  accepted: number;
  active: number;
}
interface Status {
  workers?: WorkerStatus[];
  sharedLeases?: number;
}
interface HoldOut {
  admitted?: number;
  refused?: number;
  subflows?: number[];
  done?: boolean;
}

/** True while a process with this pid exists (signal 0 only checks). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function poll(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('concentrator workers (lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  let conc: Proc;
  let http: Proc;
  let cpe: Proc | undefined;
  const dir = mkdtempSync(join(tmpdir(), 'mpc-workers-'));
  const configFile = join(dir, 'concentrator.yaml');
  const config = (extra = '') =>
    `listen: ["${CONC}:5000"]\nallow: ["198.18.0.0/16"]\nadmin: "127.0.0.1:9090"\nworkers: 2\ntransports: [tcp]\n` +
    `shutdownDrainS: 2\nsignalling:\n  timeoutMs: 3000\n${extra}`;

  const admin = async (path: string): Promise<string> => (await lab.hosts.concentrator.exec('curl', ['-s', `http://127.0.0.1:9090${path}`])).stdout;
  const status = async (): Promise<Status> => JSON.parse(await admin('/status')) as Status;
  const metric = async (name: string, labels = ''): Promise<number> => {
    const line = (await admin('/metrics')).split('\n').find((l) => l.startsWith(name) && l.includes(labels));
    return line ? Number(line.split(' ').pop()) : 0;
  };
  const nstat = async (counter: string): Promise<number> =>
    Number(new RegExp(`${counter}\\s+(\\d+)`).exec((await lab.hosts.concentrator.exec('nstat', ['-az', counter])).stdout)?.[1] ?? 0);
  const reload = (extra: string) => reloadConfig(conc, configFile, config(extra));
  const hold = (args: Record<string, unknown>) => start(lab.hosts.cpe, [TOOL('hold-client'), JSON.stringify({ host: CONC, port: 5000, ...args })]);
  const holdLine = async (p: Proc, pick: (o: HoldOut) => boolean): Promise<HoldOut> => {
    await p.waitLine(() => p.json<HoldOut>().some(pick), 60_000);
    return p.json<HoldOut>().find(pick) as HoldOut;
  };

  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: '100mbit' }, { rate: '100mbit' }], servers: 2 });
    http = start(lab.hosts.servers[0]!, [TOOL('http-server'), JSON.stringify({ host: '::', port: 8080 })]);
    writeFileSync(configFile, config());
    conc = start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', configFile]);
    await Promise.all([conc.waitLine((l) => l.startsWith('ready'), 30_000), http.waitLine((l) => l.includes('ready'))]);
  });

  after(async () => {
    await cpe?.stop();
    await conc?.stop();
    await http?.stop();
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  labTest('a real CPE over two uplinks: 40 downloads converted, hashes equal, both processes accepted some, every connection got its MP_JOIN subflow', async () => {
    const s0 = await status();
    assert.equal(s0.workers?.length, 2, `the primary and one worker in /status: ${JSON.stringify(s0.workers)}`);
    const file = join(dir, 'cpe.yaml');
    writeFileSync(file, `lan: [lan0]\nuplinks: [{interface: up1}, {interface: up2}]\nadmin: "127.0.0.1:9091"\nconcentrators:\n  - address: "${CONC}:5000"\n`);
    cpe = start(lab.hosts.cpe, [CLI, 'cpe', '--config', file]);
    await cpe.waitLine((l) => l.startsWith('ready'), 30_000);
    try {
      const joinsBefore = await nstat('MPTcpExtMPJoinAckRx');
      const N = 40;
      const SIZE = 2_000_000;
      const srv = lab.hosts.servers[0]!.v4;
      // Eight at a time; each line: index and the sha256 of the body.
      const script =
        `for i in $(seq 1 ${N}); do (h=$(curl -sS --fail 'http://${srv}:8080/bytes/${SIZE}?seed=w'$i | sha256sum | cut -d' ' -f1); echo "$i $h") & ` +
        `if [ $((i % 8)) -eq 0 ]; then wait; fi; done; wait`;
      const r = await lab.hosts.client.exec('bash', ['-c', script], { timeoutMs: 120_000 });
      const got = new Map(r.stdout.trim().split('\n').map((l) => l.split(' ') as [string, string]));
      for (let i = 1; i <= N; i++) assert.equal(got.get(String(i)), deterministicSha256(`w${i}`, SIZE), `download ${i}: hash`);
      const s1 = await status();
      const accepted = (s1.workers ?? []).map((w) => w.accepted - (s0.workers?.find((x) => x.worker === w.worker)?.accepted ?? 0));
      assert.equal(accepted.length, 2);
      assert.ok(accepted.every((n) => n > 0), `both processes accepted connections: ${JSON.stringify(accepted)}`);
      assert.ok(accepted[0]! + accepted[1]! >= N, `every download was accepted by one of them: ${JSON.stringify(accepted)}`);
      // The concentrator's side of each join: the third ACK of an MP_JOIN arrived, matched to its connection by token.
      const joins = (await nstat('MPTcpExtMPJoinAckRx')) - joinsBefore;
      assert.ok(joins >= N, `an MP_JOIN subflow for each of the ${N} connections (${joins} joins)`);
      // The aggregated /metrics: the conversions of both processes.
      assert.ok((await metric('mpconvert_server_leg_total', 'transport=')) >= N, 'the server legs of both processes are counted in the primary\'s /metrics');
    } finally {
      // The hand-driven clients below dial from the CPE namespace without the CPE's endpoints.
      const stopped = cpe;
      cpe = undefined;
      assert.equal(await stopped.stop(), 0);
    }
  });

  labTest('limits.maxConnectionsPerCpe: 10 with 20 connections held from one CPE: exactly 10 refused, counted, across both processes', async () => {
    const sink = start(lab.hosts.servers[1]!, [TOOL('sink-server'), JSON.stringify({ host: lab.hosts.servers[1]!.v4, port: 8081, reply: 10 })]);
    await sink.waitLine((l) => l.includes('ready'));
    await reload('limits:\n  maxConnectionsPerCpe: 10\n');
    try {
      const s0 = await status();
      const refusedBefore = await metric('mpconvert_refused_total', 'reason="max-connections-per-cpe"');
      const signalling = ie(lab.hosts.servers[1]!.v4, 8081);
      const h = hold({ signallingHex: signalling, head: signalling.length / 2, count: 20, localAddress: UP1, holdMs: 1_000 });
      const first = await holdLine(h, (o) => o.admitted !== undefined);
      assert.deepEqual([first.admitted, first.refused], [10, 10], `10 admitted, 10 refused: ${JSON.stringify(first)}`);
      assert.equal((await metric('mpconvert_refused_total', 'reason="max-connections-per-cpe"')) - refusedBefore, 10, 'the 10 refusals are counted');
      const s1 = await status();
      const accepted = (s1.workers ?? []).map((w) => w.accepted - (s0.workers?.find((x) => x.worker === w.worker)?.accepted ?? 0));
      assert.ok(accepted.every((n) => n > 0), `both processes took some of the 20: ${JSON.stringify(accepted)}`);
      await holdLine(h, (o) => o.done === true);
      await h.exited;
      // Every slot went back: the next 10 are admitted again.
      await poll('every lease released', async () => (await status()).sharedLeases === 0);
      const again = hold({ signallingHex: signalling, head: signalling.length / 2, count: 10, localAddress: UP1, holdMs: 0 });
      assert.deepEqual([(await holdLine(again, (o) => o.admitted !== undefined)).admitted], [10]);
      await again.exited;
    } finally {
      await reload('');
      await sink.stop();
    }
  });

  labTest('source pool of 2 addresses, shared: every connection of one CPE leaves from the same external address, whichever process took it', async () => {
    const [p1, p2] = (await lab.addPoolAddresses(2)).map((a) => a.v4) as [string, string];
    const srv = lab.hosts.servers[1]!.v4;
    const sink = start(lab.hosts.servers[1]!, [TOOL('sink-server'), JSON.stringify({ host: srv, port: 8082, reply: 10 })]);
    await sink.waitLine((l) => l.includes('ready'));
    await reload(`sourcePool:\n  addresses: ["${p1}", "${p2}"]\n  mode: shared\n`);
    try {
      const signalling = ie(srv, 8082);
      const head = signalling.length / 2;
      // CPE B first, held: in one process's pool of its own it would take the address that process then
      // avoids for A (least loaded), and A's connections in the other process would take it.
      const b = hold({ signallingHex: signalling, head, count: 1, localAddress: UP2, holdMs: 30_000, send: 1 });
      assert.equal((await holdLine(b, (o) => o.admitted !== undefined)).admitted, 1);
      const a = hold({ signallingHex: signalling, head, count: 16, localAddress: UP1, holdMs: 500, send: 2 });
      assert.equal((await holdLine(a, (o) => o.admitted !== undefined)).admitted, 16);
      await a.exited;
      await sink.waitLine(() => sink.json<ServerOut>().filter((o) => o.received === 2).length >= 16);
      b.child.kill('SIGTERM');
      await b.exited;
      const ext = (o: ServerOut) => o.remote?.replace('::ffff:', '');
      const fromA = new Set(sink.json<ServerOut>().filter((o) => o.received === 2).map(ext));
      assert.equal(fromA.size, 1, `A's 16 connections left from one address: ${[...fromA].join(', ')}`);
      assert.ok([p1, p2].includes([...fromA][0]!), 'a pool address');
      const s = await status();
      assert.ok((s.workers ?? []).every((w) => w.accepted > 0), `both processes accepted connections: ${JSON.stringify(s.workers)}`);
    } finally {
      await reload('');
      await sink.stop();
    }
  });

  labTest('SIGHUP reaches the workers: a destination denied by a reload is refused by every process (the gate runs where the connection landed)', async () => {
    const srv = lab.hosts.servers[1]!.v4;
    const sink = start(lab.hosts.servers[1]!, [TOOL('sink-server'), JSON.stringify({ host: srv, port: 8085, reply: 10 })]);
    await sink.waitLine((l) => l.includes('ready'));
    const signalling = ie(srv, 8085);
    const run = async (count: number) => {
      const h = hold({ signallingHex: signalling, head: signalling.length / 2, count, localAddress: UP1, holdMs: 0 });
      const r = await holdLine(h, (o) => o.admitted !== undefined);
      await h.exited;
      return r;
    };
    const refusedLines = () =>
      conc.stderr
        .split('\n')
        .filter((l) => l.includes('"log":"session"') && l.includes('"reason":"destination"'))
        .map((l) => JSON.parse(l) as Record<string, unknown>);
    try {
      assert.equal((await run(8)).admitted, 8, 'allowed before the reload');
      const workerReloads = () => conc.stderr.split('\n').filter((l) => l.includes('"worker":1') && l.includes('configuration reloaded')).length;
      const before = workerReloads();
      await reload(`deny: ["${srv}/32"]\n`);
      await conc.waitLine(() => workerReloads() > before);
      const s0 = await status();
      const denied = await metric('mpconvert_refused_total', 'reason="destination"');
      const r = await run(12);
      assert.deepEqual([r.admitted, r.refused], [0, 12]);
      assert.equal((await metric('mpconvert_refused_total', 'reason="destination"')) - denied, 12, 'counted as destination refusals');
      const s1 = await status();
      const accepted = (s1.workers ?? []).map((w) => w.accepted - (s0.workers?.find((x) => x.worker === w.worker)?.accepted ?? 0));
      assert.ok(accepted.every((n) => n > 0), `both processes refused some: ${JSON.stringify(accepted)}`);
      // The session log (written by the primary): one refused line each, the worker's with its worker field.
      await poll('12 refused lines in the session log', () => refusedLines().length >= 12);
      const lines = refusedLines();
      assert.equal(lines.length, 12);
      assert.deepEqual([lines.filter((l) => l['worker'] === 1).length, lines.filter((l) => l['worker'] === undefined).length], [accepted[1], accepted[0]]);
    } finally {
      await reload('');
      await sink.stop();
    }
  });

  labTest('a killed worker is restarted and counted; what its connections held in the primary is released', async () => {
    const s0 = await status();
    const worker = s0.workers?.find((w) => w.worker === 1);
    assert.ok(worker, JSON.stringify(s0));
    const restartsBefore = await metric('mpconvert_worker_restarts_total');
    // Connections held open: the worker's hold leases in the primary (its limits slots, pool addresses).
    const sink = start(lab.hosts.servers[1]!, [TOOL('sink-server'), JSON.stringify({ host: lab.hosts.servers[1]!.v4, port: 8083, reply: 10 })]);
    await sink.waitLine((l) => l.includes('ready'));
    const signalling = ie(lab.hosts.servers[1]!.v4, 8083);
    const h = hold({ signallingHex: signalling, head: signalling.length / 2, count: 12, localAddress: UP1, holdMs: 60_000 });
    const held = await holdLine(h, (o) => o.admitted !== undefined);
    assert.equal(held.admitted, 12, `${JSON.stringify(held)}\n${conc.stderr.slice(-3000)}`);
    const leases = (await status()).sharedLeases ?? 0;
    assert.ok(leases > 0 && leases < 12, `the worker holds some of the 12 (${leases} leases; the primary's own hold none)`);
    process.kill(worker.pid, 'SIGKILL');
    await poll('the dead worker\'s leases released', async () => (await status()).sharedLeases === 0);
    h.child.kill('SIGTERM');
    await h.exited;
    await sink.stop();
    await poll('a new worker process', async () => {
      const w = (await status()).workers?.find((x) => x.worker === 1);
      return w !== undefined && w.pid !== worker.pid;
    });
    assert.equal((await metric('mpconvert_worker_restarts_total')) - restartsBefore, 1);
    assert.equal(await metric('mpconvert_workers'), 1);
    assert.equal(alive(worker.pid), false);
  });

  labTest('auth: one authenticator sent on 12 connections at once: 1 admitted, 11 refused as replays, whichever process took each', async () => {
    const secret = randomBytes(32);
    const keysFile = join(dir, 'keys.yaml');
    writeFileSync(keysFile, `keys:\n  - { id: cpe-lab, secret: "hex:${secret.toString('hex')}" }\n`, { mode: 0o600 });
    const srv = lab.hosts.servers[1]!.v4;
    const sink = start(lab.hosts.servers[1]!, [TOOL('sink-server'), JSON.stringify({ host: srv, port: 8084, reply: 10 })]);
    await sink.waitLine((l) => l.includes('ready'));
    await reload(`auth:\n  keysFile: ${keysFile}\n`);
    try {
      const signalling = signallingFor({ format: 'mp-convert', sourceIe: false }, { address: srv, port: 8084 }, undefined, {
        keyId: 'cpe-lab',
        secret,
        timestamp: Math.floor(Date.now() / 1000),
        nonce: randomBytes(16),
      }).toString('hex');
      const s0 = await status();
      const replays = await metric('mpconvert_refused_total', 'reason="auth-replay"');
      const h = hold({ signallingHex: signalling, head: signalling.length / 2, count: 12, localAddress: UP1, holdMs: 0 });
      const r = await holdLine(h, (o) => o.admitted !== undefined);
      assert.deepEqual([r.admitted, r.refused], [1, 11], JSON.stringify(r));
      assert.equal((await metric('mpconvert_refused_total', 'reason="auth-replay"')) - replays, 11);
      const s1 = await status();
      const accepted = (s1.workers ?? []).map((w) => w.accepted - (s0.workers?.find((x) => x.worker === w.worker)?.accepted ?? 0));
      assert.ok(accepted.every((n) => n > 0), `both processes took some of the 12: ${JSON.stringify(accepted)}`);
      await h.exited;
    } finally {
      // Taking auth away again needs a restart (the reload keeps it): this test runs last but the stop ones.
      await sink.stop();
    }
  });

  labTest('SIGTERM: the primary stops its workers, then itself; exit 0 and no process left', async () => {
    const pids = ((await status()).workers ?? []).map((w) => w.pid);
    assert.equal(pids.length, 2);
    assert.equal(await conc.stop('SIGTERM'), 0);
    await poll('every process gone', () => pids.every((p) => !alive(p)), 10_000);
    // The worker drained on the primary's request (not killed at the end of the budget); its log has a `worker` field.
    const stopping = conc.stderr.split('\n').filter((l) => l.includes('concentrator worker stopping')).map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.deepEqual(stopping.map((l) => [l['worker'], l['why']]), [[1, 'asked by the primary']]);
  });

  labTest('the primary killed (SIGKILL): its worker stops accepting, drains and exits on its own', async () => {
    writeFileSync(configFile, config());
    const again = start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', configFile]);
    let workerPid: number | undefined;
    try {
      await again.waitLine((l) => l.startsWith('ready'), 30_000);
      workerPid = (JSON.parse(await admin('/status')) as Status).workers?.find((w) => w.worker === 1)?.pid;
      assert.ok(workerPid && alive(workerPid));
      again.child.kill('SIGKILL');
      await again.exited;
      const pid = workerPid;
      await poll('the orphaned worker exited', () => !alive(pid), 10_000);
      assert.match(again.stderr, /"worker":1[^\n]*"why":"the primary is gone"/);
    } finally {
      if (workerPid && alive(workerPid)) process.kill(workerPid, 'SIGKILL');
      await again.stop();
      // The killed primary could not remove its nft table; the lab's namespace goes with it.
    }
  });
});
