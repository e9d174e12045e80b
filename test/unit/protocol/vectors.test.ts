/**
 * Golden hex vectors (test/vectors/*.json): every valid vector decodes to its expected value whole, cut in
 * two at every offset and one byte at a time; every invalid vector throws its ProtocolError code with its
 * wire reaction, however it is cut, and never yields a result first.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ConvertReplyDecoder,
  SignallingDecoder,
  UdpFrameDecoder,
  decodeConvertMessage,
  decodeMpConvert,
  interpretConvertError,
  type SignallingResult,
  type UdpFrame,
} from '../../../src/protocol/index.js';
import { assertProtocolError, hex, loadVectors, splits, view } from './helpers.js';

function feedSignalling(pieces: Buffer[]): Extract<SignallingResult, { status: 'done' }> {
  const d = new SignallingDecoder();
  let done: Extract<SignallingResult, { status: 'done' }> | undefined;
  let rest: Buffer[] = [];
  for (const p of pieces) {
    if (done) {
      rest.push(p); // the caller owns whatever comes after the signalling
      continue;
    }
    const r = d.push(p);
    assert.ok(d.buffered <= 1020);
    if (r.status === 'done') {
      done = r;
      rest = [r.rest];
    }
  }
  assert.ok(done, 'signalling never completed');
  return { ...done, rest: Buffer.concat(rest) };
}

const mp = loadVectors('mp-convert.json');
const rfc = loadVectors('rfc8803.json');
const udp = loadVectors('udp-frame.json');
const detection = loadVectors('detection.json');

test('vector files are present and not empty', () => {
  assert.ok((mp.valid?.length ?? 0) >= 10 && (mp.invalid?.length ?? 0) >= 10);
  assert.ok((rfc.valid?.length ?? 0) >= 15 && (rfc.invalid?.length ?? 0) >= 15);
  assert.ok((udp.valid?.length ?? 0) >= 4 && (udp.invalid?.length ?? 0) >= 5);
  assert.ok((detection.invalid?.length ?? 0) >= 3);
});

for (const [file, vectors] of [['mp-convert', mp], ['rfc8803', rfc]] as const) {
  for (const v of vectors.valid ?? []) {
    test(`${file} valid: ${v.name}`, () => {
      const sig = hex(v.hex);
      const rest = hex(v.rest ?? '');
      const stream = Buffer.concat([sig, rest]);
      for (const pieces of splits(stream)) {
        const r = feedSignalling(pieces);
        assert.equal(r.raw.toString('hex'), v.hex, 'raw is the exact signalling');
        assert.equal(r.rest.toString('hex'), v.rest ?? '', 'rest is the application bytes');
        if (file === 'mp-convert') {
          assert.deepEqual(view(r.signalling), v.expect);
        } else {
          assert.equal(r.signalling.format, 'rfc8803');
          assert.deepEqual(view((r.signalling as { message: unknown }).message), v.expect);
        }
      }
      if (file === 'mp-convert') {
        assert.deepEqual(view(decodeMpConvert(sig)), v.expect);
      } else {
        const m = decodeConvertMessage(sig);
        assert.deepEqual(view(m), v.expect);
        if (v.error !== undefined) assert.deepEqual(view(interpretConvertError(m.error!)), v.error);
        // The CPE reads the same bytes as a reply, split anywhere.
        for (const pieces of splits(stream)) {
          const d = new ConvertReplyDecoder();
          let out: unknown;
          let after: Buffer[] = [];
          for (const p of pieces) {
            if (out) {
              after.push(p);
              continue;
            }
            const r = d.push(p);
            if (r.status === 'done') {
              out = r.message;
              after = [r.rest];
              assert.equal(r.raw.toString('hex'), v.hex);
            }
          }
          assert.deepEqual(view(out), v.expect);
          assert.equal(Buffer.concat(after).toString('hex'), v.rest ?? '');
        }
      }
    });
  }
  for (const v of vectors.invalid ?? []) {
    test(`${file} invalid: ${v.name} -> ${v.code}`, () => {
      // Trailing bytes must not change the verdict: a violation is never "need more".
      const stream = Buffer.concat([hex(v.hex), Buffer.alloc(1100, 0x5a)]);
      for (const pieces of splits(hex(v.hex)).concat([[stream]])) {
        const d = new SignallingDecoder();
        assertProtocolError(
          () => {
            for (const p of pieces) assert.equal(d.push(p).status, 'need-more', 'no result before the error');
            assert.fail('no error');
          },
          v.code,
          v.reaction,
          v.name,
        );
      }
      if (file === 'mp-convert') {
        assertProtocolError(() => decodeMpConvert(hex(v.hex)), v.code, v.reaction);
      } else {
        assertProtocolError(() => decodeConvertMessage(hex(v.hex)), v.code, v.reaction);
        // The client side never answers with an Error TLV: it resets.
        assertProtocolError(() => new ConvertReplyDecoder().push(hex(v.hex)), 'MPC_ERR_CONVERT_REPLY', { kind: 'abort' });
      }
    });
  }
}

for (const v of detection.invalid ?? []) {
  test(`detection invalid: ${v.name} -> ${v.code}`, () => {
    for (const pieces of splits(hex(v.hex))) {
      const d = new SignallingDecoder();
      assertProtocolError(
        () => {
          for (const p of pieces) d.push(p);
          assert.fail('no error');
        },
        v.code,
        v.reaction,
      );
    }
  });
}

for (const v of udp.valid ?? []) {
  test(`udp-frame valid: ${v.name}`, () => {
    for (const pieces of splits(hex(v.hex))) {
      const d = new UdpFrameDecoder();
      const frames: UdpFrame[] = [];
      for (const p of pieces) frames.push(...d.push(p));
      assert.deepEqual(view(frames), v.expect);
      assert.equal(d.buffered, 0);
    }
  });
}

for (const v of udp.invalid ?? []) {
  test(`udp-frame invalid: ${v.name} -> ${v.code}`, () => {
    for (const pieces of splits(hex(v.hex))) {
      const d = new UdpFrameDecoder();
      assertProtocolError(
        () => {
          for (const p of pieces) assert.deepEqual(d.push(p), []);
          assert.fail('no error');
        },
        v.code,
        v.reaction,
      );
    }
  });
}
