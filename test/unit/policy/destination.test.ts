/** destinationGate and the CIDR helper: named refusals, IPv4-mapped and NAT64 forms, the lab ranges allowed. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  AddressSet,
  LAB_RANGES,
  compileDestinationPolicy,
  convertErrorCodeForRefusal,
  destinationGate,
  type DestinationRefusal,
  type GateDecision,
} from '../../../src/policy/destination.js';
import { cidrContains, parseCidr } from '../../../src/policy/cidr.js';

interface Lists {
  deny?: string[];
  permit?: string[];
  own?: string[];
}
/** The gate with the lists compiled as the concentrator compiles them (once, here per call for brevity). */
const gate = (address: string, lists: Lists = {}): GateDecision =>
  destinationGate(address, { ...compileDestinationPolicy(lists), ...(lists.own ? { own: AddressSet.from(lists.own) } : {}) });
const refused = (address: string, lists: Lists = {}): DestinationRefusal | 'allowed' => {
  const d = gate(address, lists);
  return d.allowed ? 'allowed' : d.reason;
};

test('never a server: unspecified, loopback, link-local, multicast, broadcast, reserved (IPv4, IPv6, mapped)', () => {
  const cases: Array<[string, DestinationRefusal]> = [
    ['0.0.0.0', 'unspecified'],
    ['0.1.2.3', 'this-network'],
    ['127.0.0.1', 'loopback'],
    ['127.255.0.9', 'loopback'],
    ['169.254.1.1', 'link-local'],
    ['224.0.0.1', 'multicast'],
    ['239.255.255.250', 'multicast'],
    ['255.255.255.255', 'broadcast'],
    ['240.0.0.1', 'reserved'],
    ['::', 'unspecified'],
    ['::1', 'loopback'],
    ['fe80::1', 'link-local'],
    ['febf::1', 'link-local'],
    ['ff02::1', 'multicast'],
    ['ff0e::1', 'multicast'],
    ['::ffff:127.0.0.1', 'loopback'],
    ['::ffff:7f00:1', 'loopback'],
    ['::ffff:0.0.0.0', 'unspecified'],
    ['::ffff:224.0.0.251', 'multicast'],
    ['::ffff:255.255.255.255', 'broadcast'],
    ['::ffff:169.254.0.1', 'link-local'],
    ['64:ff9b::127.0.0.1', 'loopback'],
    ['64:ff9b::e000:1', 'multicast'],
  ];
  for (const [a, why] of cases) assert.equal(refused(a), why, a);
  // Even when the operator "permits" them.
  assert.equal(refused('127.0.0.1', { permit: ['0.0.0.0/0'] }), 'loopback');
  assert.equal(refused('ff02::1', { permit: ['::/0'] }), 'multicast');
});

test('the lab ranges 198.18.0.0/15 and 2001:db8::/32 are allowed by default (documented exception)', () => {
  assert.deepEqual(LAB_RANGES, ['198.18.0.0/15', '2001:db8::/32']);
  for (const a of ['198.18.0.1', '198.19.255.254', '::ffff:198.18.3.2', '2001:db8::1', '2001:db8:ffff::1']) {
    assert.deepEqual(gate(a), { allowed: true }, a);
  }
  // Just outside them is not the exception.
  assert.equal(refused('2001:2::1'), 'special-purpose');
  assert.deepEqual(gate('198.20.0.1'), { allowed: true }, 'global unicast');
  // An operator can still refuse them.
  assert.equal(refused('198.18.3.2', { deny: ['198.18.0.0/15'] }), 'deny-prefix');
  assert.equal(refused('::ffff:198.18.3.2', { deny: ['198.18.3.0/24'] }), 'deny-prefix', 'mapped form matches an IPv4 prefix');
  assert.equal(refused('2001:db8::5', { deny: ['2001:db8::/64'] }), 'deny-prefix');
});

test('RFC 6890 special-purpose ranges are refused unless permitted', () => {
  for (const a of ['10.1.2.3', '172.16.0.1', '172.31.255.255', '192.168.1.1', '100.64.0.1', '192.0.0.8', '192.0.2.1', '198.51.100.7', '203.0.113.9', '192.88.99.1', 'fc00::1', 'fd12::1', 'fec0::1', '2001::1', '2001:20::1', '2002:c000:0204::1', '100::1', '64:ff9b:1::1', '::c612:302', '3fff::1', '64:ff9b::a00:1']) {
    assert.equal(refused(a), 'special-purpose', a);
  }
  assert.deepEqual(gate('10.1.2.3', { permit: ['10.0.0.0/8'] }), { allowed: true });
  assert.deepEqual(gate('fd12::1', { permit: ['fc00::/7'] }), { allowed: true });
  assert.equal(refused('10.1.2.3', { permit: ['10.0.0.0/16'] }), 'special-purpose', 'a permit elsewhere does not help');
  // Neighbours of the ranges are global unicast.
  for (const a of ['172.32.0.1', '172.15.255.255', '100.128.0.1', '11.0.0.1', '64:ff9b::808:808', '2001:4860::8888', '2a00::1']) {
    assert.deepEqual(gate(a), { allowed: true }, a);
  }
});

test('own addresses and deny prefixes, with a named reason and detail', () => {
  const d = gate('198.18.0.1', { own: ['198.18.0.1', '2001:db8::1'] });
  assert.equal(d.allowed, false);
  if (!d.allowed) {
    assert.equal(d.reason, 'own-address');
    assert.match(d.detail, /198\.18\.0\.1/);
  }
  assert.equal(refused('::ffff:198.18.0.1', { own: ['198.18.0.1'] }), 'own-address', 'mapped form of an own address');
  assert.equal(refused('2001:db8:0::1', { own: ['2001:db8::1'] }), 'own-address');
  assert.deepEqual(gate('198.18.0.2', { own: ['198.18.0.1'] }), { allowed: true });
  const deny = gate('198.19.0.9', { deny: ['198.19.0.0/24'] });
  assert.deepEqual(deny, { allowed: false, reason: 'deny-prefix', detail: 'deny prefix 198.19.0.0/24' });
  assert.equal(refused('not an address'), 'not-an-ip');
  assert.equal(refused('fe80::1%eth0'), 'not-an-ip');
  assert.throws(() => compileDestinationPolicy({ deny: ['198.18.0.0/33'] }), TypeError);
  assert.throws(() => compileDestinationPolicy({ permit: ['x/8'] }), TypeError);
  assert.throws(() => AddressSet.from(['localhost']), TypeError);
});

test('NAT64 form (64:ff9b::/96, RFC 6052) of a refused IPv4 destination is refused by every rule', () => {
  const CONC = '198.18.200.1';
  const NAT64 = '64:ff9b::c612:c801'; // 198.18.200.1
  assert.equal(refused(CONC), 'allowed', 'a lab address as such is allowed');
  assert.equal(refused(NAT64), 'allowed', 'and so is its NAT64 form');
  // Rule 1, never a server.
  assert.equal(refused('64:ff9b::7f00:1'), 'loopback');
  assert.equal(refused('64:ff9b::0.0.0.0'), 'unspecified');
  assert.equal(refused('64:ff9b::a9fe:101'), 'link-local');
  assert.equal(refused('64:ff9b::ffff:ffff'), 'broadcast');
  assert.equal(refused('64:ff9b::f000:1'), 'reserved');
  // Rule 2, own addresses: the NAT64 form of one, in every spelling, whether own lists IPv4 or mapped.
  for (const own of [[CONC], [`::ffff:${CONC}`]]) {
    for (const a of [NAT64, `64:ff9b::${CONC}`, '64:FF9B:0:0:0:0:C612:C801']) assert.equal(refused(a, { own }), 'own-address', `${a} own ${own[0]}`);
  }
  const o = gate(NAT64, { own: [CONC] });
  assert.ok(!o.allowed && o.detail.includes('NAT64 form of 198.18.200.1'), JSON.stringify(o));
  assert.equal(refused(NAT64, { own: [NAT64] }), 'own-address', 'an own IPv6 address listed as such');
  assert.equal(refused('64:ff9b::c612:c802', { own: [CONC] }), 'allowed', 'the neighbour is not own');
  // Rule 3, deny prefixes: an IPv4 prefix holding the embedded address, or an IPv6 prefix holding the form.
  assert.equal(refused(NAT64, { deny: ['198.18.200.0/24'] }), 'deny-prefix');
  assert.equal(refused(NAT64, { deny: ['::ffff:198.18.200.0/120'] }), 'deny-prefix', 'a mapped deny prefix');
  assert.equal(refused(NAT64, { deny: ['64:ff9b::/96'] }), 'deny-prefix');
  const d = gate(NAT64, { deny: ['198.18.0.0/15', '198.18.200.0/24'] });
  assert.deepEqual(d, { allowed: false, reason: 'deny-prefix', detail: 'deny prefix 198.18.200.0/24 (NAT64 form of 198.18.200.1)' });
  assert.equal(refused(NAT64, { deny: ['198.18.201.0/24'] }), 'allowed');
  assert.equal(refused('64:ff9b:1::c612:c801', { deny: ['198.18.200.0/24'] }), 'special-purpose', 'only the well-known /96 embeds');
  // Rule 4, special-purpose, and its permit (judged on the embedded address as well).
  assert.equal(refused('64:ff9b::c0a8:101'), 'special-purpose'); // 192.168.1.1
  assert.equal(refused('64:ff9b::c0a8:101', { permit: ['192.168.0.0/16'] }), 'allowed');
  assert.equal(refused('64:ff9b::a00:1', { permit: ['192.168.0.0/16'] }), 'special-purpose');
  // The order of the rules holds for the NAT64 form too: own before deny before special-purpose.
  assert.equal(refused(NAT64, { own: [CONC], deny: ['198.18.200.0/24'] }), 'own-address');
  assert.equal(refused('64:ff9b::a00:1', { deny: ['10.0.0.0/8'] }), 'deny-prefix');
});

test('RFC 8803 error code for a refusal: 1 for never-a-server addresses, 32 for policy', () => {
  assert.equal(convertErrorCodeForRefusal('loopback'), 1);
  assert.equal(convertErrorCodeForRefusal('multicast'), 1);
  assert.equal(convertErrorCodeForRefusal('broadcast'), 1);
  assert.equal(convertErrorCodeForRefusal('deny-prefix'), 32);
  assert.equal(convertErrorCodeForRefusal('own-address'), 32);
  assert.equal(convertErrorCodeForRefusal('special-purpose'), 32);
});

test('parseCidr / cidrContains', () => {
  assert.deepEqual({ ...parseCidr('198.18.0.1/15'), bytes: undefined }, { family: 4, bits: 15, text: '198.18.0.0/15', bytes: undefined });
  assert.equal(parseCidr('2001:DB8::1/32').text, '2001:db8::/32');
  assert.equal(parseCidr('198.18.3.2').text, '198.18.3.2/32');
  assert.equal(parseCidr('::ffff:198.18.0.0/111').text, '198.18.0.0/15', 'a mapped prefix is an IPv4 prefix');
  assert.equal(parseCidr('::/0').text, '::/0');
  for (const bad of ['198.18.0.0/33', '2001:db8::/129', '198.18.0.0/', '198.18.0.0/1/2', 'x/8', '198.18.0.0/-1', '198.18.0.0/08a']) {
    assert.throws(() => parseCidr(bad), TypeError, bad);
  }
  assert.equal(cidrContains('198.18.0.0/15', '198.19.255.255'), true);
  assert.equal(cidrContains('198.18.0.0/15', '198.20.0.0'), false);
  assert.equal(cidrContains('198.18.0.0/15', '::ffff:198.18.1.1'), true);
  assert.equal(cidrContains('::ffff:198.18.0.0/111', '198.18.1.1'), true);
  assert.equal(cidrContains('2001:db8::/32', '2001:db8:1::1'), true);
  assert.equal(cidrContains('2001:db8::/32', '2001:db9::1'), false);
  assert.equal(cidrContains('0.0.0.0/0', '2001:db8::1'), false, 'families do not mix');
  assert.equal(cidrContains('::/0', '198.18.0.1'), false);
  assert.equal(cidrContains('127.0.0.0/8', 'localhost'), false);
  assert.equal(cidrContains('10.0.0.0/7', '11.255.0.1'), true);
  assert.equal(cidrContains('10.0.0.0/7', '12.0.0.1'), false);
});
