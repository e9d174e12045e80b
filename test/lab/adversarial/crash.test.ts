/**
 * Adversarial: either daemon killed with SIGKILL (OOM killer, a crash) in the middle of a transfer, with real
 * kernel MPTCP: LAN client -> CPE (2 uplinks of 50 Mbit/s) -> concentrator -> server.
 *
 * - A dead daemon's connections end with a reset in every leg, never with a FIN: a raw TCP client that reads
 *   to the end (no framing of its own) must see ECONNRESET, not a clean end of a truncated transfer.
 * - A dead CPE fails open: the LAN's new connections are forwarded as if mpconvert were not installed, at
 *   once, IPv4 and IPv6; a restarted CPE converts again.
 * Both relay engines (relayEngine: streams | splice on both daemons).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab } from '../../../src/lab/index.js';
import { labCapabilityMissing, IN_CI } from '../../support/capabilities.js';
import { CLI, Proc, TOOL, start } from '../../support/lab-procs.js';
import { deterministicSha256 } from '../../support/tools/stream-util.js';

const labTest = (name: string, fn: () => Promise<void>) => test(name, { timeout: 180_000 }, fn);

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

const MB = 1024 * 1024;
const CONC4 = '198.18.200.1';
const CONC6 = '2001:db8:200::1';
const ENGINES = ['streams', 'splice'] as const;
type Engine = (typeof ENGINES)[number];

/** Sum of a Prometheus counter's samples whose labels contain every `labels` pair. */
function counter(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    if (Object.entries(labels).every(([k, v]) => (m[2] ?? '').includes(`${k}="${v}"`))) sum += Number(m[3]);
  }
  return sum;
}

describe('daemons killed with SIGKILL (lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  let conc: Proc | undefined;
  let cpe: Proc | undefined;
  const servers: Proc[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'mpc-crash-'));
  let srv4: string;
  let srv6: string;

  const metrics = async (host: 'cpe' | 'concentrator'): Promise<string> =>
    (await lab.hosts[host].exec('curl', ['-s', `http://127.0.0.1:${host === 'cpe' ? 9091 : 9090}/metrics`], { allowFailure: true })).stdout;
  /** Conversions the concentrator confirmed (server leg up, echo sent): counted at open. */
  const converted = async () => counter(await metrics('concentrator'), 'mpconvert_setup_seconds_count');

  async function startConcentrator(engine: Engine): Promise<void> {
    await conc?.stop();
    const file = join(dir, `conc-${engine}.yaml`);
    writeFileSync(
      file,
      `listen: ["${CONC4}:5000", "[${CONC6}]:5000"]\nallow: [198.18.0.0/15, "2001:db8::/32"]\nadmin: "127.0.0.1:9090"\nrelayEngine: ${engine}\nlogLevel: debug\n`,
    );
    conc = start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', file]);
    await conc.waitLine((l) => l.startsWith('ready'), 30_000);
  }

  async function startCpe(engine: Engine): Promise<void> {
    await cpe?.stop();
    const file = join(dir, `cpe-${engine}.yaml`);
    writeFileSync(
      file,
      `lan: [lan0]\nuplinks: [{interface: up1}, {interface: up2}]\nadmin: "127.0.0.1:9091"\nconcentrators:\n  - address: "${CONC4}:5000"\nrelayEngine: ${engine}\nlogLevel: debug\n`,
    );
    cpe = start(lab.hosts.cpe, [CLI, 'cpe', '--config', file]);
    await cpe.waitLine((l) => l.startsWith('ready'), 30_000);
  }

  /** A raw TCP download from the LAN client that reports its end ('end' or an error code) and prints progress. */
  function readClient(host: string, progressAt: number): Proc {
    return start(lab.hosts.client, [TOOL('read-client'), JSON.stringify({ host, port: 9000, progressAt, timeoutMs: 120_000 })]);
  }

  /** Until the client has received part of the download; the daemons' logs on failure. */
  async function inProgress(client: Proc): Promise<void> {
    try {
      await client.waitLine((l) => l.includes('progress'), 60_000);
    } catch (err) {
      throw new Error(`${(err as Error).message}\nthe CPE's log:\n${cpe?.stderr.slice(-3000)}\nthe concentrator's log:\n${conc?.stderr.slice(-3000)}`);
    }
  }

  async function outcome(p: Proc): Promise<{ outcome: string; received: number }> {
    await p.exited;
    const last = p.json<{ outcome?: string; received?: number }>().filter((o) => o.outcome !== undefined).pop();
    assert.ok(last, `the client printed its outcome; its output:\n${p.output}`);
    return { outcome: last.outcome!, received: last.received ?? 0 };
  }

  /** curl from the LAN client: the body's sha256, or null when the transfer failed. */
  async function download(host: string, size: number, seed: string): Promise<string | null> {
    const u = `http://${host.includes(':') ? `[${host}]` : host}:8080/bytes/${size}?seed=${seed}`;
    const r = await lab.hosts.client.exec('bash', ['-o', 'pipefail', '-c', `curl -sS --fail --connect-timeout 2 --max-time 20 '${u}' | sha256sum`], { allowFailure: true, timeoutMs: 30_000 });
    return r.code === 0 ? (r.stdout.split(' ')[0] ?? null) : null;
  }

  /** Polls `until` the metric read by `read` satisfies `ok` (counted at close: a moment after the client's end). */
  async function eventually(read: () => Promise<number>, ok: (v: number) => boolean, what: string): Promise<number> {
    let v = await read();
    for (const deadline = Date.now() + 10_000; !ok(v) && Date.now() < deadline; v = await read()) await new Promise((r) => setTimeout(r, 100));
    assert.ok(ok(v), `${what} (got ${v})`);
    return v;
  }

  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: '50mbit' }, { rate: '50mbit' }], servers: 1 });
    const srv = lab.hosts.servers[0]!;
    srv4 = srv.v4;
    srv6 = srv.v6;
    servers.push(start(srv, [TOOL('http-server'), JSON.stringify({ host: '::', port: 8080 })]));
    // Sends far more than any test reads before it kills a daemon: the transfer is always cut in the middle.
    for (const host of [srv4, srv6]) servers.push(start(srv, [TOOL('sink-server'), JSON.stringify({ host, port: 9000, mode: 'first', reply: 2000 * MB })]));
    await Promise.all(servers.map((p) => p.waitLine((l) => l.includes('ready'))));
  });

  after(async () => {
    await cpe?.stop();
    await conc?.stop();
    for (const p of servers) await p.stop();
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  for (const engine of ENGINES) {
    labTest(`relayEngine ${engine}: the concentrator killed during a download: the LAN client sees a reset, not a clean end`, async () => {
      await startConcentrator(engine);
      await startCpe(engine);
      const conv0 = await converted();
      const cpeBefore = await metrics('cpe');
      const client = readClient(srv4, 2 * MB);
      await inProgress(client);
      assert.equal(await converted(), conv0 + 1, 'the download is converted (the concentrator confirmed it)');
      await conc!.stop('SIGKILL');
      conc = undefined;
      const r = await outcome(client);
      assert.equal(r.outcome, 'ECONNRESET', `the LAN client must see a reset after ${r.received} bytes, got '${r.outcome}'`);
      assert.ok(r.received < 2000 * MB);
      // The CPE saw the MPTCP leg reset (MP_FASTCLOSE), and the pair ran on the engine under test.
      await eventually(async () => counter(await metrics('cpe'), 'mpconvert_connections_total', { outcome: 'reset-b' }) - counter(cpeBefore, 'mpconvert_connections_total', { outcome: 'reset-b' }), (v) => v === 1, 'the CPE counted one reset of its MPTCP leg');
      const relayed = counter(await metrics('cpe'), 'mpconvert_relayed_total', { engine }) - counter(cpeBefore, 'mpconvert_relayed_total', { engine });
      assert.equal(relayed, 1, `moved by the ${engine} engine`);
      await startConcentrator(engine);
    });

    labTest(`relayEngine ${engine}: the CPE killed during a download: the client sees a reset, new connections fail open at once (IPv4, IPv6), a restarted CPE converts again`, async () => {
      if (!conc) await startConcentrator(engine);
      await startCpe(engine);
      const conc0 = await metrics('concentrator');
      const client = readClient(srv6, 2 * MB);
      await inProgress(client);
      assert.equal(counter(await metrics('concentrator'), 'mpconvert_setup_seconds_count'), counter(conc0, 'mpconvert_setup_seconds_count') + 1, 'the download is converted');
      const killedAt = Date.now();
      await cpe!.stop('SIGKILL');
      cpe = undefined;
      const r = await outcome(client);
      assert.equal(r.outcome, 'ECONNRESET', `the LAN client must see a reset after ${r.received} bytes, got '${r.outcome}'`);
      // The concentrator saw the CPE's leg reset (MP_FASTCLOSE), not a DATA_FIN: the server leg was reset too.
      await eventually(async () => counter(await metrics('concentrator'), 'mpconvert_connections_total', { outcome: 'reset-a' }) - counter(conc0, 'mpconvert_connections_total', { outcome: 'reset-a' }), (v) => v === 1, 'the concentrator counted one reset of the CPE leg');

      // Fail open: the interception rules are still there, but with no listener nothing is diverted.
      const failOpen0 = await converted();
      const firstOk: Record<string, number> = {};
      for (const [family, host] of [['IPv4', srv4], ['IPv6', srv6]] as const) {
        const seed = `open${engine}${family}`;
        let got: string | null = null;
        for (const deadline = Date.now() + 15_000; got === null && Date.now() < deadline; ) {
          got = await download(host, MB, seed);
          if (got === null) await new Promise((res) => setTimeout(res, 100));
        }
        assert.equal(got, deterministicSha256(seed, MB), `${family}: a new connection with the CPE dead gets the whole body`);
        firstOk[family] = Date.now() - killedAt;
      }
      process.stdout.write(`# ${engine}: first complete download after the kill: IPv4 ${firstOk['IPv4']} ms, IPv6 ${firstOk['IPv6']} ms\n`);
      // Generous for a busy 2-core machine; without fail-open it never succeeds at all.
      for (const [family, ms] of Object.entries(firstOk)) assert.ok(ms < 5_000, `${family} worked ${ms} ms after the kill`);
      assert.equal(await converted(), failOpen0, 'forwarded as if mpconvert were not installed: nothing converted');
      const tables = (await lab.hosts.cpe.exec('nft', ['list', 'tables'])).stdout;
      assert.match(tables, /mpconvert_cpe/, 'the dead CPE left its rules (this is the fail-open case, not a cleanup)');

      // Back: the next connections are converted again.
      await startCpe(engine);
      const back0 = await converted();
      for (const [family, host] of [['IPv4', srv4], ['IPv6', srv6]] as const) {
        const seed = `back${engine}${family}`;
        assert.equal(await download(host, MB, seed), deterministicSha256(seed, MB), `${family} after the restart`);
      }
      assert.equal(await converted(), back0 + 2, 'the restarted CPE converts both');
    });
  }
});
