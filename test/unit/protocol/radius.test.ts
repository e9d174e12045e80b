/**
 * The RADIUS codec (src/protocol/radius.ts) against the worked example of RFC 2865 section 7.1 (user "nemo",
 * password "arctangent", secret "xyzzy5461"): the Access-Request is rebuilt byte for byte (password hiding),
 * and the Access-Accept's Response Authenticator verifies. A forged or altered answer does not verify;
 * malformed packets are refused at every truncation.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import {
  AcctStatusType,
  RadiusAttr,
  RadiusCode,
  attrAddress,
  attrString,
  attrUint32,
  decodePacket,
  encodeAccessRequest,
  encodeAccountingRequest,
  encodeResponse,
  findAttr,
  hidePassword,
  octetsAndGigawords,
  readAddress,
  readUint32,
  verifyResponse,
} from '../../../src/protocol/radius.js';

const h = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const SECRET = Buffer.from('xyzzy5461');
const REQUEST_AUTH = h('0f403f94 73978057 bd83d5cb 98f4227a');
// RFC 2865 section 7.1: NAS 192.168.1.16 port 3, user nemo / arctangent.
const RFC_REQUEST = h(`01 00 00 38 0f 40 3f 94 73 97 80 57 bd 83 d5 cb 98 f4 22 7a
  01 06 6e 65 6d 6f 02 12 0d be 70 8d 93 d4 13 ce 31 96 e4 3f 78 2a 0a ee 04 06 c0 a8 01 10 05 06 00 00 00 03`);
const RFC_ACCEPT = h(`02 00 00 26 86 fe 22 0e 76 24 ba 2a 10 05 f6 bf 9b 55 e0 b2
  06 06 00 00 00 01 0f 06 00 00 00 00 0e 06 c0 a8 01 03`);

test('RFC 2865 7.1: User-Password hiding gives the example bytes', () => {
  const req = decodePacket(RFC_REQUEST);
  assert.deepEqual(hidePassword(Buffer.from('arctangent'), SECRET, REQUEST_AUTH), findAttr(req, RadiusAttr.UserPassword));
  assert.equal(findAttr(req, RadiusAttr.UserName)?.toString(), 'nemo');
  assert.equal(readAddress(findAttr(req, RadiusAttr.NasIpAddress) as Buffer), '192.168.1.16');
});

test('RFC 2865 7.1: the Access-Accept verifies against the request; altered or forged, it does not', () => {
  const ok = verifyResponse(RFC_ACCEPT, REQUEST_AUTH, SECRET);
  assert.equal(ok.ok, true);
  if (ok.ok) {
    assert.equal(ok.packet.code, RadiusCode.AccessAccept);
    assert.equal(readUint32(findAttr(ok.packet, RadiusAttr.ServiceType) as Buffer), 1);
  }
  assert.deepEqual(verifyResponse(RFC_ACCEPT, REQUEST_AUTH, Buffer.from('wrong-secret')), { ok: false, why: 'authenticator' });
  assert.deepEqual(verifyResponse(RFC_ACCEPT, Buffer.alloc(16), SECRET), { ok: false, why: 'authenticator' }, 'an answer to another request');
  const flipped = Buffer.from(RFC_ACCEPT);
  flipped[0] = RadiusCode.AccessReject;
  assert.deepEqual(verifyResponse(flipped, REQUEST_AUTH, SECRET), { ok: false, why: 'authenticator' }, 'code changed on the way');
  const attrChanged = Buffer.from(RFC_ACCEPT);
  attrChanged[attrChanged.length - 1] = 4;
  assert.deepEqual(verifyResponse(attrChanged, REQUEST_AUTH, SECRET), { ok: false, why: 'authenticator' });
  assert.deepEqual(verifyResponse(RFC_ACCEPT, REQUEST_AUTH, SECRET, true), { ok: false, why: 'message-authenticator-missing' });
});

test('an Access-Request rebuilds the RFC example (plus the Message-Authenticator first), and the MAC is over the whole packet', () => {
  const attributes = [attrString(RadiusAttr.UserName, 'nemo'), attrAddress(RadiusAttr.NasIpAddress, '192.168.1.16'), attrUint32(5, 3)];
  const p = encodeAccessRequest({ identifier: 0, authenticator: REQUEST_AUTH, attributes, password: Buffer.from('arctangent') }, SECRET);
  const d = decodePacket(p);
  assert.equal(d.code, RadiusCode.AccessRequest);
  assert.deepEqual(d.authenticator, REQUEST_AUTH);
  assert.equal(d.attributes[0]?.type, RadiusAttr.MessageAuthenticator);
  // Without its Message-Authenticator and with the password last, the attributes are the RFC's.
  const rfc = decodePacket(RFC_REQUEST).attributes;
  const ours = d.attributes.slice(1);
  assert.deepEqual(
    ours.map((a) => [a.type, a.value.toString('hex')]).sort(),
    rfc.map((a) => [a.type, a.value.toString('hex')]).sort(),
  );
  const zeroed = Buffer.from(p);
  zeroed.fill(0, 22, 38);
  assert.deepEqual(createHmac('md5', SECRET).update(zeroed).digest(), d.attributes[0]?.value);
});

test('a response with a Message-Authenticator verifies; a wrong one is refused even with a right Response Authenticator', () => {
  const resp = encodeResponse({ code: RadiusCode.AccessAccept, identifier: 7, attributes: [attrUint32(RadiusAttr.SessionTimeout, 60)], messageAuthenticator: true }, REQUEST_AUTH, SECRET);
  assert.equal(verifyResponse(resp, REQUEST_AUTH, SECRET, true).ok, true);
  // Break only the Message-Authenticator, then recompute the Response Authenticator as a forger without the
  // HMAC key could not: still refused for the Message-Authenticator.
  const bad = encodeResponse({ code: RadiusCode.AccessAccept, identifier: 7, attributes: [{ type: RadiusAttr.MessageAuthenticator, value: Buffer.alloc(16, 1) }, attrUint32(RadiusAttr.SessionTimeout, 60)] }, REQUEST_AUTH, SECRET);
  assert.deepEqual(verifyResponse(bad, REQUEST_AUTH, SECRET), { ok: false, why: 'message-authenticator' });
});

test('Accounting-Request authenticator: MD5 over the packet with 16 zero octets, then the secret', () => {
  const { octets, gigawords } = octetsAndGigawords(5 * 2 ** 32 + 17);
  assert.deepEqual([octets, gigawords], [17, 5]);
  const p = encodeAccountingRequest({ identifier: 9, attributes: [attrUint32(RadiusAttr.AcctStatusType, AcctStatusType.Start), attrString(RadiusAttr.AcctSessionId, 's1')] }, SECRET);
  const d = decodePacket(p);
  assert.equal(d.code, RadiusCode.AccountingRequest);
  // A server checks it like a Response Authenticator whose request authenticator is all zero.
  const asResponse = Buffer.from(p);
  assert.equal(verifyResponse(asResponse, Buffer.alloc(16), SECRET).ok, true);
  assert.equal(verifyResponse(asResponse, Buffer.alloc(16), Buffer.from('other')).ok, false);
});

test('malformed packets: every truncation, a bad Length, an attribute of length < 2 or overrunning; padding past Length ignored', () => {
  for (let cut = 0; cut < RFC_ACCEPT.length; cut++) assert.throws(() => decodePacket(RFC_ACCEPT.subarray(0, cut)), /Cannot parse RADIUS packet/, `cut at ${cut}`);
  const padded = Buffer.concat([RFC_ACCEPT, Buffer.alloc(5)]);
  assert.equal(verifyResponse(padded, REQUEST_AUTH, SECRET).ok, true, 'octets past Length are padding');
  const shortLen = Buffer.from(RFC_ACCEPT);
  shortLen.writeUInt16BE(19, 2);
  assert.throws(() => decodePacket(shortLen), /Length 19/);
  const zeroAttr = Buffer.concat([h('02 00 00 16'), Buffer.alloc(16), h('06 00')]);
  assert.throws(() => decodePacket(zeroAttr), /Length 0/);
  const overrun = Buffer.concat([h('02 00 00 17'), Buffer.alloc(16), h('06 06 00')]);
  assert.throws(() => decodePacket(overrun), /overruns/);
  assert.equal(verifyResponse(overrun, REQUEST_AUTH, SECRET).ok, false);
  assert.equal(readAddress(attrAddress(1, '2001:db8::1').value), '2001:db8::1');
});
