/** Encoders against the golden vectors, encoder refusals, replies to errors, detection and decoder edges. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CONVERT_MAX_BYTES,
  ConvertReplyDecoder,
  PROTOCOL_ERRORS,
  ProtocolError,
  SignallingDecoder,
  UDP_FRAME_MAX_BYTES,
  UDP_MAX_PAYLOAD_V4,
  UDP_MAX_PAYLOAD_V6,
  UdpFrameDecoder,
  addressToBytes,
  canonicalAddress,
  decodeConvertMessage,
  decodeMpConvert,
  detectFormat,
  encodeConvertErrorReply,
  encodeConvertMessage,
  encodeMpConvert,
  encodeUdpFrame,
  interpretConvertError,
  parseMpConvert,
  unmapAddress,
  type ConvertTlv,
  type Ie,
} from '../../../src/protocol/index.js';
import { assertProtocolError, hex, loadVectors } from './helpers.js';

const fromView = (x: unknown, bufferKeys: readonly string[]): unknown => {
  if (Array.isArray(x)) return x.map((y) => fromView(y, bufferKeys));
  if (x !== null && typeof x === 'object') {
    return Object.fromEntries(Object.entries(x).map(([k, v]) => [k, bufferKeys.includes(k) && typeof v === 'string' ? hex(v) : fromView(v, bufferKeys)]));
  }
  return x;
};

test('encodeMpConvert reproduces the golden vectors from their decoded IEs', () => {
  let n = 0;
  for (const v of loadVectors('mp-convert.json').valid ?? []) {
    if (v.name.includes('ignored on receipt')) continue; // not canonical on purpose
    const ies = fromView((v.expect as { ies: unknown }).ies, ['body']) as Ie[];
    assert.equal(encodeMpConvert(ies).toString('hex'), v.hex, v.name);
    n++;
  }
  assert.ok(n >= 10);
});

test('encodeConvertMessage reproduces the golden vectors from their decoded TLVs', () => {
  let n = 0;
  for (const v of loadVectors('rfc8803.json').valid ?? []) {
    const tlvs = fromView((v.expect as { tlvs: unknown }).tlvs, ['options', 'header', 'cookie', 'extra']) as ConvertTlv[];
    assert.equal(encodeConvertMessage({ tlvs }).toString('hex'), v.hex, v.name);
    n++;
  }
  assert.ok(n >= 17);
});

test('interop: the RFC 8803 SYN payload to 198.18.3.2:8080, byte for byte', () => {
  const wire = '01 06 22 63 0a 05 1f 90 00 00 00 00 00 00 00 00 00 00 ff ff c6 12 03 02'.replaceAll(' ', '');
  assert.equal(encodeConvertMessage({ tlvs: [{ type: 'connect', address: '198.18.3.2', port: 8080, options: Buffer.alloc(0) }] }).toString('hex'), wire);
  // The IPv4-mapped text form encodes the same.
  assert.equal(encodeConvertMessage({ tlvs: [{ type: 'connect', address: '::ffff:198.18.3.2', port: 8080, options: Buffer.alloc(0) }] }).toString('hex'), wire);
  const r = new SignallingDecoder().push(hex(wire));
  assert.equal(r.status, 'done');
  if (r.status === 'done' && r.signalling.format === 'rfc8803') {
    assert.deepEqual(r.signalling.destination, { address: '198.18.3.2', port: 8080 });
    assert.equal(r.signalling.connect?.port, 8080);
  } else assert.fail('not RFC 8803');
});

test('MP_CONVERT encoder refuses what it cannot send', () => {
  const dst: Ie = { type: 0, direction: 'destination', address: '198.18.3.2', port: 8080 };
  assert.throws(() => encodeMpConvert([]), TypeError);
  assert.throws(() => encodeMpConvert([{ ...dst, port: 0 }]), TypeError);
  assert.throws(() => encodeMpConvert([{ ...dst, port: 65536 }]), TypeError);
  assert.throws(() => encodeMpConvert([{ ...dst, address: 'example.net' }]), TypeError);
  assert.throws(() => encodeMpConvert([{ ...dst, address: 'fe80::1%eth0' }]), TypeError);
  assert.throws(() => encodeMpConvert(Array.from({ length: 9 }, (_, i) => ({ type: 0x50 + i, direction: 'destination' as const, body: Buffer.alloc(0) }))), TypeError);
  assert.throws(() => encodeMpConvert([{ type: 0x60, direction: 'destination', body: Buffer.alloc(249) }]), TypeError, 'Length 253 ends past 256 bytes');
  assert.throws(() => encodeMpConvert([{ type: 0, direction: 'destination', body: Buffer.alloc(4) }]), TypeError, 'Type 0 needs an address');
  assert.equal(encodeMpConvert([{ type: 0x60, direction: 'destination', body: Buffer.alloc(248) }]).length, 256);
});

test('RFC 8803 encoder refuses duplicates, bad fields and Error TLVs that break their value rules', () => {
  const c: ConvertTlv = { type: 'connect', address: '198.18.3.2', port: 8080, options: Buffer.alloc(0) };
  assert.throws(() => encodeConvertMessage({ tlvs: [c, c] }), /at most once/);
  assert.throws(() => encodeConvertMessage({ tlvs: [{ ...c, port: 0 }] }), TypeError);
  assert.throws(() => encodeConvertMessage({ tlvs: [{ ...c, options: hex('0204') }] }), TypeError, 'option runs past');
  assert.throws(() => encodeConvertMessage({ tlvs: [{ ...c, options: hex('0100') }] }), TypeError, 'EOL inside');
  assert.throws(() => encodeConvertMessage({ tlvs: [{ type: 'supported-tcp-extensions', kinds: [30, 0] }] }), TypeError);
  assert.throws(() => encodeConvertMessage({ tlvs: [{ type: 'cookie', cookie: Buffer.alloc(1017) }] }), TypeError, 'over 1020 bytes');
  const e = (code: number, value: number, extra?: string) => () =>
    encodeConvertMessage({ tlvs: [{ type: 'error', code, value, ...(extra !== undefined ? { extra: hex(extra) } : {}) }] });
  assert.throws(e(0, 0), /supported version/);
  assert.throws(e(0, 1, '0002'), /non-zero/);
  assert.throws(e(1, 5), /Value must be 0/);
  assert.throws(e(2, 1), /Value must be 0/);
  assert.throws(e(3, 0), /Cookie TLV/);
  assert.throws(e(3, 0, '01010000'), /Cookie TLV/);
  assert.throws(e(32, 1), /Value must be 0/);
  assert.throws(e(96, 0, '00000000'), /nothing after/);
  assert.throws(e(33, 0), /TCP option kinds/);
  assert.throws(e(64, 0, '01'), /nothing may follow/);
  assert.throws(e(97, 3, '01'), /nothing may follow/);
  assert.throws(e(256, 0), /0-255/);
  assert.doesNotThrow(e(200, 7, 'abcd'), 'private-use codes are free-form');
});

test('a ProtocolError reaction becomes the Error TLV reply, byte for byte (message echoed after a zero Value)', () => {
  const bad = hex('010222630201' + '0000');
  let err: ProtocolError | undefined;
  try {
    new SignallingDecoder().push(bad);
  } catch (e) {
    err = e as ProtocolError;
  }
  assert.ok(err && err.reaction.kind === 'convert-error');
  if (err.reaction.kind !== 'convert-error') return;
  const reply = encodeConvertErrorReply(err.reaction);
  // header (4 words) | 1e 03 02 00 | the 8-byte message
  assert.equal(reply.toString('hex'), '01042263' + '1e030200' + bad.toString('hex'));
  const m = decodeConvertMessage(reply);
  assert.deepEqual(interpretConvertError(m.error!), { code: 2, name: 'unsupported-message', echo: bad });
  assert.equal(encodeConvertErrorReply({ errorCode: 0, value: 1 }).toString('hex'), '01022263' + '1e010001');
  assert.equal(encodeConvertErrorReply({ errorCode: 97, value: 1 }).toString('hex'), '010222631e016101');
});

test('the echo of a 1020-byte message is cut so the reply still fits in 1020 bytes', () => {
  const big = encodeConvertMessage({ tlvs: [{ type: 'cookie', cookie: Buffer.alloc(1012, 0xaa) }] });
  assert.equal(big.length, CONVERT_MAX_BYTES);
  big[4] = 0x02; // an unassigned TLV type
  const err = assertProtocolError(() => new SignallingDecoder().push(big), 'MPC_ERR_CONVERT_UNSUPPORTED');
  assert.ok(err.reaction.kind === 'convert-error');
  if (err.reaction.kind !== 'convert-error') return;
  const reply = encodeConvertErrorReply(err.reaction);
  assert.equal(reply.length, CONVERT_MAX_BYTES);
  assert.deepEqual(reply.subarray(8), big.subarray(0, CONVERT_MAX_BYTES - 8));
});

test('every error code is documented with a meaning and a reaction', () => {
  for (const [code, e] of Object.entries(PROTOCOL_ERRORS)) {
    assert.match(code, /^MPC_ERR_[A-Z0-9_]+$/);
    assert.ok(e.meaning.length > 10 && e.reaction.length > 3, code);
  }
});

test('format detection: as early as a byte proves it, no earlier', () => {
  assert.equal(detectFormat(Buffer.alloc(0)), 'need-more');
  assert.equal(detectFormat(hex('fa')), 'mp-convert');
  assert.equal(detectFormat(hex('01')), 'need-more');
  assert.equal(detectFormat(hex('0106')), 'need-more');
  assert.equal(detectFormat(hex('010622')), 'need-more');
  assert.equal(detectFormat(hex('01062263')), 'rfc8803');
  assert.equal(detectFormat(hex('07062263')), 'rfc8803', 'another version is still a Convert message (answered with Unsupported Version)');
  assertProtocolError(() => detectFormat(hex('474554')), 'MPC_ERR_FORMAT');
  assertProtocolError(() => detectFormat(hex('01062264')), 'MPC_ERR_FORMAT');
  // MP_CONVERT garbage is refused on the first wrong magic byte.
  assertProtocolError(() => parseMpConvert(hex('fa00')), 'MPC_ERR_IE_MAGIC');
  assert.deepEqual(parseMpConvert(hex('faa8fa')), { status: 'need-more' });
});

test('decoders refuse to be used after a final result', () => {
  const d = new SignallingDecoder();
  assert.equal(d.push(encodeMpConvert([{ type: 0, direction: 'destination', address: '198.18.3.2' }])).status, 'done');
  assert.throws(() => d.push(hex('00')), /after a final result/);
  const e = new SignallingDecoder();
  assert.throws(() => e.push(hex('000000')), ProtocolError);
  assert.throws(() => e.push(hex('00')), /after a final result/);
  const u = new UdpFrameDecoder();
  assert.throws(() => u.push(hex('00')), ProtocolError);
  assert.throws(() => u.push(hex('d7')), /after an error/);
});

test('Convert reply decoder: header-only success, then the server bytes; garbage is an abort', () => {
  const d = new ConvertReplyDecoder();
  assert.deepEqual(d.push(hex('0101')), { status: 'need-more' });
  const r = d.push(hex('2263' + '48545450'));
  assert.equal(r.status, 'done');
  if (r.status === 'done') {
    assert.deepEqual(r.message.tlvs, []);
    assert.equal(r.rest.toString(), 'HTTP');
  }
  assertProtocolError(() => new ConvertReplyDecoder().push(hex('485454')), 'MPC_ERR_CONVERT_REPLY', { kind: 'abort' });
  assertProtocolError(() => new ConvertReplyDecoder().push(hex('02012263')), 'MPC_ERR_CONVERT_REPLY', { kind: 'abort' });
});

test('UDP frames: per-family payload limits, direction check, configurable maximum', () => {
  for (const [address, max] of [['198.18.3.2', UDP_MAX_PAYLOAD_V4], ['2001:db8::2', UDP_MAX_PAYLOAD_V6]] as const) {
    const f = { direction: 'upstream' as const, flow: 1, address, port: 53, payload: Buffer.alloc(max, 7) };
    const wire = encodeUdpFrame(f);
    assert.ok(wire.length <= UDP_FRAME_MAX_BYTES);
    const got = new UdpFrameDecoder().push(wire);
    assert.equal(got.length, 1);
    assert.ok(got[0]!.payload.equals(f.payload));
    assert.throws(() => encodeUdpFrame({ ...f, payload: Buffer.alloc(max + 1) }), TypeError);
  }
  assert.throws(() => encodeUdpFrame({ direction: 'upstream', flow: 1, address: '198.18.3.2', port: 0, payload: Buffer.alloc(0) }), TypeError);
  assert.throws(() => encodeUdpFrame({ direction: 'upstream', flow: 0, address: '198.18.3.2', port: 53, payload: Buffer.alloc(0) }), TypeError);
  const up = encodeUdpFrame({ direction: 'upstream', flow: 1, address: '198.18.3.2', port: 53, payload: Buffer.from('q') });
  assertProtocolError(() => new UdpFrameDecoder({ expect: 'downstream' }).push(up.subarray(0, 2)), 'MPC_ERR_UDP_DIRECTION');
  assert.equal(new UdpFrameDecoder({ expect: 'upstream' }).push(up).length, 1);
  const big = encodeUdpFrame({ direction: 'upstream', flow: 1, address: '198.18.3.2', port: 53, payload: Buffer.alloc(1501) });
  assertProtocolError(() => new UdpFrameDecoder({ maxPayload: 1500 }).push(big.subarray(0, 4)), 'MPC_ERR_UDP_LENGTH');
});

test('addresses: canonical text, IPv4-mapped forms, zone indexes refused', () => {
  assert.equal(canonicalAddress('2001:0DB8:0:0:0:0:0:1'), '2001:db8::1');
  assert.equal(canonicalAddress('2001:db8:0:0:1:0:0:1'), '2001:db8::1:0:0:1', 'the first of two equal zero runs');
  assert.equal(canonicalAddress('2001:db8:0:1:1:1:1:1'), '2001:db8:0:1:1:1:1:1', 'a single zero group is not compressed');
  assert.equal(canonicalAddress('::FFFF:c612:0302'), '::ffff:198.18.3.2');
  assert.equal(canonicalAddress('::'), '::');
  assert.equal(unmapAddress('::ffff:198.18.3.2'), '198.18.3.2');
  assert.equal(unmapAddress('2001:db8::1'), '2001:db8::1');
  assert.equal(addressToBytes('::ffff:198.18.3.2').length, 16);
  assert.throws(() => addressToBytes('fe80::1%eth0'), TypeError);
  assert.throws(() => addressToBytes('198.18.3'), TypeError);
});

test('whole-message decoders refuse a bad magic, a truncated message and trailing bytes', () => {
  assertProtocolError(() => decodeConvertMessage(hex('01012264')), 'MPC_ERR_CONVERT_MALFORMED', { kind: 'convert-error', errorCode: 1, value: 0, extra: '01012264' });
  assertProtocolError(() => decodeConvertMessage(hex('010222631e01')), 'MPC_ERR_CONVERT_MALFORMED');
  assertProtocolError(() => decodeConvertMessage(hex('0101226300')), 'MPC_ERR_CONVERT_MALFORMED');
  assertProtocolError(() => decodeConvertMessage(hex('0101')), 'MPC_ERR_CONVERT_MALFORMED');
  const sig = encodeMpConvert([{ type: 0, direction: 'destination', address: '198.18.3.2', port: 8080 }]);
  assertProtocolError(() => decodeMpConvert(sig.subarray(0, 15)), 'MPC_ERR_IE_TRUNCATED');
  assertProtocolError(() => decodeMpConvert(Buffer.concat([sig, hex('00')])), 'MPC_ERR_IE_TRAILING');
});
