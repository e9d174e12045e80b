/**
 * The server's MPTCP in the RFC 8803 reply (src/protocol/server-options.ts): the rebuilt SYN+ACK header carries
 * an MP_CAPABLE and reads back as such; headers that are short, point past their end or hold no MP_CAPABLE say
 * no. The concentrator's confirmation carries it only when asked; the CPE's echo check takes it as a confirmed
 * reply that reports the server's MPTCP, and a plain reply as one that does not.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { headerHasMpCapable, mptcpSynAckHeader } from '../../../src/protocol/server-options.js';
import { decodeConvertMessage, encodeConvertMessage } from '../../../src/protocol/index.js';
import { confirmation } from '../../../src/concentrator/signalling.js';
import { EchoVerifier } from '../../../src/cpe/echo.js';

test('the rebuilt SYN+ACK header: 20 bytes, Data Offset 8, SYN|ACK, then MP_CAPABLE v1 (kind 30, length 12)', () => {
  const h = mptcpSynAckHeader();
  assert.equal(h.length, 32);
  assert.equal(h[12], 8 << 4);
  assert.equal(h[13], 0x12);
  assert.equal(h.subarray(20, 24).toString('hex'), '1e0c0101');
  assert.equal(headerHasMpCapable(h), true);
});

test('headers without an MP_CAPABLE, or broken ones, say no', () => {
  const plain = Buffer.alloc(20);
  plain[12] = 5 << 4;
  assert.equal(headerHasMpCapable(plain), false, 'no options');
  assert.equal(headerHasMpCapable(Buffer.alloc(10)), false, 'shorter than a TCP header');
  const past = Buffer.from(mptcpSynAckHeader());
  past[12] = 15 << 4;
  assert.equal(headerHasMpCapable(past), false, 'Data Offset past the end');
  const join = Buffer.from(mptcpSynAckHeader());
  join[22] = 0x10;
  assert.equal(headerHasMpCapable(join), false, 'an MPTCP option of another subtype (MP_JOIN)');
  const broken = Buffer.from(mptcpSynAckHeader());
  broken[21] = 40;
  assert.equal(headerHasMpCapable(broken), false, 'an option that runs past the header');
});

test('the concentrator confirms RFC 8803 with the TLV only with reportMptcp and an MPTCP leg; MP_CONVERT without a query is the echo either way', () => {
  const read = { format: 'rfc8803' as const, raw: Buffer.alloc(0), rest: Buffer.alloc(0) };
  assert.equal(confirmation(read).toString('hex'), '01012263');
  assert.equal(confirmation(read, true).toString('hex'), '01012263', 'an MPTCP leg without reportMptcp: header only');
  assert.equal(confirmation(read, false, true).toString('hex'), '01012263', 'reportMptcp with a TCP leg: header only');
  const withTlv = decodeConvertMessage(confirmation(read, true, true));
  assert.equal(withTlv.extendedTcpHeader?.toString('hex'), mptcpSynAckHeader().toString('hex'));
  const ies = Buffer.from('faa8faa8000800010102030405', 'hex');
  assert.equal(confirmation({ format: 'mp-convert', raw: ies, rest: Buffer.alloc(0) }, true).toString('hex'), ies.toString('hex'));
  assert.equal(confirmation({ format: 'mp-convert', raw: ies, rest: Buffer.alloc(0) }, true, true).toString('hex'), ies.toString('hex'));
});

test('the CPE echo check: a reply with the TLV confirms and reports the server MPTCP; one without does not; split anywhere', () => {
  const reply = Buffer.concat([encodeConvertMessage({ tlvs: [{ type: 'extended-tcp-header', header: mptcpSynAckHeader() }] }), Buffer.from('HTTP')]);
  for (let cut = 1; cut < reply.length; cut++) {
    const v = new EchoVerifier('rfc8803', Buffer.alloc(0));
    const a = v.push(reply.subarray(0, cut));
    const r = a.status === 'need-more' ? v.push(reply.subarray(cut)) : a;
    assert.equal(r.status, 'confirmed', `cut at ${cut}`);
    // Confirmed by the first part: its leftover is what that part held past the message.
    const leftover = a.status === 'need-more' ? 'HTTP' : reply.subarray(40, cut).toString();
    assert.ok(r.status === 'confirmed' && r.serverMptcp === true && r.leftover.toString() === leftover, `cut at ${cut}`);
  }
  const plain = new EchoVerifier('rfc8803', Buffer.alloc(0)).push(encodeConvertMessage({ tlvs: [] }));
  assert.ok(plain.status === 'confirmed' && plain.serverMptcp === undefined);
});
