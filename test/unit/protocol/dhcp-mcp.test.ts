/**
 * The DHCP concentrator options (draft-boucadair-mptcp-dhc, docs/protocol.md "DHCP options"): hex vectors both
 * ways, every truncation of a body refused, hostile lengths, addresses that can never be a concentrator left out,
 * and the text forms DHCP clients give their hooks.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DHCP_MCP_MAX_ADDRESSES, decodeMcpOption, encodeMcpOption, parseMcpText } from '../../../src/protocol/dhcp-mcp.js';

const V4 = 'e008' + 'c6130002' + 'c6130003';
const V6 = 'fec8' + '0020' + '20010db8000000000000000000000001' + '20010db8000100000000000000000002';

test('DHCPv4 option 224 with two addresses: encoded and decoded, order kept', () => {
  assert.equal(encodeMcpOption(['198.19.0.2', '198.19.0.3'], 4, 224).toString('hex'), V4);
  assert.deepEqual(decodeMcpOption(Buffer.from(V4, 'hex').subarray(2), 4), { ok: true, addresses: ['198.19.0.2', '198.19.0.3'], dropped: [] });
});

test('DHCPv6 option 65224 with two addresses: encoded and decoded (RFC 5952 text)', () => {
  assert.equal(encodeMcpOption(['2001:db8::1', '2001:db8:1::2'], 6, 65224).toString('hex'), V6);
  assert.deepEqual(decodeMcpOption(Buffer.from(V6, 'hex').subarray(4), 6), { ok: true, addresses: ['2001:db8::1', '2001:db8:1::2'], dropped: [] });
});

test('every truncation of a body, and an empty one, is refused; a body on a subarray of a larger buffer decodes', () => {
  for (const [hex, family, head] of [[V4, 4, 2], [V6, 6, 4]] as const) {
    const body = Buffer.from(hex, 'hex').subarray(head);
    for (let cut = 0; cut < body.length; cut++) {
      const r = decodeMcpOption(body.subarray(0, cut), family);
      const whole = cut > 0 && cut % (family === 4 ? 4 : 16) === 0;
      assert.equal(r.ok, whole, `IPv${family} cut at ${cut}`);
      if (!r.ok) assert.match(r.why, /^Cannot parse MCP option: /);
    }
    const padded = Buffer.concat([Buffer.from('ffff', 'hex'), body, Buffer.from('ff', 'hex')]);
    assert.equal(decodeMcpOption(padded.subarray(2, 2 + body.length), family).ok, true);
  }
});

test('more than the limit of addresses is malformed; the encoder refuses what no option can carry', () => {
  const many = Buffer.alloc(4 * (DHCP_MCP_MAX_ADDRESSES + 1), 0xc6);
  assert.match((decodeMcpOption(many, 4) as { why: string }).why, /more than 32 addresses/);
  assert.throws(() => encodeMcpOption([], 4, 224), RangeError);
  assert.throws(() => encodeMcpOption(['198.19.0.2'], 4, 255), RangeError);
  assert.throws(() => encodeMcpOption(['198.19.0.2'], 6, 65224), TypeError);
});

test('loopback, unspecified, multicast, broadcast and link-local addresses are left out, duplicates once', () => {
  const r = decodeMcpOption(Buffer.from('7f000001' + 'c6130002' + '00000000' + 'e0000001' + 'ffffffff' + 'a9fe0101' + 'c6130002', 'hex'), 4);
  assert.deepEqual(r, { ok: true, addresses: ['198.19.0.2'], dropped: ['127.0.0.1', '0.0.0.0', '224.0.0.1', '255.255.255.255', '169.254.1.1'] });
  const r6 = parseMcpText('::1 ff02::1 fe80::1 2001:db8::5', 6);
  assert.deepEqual(r6, { ok: true, addresses: ['2001:db8::5'], dropped: ['::1', 'ff02::1', 'fe80::1'] });
});

test('hook text: space or comma separated lists, colon hex and plain hex bodies; empty is no address', () => {
  assert.deepEqual(parseMcpText('198.19.0.2 198.19.0.3', 4), { ok: true, addresses: ['198.19.0.2', '198.19.0.3'], dropped: [] });
  assert.deepEqual(parseMcpText(' 198.19.0.3,198.19.0.2 ', 4), { ok: true, addresses: ['198.19.0.3', '198.19.0.2'], dropped: [] });
  assert.deepEqual(parseMcpText('c6:13:00:02:c6:13:00:03', 4), { ok: true, addresses: ['198.19.0.2', '198.19.0.3'], dropped: [] });
  assert.deepEqual(parseMcpText('c6130002', 4), { ok: true, addresses: ['198.19.0.2'], dropped: [] });
  assert.deepEqual(parseMcpText('2001:DB8:0:0::1', 6), { ok: true, addresses: ['2001:db8::1'], dropped: [] });
  assert.deepEqual(parseMcpText('', 4), { ok: true, addresses: [], dropped: [] });
  assert.deepEqual(parseMcpText('   ', 6), { ok: true, addresses: [], dropped: [] });
});

test('hook text that is no address list is refused with the offending token', () => {
  assert.match((parseMcpText('198.19.0.2 concentrator.example', 4) as { why: string }).why, /"concentrator\.example" is not an IPv4 address/);
  assert.match((parseMcpText('2001:db8::1', 4) as { why: string }).why, /not an IPv4 address/);
  assert.match((parseMcpText('198.19.0.2', 6) as { why: string }).why, /not an IPv6 address/);
  assert.equal(parseMcpText('c6:13:00', 4).ok, false, 'three bytes');
});
