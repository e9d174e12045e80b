/**
 * The authenticator (src/protocol/auth.ts) against the golden vectors of test/vectors/auth.json: the CPE's
 * signallingFor reproduces every valid vector byte for byte; the authenticate gate accepts each valid one
 * (read through the signalling decoder, cut at every offset) and refuses each refused one with its reason.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { SignallingDecoder } from '../../../src/protocol/index.js';
import { encodeAuthenticator, locateAuthenticator, parseAuthenticator, signAuthenticator } from '../../../src/protocol/auth.js';
import { ReplayCache, authenticateGate, type CpeKey } from '../../../src/policy/auth.js';
import { signallingFor } from '../../../src/cpe/session.js';
import { hex, splits } from './helpers.js';

interface AuthVector {
  name: string;
  format: 'mp-convert' | 'rfc8803';
  hex: string;
  reason?: string;
  sign?: { keyId: string; sourceIe: boolean; destination: { address: string; port: number }; source?: { address: string; port: number } };
}
const file = JSON.parse(readFileSync(new URL('../../../../test/vectors/auth.json', import.meta.url), 'utf8')) as {
  keys: Record<string, string>;
  timestamp: number;
  nonce: string;
  now: number;
  clockSkewS: number;
  valid: AuthVector[];
  refused: AuthVector[];
};
const keys = new Map<string, CpeKey>(Object.entries(file.keys).map(([id, s]) => [id, { id, secret: hex(s), cpe: id }]));

function readWhole(pieces: Buffer[]): Buffer {
  const d = new SignallingDecoder();
  for (const p of pieces) {
    const r = d.push(p);
    if (r.status === 'done') return r.raw;
  }
  throw new Error('signalling never completed');
}

const judge = (v: AuthVector, raw: Buffer, replay = new ReplayCache(100)) =>
  authenticateGate({ format: v.format, raw, source: '198.51.100.7' }, { keys, clockSkewS: file.clockSkewS, required: true, replay }, file.now * 1000);

test('auth vectors are present', () => {
  assert.ok(file.valid.length >= 5 && file.refused.length >= 20);
});

for (const v of file.valid) {
  test(`auth valid: ${v.name}`, () => {
    const s = v.sign!;
    const target = { address: '198.18.0.1:443', format: v.format, sourceIe: s.sourceIe, zeroRtt: false };
    const signed = signallingFor(target, s.destination, s.source, { keyId: s.keyId, secret: hex(file.keys[s.keyId]!), timestamp: file.timestamp, nonce: hex(file.nonce) });
    assert.equal(signed.toString('hex'), v.hex, 'the CPE sends exactly the vector');
    for (const pieces of splits(hex(v.hex))) {
      const verdict = judge(v, readWhole(pieces));
      assert.deepEqual(verdict, { ok: true, identity: `key:${s.keyId}`, keyId: s.keyId });
    }
    // The same bytes a second time within the window: a replay.
    const replay = new ReplayCache(100);
    assert.equal(judge(v, hex(v.hex), replay).ok, true);
    const again = judge(v, hex(v.hex), replay);
    assert.equal(again.ok ? 'accepted' : again.refusal.code, 'auth-replay');
  });
}

for (const v of file.refused) {
  test(`auth refused: ${v.name} -> ${v.reason}`, () => {
    const raw = readWhole([hex(v.hex)]);
    const verdict = judge(v, raw);
    assert.equal(verdict.ok ? 'accepted' : verdict.refusal.code, v.reason);
  });
}

test('codec: the value round-trips; parse is total on every prefix and never accepts a cut value', () => {
  const f = { keyId: 'cpe-1', timestamp: 123456, nonce: Buffer.alloc(16, 9) };
  const v = encodeAuthenticator(f);
  const p = parseAuthenticator(v);
  assert.ok(p.ok);
  assert.deepEqual({ keyId: p.value.keyId, timestamp: p.value.timestamp, nonce: p.value.nonce.toString('hex') }, { keyId: 'cpe-1', timestamp: 123456, nonce: f.nonce.toString('hex') });
  for (let n = 0; n < v.length; n++) assert.equal(parseAuthenticator(v.subarray(0, n)).ok, false, `cut at ${n}`);
  assert.equal(parseAuthenticator(Buffer.concat([v, Buffer.alloc(3)])).ok, true, 'up to 3 bytes of zero padding');
  assert.equal(parseAuthenticator(Buffer.concat([v, Buffer.alloc(4)])).ok, false, '4 bytes after the MAC');
  assert.equal(parseAuthenticator(Buffer.concat([v, Buffer.from([1])])).ok, false, 'a non-zero byte after the MAC');
  assert.throws(() => encodeAuthenticator({ ...f, keyId: 'a b' }), TypeError);
  assert.throws(() => encodeAuthenticator({ ...f, keyId: 'x'.repeat(33) }), TypeError);
  assert.throws(() => encodeAuthenticator({ ...f, nonce: Buffer.alloc(8) }), TypeError);
  assert.throws(() => signAuthenticator('mp-convert', hex('faa8faa8000a0001c61203021f900000'), Buffer.alloc(32)), TypeError);
  assert.equal(locateAuthenticator('rfc8803', hex('010622630a051f9000000000000000000000ffffc6120302')), 'none');
});
