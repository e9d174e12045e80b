/**
 * Adversarial: the destination lists and the NAT64 form, on real concentrators in the lab.
 *  - Two concentrators side by side in the concentrator namespace, one with a short deny list and one with
 *    100,000 prefixes in its YAML file: connection setup (dial -> whole echo) measured for both in the same
 *    run, connections alternating between them; the large list may cost no more than a small factor.
 *  - The NAT64 form (64:ff9b::/96, RFC 6052) of the concentrator's own address and of a denied server is
 *    refused by the destination gate: refused-counter deltas, and nothing reaches any server.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab } from '../../../src/lab/index.js';
import { encodeMpConvert } from '../../../src/protocol/index.js';
import { labCapabilityMissing, IN_CI } from '../../support/capabilities.js';
import { CLI, Proc, TOOL, runTool, start } from '../../support/lab-procs.js';

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

const CONC = '198.18.200.1';
const SRV1 = '198.19.0.11';
/** Served by a sink too, but listed in both deny lists: nothing may reach it. */
const SRV2 = '198.19.0.12';
const SHORT = { port: 5000, admin: '127.0.0.1:9090' };
const LARGE = { port: 5001, admin: '127.0.0.1:9091' };
const LARGE_COUNT = 100_000;

const ie = (address: string, port: number) => encodeMpConvert([{ type: 0, direction: 'destination', address, port }]).toString('hex');
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? (s[(s.length - 1) / 2] as number) : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
};

/** 100,000 prefixes that hold none of the lab's addresses: /32s in 100.64.0.0/10, /48s in 3fff::/20. */
function largeDenyList(): string[] {
  const list: string[] = [];
  for (let i = 0; list.length < LARGE_COUNT / 2; i++) list.push(`100.${64 + ((i >> 16) & 63)}.${(i >> 8) & 255}.${i & 255}/32`);
  for (let i = 0; list.length < LARGE_COUNT; i++) list.push(`3fff:${((i >> 16) & 0xfff).toString(16)}:${(i & 0xffff).toString(16)}::/48`);
  return list;
}

describe('adversarial: deny lists and NAT64 forms (lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  const procs: Proc[] = [];
  let srv1: Proc;
  let srv2: Proc;
  let short: Proc;
  let large: Proc;
  const dir = mkdtempSync(join(tmpdir(), 'mpc-deny-'));
  const config = (c: { port: number; admin: string }, deny: string[]) =>
    `listen: ["${CONC}:${c.port}"]\nallow: ["198.18.0.0/16"]\nadmin: "${c.admin}"\nshutdownDrainS: 1\n` +
    // The refused lines name the destination only when asked (RFC 6888 REQ-12).
    `sessionLogging:\n  destinations: true\n` +
    `server:\n  connectTimeoutMs: 2000\ndeny:\n${deny.map((p) => `  - "${p}"`).join('\n')}\n`;
  const metric = async (admin: string, name: string, labels = ''): Promise<number> => {
    const text = (await lab.hosts.concentrator.exec('curl', ['-s', `http://${admin}/metrics`])).stdout;
    const line = text.split('\n').find((l) => l.startsWith(name) && l.includes(labels));
    return line ? Number(line.split(' ').pop()) : 0;
  };

  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: 0 }], servers: 2 });
    // Belt and braces: whatever the gate says, no packet for a NAT64 address leaves the concentrator.
    await lab.hosts.concentrator.exec('ip', ['-6', 'route', 'add', 'unreachable', '64:ff9b::/96']);
    srv1 = start(lab.hosts.servers[0]!, [TOOL('sink-server'), JSON.stringify({ host: SRV1, port: 8080, reply: 10 })]);
    srv2 = start(lab.hosts.servers[1]!, [TOOL('sink-server'), JSON.stringify({ host: SRV2, port: 8080, reply: 10 })]);
    procs.push(srv1, srv2);
    const shortFile = join(dir, 'short.yaml');
    const largeFile = join(dir, 'large.yaml');
    writeFileSync(shortFile, config(SHORT, ['100.64.0.0/10', '3fff::/20', `${SRV2}/32`]));
    writeFileSync(largeFile, config(LARGE, [...largeDenyList(), `${SRV2}/32`]));
    short = start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', shortFile]);
    large = start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', largeFile]);
    procs.push(short, large);
    const t0 = Date.now();
    await Promise.all([
      short.waitLine((l) => l.startsWith('ready'), 60_000),
      large.waitLine((l) => l.startsWith('ready'), 60_000),
      srv1.waitLine((l) => l.includes('ready')),
      srv2.waitLine((l) => l.includes('ready')),
    ]);
    process.stdout.write(`# both concentrators ready after ${Date.now() - t0} ms (one with ${LARGE_COUNT + 1} deny prefixes)\n`);
  });

  after(async () => {
    for (const p of procs.reverse()) await p.stop();
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  test('connection setup with 100,000 deny prefixes costs no more than a small factor over a short list', { timeout: 300_000 }, async () => {
    const signalling = ie(SRV1, 8080);
    const served = srv1.json().length;
    const rounds = 120;
    const out = await runTool<{ ms: number[][]; errors: number[] }>(
      lab.hosts.cpe,
      'setup-client',
      { targets: [{ host: CONC, port: SHORT.port }, { host: CONC, port: LARGE.port }], signallingHex: signalling, head: signalling.length / 2, rounds },
      280_000,
    );
    assert.deepEqual(out.errors, [0, 0], 'every connection was confirmed');
    // The first connections warm both processes up (JIT, caches): not counted.
    const [s, l] = out.ms.map((xs) => median(xs.slice(20))) as [number, number];
    process.stdout.write(`# setup median: short list ${s.toFixed(2)} ms, ${LARGE_COUNT + 1} prefixes ${l.toFixed(2)} ms\n`);
    assert.ok(l <= 3 * s + 2, `setup with the large deny list: median ${l.toFixed(2)} ms, short list ${s.toFixed(2)} ms`);
    await srv1.waitLine(() => srv1.json().length >= served + 2 * rounds);
  });

  test('the NAT64 form of the own address or of a denied server is refused; nothing reaches any server', { timeout: 120_000 }, async () => {
    const cases: Array<{ dst: string; why: string }> = [
      { dst: '64:ff9b::c612:c801', why: 'own-address' }, // 198.18.200.1, the listener's address
      { dst: `64:ff9b::${CONC}`, why: 'own-address' },
      { dst: '64:ff9b::c613:c', why: 'deny-prefix' }, // 198.19.0.12
      { dst: SRV2, why: 'deny-prefix' },
    ];
    const served = [srv1.json().length, srv2.json().length];
    for (const c of [SHORT, LARGE]) {
      const refusedBefore = await metric(c.admin, 'mpconvert_refused_total', 'reason="destination"');
      const legsBefore = await metric(c.admin, 'mpconvert_server_leg_total');
      const proc = c === SHORT ? short : large;
      const logBefore = proc.stderr.length;
      for (const x of cases) {
        const r = await runTool<{ error?: string }>(lab.hosts.cpe, 'mpc-client', { host: CONC, port: c.port, fastOpen: 'off', signallingHex: ie(x.dst, 8080), send: 100, head: 16 });
        assert.equal(r.error, 'ECONNRESET', `${x.dst} on :${c.port}: ${JSON.stringify(r)}`);
      }
      assert.equal(await metric(c.admin, 'mpconvert_refused_total', 'reason="destination"'), refusedBefore + cases.length, `:${c.port} refused all by the destination gate`);
      assert.equal(await metric(c.admin, 'mpconvert_server_leg_total'), legsBefore, `:${c.port} dialled nothing`);
      // The session log names the rule for each.
      const refusals = proc.stderr
        .slice(logBefore)
        .split('\n')
        .filter((line) => line.includes('"event":"refused"'))
        .map((line) => JSON.parse(line) as { destination?: string; why?: string });
      assert.deepEqual(
        refusals.map((r) => [r.destination, r.why]),
        cases.map((x) => [x.dst === `64:ff9b::${CONC}` ? '64:ff9b::c612:c801' : x.dst, x.why]),
      );
    }
    assert.deepEqual([srv1.json().length, srv2.json().length], served, 'no server saw a connection');
  });
});
