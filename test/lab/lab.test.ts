/**
 * The lab itself: what up() builds, that down() (and a failed up, a signal, a crash + downAll) leaves nothing
 * behind, dual-stack reachability through the CPE and the concentrator, uplink down/up, random loss, the
 * concentrator's pool addresses, and the CLI across processes.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Lab, listNamespaces } from '../../src/lab/index.js';
import { tcpReach, udpLoss } from '../../src/lab/probe.js';
import { statePath } from '../../src/lab/state.js';
import { IN_CI, labCapabilityMissing } from '../support/capabilities.js';

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

const LAB_JS = fileURLToPath(new URL('../../src/lab/index.js', import.meta.url));
const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

const fdCount = () => readdirSync('/proc/self/fd').length;

async function poll<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function assertGone(lab: Lab): Promise<void> {
  const present = new Set(await listNamespaces());
  for (const n of lab.namespaces) {
    assert.ok(!present.has(n), `namespace ${n} left behind`);
    assert.ok(!existsSync(`/etc/netns/${n}`), `/etc/netns/${n} left behind`);
  }
  assert.ok(!existsSync(statePath(lab.prefix)), 'state file left behind');
}

/** Runs a node script that builds a lab in a child process; resolves once it printed the prefix. */
function labChild(body: string, up = 'const lab = await Lab.up({ uplinks: [{ rate: 0 }] });\nconsole.log(lab.prefix);'): { child: ReturnType<typeof spawn>; prefix: Promise<string> } {
  const script = `import { Lab } from ${JSON.stringify(LAB_JS)};\n${up}\n${body}`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const prefix = new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /^(mpc[a-z0-9]+)$/m.exec(out);
      if (m) resolve(m[1]!);
    });
    child.once('exit', (code) => reject(new Error(`lab child exited (${code}) early: ${err}`)));
  });
  return { child, prefix };
}

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, 'lab', ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

describe('lab lifecycle', { skip: missing ?? false, concurrency: false }, () => {
  test('up builds the topology; down leaves no namespace, /etc/netns dir, state file, process or fd behind', async () => {
    const fds = fdCount();
    const lab = await Lab.up({ uplinks: [{ rate: '50mbit' }, { rate: 0 }, { rate: '2mbit' }], servers: 2 });
    let child;
    try {
      assert.match(lab.prefix, /^mpc[0-9a-f]{6}$/);
      assert.deepEqual([...lab.namespaces].sort(), ['client', 'conc', 'cpe', 'inet', 'srv1', 'srv2'].map((r) => `${lab.prefix}-${r}`).sort());
      const present = new Set(await listNamespaces());
      for (const n of lab.namespaces) {
        assert.ok(present.has(n), n);
        assert.equal(readFileSync(`/etc/netns/${n}/resolv.conf`, 'utf8'), 'nameserver 127.0.0.1\n');
      }
      assert.equal(JSON.parse(readFileSync(statePath(lab.prefix), 'utf8')).owner.pid, process.pid);
      const { cpe, concentrator: conc } = lab.hosts;

      // Shaping on both ends of shaped uplinks only.
      const qdisc = async (h: typeof cpe, dev: string) => JSON.parse((await h.exec('tc', ['-j', 'qdisc', 'show', 'dev', dev])).stdout)[0];
      assert.equal((await qdisc(cpe, 'up1')).kind, 'tbf');
      assert.equal((await qdisc(cpe, 'up1')).options.rate, 50e6 / 8);
      assert.equal((await qdisc(conc, 'acc1')).kind, 'tbf');
      assert.notEqual((await qdisc(cpe, 'up2')).kind, 'tbf');
      assert.notEqual((await qdisc(conc, 'acc2')).kind, 'tbf');
      assert.equal((await qdisc(conc, 'acc3')).options.rate, 2e6 / 8);

      // CPE: default routes per uplink with metric 100*i, both families; forwarding on; no policy routing.
      const routes4 = JSON.parse((await cpe.exec('ip', ['-j', '-4', 'route', 'show', 'default'])).stdout) as Array<{ gateway: string; metric: number }>;
      assert.deepEqual(routes4.map((r) => [r.gateway, r.metric]), [['198.18.1.1', 100], ['198.18.2.1', 200], ['198.18.3.1', 300]]);
      const routes6 = JSON.parse((await cpe.exec('ip', ['-j', '-6', 'route', 'show', 'default'])).stdout) as Array<{ gateway: string; metric: number }>;
      assert.deepEqual(routes6.map((r) => [r.gateway, r.metric]), [['2001:db8:1::1', 100], ['2001:db8:2::1', 200], ['2001:db8:3::1', 300]]);
      assert.equal((await cpe.exec('sysctl', ['-n', 'net.ipv4.ip_forward'])).stdout.trim(), '1');
      assert.equal((await cpe.exec('sysctl', ['-n', 'net.ipv6.conf.all.forwarding'])).stdout.trim(), '1');
      assert.doesNotMatch((await cpe.exec('ip', ['rule'])).stdout, /lookup 10\d/);
      assert.equal((await cpe.exec('ip', ['mptcp', 'endpoint', 'show'])).stdout.trim(), '');
      // Concentrator: service address on lo; the LAN via uplink 1 first.
      assert.match((await conc.exec('ip', ['-br', 'addr', 'show', 'dev', 'lo'])).stdout, /198\.18\.200\.1\/32 .*2001:db8:200::1\/128/);
      const lan = JSON.parse((await conc.exec('ip', ['-j', 'route', 'show', '198.18.0.0/24'])).stdout) as Array<{ gateway: string; metric: number }>;
      assert.deepEqual(lan.map((r) => [r.gateway, r.metric]), [['198.18.1.2', 100], ['198.18.2.2', 200], ['198.18.3.2', 300]]);
      // IPv6 addresses usable at once (no DAD).
      assert.doesNotMatch((await lab.hosts.client.exec('ip', ['-6', 'addr'])).stdout, /tentative/);

      child = cpe.spawn('sleep', ['1000']);
      await poll('the child to start', () => (child!.pid !== undefined ? true : undefined));
    } finally {
      await lab.down();
    }
    assert.ok(child.exitCode !== null || child.signalCode !== null, 'the spawned process was killed');
    await assertGone(lab);
    await lab.down(); // idempotent
    await poll('fds to return to their count before up()', () => (fdCount() <= fds ? true : undefined));
  });

  test('a failed up() removes what it made and throws MPC_ERR_LAB_UP; a bad spec makes nothing', async () => {
    await assert.rejects(Lab.up({ uplinks: [{ rate: 'fast' }] }), { code: 'MPC_ERR_LAB_SPEC' });
    await assert.rejects(Lab.up({ uplinks: [] }), { code: 'MPC_ERR_LAB_SPEC' });
    await assert.rejects(Lab.up({ uplinks: [{ rate: 0 }], prefix: 'nompc' }), { code: 'MPC_ERR_LAB_SPEC' });
    // A prefix that collides with an existing lab is refused before anything is made.
    const first = await Lab.up({ uplinks: [{ rate: 0 }] });
    try {
      await assert.rejects(Lab.up({ uplinks: [{ rate: 0 }], prefix: first.prefix }), { code: 'MPC_ERR_LAB_EXISTS' });
      assert.equal((await first.status()).healthy, true, 'the existing lab is untouched');
    } finally {
      await first.down();
    }
    // A failure half-way (the server's namespace already exists) rolls everything back.
    const prefix = `mpct${Date.now().toString(36).slice(-5)}`;
    const squatter = `${prefix}-srv1`;
    await new Promise<void>((r, j) => execFile('ip', ['netns', 'add', squatter], (e) => (e ? j(e) : r())));
    try {
      const err = await Lab.up({ uplinks: [{ rate: 0 }], prefix }).then(() => null, (e: unknown) => e as { code?: string });
      assert.equal(err?.code, 'MPC_ERR_LAB_EXISTS');
    } finally {
      await new Promise<void>((r) => execFile('ip', ['netns', 'del', squatter], () => r()));
    }
    const names = await listNamespaces();
    assert.ok(!names.some((n) => n.startsWith(`${prefix}-`)), 'nothing of the refused lab remains');
  });

  test('a build step failing after namespaces exist rolls back everything', async () => {
    let made: string[] = [];
    let prefix = '';
    const err = await Lab.up(
      { uplinks: [{ rate: '10mbit' }, { rate: 0 }], servers: 2, mptcpRouting: true },
      {
        onStep: async (step, lab) => {
          prefix = lab.prefix;
          if (step !== 'shaping') return;
          made = (await listNamespaces()).filter((n) => n.startsWith(`${lab.prefix}-`));
          throw new Error('injected failure');
        },
      },
    ).then(() => null, (e: unknown) => e as { code?: string; message?: string });
    assert.equal(err?.code, 'MPC_ERR_LAB_UP');
    assert.match(err?.message ?? '', /injected failure/);
    assert.equal(made.length, 6, 'the build had made all namespaces before it failed');
    assert.ok(!(await listNamespaces()).some((n) => n.startsWith(`${prefix}-`)), 'all rolled back');
    for (const n of made) assert.ok(!existsSync(`/etc/netns/${n}`));
    assert.ok(!existsSync(statePath(prefix)));
  });

  test('SIGTERM to the owning process removes its lab, SIGINT during up() too; a SIGKILLed owner leaves a lab that downAll removes', async () => {
    const a = labChild('setInterval(() => {}, 1000);');
    const prefixA = await a.prefix;
    assert.ok((await listNamespaces()).includes(`${prefixA}-cpe`));
    const exited = new Promise<NodeJS.Signals | null>((r) => a.child.once('exit', (_c, sig) => r(sig)));
    a.child.kill('SIGTERM');
    assert.equal(await exited, 'SIGTERM', 'the signal is re-raised after cleanup');
    const afterA = await listNamespaces();
    assert.ok(!afterA.some((n) => n.startsWith(`${prefixA}-`)), 'SIGTERM cleanup removed the namespaces');
    assert.ok(!existsSync(statePath(prefixA)));

    // SIGINT in the middle of up(): the build stops, everything it made is removed, the signal is re-raised.
    const c = labChild('', `await Lab.up({ uplinks: [{ rate: 0 }, { rate: 0 }] }, { onStep: (step, lab) => { if (step === 'links') { console.log(lab.prefix); process.kill(process.pid, 'SIGINT'); } } });\nconsole.log('built anyway');`);
    const prefixC = await c.prefix;
    const exitedC = new Promise<NodeJS.Signals | null>((r) => c.child.once('exit', (_c, sig) => r(sig)));
    assert.equal(await exitedC, 'SIGINT');
    assert.ok(!(await listNamespaces()).some((n) => n.startsWith(`${prefixC}-`)), 'SIGINT during up() left nothing');
    assert.ok(!existsSync(statePath(prefixC)));
    assert.ok(!existsSync(`/etc/netns/${prefixC}-cpe`));

    // A crash: the owner dies without any handler running.
    const b = labChild('process.kill(process.pid, "SIGKILL");');
    const prefixB = await b.prefix;
    await new Promise((r) => b.child.once('exit', r));
    assert.ok((await listNamespaces()).includes(`${prefixB}-cpe`), 'the crashed run left its namespaces');
    assert.ok(existsSync(statePath(prefixB)));
    // Plus a lab-named namespace without any state file (e.g. a crash before the state was written).
    const stray = `mpcs${Date.now().toString(36).slice(-5)}-conc`;
    await new Promise<void>((r, j) => execFile('ip', ['netns', 'add', stray], (e) => (e ? j(e) : r())));
    // A live lab of this process is taken down properly too.
    const mine = await Lab.up({ uplinks: [{ rate: 0 }] });
    const removed = await Lab.downAll();
    for (const n of [`${prefixB}-client`, `${prefixB}-cpe`, `${prefixB}-conc`, `${prefixB}-inet`, `${prefixB}-srv1`, stray, `${mine.prefix}-cpe`]) {
      assert.ok(removed.includes(n), `downAll removed ${n}`);
    }
    const left = await listNamespaces();
    assert.ok(!left.some((n) => n.startsWith(`${prefixB}-`) || n === stray || n.startsWith(`${mine.prefix}-`)));
    assert.ok(!existsSync(statePath(prefixB)));
    assert.ok(!existsSync(`/etc/netns/${prefixB}-cpe`));
  });

  test('CLI: up in one process, status/exec/down in others', async () => {
    const up = await cli(['up', '--uplink', '30mbit', '--uplink', '0', '--servers', '2']);
    assert.equal(up.code, 0, up.stderr);
    const prefix = up.stdout.split('\n')[0]!;
    assert.match(prefix, /^mpc[0-9a-f]{6}$/);
    try {
      assert.match(up.stdout, /up1: up, rate 30mbit/);
      assert.match(up.stdout, /up2: up, rate unshaped/);
      const st = await cli(['status', '--prefix', prefix, '--json']);
      assert.equal(st.code, 0, st.stderr);
      const [s] = JSON.parse(st.stdout) as Array<{ prefix: string; healthy: boolean; ownerPid: number | null; servers: unknown[] }>;
      assert.equal(s?.prefix, prefix);
      assert.equal(s?.healthy, true);
      assert.equal(s?.ownerPid, null, 'a CLI lab is persistent');
      assert.equal(s?.servers.length, 2);
      const ex = await cli(['exec', '--prefix', prefix, 'srv2', '--', 'ip', '-br', 'addr', 'show', 'dev', 'eth0']);
      assert.equal(ex.code, 0, ex.stderr);
      assert.match(ex.stdout, /198\.19\.0\.12\/24 2001:db8:100::12\/64/);
      const bad = await cli(['exec', '--prefix', prefix, 'cpe', '--', 'sh', '-c', 'exit 7']);
      assert.equal(bad.code, 7, 'exec passes the exit code through');
      const nohost = await cli(['exec', '--prefix', prefix, 'srv9', '--', 'true']);
      assert.equal(nohost.code, 1);
      assert.match(nohost.stderr, /No host "srv9"/);
    } finally {
      const down = await cli(['down', '--prefix', prefix]);
      assert.equal(down.code, 0, down.stderr);
    }
    assert.ok(!(await listNamespaces()).some((n) => n.startsWith(`${prefix}-`)));
    assert.ok(!existsSync(statePath(prefix)));
    const gone = await cli(['status', '--prefix', prefix]);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /No lab with prefix/);
  });
});

describe('lab traffic', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: 0 }, { rate: 0 }], servers: 2, mptcpRouting: true });
  });
  after(async () => {
    await lab?.down();
  });

  test('dual stack: client reaches both servers through the CPE and the concentrator, unNATed', async () => {
    const { client, concentrator, servers } = lab.hosts;
    for (const srv of servers) {
      const r4 = await tcpReach(client, srv, srv.v4);
      assert.equal(r4.ok, true, r4.error);
      assert.equal(r4.peer, '198.18.0.2');
      const r6 = await tcpReach(client, srv, srv.v6);
      assert.equal(r6.ok, true, r6.error);
      assert.equal(r6.peer, '2001:db8::2');
    }
    const s4 = await tcpReach(client, concentrator, concentrator.v4);
    assert.equal(s4.ok, true, s4.error);
    const s6 = await tcpReach(lab.hosts.cpe, concentrator, concentrator.v6, { localAddress: '2001:db8:2::2' });
    assert.equal(s6.ok, true, s6.error);
    assert.equal(s6.peer, '2001:db8:2::2');
    // Nothing answers outside the lab: the namespaces have no route beyond it.
    const out = await client.exec('ip', ['route', 'get', '198.51.100.1'], { allowFailure: true });
    assert.match(out.stdout, /via 198\.18\.0\.1/);
  });

  test('mptcpRouting: per-uplink rules, tables, endpoints and limits on the CPE', async () => {
    const cpe = lab.hosts.cpe;
    for (const i of [1, 2]) {
      assert.match((await cpe.exec('ip', ['route', 'get', '198.19.0.11', 'from', `198.18.${i}.2`])).stdout, new RegExp(`dev up${i} table 10${i}`));
      assert.match((await cpe.exec('ip', ['-6', 'route', 'get', '2001:db8:100::11', 'from', `2001:db8:${i}::2`])).stdout, new RegExp(`dev up${i}`));
    }
    const eps = JSON.parse((await cpe.exec('ip', ['-j', 'mptcp', 'endpoint', 'show'])).stdout) as Array<{ address: string; dev: string; flags: string[] }>;
    assert.deepEqual(eps.map((e) => [e.address, e.dev]).sort(), [['198.18.1.2', 'up1'], ['198.18.2.2', 'up2'], ['2001:db8:1::2', 'up1'], ['2001:db8:2::2', 'up2']]);
    for (const h of [cpe, lab.hosts.concentrator]) {
      // iproute2 6.1 prints the limits as text even with -j.
      const limits = (await h.exec('ip', ['mptcp', 'limits', 'show'])).stdout;
      assert.match(limits, /add_addr_accepted 8/);
      assert.match(limits, /subflows 8/);
    }
  });

  test('uplinkDown moves the traffic to uplink 2; uplinkUp restores addresses, routes and endpoints', async () => {
    const { client, cpe } = lab.hosts;
    const srv = lab.hosts.servers[0]!;
    const tx = async () => (await lab.status()).uplinks.map((u) => u.txPackets);
    const N = 300;
    let t0 = await tx();
    let r = await udpLoss(client, srv, srv.v4, { count: N });
    assert.equal(r.received, N);
    let t1 = await tx();
    assert.ok(t1[0]! - t0[0]! >= N, `uplink 1 carried the traffic (${t1[0]! - t0[0]!} packets)`);
    assert.ok(t1[1]! - t0[1]! < N / 10, 'uplink 2 stayed idle');

    await lab.uplinkDown(1);
    assert.equal((await lab.status()).uplinks[0]!.state, 'down');
    t0 = await tx();
    r = await udpLoss(client, srv, srv.v4, { count: N });
    assert.equal(r.received, N, 'all datagrams still arrive, through uplink 2');
    t1 = await tx();
    assert.ok(t1[1]! - t0[1]! >= N, `uplink 2 carried the traffic (${t1[1]! - t0[1]!} packets)`);
    assert.equal(t1[0]! - t0[0]!, 0);
    const r6 = await tcpReach(client, srv, srv.v6);
    assert.equal(r6.ok, true, `IPv6 fails over too: ${r6.error}`);

    await lab.uplinkUp(1);
    assert.equal((await lab.status()).uplinks[0]!.state, 'up');
    assert.match((await cpe.exec('ip', ['-br', 'addr', 'show', 'dev', 'up1'])).stdout, /198\.18\.1\.2\/24 2001:db8:1::2\/64/);
    const d4 = JSON.parse((await cpe.exec('ip', ['-j', '-4', 'route', 'show', 'default'])).stdout) as Array<{ gateway: string; metric: number }>;
    assert.deepEqual(d4.map((x) => [x.gateway, x.metric]), [['198.18.1.1', 100], ['198.18.2.1', 200]]);
    const d6 = JSON.parse((await cpe.exec('ip', ['-j', '-6', 'route', 'show', 'default'])).stdout) as Array<{ gateway: string; metric: number }>;
    assert.deepEqual(d6.map((x) => [x.gateway, x.metric]), [['2001:db8:1::1', 100], ['2001:db8:2::1', 200]]);
    assert.match((await cpe.exec('ip', ['route', 'show', 'table', '101'])).stdout, /default via 198\.18\.1\.1 dev up1/);
    assert.match((await cpe.exec('ip', ['-6', 'route', 'show', 'table', '101'])).stdout, /default via 2001:db8:1::1 dev up1/);
    const eps = JSON.parse((await cpe.exec('ip', ['-j', 'mptcp', 'endpoint', 'show'])).stdout) as Array<{ address: string }>;
    assert.ok(eps.some((e) => e.address === '2001:db8:1::2') && eps.some((e) => e.address === '198.18.1.2'));
    t0 = await tx();
    r = await udpLoss(client, srv, srv.v4, { count: N });
    assert.equal(r.received, N);
    t1 = await tx();
    assert.ok(t1[0]! - t0[0]! >= N, 'traffic is back on uplink 1');
    const back6 = await tcpReach(client, srv, srv.v6);
    assert.equal(back6.ok, true, back6.error);
  });

  test('setLoss drops about the configured share each way on that uplink only; clearLoss removes the table', async () => {
    const { cpe, concentrator: conc } = lab.hosts;
    const N = 2000;
    await lab.setLoss(1, 30);
    assert.equal((await lab.status()).uplinks[0]!.lossPercent, 30);
    const out = await udpLoss(cpe, conc, conc.v4, { count: N, localAddress: '198.18.1.2' });
    const inn = await udpLoss(conc, cpe, '198.18.1.2', { count: N });
    for (const [dir, r] of [['egress', out], ['ingress', inn]] as const) {
      const share = 1 - r.received / N;
      assert.ok(share > 0.24 && share < 0.36, `${dir}: ${(100 * share).toFixed(1)} % lost, configured 30 %`);
    }
    const other = await udpLoss(cpe, conc, conc.v4, { count: N, localAddress: '198.18.2.2' });
    assert.equal(other.received, N, 'uplink 2 is not affected');
    await lab.setLoss(2, 5);
    assert.deepEqual((await lab.status()).uplinks.map((u) => u.lossPercent), [30, 5]);
    await lab.clearLoss(1);
    assert.deepEqual((await lab.status()).uplinks.map((u) => u.lossPercent), [0, 5]);
    const clean = await udpLoss(cpe, conc, conc.v4, { count: N, localAddress: '198.18.1.2' });
    assert.equal(clean.received, N);
    await lab.clearLoss(2);
    assert.doesNotMatch((await cpe.exec('nft', ['list', 'tables'])).stdout, /mpconvert_lab_loss/);
    await assert.rejects(lab.setLoss(3, 10), { code: 'MPC_ERR_LAB_SPEC' });
    await assert.rejects(lab.setLoss(1, 101), { code: 'MPC_ERR_LAB_SPEC' });
  });

  test('pool addresses: the concentrator reaches the servers from them (both families), servers answer on-link', async () => {
    const { concentrator: conc } = lab.hosts;
    const srv = lab.hosts.servers[1]!;
    const pool = await lab.addPoolAddresses(2);
    assert.deepEqual(pool, [{ v4: '198.19.0.128', v6: '2001:db8:100::8000' }, { v4: '198.19.0.129', v6: '2001:db8:100::8001' }]);
    await lab.addPoolAddresses(2); // idempotent
    assert.equal((await lab.status()).poolAddresses, 2);
    for (const a of pool) {
      const r4 = await tcpReach(conc, srv, srv.v4, { localAddress: a.v4 });
      assert.equal(r4.ok, true, r4.error);
      assert.equal(r4.peer, a.v4);
      const r6 = await tcpReach(conc, srv, srv.v6, { localAddress: a.v6 });
      assert.equal(r6.ok, true, r6.error);
      assert.equal(r6.peer, a.v6);
    }
  });
});
