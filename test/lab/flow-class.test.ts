/**
 * Per-flow-class distribution with kernel MPTCP and real transfers over two 50 Mbit/s uplinks, up1 with 30 ms
 * more round-trip time: a bulk download is aggregated over both, a connection in a class (a destination port;
 * a DSCP) stays on one uplink (the lowest-RTT one, or the class's named one), while a bulk download beside it
 * keeps using both; a reload moves the class. Bytes per uplink from the concentrator side's tbf counters.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab, uplinkAddressing } from '../../src/lab/index.js';
import { labCapabilityMissing, IN_CI } from '../support/capabilities.js';
import { CLI, Proc, TOOL, start } from '../support/lab-procs.js';
import { deterministicSha256 } from '../support/tools/stream-util.js';

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

const MB = 1024 * 1024;
const CONC4 = '198.18.200.1';
const ADMIN = 'http://127.0.0.1:9093';

interface Status {
  distribution: { classes?: Array<{ name: string; pin: string; lastUplink: string | null }>; pathRttMs?: Record<string, number> };
  lastReload?: { applied: string[] };
}
interface Connections {
  connections: Array<{ destination: string; subflows?: Array<{ uplink: string | null; state: string }> }>;
}

describe('traffic distribution: flow classes (lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  let conc: Proc;
  let http: Proc;
  let cpe: Proc;
  const iperf: Proc[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'mpc-class-'));
  const cfg = join(dir, 'cpe.yaml');
  const writeConfig = (interactive: string) =>
    writeFileSync(
      cfg,
      `lan: [lan0]\nuplinks: [{interface: up1}, {interface: up2}]\nadmin: "127.0.0.1:9093"\nconcentrators:\n  - address: "${CONC4}:5000"\n` +
        `distribution:\n  classes:\n    - {name: interactive, destinations: [{prefix: "0.0.0.0/0", ports: [5201]}]${interactive}}\n` +
        `    - {name: voice, dscp: [46], uplink: up1}\n`,
    );

  /** Bytes each uplink's concentrator-side tbf sent (towards the CPE: downloads). */
  async function tcBytes(): Promise<number[]> {
    return Promise.all(
      lab.uplinks.map(async (_u, j) => {
        const out = (await lab.hosts.concentrator.exec('tc', ['-s', '-j', 'qdisc', 'show', 'dev', uplinkAddressing(j + 1).concDev])).stdout;
        const root = (JSON.parse(out) as Array<{ kind: string; root?: boolean; bytes?: number }>).find((q) => q.kind === 'tbf');
        if (root?.bytes === undefined) throw new Error(`no tbf counters on ${uplinkAddressing(j + 1).concDev}: ${out}`);
        return root.bytes;
      }),
    );
  }
  const delta = (a: number[], b: number[]) => b.map((x, i) => x - a[i]!);
  const share = (d: number[], i: number) => d[i]! / d.reduce((s, x) => s + x, 0);
  const fmt = (d: number[]) => d.map((x, i) => `up${i + 1} ${(x / MB).toFixed(2)} MiB`).join(', ');
  const admin = async <T>(path: string) => JSON.parse((await lab.hosts.cpe.exec('curl', ['-sS', '--fail', `${ADMIN}${path}`])).stdout) as T;

  async function download(size: number, seed: string) {
    const r = await lab.hosts.client.exec('bash', ['-o', 'pipefail', '-c', `curl -sS --fail 'http://${lab.hosts.servers[0]!.v4}:8080/bytes/${size}?seed=${seed}' | sha256sum`], { timeoutMs: 120_000 });
    return r.stdout.split(' ')[0];
  }
  /** A download from the server's iperf3 on `port` (-R) at `rate` ('0': as fast as it goes), `secs` long. */
  async function paced(port: number, secs: number, rate = '20M'): Promise<number> {
    const args = ['-c', lab.hosts.servers[0]!.v4, '-p', String(port), '-R', '-b', rate, '-t', String(secs), '-J'];
    const r = await lab.hosts.client.exec('iperf3', args, { timeoutMs: 60_000 });
    return (JSON.parse(r.stdout) as { end: { sum_received: { bytes: number } } }).end.sum_received.bytes;
  }
  async function pinRejects(): Promise<number[]> {
    const text = (await lab.hosts.cpe.exec('nft', ['list', 'table', 'inet', 'mpconvert_pin_default'])).stdout;
    return ['up1', 'up2'].map((u) => Number(new RegExp(`oifname != "${u}" counter packets (\\d+)`).exec(text)?.[1] ?? NaN));
  }

  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: '50mbit', rttMs: 30 }, { rate: '50mbit' }], servers: 1 });
    const srv = lab.hosts.servers[0]!;
    http = start(srv, [TOOL('http-server'), JSON.stringify({ host: '::', port: 8080 })]);
    for (const port of [5201, 5202]) iperf.push(new Proc(srv.spawn('iperf3', ['-s', '-p', String(port), '--forceflush', '-B', srv.v4])));
    conc = start(lab.hosts.concentrator, [CLI, 'concentrator', '--listen', `${CONC4}:5000`, '--allow', '198.18.0.0/15', '--allow', '2001:db8::/32']);
    writeConfig('');
    await Promise.all([http.waitLine((l) => l.includes('ready')), conc.waitLine((l) => l.startsWith('ready')), ...iperf.map((p) => p.waitLine((l) => l.includes('Server listening'), 10_000))]);
    cpe = start(lab.hosts.cpe, [CLI, 'cpe', '--config', cfg]);
    await cpe.waitLine((l) => l.startsWith('ready'), 30_000);
  });

  after(async () => {
    await cpe?.stop();
    await conc?.stop();
    await http?.stop();
    for (const p of iperf) await p.stop();
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  test('bulk is aggregated; a class flow stays on the lowest-RTT uplink, also beside a bulk flow; a DSCP class on its named uplink; a reload moves a class', { timeout: 240_000 }, async () => {
    // Bulk (no class): both uplinks; its subflows measure each uplink's path RTT.
    const t0 = await tcBytes();
    assert.equal(await download(40 * MB, 'bulk'), deterministicSha256('bulk', 40 * MB));
    const d0 = delta(t0, await tcBytes());
    process.stdout.write(`# flow classes, bulk download (no class): ${fmt(d0)} (${(share(d0, 1) * 100).toFixed(1)} % on up2)\n`);
    assert.ok(share(d0, 0) > 0.2 && share(d0, 1) > 0.2, `bulk not aggregated: ${fmt(d0)}`);
    let st = await admin<Status>('/status');
    for (const deadline = Date.now() + 10_000; Object.keys(st.distribution.pathRttMs ?? {}).length < 2; st = await admin<Status>('/status')) {
      if (Date.now() > deadline) throw new Error(`no path RTT per uplink: ${JSON.stringify(st.distribution)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    const rtt = st.distribution.pathRttMs!;
    assert.ok(rtt['up2']! < rtt['up1']!, `path RTTs ${JSON.stringify(rtt)}`);

    // The class (destination port 5201), as fast as it goes: pinned to up2, the lowest RTT (aggregated, the
    // same download puts about 40 % on up1, as the bulk one above).
    const r0 = await pinRejects();
    const t1 = await tcBytes();
    const got = await paced(5201, 6, '0');
    assert.ok(got > ((6 * 40e6) / 8) * 0.9, `iperf3 received ${got} bytes (one 50 Mbit/s uplink)`);
    const d1 = delta(t1, await tcBytes());
    process.stdout.write(`# flow classes, unpaced class flow pinned to the lowest RTT: ${fmt(d1)} (${(share(d1, 0) * 100).toFixed(2)} % on up1), ${((got * 8) / 6e6).toFixed(1)} Mbit/s; uplink RTTs ${JSON.stringify(rtt)}\n`);
    assert.ok(share(d1, 0) < 0.05, `the class flow put ${(share(d1, 0) * 100).toFixed(1)} % on up1: ${fmt(d1)}`);
    const r1 = await pinRejects();
    assert.ok(r1[1]! - r0[1]! >= 2, `joins refused for connections pinned to up2 (control and data connections): ${r0} -> ${r1}`);
    st = await admin<Status>('/status');
    assert.deepEqual(st.distribution.classes?.find((c) => c.name === 'interactive'), { name: 'interactive', pin: 'lowest-rtt', lastUplink: 'up2' });
    const metrics = (await lab.hosts.cpe.exec('curl', ['-sS', `${ADMIN}/metrics`])).stdout;
    assert.match(metrics, /mpconvert_flow_class_connections_total\{[^}]*class="interactive"[^}]*uplink="up2"[^}]*\} [2-9]/);

    // Beside a bulk download: the class connection's subflows only on up2, the bulk one's on both.
    const bulk = download(60 * MB, 'beside');
    bulk.catch(() => {});
    const classFlow = paced(5201, 8);
    classFlow.catch(() => {});
    let seen: Connections | undefined;
    let lastSeen = '';
    const uplinksOf = (c: Connections, port: number) => new Set(c.connections.filter((x) => x.destination.endsWith(`:${port}`)).flatMap((x) => (x.subflows ?? []).filter((s) => s.state === 'ESTABLISHED').map((s) => s.uplink)));
    for (const deadline = Date.now() + 20_000; ; ) {
      seen = await admin<Connections>('/connections?subflows=1');
      if (seen.connections.length > 0) lastSeen = JSON.stringify(seen);
      if (uplinksOf(seen, 8080).size === 2 && uplinksOf(seen, 5201).size > 0) break;
      if (Date.now() > deadline) throw new Error(`no bulk connection on both uplinks beside the class flow: ${lastSeen}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.deepEqual([...uplinksOf(seen, 5201)], ['up2'], JSON.stringify(seen));
    assert.equal(await bulk, deterministicSha256('beside', 60 * MB));
    assert.ok((await classFlow) > 0);

    // DSCP 46 (EF): the voice class, pinned to up1 by name although up2 has the lower RTT. iperf3 sets its
    // TOS only after the handshake; socat (a local forwarder in the client's namespace) sets it before.
    const tosProxy = new Proc(lab.hosts.client.spawn('socat', ['TCP4-LISTEN:9000,bind=127.0.0.1,reuseaddr,fork', `TCP4:${lab.hosts.servers[0]!.v4}:8080,tos=${46 << 2}`]));
    for (const deadline = Date.now() + 10_000; !(await lab.hosts.client.exec('ss', ['-Hltn', 'sport = :9000'])).stdout.includes('9000'); ) {
      if (Date.now() > deadline) throw new Error('socat did not listen');
      await new Promise((r) => setTimeout(r, 100));
    }
    const t2 = await tcBytes();
    try {
      const r = await lab.hosts.client.exec('bash', ['-o', 'pipefail', '-c', `curl -sS --fail 'http://127.0.0.1:9000/bytes/${20 * MB}?seed=ef' | sha256sum`], { timeoutMs: 120_000 });
      assert.equal(r.stdout.split(' ')[0], deterministicSha256('ef', 20 * MB));
    } finally {
      await tosProxy.stop('SIGTERM', 5_000, true);
    }
    const d2 = delta(t2, await tcBytes());
    process.stdout.write(`# flow classes, DSCP 46 class flow (20 MiB) pinned to up1 by name: ${fmt(d2)} (${(share(d2, 1) * 100).toFixed(2)} % on up2)\n`);
    assert.ok(share(d2, 1) < 0.05, `the voice flow put ${(share(d2, 1) * 100).toFixed(1)} % on up2: ${fmt(d2)}`);

    // Reload: the interactive class now names up1.
    writeConfig(', uplink: up1');
    cpe.child.kill('SIGHUP');
    await cpe.waitFor(/configuration reloaded/, 10_000);
    const t3 = await tcBytes();
    await paced(5201, 5);
    const d3 = delta(t3, await tcBytes());
    process.stdout.write(`# flow classes, after a reload naming up1: ${fmt(d3)}\n`);
    assert.ok(share(d3, 1) < 0.05, `after the reload the class flow put ${(share(d3, 1) * 100).toFixed(1)} % on up2: ${fmt(d3)}`);
  });
});
