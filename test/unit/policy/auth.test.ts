/** The authenticate gate's parts: the replay cache's bound and expiry, the open-allow check, keys and secret files. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ReplayCache, authenticateGate, missingCookieTlv, openAllowProblem } from '../../../src/policy/auth.js';
import { refuse, refusalReaction } from '../../../src/policy/refusals.js';
import { loadKeysFile, parseKeysFile } from '../../../src/concentrator/keys.js';
import { parseSecret } from '../../../src/control/secret-file.js';
import { encodeConvertMessage, encodeConvertErrorReply, encodeMpConvert, decodeConvertMessage, interpretConvertError } from '../../../src/protocol/index.js';
import { signallingFor } from '../../../src/cpe/session.js';
import { PrefixSet } from '../../../src/policy/prefix-set.js';

test('replay cache: a nonce is seen until its expiry, then forgotten; when full it refuses (fail closed), never evicts', () => {
  const c = new ReplayCache(2);
  assert.equal(c.remember('a', 100, 50), 'new');
  assert.equal(c.remember('a', 100, 60), 'seen');
  assert.equal(c.remember('b', 130, 60), 'new');
  assert.equal(c.remember('c', 130, 60), 'full', 'full: refused');
  assert.equal(c.remember('a', 100, 100), 'seen', 'still held at its expiry second');
  assert.equal(c.remember('c', 130, 101), 'new', 'a expired at 101: room again');
  assert.equal(c.remember('a', 140, 101), 'full');
  c.sweep(131);
  assert.equal(c.size, 0);
});

test('open allow: a prefix shorter than /8 needs auth with required: true', () => {
  assert.match(openAllowProblem(['0.0.0.0/0'], undefined) ?? '', /whole internet.*auth: \{ keysFile/);
  assert.match(openAllowProblem(['198.18.0.0/15', '::/0'], undefined) ?? '', /::\/0/);
  assert.match(openAllowProblem(['2000::/3'], { keysFile: 'k', required: false }) ?? '', /auth.required is false/);
  assert.equal(openAllowProblem(['0.0.0.0/0', '::/0'], { keysFile: 'k', required: true }), undefined);
  assert.equal(openAllowProblem(['10.0.0.0/8', '198.18.0.0/15', '2001:db8::/32'], undefined), undefined);
});

test('secrets: hex: or base64:, at least 16 bytes', () => {
  assert.equal(parseSecret('hex:' + '00'.repeat(16)).ok, true);
  assert.equal(parseSecret('base64:' + Buffer.alloc(32, 1).toString('base64')).ok, true);
  assert.equal(parseSecret('00'.repeat(32)).ok, false);
  assert.equal(parseSecret('hex:' + '00'.repeat(15)).ok, false);
  assert.equal(parseSecret('hex:0g').ok, false);
});

test('keys file: parsed; duplicate ids, bad secrets, unknown fields refused with the entry named; world-readable refused', async () => {
  const ring = parseKeysFile(`keys:\n  - { id: a1, secret: "hex:${'11'.repeat(32)}", cpe: site-1 }\n  - { id: a2, secret: "hex:${'22'.repeat(32)}", cpe: site-1, from: [198.51.100.0/24] }\n  - { id: b, secret: "base64:${Buffer.alloc(32, 3).toString('base64')}" }\n`, 'k.yaml');
  assert.deepEqual([...ring.keys()], ['a1', 'a2', 'b']);
  assert.equal(ring.get('a2')!.cpe, 'site-1');
  assert.equal(ring.get('b')!.cpe, 'b', 'cpe defaults to the key id');
  assert.throws(() => parseKeysFile(`keys:\n  - { id: a, secret: "hex:${'11'.repeat(32)}" }\n  - { id: a, secret: "hex:${'11'.repeat(32)}" }\n`, 'k.yaml'), /keys\.1: key id a appears twice/);
  assert.throws(() => parseKeysFile(`keys:\n  - { id: a, secret: "hex:11" }\n`, 'k.yaml'), /keys\.0 \(a\): secret: 1 bytes/);
  assert.throws(() => parseKeysFile(`keys:\n  - { id: "a b", secret: x }\n`, 'k.yaml'), /key id is 1-32/);
  assert.throws(() => parseKeysFile(`keys:\n  - { id: a, secret: x, colour: red }\n`, 'k.yaml'), /Invalid keys file/);
  const dir = await mkdtemp(join(tmpdir(), 'mpc-keys-'));
  try {
    const path = join(dir, 'keys.yaml');
    await writeFile(path, `keys:\n  - { id: a, secret: "hex:${'11'.repeat(32)}" }\n`);
    await chmod(path, 0o644);
    await assert.rejects(loadKeysFile(path), (err: Error & { code?: string }) => err.code === 'MPC_ERR_CONFIG' && /accessible to every user \(mode 0644\).*chmod 600/.test(err.message));
    await chmod(path, 0o600);
    assert.equal((await loadKeysFile(path)).size, 1);
    await assert.rejects(loadKeysFile(join(dir, 'none.yaml')), /Cannot read keys file/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('gate: required false lets a connection without authenticator pass by its address, never a bad one; from prefixes', () => {
  const secret = Buffer.alloc(32, 5);
  const keys = new Map([['k1', { id: 'k1', secret, cpe: 'site', from: PrefixSet.from(['198.51.100.0/24']) }]]);
  const settings = { keys, clockSkewS: 30, required: false, replay: new ReplayCache(10) };
  const t = { address: 'x:1', format: 'mp-convert' as const, sourceIe: false, zeroRtt: false };
  const plain = encodeMpConvert([{ type: 0, direction: 'destination', address: '198.19.0.1', port: 80 }]);
  assert.deepEqual(authenticateGate({ format: 'mp-convert', raw: plain, source: '203.0.113.9' }, settings, 1e12), { ok: true, identity: '203.0.113.9' });
  const signed = (n: number) => signallingFor(t, { address: '198.19.0.1', port: 80 }, undefined, { keyId: 'k1', secret, timestamp: 1e9, nonce: Buffer.alloc(16, n) });
  const bad = Buffer.from(signed(1));
  bad[bad.length - 1]! ^= 0x80;
  const code = (raw: Buffer, source: string) => {
    const v = authenticateGate({ format: 'mp-convert', raw, source }, settings, 1e12);
    return v.ok ? v.identity : v.refusal.code;
  };
  assert.equal(code(bad, '198.51.100.7'), 'auth-mac');
  assert.equal(code(signed(2), '203.0.113.9'), 'auth-source');
  assert.equal(code(signed(3), '198.51.100.7'), 'key:site');
});

test('Missing Cookie: the reply carries a Cookie TLV (Version 1, the concentrator clock); the table never sends 3 without it', () => {
  const cookie = missingCookieTlv(1796083200);
  assert.equal(cookie.toString('hex'), '16030000010000006b0e0e00');
  const reply = decodeConvertMessage(encodeConvertErrorReply({ errorCode: 3, extra: cookie }));
  assert.deepEqual(interpretConvertError(reply.error!), { code: 3, name: 'missing-cookie', cookieTlv: cookie });
  const v = authenticateGate(
    { format: 'rfc8803', raw: encodeConvertMessage({ tlvs: [{ type: 'connect', address: '198.19.0.1', port: 80, options: Buffer.alloc(0) }] }), source: '198.51.100.1' },
    { keys: new Map(), clockSkewS: 30, required: true, replay: new ReplayCache(1) },
    1796083200_000,
  );
  assert.ok(!v.ok);
  assert.deepEqual(refusalReaction(v.refusal, 'rfc8803'), { kind: 'convert-error', errorCode: 3, value: 0, extra: cookie });
  assert.deepEqual(refusalReaction(refuse('auth-missing'), 'rfc8803'), { kind: 'convert-error', errorCode: 32 });
});
