/**
 * fast-check properties: decode(encode(x)) = x for every format; the decoders throw nothing but
 * ProtocolError on any bytes, however they are cut; they never look past their limits.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  CONVERT_MAX_BYTES,
  ConvertReplyDecoder,
  MP_CONVERT_LIMITS,
  ProtocolError,
  SignallingDecoder,
  UdpFrameDecoder,
  PROXY_V2_SIGNATURE,
  canonicalAddress,
  decodeConvertMessage,
  decodeProxyV2,
  encodeProxyV2,
  encodeConvertMessage,
  encodeMpConvert,
  encodeTcpOptions,
  encodeUdpFrame,
  parseMpConvert,
  type ConvertTlv,
  type Ie,
  type UdpFrame,
} from '../../../src/protocol/index.js';
import { view } from './helpers.js';

const RUNS = { numRuns: 400 };

const ipv4 = fc.ipV4();
// Canonical text: what the decoders give back. IPv4-mapped IPv6 keeps its IPv6 form in MP_CONVERT.
const ipv6 = fc.ipV6().map(canonicalAddress);
const address = fc.oneof(ipv4, ipv6);
const port = fc.integer({ min: 1, max: 65535 });
const direction = fc.constantFrom('destination' as const, 'source' as const);
const bytes = (max: number) => fc.uint8Array({ maxLength: max }).map((a) => Buffer.from(a));
const words = (maxWords: number) => fc.integer({ min: 0, max: maxWords }).chain((n) => fc.uint8Array({ minLength: n * 4, maxLength: n * 4 }).map((a) => Buffer.from(a)));

const addressIe = fc.record({ type: fc.constant(0 as const), direction, address, port: fc.option(port, { nil: undefined }) }).map((ie) => {
  const out: Ie = { type: 0, direction: ie.direction, address: ie.address };
  if (ie.port !== undefined) out.port = ie.port;
  return out;
});
const unknownIe = fc.record({
  type: fc.integer({ min: 1, max: 255 }).filter((t) => t !== 0x80 && t !== 0x82 && t !== 0x83 && t !== 0x85),
  direction,
  body: bytes(40),
});
const transportIe = fc.record({ type: fc.constant(0x80 as const), protocol: fc.integer({ min: 0, max: 255 }) });
const bindingIe = fc.record({ type: fc.constant(0x83 as const), port });
const serverMptcpIe = fc.record({ type: fc.constant(0x85 as const), answer: fc.constantFrom(0, 1) });

const ieList = fc
  .tuple(fc.boolean(), fc.array(fc.oneof(addressIe, unknownIe, transportIe, bindingIe, serverMptcpIe), { minLength: 1, maxLength: MP_CONVERT_LIMITS.maxIes - 1 }))
  // A warm IE (Type 0x82) only ever goes first, before at least one other IE.
  .map(([warm, ies]): Ie[] => (warm ? [{ type: 0x82 }, ...ies] : ies))
  .filter((ies) => {
    const dirs = ies.filter((i) => 'address' in i).map((i) => (i as { direction: string }).direction);
    const transports = ies.filter((i) => 'protocol' in i).length;
    // A transport IE never goes with a destination IE (MPC_ERR_IE_CONFLICT).
    const bindings = ies.filter((i) => i.type === 0x83).length;
    const queries = ies.filter((i) => i.type === 0x85).length;
    // A binding IE goes with no destination, transport or warm IE (MPC_ERR_IE_CONFLICT).
    const bindingOk = bindings === 0 || (bindings === 1 && transports === 0 && !dirs.includes('destination') && ies[0]?.type !== 0x82);
    return new Set(dirs).size === dirs.length && transports <= 1 && queries <= 1 && !(transports === 1 && dirs.includes('destination')) && bindingOk;
  })
  .filter((ies) => {
    try {
      encodeMpConvert(ies);
      return true;
    } catch {
      return false; // over 256 bytes
    }
  });

test('MP_CONVERT: decode(encode(ies)) = ies, with any application bytes after, split anywhere', () => {
  fc.assert(
    fc.property(ieList, bytes(64), fc.array(fc.nat(), { maxLength: 6 }), (ies, app, cuts) => {
      const sig = encodeMpConvert(ies);
      assert.ok(sig.length <= MP_CONVERT_LIMITS.maxBytes && sig.length % 4 === 0);
      const stream = Buffer.concat([sig, app]);
      const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
      const d = new SignallingDecoder();
      let prev = 0;
      let done;
      for (const p of [...points, stream.length]) {
        const r = d.push(stream.subarray(prev, p));
        prev = p;
        if (r.status === 'done') {
          done = r;
          break;
        }
      }
      assert.ok(done);
      assert.deepEqual(done.raw, sig);
      assert.deepEqual(Buffer.concat([done.rest, stream.subarray(prev)]), app);
      assert.equal(done.signalling.format, 'mp-convert');
      assert.deepEqual(view(done.signalling.format === 'mp-convert' ? done.signalling.ies : null), view(ies));
    }),
    RUNS,
  );
});

const tcpOption = fc.oneof(
  fc.constant({ kind: 1, data: Buffer.alloc(0) }),
  fc.record({ kind: fc.integer({ min: 2, max: 255 }), data: bytes(10) }),
);
const connect = fc.record({ address: fc.oneof(ipv4, ipv6.filter((a) => !a.startsWith('::ffff:'))), port, options: fc.array(tcpOption, { maxLength: 6 }) }).map(
  (c): ConvertTlv => ({ type: 'connect', address: c.address, port: c.port, options: encodeTcpOptions(c.options) }),
);
const nonZeroKinds = (n: number) => fc.uint8Array({ minLength: n, maxLength: n }).map((a) => [...a].map((k) => (k === 0 ? 1 : k)));
const errorTlv: fc.Arbitrary<ConvertTlv> = fc.oneof(
  fc.integer({ min: 0, max: 3 }).chain((n) => nonZeroKinds(n * 4)).map((extra): ConvertTlv => ({ type: 'error', code: 0, value: 1, ...(extra.length ? { extra: Buffer.from(extra) } : {}) })),
  fc.tuple(fc.constantFrom(1, 2), words(8)).map(([code, extra]): ConvertTlv => ({ type: 'error', code, value: 0, ...(extra.length ? { extra } : {}) })),
  words(4).map((cookie): ConvertTlv => ({ type: 'error', code: 3, value: 0, extra: Buffer.concat([Buffer.from([0x16, 1 + cookie.length / 4, 0, 0]), cookie]) })),
  fc.constantFrom(32, 96).map((code): ConvertTlv => ({ type: 'error', code, value: 0 })),
  fc.tuple(fc.integer({ min: 1, max: 255 }), fc.integer({ min: 0, max: 2 }).chain((n) => nonZeroKinds(n * 4))).map(
    ([value, extra]): ConvertTlv => ({ type: 'error', code: 33, value, ...(extra.length ? { extra: Buffer.from(extra) } : {}) }),
  ),
  fc.tuple(fc.constantFrom(64, 65, 97), fc.integer({ min: 0, max: 255 })).map(([code, value]): ConvertTlv => ({ type: 'error', code, value })),
  fc.tuple(fc.integer({ min: 128, max: 255 }), fc.integer({ min: 0, max: 255 }), words(3)).map(
    ([code, value, extra]): ConvertTlv => ({ type: 'error', code, value, ...(extra.length ? { extra } : {}) }),
  ),
);
const anyTlv: fc.Arbitrary<ConvertTlv> = fc.oneof(
  fc.constant<ConvertTlv>({ type: 'info' }),
  connect,
  words(10).map((header): ConvertTlv => ({ type: 'extended-tcp-header', header })),
  fc.array(fc.integer({ min: 1, max: 255 }), { maxLength: 20 }).map((kinds): ConvertTlv => ({ type: 'supported-tcp-extensions', kinds })),
  words(10).map((cookie): ConvertTlv => ({ type: 'cookie', cookie })),
  errorTlv,
);
const message = fc.uniqueArray(anyTlv, { maxLength: 6, selector: (t) => t.type }).filter((tlvs) => {
  try {
    encodeConvertMessage({ tlvs });
    return true;
  } catch {
    return false;
  }
});

test('RFC 8803: decode(encode(message)) = message, as a request and as a reply, split anywhere', () => {
  fc.assert(
    fc.property(message, bytes(32), fc.nat(), (tlvs, app, cut) => {
      const m = encodeConvertMessage({ tlvs });
      assert.ok(m.length <= CONVERT_MAX_BYTES && m.length % 4 === 0 && m[1] === m.length / 4);
      assert.deepEqual(view(decodeConvertMessage(m).tlvs), view(tlvs));
      const stream = Buffer.concat([m, app]);
      const at = cut % (stream.length + 1);
      for (const d of [new SignallingDecoder(), new ConvertReplyDecoder()]) {
        let r = d.push(stream.subarray(0, at));
        const onFirst = r.status === 'done';
        if (r.status === 'need-more') r = d.push(stream.subarray(at));
        assert.equal(r.status, 'done');
        if (r.status !== 'done') return;
        assert.deepEqual(r.raw, m);
        const tail = onFirst ? Buffer.concat([r.rest, stream.subarray(at)]) : r.rest;
        assert.deepEqual(tail, app);
        const got = 'message' in r ? r.message : null;
        if (got) assert.deepEqual(view(got.tlvs), view(tlvs));
        if ('signalling' in r && r.signalling.format === 'rfc8803') assert.deepEqual(view(r.signalling.message.tlvs), view(tlvs));
      }
    }),
    RUNS,
  );
});

const frame = fc
  .record({ direction: fc.constantFrom('upstream' as const, 'downstream' as const), flow: fc.integer({ min: 1, max: 0xffffffff }), address, port, payload: bytes(300) })
  .map((f): UdpFrame => f);

test('UDP frames: decode(encode(frames)) = frames, whatever the chunking', () => {
  fc.assert(
    fc.property(fc.array(frame, { maxLength: 8 }), fc.array(fc.integer({ min: 1, max: 97 }), { minLength: 1, maxLength: 10 }), (frames, sizes) => {
      const stream = Buffer.concat(frames.map(encodeUdpFrame));
      const d = new UdpFrameDecoder();
      const out: UdpFrame[] = [];
      let off = 0;
      for (let i = 0; off < stream.length; i++) {
        const n = sizes[i % sizes.length] as number;
        out.push(...d.push(stream.subarray(off, off + n)));
        off += n;
      }
      assert.deepEqual(view(out), view(frames));
      assert.equal(d.buffered, 0);
    }),
    RUNS,
  );
});

// Bytes that start like each format, so that random input gets past detection often.
const hostile = fc.oneof(
  bytes(1400),
  bytes(1400).map((b) => Buffer.concat([Buffer.from('faa8faa8', 'hex'), b])),
  fc.tuple(fc.integer({ min: 0, max: 3 }), bytes(300)).map(([n, b]) => Buffer.concat([...Array<Buffer>(n).fill(Buffer.from('faa8faa800080000c6120302', 'hex')), Buffer.from('faa8faa8', 'hex'), b])),
  fc.tuple(fc.integer({ min: 0, max: 255 }), bytes(1100)).map(([len, b]) => Buffer.concat([Buffer.from([1, len, 0x22, 0x63]), b])),
  fc.tuple(fc.integer({ min: 1, max: 255 }), fc.constantFrom(1, 0x0a, 0x14, 0x15, 0x16, 0x1e), fc.integer({ min: 0, max: 255 }), bytes(1100)).map(([len, t, l, b]) =>
    Buffer.concat([Buffer.from([1, len, 0x22, 0x63, t, l]), b]),
  ),
  bytes(400).map((b) => Buffer.concat([Buffer.from([0xd7, (b[0] ?? 0) & 3]), b])),
);

function onlyProtocolErrors(fn: () => void): void {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof ProtocolError)) throw err;
    assert.ok(err.code.startsWith('MPC_ERR_'));
    assert.ok(err.reaction.kind === 'abort' || (err.reaction.kind === 'convert-error' && Number.isInteger(err.reaction.errorCode)));
  }
}

test('decoders throw nothing but ProtocolError on any bytes, cut anywhere', () => {
  fc.assert(
    fc.property(hostile, fc.array(fc.integer({ min: 1, max: 200 }), { minLength: 1, maxLength: 8 }), (buf, sizes) => {
      const feed = (push: (b: Buffer) => unknown) => {
        let off = 0;
        for (let i = 0; off < buf.length; i++) {
          const n = sizes[i % sizes.length] as number;
          const r = push(buf.subarray(off, off + n));
          off += n;
          if (r && typeof r === 'object' && 'status' in r && r.status === 'done') return;
        }
      };
      onlyProtocolErrors(() => feed((b) => new SignallingDecoder().push(b)));
      const s = new SignallingDecoder();
      onlyProtocolErrors(() => feed((b) => s.push(b)));
      const c = new ConvertReplyDecoder();
      onlyProtocolErrors(() => feed((b) => c.push(b)));
      const u = new UdpFrameDecoder();
      onlyProtocolErrors(() => feed((b) => u.push(b)));
      onlyProtocolErrors(() => decodeConvertMessage(buf));
      onlyProtocolErrors(() => parseMpConvert(buf));
    }),
    { numRuns: 1500 },
  );
});

type Outcome = { status: string; raw?: string; code?: string };
function outcome(buf: Buffer): Outcome {
  try {
    const r = new SignallingDecoder().push(buf);
    return r.status === 'done' ? { status: 'done', raw: r.raw.toString('hex') } : { status: r.status };
  } catch (err) {
    return { status: 'error', code: (err as ProtocolError).code };
  }
}

test('the signalling decoder never looks past its limits (256 / 1020 bytes) and never holds more', () => {
  fc.assert(
    fc.property(hostile, bytes(200), (buf, noise) => {
      const limit = buf[0] === 0xfa ? MP_CONVERT_LIMITS.maxBytes : CONVERT_MAX_BYTES;
      const a = outcome(buf);
      if (a.status === 'done') assert.ok((a.raw as string).length / 2 <= limit);
      // Whatever follows the limit cannot change the verdict on what precedes it.
      if (buf.length >= limit) {
        const changed = Buffer.concat([buf.subarray(0, limit), noise, buf.subarray(limit)]);
        assert.deepEqual(outcome(changed), a);
      }
      // Byte by byte, what is held between pushes stays below the limit.
      const d = new SignallingDecoder();
      try {
        for (const b of buf) {
          if (d.push(Buffer.from([b])).status === 'done') break;
          assert.ok(d.buffered < limit);
        }
      } catch (err) {
        assert.ok(err instanceof ProtocolError);
      }
    }),
    { numRuns: 600 },
  );
});

test('the UDP frame decoder holds at most one incomplete frame', () => {
  fc.assert(
    fc.property(fc.array(frame, { minLength: 1, maxLength: 4 }), (frames) => {
      const stream = Buffer.concat(frames.map(encodeUdpFrame));
      const d = new UdpFrameDecoder();
      const biggest = Math.max(...frames.map((f) => encodeUdpFrame(f).length));
      for (const b of stream) {
        d.push(Buffer.from([b]));
        assert.ok(d.buffered < biggest);
      }
    }),
    { numRuns: 100 },
  );
});

test('PROXY v2: decode(encode(pair)) = pair (a mixed pair as IPv6 with the IPv4 side mapped); any bytes after the signature: only ProtocolError', () => {
  const anyPort = fc.integer({ min: 0, max: 65535 });
  fc.assert(
    fc.property(address, anyPort, address, anyPort, bytes(40), (sa, sp, da, dp, app) => {
      const r = decodeProxyV2(Buffer.concat([encodeProxyV2({ source: { address: sa, port: sp }, destination: { address: da, port: dp } }), app]));
      assert.equal(r.status, 'done');
      if (r.status !== 'done') return;
      const mixed = sa.includes(':') !== da.includes(':');
      const as = (a: string) => (mixed && !a.includes(':') ? canonicalAddress(`::ffff:${a}`) : a);
      assert.deepEqual(r.header.addresses, { source: { address: as(sa), port: sp }, destination: { address: as(da), port: dp } });
      assert.ok(r.rest.equals(app));
    }),
    RUNS,
  );
  fc.assert(
    fc.property(bytes(300), (b) => {
      onlyProtocolErrors(() => decodeProxyV2(Buffer.concat([PROXY_V2_SIGNATURE, b])));
      onlyProtocolErrors(() => decodeProxyV2(b));
    }),
    { numRuns: 1500 },
  );
});
