/**
 * PROXY protocol v2: the encoder against golden vectors (the IPv4 and IPv6 ones are what Debian's HAProxy 2.6
 * sends with send-proxy-v2 for the same connections), the decoder on every vector whole and cut at every
 * offset, refusals with their codes, encoder refusals.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PROXY_V2_SIGNATURE, decodeProxyV2, encodeProxyV2, type ProxyV2Addresses, type ProxyV2Decoded } from '../../../src/protocol/index.js';
import { assertProtocolError, hex, loadVectors, view } from './helpers.js';

interface Valid {
  name: string;
  hex: string;
  rest?: string;
  encode?: boolean;
  encodeFrom?: ProxyV2Addresses;
  expect: { addresses?: ProxyV2Addresses } & Record<string, unknown>;
}
const vectors = loadVectors('proxy-v2.json') as unknown as { valid: Valid[]; invalid: Array<{ name: string; hex: string; code: string; reaction: Record<string, unknown> }> };

test('encodeProxyV2 reproduces the golden vectors', () => {
  let n = 0;
  for (const v of vectors.valid) {
    if (!v.encode) continue;
    const from = v.encodeFrom ?? v.expect.addresses;
    assert.ok(from, v.name);
    const whole = hex(v.hex);
    assert.equal(encodeProxyV2(from).toString('hex'), whole.subarray(0, whole.length - (v.rest?.length ?? 0) / 2).toString('hex'), v.name);
    n++;
  }
  assert.ok(n >= 5, 'IPv4, IPv6, both mixed pairs and port 0 are encoded');
});

test('decodeProxyV2: every valid vector, whole and cut at every offset (more until the last byte)', () => {
  for (const v of vectors.valid) {
    const buf = hex(v.hex);
    const restLen = (v.rest?.length ?? 0) / 2;
    const r = decodeProxyV2(buf);
    assert.equal(r.status, 'done', v.name);
    if (r.status !== 'done') continue;
    assert.deepEqual(view(r.header), v.expect, v.name);
    assert.equal(r.length, buf.length - restLen, v.name);
    assert.equal(r.rest.toString('hex'), v.rest ?? '', v.name);
    for (let cut = 0; cut < buf.length - restLen; cut++) assert.deepEqual(decodeProxyV2(buf.subarray(0, cut)), { status: 'more' } satisfies ProxyV2Decoded, `${v.name}: ${cut} bytes`);
  }
});

test('decodeProxyV2 refuses each invalid vector with its code, as soon as the wrong byte is there', () => {
  for (const v of vectors.invalid) {
    const buf = hex(v.hex);
    assertProtocolError(() => decodeProxyV2(buf), v.code, v.reaction, v.name);
    // Cut anywhere: a valid beginning so far (more) or the same error, never a header.
    let refusedAt = -1;
    for (let cut = 1; cut <= buf.length; cut++) {
      let r: ProxyV2Decoded | undefined;
      try {
        r = decodeProxyV2(buf.subarray(0, cut));
      } catch {
        assertProtocolError(() => decodeProxyV2(buf.subarray(0, cut)), v.code, v.reaction, `${v.name}: ${cut} bytes`);
        if (refusedAt < 0) refusedAt = cut;
        continue;
      }
      assert.equal(r.status, 'more', `${v.name}: ${cut} bytes`);
      assert.equal(refusedAt, -1, `${v.name}: refused at ${refusedAt} bytes, then accepted ${cut}`);
    }
    assert.ok(refusedAt > 0 && refusedAt <= 16, `${v.name}: refused within the fixed 16 bytes (at ${refusedAt})`);
  }
});

test('decode(encode(x)) gives x back (IPv4-mapped for a mixed pair)', () => {
  const pairs: Array<[string, number, string, number]> = [
    ['198.18.0.2', 1, '198.19.0.11', 65535],
    ['2001:db8::2', 65535, '2001:db8:100::11', 1],
    ['198.18.0.2', 0, '2001:db8:100::11', 443],
  ];
  for (const [sa, sp, da, dp] of pairs) {
    const enc = encodeProxyV2({ source: { address: sa, port: sp }, destination: { address: da, port: dp } });
    assert.ok(enc.subarray(0, 12).equals(PROXY_V2_SIGNATURE));
    const r = decodeProxyV2(enc);
    assert.equal(r.status, 'done');
    if (r.status !== 'done') continue;
    const mapped = (a: string, other: string) => (a.includes(':') === other.includes(':') || a.includes(':') ? a : `::ffff:${a}`);
    assert.deepEqual(r.header.addresses, { source: { address: mapped(sa, da), port: sp }, destination: { address: mapped(da, sa), port: dp } });
  }
});

test('encodeProxyV2 refuses what it cannot send (TypeError: a programming error)', () => {
  const ok = { address: '198.19.0.11', port: 80 };
  assert.throws(() => encodeProxyV2({ source: { address: 'lan-host', port: 1 }, destination: ok }), TypeError);
  assert.throws(() => encodeProxyV2({ source: { address: '198.18.0.2', port: 65536 }, destination: ok }), TypeError);
  assert.throws(() => encodeProxyV2({ source: { address: '198.18.0.2', port: -1 }, destination: ok }), TypeError);
  assert.throws(() => encodeProxyV2({ source: { address: '198.18.0.2', port: 1.5 }, destination: ok }), TypeError);
  assert.throws(() => encodeProxyV2({ source: { address: 'fe80::1%eth0', port: 1 }, destination: ok }), TypeError);
});
