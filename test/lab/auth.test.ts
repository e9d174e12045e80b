/**
 * CPE authentication with real kernel MPTCP: a concentrator open to the whole internet (allow 0.0.0.0/0,
 * ::/0) with a keys file. A client in the CPE namespace sends authenticated signalling in its SYN (TFO) over
 * two uplinks: converted, echoed byte for byte (authenticator included), bytes exact. The same SYN again (a
 * replay) and a forged one are refused before any dial: the server sees nothing, the counters move.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab } from '../../src/lab/index.js';
import { signallingFor } from '../../src/cpe/session.js';
import { labCapabilityMissing, IN_CI } from '../support/capabilities.js';
import { CLI, Proc, TOOL, runTool, start, type ClientOut, type ServerOut } from '../support/lab-procs.js';

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

const SRV = '198.19.0.11';
const CONC = '198.18.200.1';
const SECRET = randomBytes(32);

describe('CPE authentication (lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  let conc: Proc;
  let srv: Proc;
  const dir = mkdtempSync(join(tmpdir(), 'mpc-auth-lab-'));

  const metric = async (reason: string): Promise<number> => {
    const text = (await lab.hosts.concentrator.exec('curl', ['-s', 'http://127.0.0.1:9090/metrics'])).stdout;
    const line = text.split('\n').find((l) => l.startsWith('mpconvert_refused_total') && l.includes(`reason="${reason}"`));
    return line ? Number(line.split(' ').pop()) : 0;
  };
  const signed = (secret = SECRET) =>
    signallingFor({ format: 'mp-convert', sourceIe: false }, { address: SRV, port: 8080 }, undefined, {
      keyId: 'cpe-lab',
      secret,
      timestamp: Math.floor(Date.now() / 1000),
      nonce: randomBytes(16),
    });
  const client = (signalling: Buffer, app: Buffer, send = 1_000_000) =>
    runTool<ClientOut>(lab.hosts.cpe, 'mpc-client', {
      host: CONC,
      port: 5000,
      fastOpen: 'no-cookie',
      signallingHex: signalling.toString('hex'),
      appHex: app.toString('hex'),
      send,
      head: signalling.length,
      holdMs: 300,
      timeoutMs: 30_000,
    });

  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: 0 }, { rate: 0 }], servers: 1, mptcpRouting: true });
    const keysFile = join(dir, 'keys.yaml');
    writeFileSync(keysFile, `keys:\n  - { id: cpe-lab, secret: "hex:${SECRET.toString('hex')}" }\n`, { mode: 0o600 });
    const configFile = join(dir, 'concentrator.yaml');
    writeFileSync(
      configFile,
      `listen: ["${CONC}:5000"]\nallow: ["0.0.0.0/0", "::/0"]\nauth:\n  keysFile: ${keysFile}\nadmin: "127.0.0.1:9090"\nshutdownDrainS: 1\nsignalling:\n  timeoutMs: 1500\n`,
    );
    srv = start(lab.hosts.servers[0]!, [TOOL('sink-server'), JSON.stringify({ host: SRV, port: 8080, reply: 100_000 })]);
    conc = start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', configFile]);
    await Promise.all([conc.waitLine((l) => l.startsWith('ready')), srv.waitLine((l) => l.includes('ready'))]);
  });

  after(async () => {
    await conc?.stop();
    await srv?.stop();
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  test('authenticated 0-RTT conversion over two subflows; its replay and a forgery are refused with nothing sent to the server', { timeout: 150_000 }, async () => {
    const app = randomBytes(200);
    const signalling = signed();
    const before = srv.json<ServerOut>().length;
    const out = await client(signalling, app);
    assert.equal(out.error, undefined, JSON.stringify(out));
    assert.equal(out.head, signalling.toString('hex'), 'the echo: every IE, the authenticator included, byte for byte');
    assert.equal(out.mptcp, true);
    assert.equal(out.subflows, 2, 'one subflow per uplink');
    await srv.waitLine(() => srv.json<ServerOut>().length > before);
    const s = srv.json<ServerOut>()[before]!;
    assert.equal(s.received, 1_000_000 + app.length, 'the SYN data and the rest reached the server, nothing else');
    assert.equal(s.receivedSha256, out.sentSha256);
    assert.equal(out.receivedSha256, s.sentSha256);

    const replayBefore = await metric('auth-replay');
    const macBefore = await metric('auth-mac');
    // Refused: the concentrator aborts (RST / MP_FASTCLOSE) without a byte of echo.
    const replay = await client(signalling, app, 0);
    assert.match(replay.error ?? '', /ECONNRESET|EPIPE/, `the replayed SYN is reset: ${JSON.stringify(replay)}`);
    assert.ok(!replay.head, 'and gets no echo');
    const bad = await client(signed(randomBytes(32)), app, 0);
    assert.match(bad.error ?? '', /ECONNRESET|EPIPE/, `a forged authenticator is reset: ${JSON.stringify(bad)}`);
    assert.equal(await metric('auth-replay'), replayBefore + 1);
    assert.equal(await metric('auth-mac'), macBefore + 1);
    assert.equal(srv.json<ServerOut>().length, before + 1, 'the server saw only the authenticated connection');
  });
});
