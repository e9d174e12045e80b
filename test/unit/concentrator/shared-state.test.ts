/**
 * The shared state of `workers` > 1: the IPC client (what a worker uses) against the in-process one (what the
 * primary uses) gives the same answers for the same sequence, through the real codec and the serialisation
 * of child_process's 'advanced' channel (v8 serialize); limits are per CPE, the pool pairs a CPE with one
 * address, a replayed authenticator is refused, a dead worker's leases go back; the message codec refuses
 * bad messages with MPC_ERR_WORKER_MESSAGE.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { deserialize, serialize } from 'node:v8';
import { ConnectionLimits } from '../../../src/policy/limits.js';
import { ReplayCache, type CpeKey } from '../../../src/policy/auth.js';
import { PoolSourceAddress } from '../../../src/concentrator/source-address.js';
import { IpcSharedState, LocalSharedState, type AdmitAnswer, type AdmitRequest, type SharedState } from '../../../src/concentrator/shared-state.js';
import { decodePrimaryMessage, decodeWorkerMessage, WorkerMessageError } from '../../../src/concentrator/worker-messages.js';
import { serveSharedState } from '../../../src/concentrator/workers.js';
import { signallingFor } from '../../../src/cpe/session.js';

const CLOCK = 1_800_000_000_000;
const SECRET = randomBytes(32);
const POOL = ['198.19.0.128', '198.19.0.129'];
const DST = { address: '198.19.0.11', port: 8080 };
const mpTarget = { format: 'mp-convert' as const, sourceIe: false };

function local(): LocalSharedState {
  const keys = new Map<string, CpeKey>([['cpe-a', { id: 'cpe-a', secret: SECRET, cpe: 'cpe-a' }]]);
  const pool = new PoolSourceAddress(POOL, 'shared');
  return new LocalSharedState({
    limits: new ConnectionLimits({ maxConnections: 100, maxConnectionsPerCpe: 2, newConnectionsPerSecondPerCpe: 0 }),
    replay: new ReplayCache(100),
    auth: () => ({ keys, clockSkewS: 30, required: false }),
    sourceAddress: () => pool,
    now: () => CLOCK,
  });
}

/** A worker's IpcSharedState wired to a primary's LocalSharedState as the channel would: serialised, decoded, in order. */
function overIpc(primary: LocalSharedState, owner = 'worker-1'): IpcSharedState {
  const wire = <T>(m: T): unknown => deserialize(serialize(m));
  const client: IpcSharedState = new IpcSharedState((m) => {
    const msg = decodeWorkerMessage(wire(m));
    setImmediate(() => {
      if (msg.t !== 'admit' && msg.t !== 'release') return;
      const reply = serveSharedState(primary, owner, msg);
      if (!reply) return;
      const back = decodePrimaryMessage(wire(reply));
      setImmediate(() => back.t === 'admitted' && client.answer(back.id, back.answer));
    });
    return true;
  }, 1_000);
  return client;
}

const plain = (cpe: string, family: 4 | 6 = 4): AdmitRequest => ({ cpe, format: 'mp-convert', raw: signallingFor(mpTarget, DST), family });
const signed = (cpe: string, nonce: Buffer): AdmitRequest => ({
  cpe,
  format: 'mp-convert',
  raw: signallingFor(mpTarget, DST, undefined, { keyId: 'cpe-a', secret: SECRET, timestamp: Math.floor(CLOCK / 1000), nonce }),
  family: 4,
});

/** The sequence: admits and releases (by the index of an earlier admit). */
type Op = { admit: AdmitRequest } | { release: number };

async function run(s: SharedState, ops: Op[]): Promise<AdmitAnswer[]> {
  const answers: AdmitAnswer[] = [];
  for (const op of ops) {
    if ('admit' in op) answers.push(await s.admit(op.admit));
    else {
      const a = answers[op.release];
      if (a?.ok) s.release(a.lease);
    }
  }
  return answers;
}

const nonce = randomBytes(16);
const SEQUENCE: Op[] = [
  { admit: plain('198.18.1.2') },
  { admit: plain('198.18.1.2') },
  { admit: plain('198.18.1.2') }, // third of the same CPE: over maxConnectionsPerCpe 2
  { admit: plain('198.18.2.2') }, // another CPE: the other pool address
  { release: 0 },
  { admit: plain('198.18.1.2') }, // a slot again, the same address (still paired)
  { admit: signed('198.18.3.2', nonce) }, // identity key:cpe-a
  { admit: signed('198.18.4.2', nonce) }, // the same authenticator again, from elsewhere: a replay
  { admit: signed('198.18.4.2', randomBytes(16)) },
  { admit: signed('198.18.4.2', randomBytes(16)) }, // key:cpe-a's third: limits follow the identity, not the address
  { admit: plain('198.18.5.2', 6) }, // no IPv6 pool address: the kernel's
];

describe('shared state across worker processes', () => {
  test('the IPC client gives the same answers as the in-process state for the same sequence', async () => {
    const direct = await run(local(), SEQUENCE);
    const ipc = await run(overIpc(local()), SEQUENCE);
    assert.deepEqual(ipc, direct);
    // And what they are: limits per CPE, pairing, replay, identity.
    const codes = direct.map((a) => (a.ok ? `ok:${a.identity}:${a.external ?? 'kernel'}` : `${a.step}:${a.refusal.code}`));
    const ext = (a: AdmitAnswer | undefined) => (a?.ok ? a.external : undefined);
    const [pA, pB] = [ext(direct[0]), ext(direct[3])];
    assert.ok(pA && pB && POOL.includes(pA) && POOL.includes(pB));
    assert.notEqual(pA, pB, 'two CPEs on a shared pool of two: one address each (least loaded)');
    assert.deepEqual(codes, [
      `ok:198.18.1.2:${pA}`,
      `ok:198.18.1.2:${pA}`,
      'limits:max-connections-per-cpe',
      `ok:198.18.2.2:${pB}`,
      `ok:198.18.1.2:${pA}`,
      `ok:key:cpe-a:${pA}`,
      'authenticate:auth-replay',
      `ok:key:cpe-a:${pA}`,
      'limits:max-connections-per-cpe',
      'ok:198.18.5.2:kernel',
    ]);
  });

  test('two workers over one primary: one count per CPE and one pairing, whichever worker asks', async () => {
    const primary = local();
    const [w1, w2] = [overIpc(primary, 'worker-1'), overIpc(primary, 'worker-2')];
    const a = await w1.admit(plain('198.18.1.2'));
    const b = await w2.admit(plain('198.18.1.2'));
    const c = await w2.admit(plain('198.18.1.2'));
    assert.ok(a.ok && b.ok);
    assert.equal(a.external, b.external, 'the same pool address from both workers');
    assert.ok(!c.ok && c.refusal.code === 'max-connections-per-cpe', 'the second worker sees the first worker\'s slot');
    assert.equal(primary.leases, 2);
    // Worker 1 died: its connection's slot and pool reference go back; worker 2's stay.
    assert.equal(primary.releaseOwner('worker-1'), 1);
    assert.equal(primary.leases, 1);
    assert.ok((await w2.admit(plain('198.18.1.2'))).ok);
    // A release is idempotent (a duplicate, or one after releaseOwner, changes nothing).
    w1.release(a.lease);
    await new Promise((r) => setImmediate(r));
    assert.equal(primary.leases, 2);
  });

  test('no answer from the primary: primary-unavailable after the timeout; a closed channel refuses at once', async () => {
    const silent = new IpcSharedState(() => true, 50);
    const a = await silent.admit(plain('198.18.1.2'));
    assert.ok(!a.ok && a.refusal.code === 'primary-unavailable');
    const pending = silent.admit(plain('198.18.1.2'));
    silent.close();
    const b = await pending;
    assert.ok(!b.ok && b.refusal.code === 'primary-unavailable');
    const throwing = new IpcSharedState(() => {
      throw new Error('channel closed');
    }, 10_000);
    const t0 = Date.now();
    const c = await throwing.admit(plain('198.18.1.2'));
    assert.ok(!c.ok && c.refusal.code === 'primary-unavailable' && Date.now() - t0 < 1_000);
  });
});

describe('worker message codec', () => {
  const raw = Buffer.from('faa8faa8', 'hex');
  test('valid messages pass the v8 round trip unchanged', () => {
    const msgs = [
      { t: 'ready', pid: 42 },
      { t: 'admit', id: 1, req: { cpe: '198.18.1.2', format: 'mp-convert', raw, family: 4 } },
      { t: 'release', lease: 7 },
      { t: 'log', line: { event: 'open', session: 3 } },
      { t: 'scraped', id: 2, metrics: [{ name: 'x', type: 'counter', values: [] }] },
      { t: 'status', id: 3, status: { worker: 1, pid: 42, accepted: 10, active: 2 } },
    ];
    for (const m of msgs) assert.deepEqual(JSON.stringify(decodeWorkerMessage(deserialize(serialize(m)))), JSON.stringify(m));
    const answers = [
      { t: 'admitted', id: 1, answer: { ok: true, lease: 1, identity: 'key:cpe-a', keyId: 'cpe-a', external: '198.19.0.128' } },
      { t: 'admitted', id: 2, answer: { ok: false, step: 'limits', refusal: { code: 'max-connections-per-cpe' } } },
      { t: 'config', worker: 1, config: { listen: ['198.18.200.1:5000'] } },
      { t: 'scrape', id: 4 },
      { t: 'stop' },
    ];
    for (const m of answers) assert.deepEqual(decodePrimaryMessage(deserialize(serialize(m))), m);
  });

  test('bad messages are refused with MPC_ERR_WORKER_MESSAGE and say what is wrong', () => {
    const bad: Array<[unknown, RegExp]> = [
      [null, /Cannot parse a worker message/],
      ['admit', /Cannot parse/],
      [{ t: 'nope' }, /t:/],
      [{ t: 'admit', id: 1 }, /req/],
      [{ t: 'admit', id: -1, req: { cpe: 'x', format: 'mp-convert', raw, family: 4 } }, /id/],
      [{ t: 'admit', id: 1, req: { cpe: 'x', format: 'mp-convert', raw: 'faa8', family: 4 } }, /req\.raw/],
      [{ t: 'admit', id: 1, req: { cpe: 'x', format: 'mp-convert', raw: Buffer.alloc(70_000), family: 4 } }, /64 KiB/],
      [{ t: 'admit', id: 1, req: { cpe: 'x', format: 'mp-convert', raw, family: 5 } }, /req\.family/],
      [{ t: 'release', lease: 1, extra: true }, /Unrecognized key|extra/],
      [{ t: 'status', id: 1, status: { worker: 1, pid: 0, accepted: 0, active: 0 } }, /status\.pid/],
    ];
    for (const [m, why] of bad) {
      assert.throws(
        () => decodeWorkerMessage(m),
        (err: unknown) => err instanceof WorkerMessageError && err.code === 'MPC_ERR_WORKER_MESSAGE' && why.test(err.message),
        `${JSON.stringify(m)?.slice(0, 80)} refused with ${why}`,
      );
    }
    assert.throws(() => decodePrimaryMessage({ t: 'admitted', id: 1, answer: { ok: false, step: 'limits', refusal: { code: 'no-such-refusal' } } }), /answer\.refusal\.code/);
    assert.throws(() => decodePrimaryMessage({ t: 'admitted', id: 1, answer: { ok: true, identity: 'x' } }), /answer\.lease/);
  });
});
