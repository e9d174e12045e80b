/** Transparent and NPTv6 source addresses, pure: who owns what, the spoof gate, the address each mode picks. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  CustomerPrefixes,
  claimedSourceGate,
  nptv6Mappings,
  nptv6Source,
  transparentSource,
  type SourceChoiceInput,
  type TransparentOptions,
} from '../../../src/policy/transparent.js';
import { nptv6Mapping, translate, untranslate } from '../../../src/policy/nptv6.js';
import type { Refusal } from '../../../src/policy/refusals.js';
import { cidrContains } from '../../../src/policy/cidr.js';
import { bytesToIpv6 } from '../../../src/protocol/address.js';

const customers = new CustomerPrefixes([
  { cpe: '198.18.1.0/24', prefixes: ['198.18.0.0/24', '2001:db8::/64', '2001:db8:1::2/128'] },
  { cpe: '2001:db8:5::/64', prefixes: ['2001:db8:50::/48', '198.18.5.2/32'] },
]);
const CPE = '198.18.1.2';
const code = (r: string | Refusal) => (typeof r === 'string' ? r : r.code);

const input = (over: Partial<SourceChoiceInput>): SourceChoiceInput => ({ cpe: CPE, claimed: undefined, family: 4, owned: customers.owned(over.cpe ?? CPE), ...over });

test('owned prefixes: the first entry containing the CPE plus its own address; no entry = its own address only', () => {
  assert.deepEqual(customers.owned(CPE).map((p) => p.text), ['198.18.0.0/24', '2001:db8::/64', '2001:db8:1::2/128', '198.18.1.2/32']);
  assert.deepEqual(customers.owned('198.18.9.2').map((p) => p.text), ['198.18.9.2/32']);
  assert.deepEqual(customers.owned('::ffff:198.18.9.2').map((p) => p.text), ['198.18.9.2/32'], 'IPv4-mapped is the IPv4 address');
});

test('source-spoofed: a claimed address outside the owned prefixes is refused; inside, or none, passes', () => {
  const owned = customers.owned(CPE);
  assert.equal(claimedSourceGate(undefined, owned), undefined);
  assert.equal(claimedSourceGate('198.18.0.2', owned), undefined);
  assert.equal(claimedSourceGate('2001:db8::abcd', owned), undefined);
  assert.equal(claimedSourceGate(CPE, owned), undefined, 'its own address');
  assert.equal(claimedSourceGate('198.18.7.7', owned)?.code, 'source-spoofed');
  assert.equal(claimedSourceGate('2001:db8:1::3', owned)?.code, 'source-spoofed', 'next to a host prefix');
  assert.equal(claimedSourceGate('198.18.0.2', customers.owned('198.18.9.2'))?.code, 'source-spoofed', 'no entry: only its own address');
});

const opts = (over: Partial<TransparentOptions> = {}): TransparentOptions => ({ ipv4: 'cpe', ipv6: 'host', prefixHost: '::100:0:0:1', ...over });

test('IPv4 preservation (5.4.1.1): cpe = the WAN address the connection came from; host = the source IE', () => {
  assert.equal(transparentSource(input({ claimed: '198.18.0.2' }), opts()), CPE);
  assert.equal(transparentSource(input({ claimed: '198.18.0.2' }), opts({ ipv4: 'host' })), '198.18.0.2');
  assert.equal(transparentSource(input({}), opts({ ipv4: 'host' })), CPE, 'no source IE: the CPE is the host');
  // Connected over IPv6: the configured /32 is its IPv4 WAN address; without one there is nothing to preserve.
  assert.equal(transparentSource(input({ cpe: '2001:db8:5::2' }), opts()), '198.18.5.2');
  assert.equal(code(transparentSource(input({ cpe: '2001:db8:7::2' }), opts())), 'no-source-address');
});

test('IPv6: host (5.4.1.3) = the source IE; prefix (5.4.1.2) = prefixHost in the host\'s prefix; cpe = its own', () => {
  const v6 = (over: Partial<SourceChoiceInput>) => input({ family: 6, ...over });
  assert.equal(transparentSource(v6({ claimed: '2001:db8::2' }), opts()), '2001:db8::2');
  assert.equal(transparentSource(v6({ claimed: '2001:db8::2' }), opts({ ipv6: 'prefix' })), '2001:db8::100:0:0:1');
  assert.equal(transparentSource(v6({ claimed: '2001:db8::2' }), opts({ ipv6: 'prefix', prefixHost: '::ffff:ffff:ffff:ffff:ffff' })), '2001:db8::ffff:ffff:ffff:ffff');
  assert.equal(transparentSource(v6({}), opts({ ipv6: 'prefix' })), '2001:db8:1::2', 'no IE: the CPE is the host, its /128 is its prefix');
  const noV6Host = [customers.owned(CPE)[0]!, customers.owned(CPE)[1]!];
  assert.equal(transparentSource(v6({ owned: noV6Host }), opts({ ipv6: 'prefix' })), '2001:db8::100:0:0:1', 'no IE, no IPv6 of its own: its first IPv6 prefix');
  assert.equal(transparentSource(v6({ claimed: '2001:db8::2' }), opts({ ipv6: 'cpe' })), '2001:db8:1::2', 'the configured /128');
  assert.equal(transparentSource(v6({ claimed: '198.18.0.2' }), opts()), '2001:db8:1::2', 'an IPv4 source IE: the CPE address of the family');
  assert.equal(code(transparentSource(v6({ cpe: '198.18.9.2', owned: customers.owned('198.18.9.2') }), opts())), 'no-source-address');
  assert.equal(transparentSource(v6({ cpe: '2001:db8:5::2', owned: customers.owned('2001:db8:5::2'), claimed: '2001:db8:50:7::9' }), opts({ ipv6: 'prefix' })), '2001:db8:50:0:100::1', 'a /48: the subnet bits come from prefixHost too');
});

test('NPTv6 mappings: each customer IPv6 prefix takes the next external prefix of its length, in configuration order', () => {
  const m = nptv6Mappings(customers, ['2001:db8:300::/64', '2001:db8:400::/48']);
  assert.deepEqual(m.map((x) => `${x.internal.text}>${x.external.text}`), ['2001:db8::/64>2001:db8:300::/64', '2001:db8:50::/48>2001:db8:400::/48']);
  assert.throws(() => nptv6Mappings(customers, ['2001:db8:300::/64']), /no external \/48 left .*2001:db8:50::\/48/);
  assert.deepEqual(nptv6Mappings(new CustomerPrefixes([{ cpe: '198.18.1.0/24', prefixes: ['2001:db8:1::2/128'] }]), ['2001:db8:300::/64']), [], 'a host prefix is not mapped');
  assert.throws(() => nptv6Mappings(customers, ['2001:db8:300::/80']), /\/1\.\.\/64/);
});

test('NPTv6 source: the host address translated; the CPE address when there is no IE; unmappable refused', () => {
  const maps = [nptv6Mapping('2001:db8::/64', '2001:db8:300::/64')];
  const v6 = (over: Partial<SourceChoiceInput>) => input({ family: 6, ...over });
  assert.equal(nptv6Source(v6({ claimed: '2001:db8::2' }), maps), translate(maps[0]!, '2001:db8::2'));
  assert.notEqual(translate(maps[0]!, '2001:db8::2'), '2001:db8:300::2', 'checksum-neutral, not a plain prefix swap');
  assert.equal(code(nptv6Source(v6({}), maps)), 'no-source-address', 'the CPE (IPv4) has no IPv6 address in a mapped prefix');
  assert.equal(code(nptv6Source(v6({ claimed: '2001:db8::ffff:ffff:ffff:ffff' }), maps)), 'no-source-address', 'all-ones IID cannot be mapped');
});

const bytes16 = fc.uint8Array({ minLength: 16, maxLength: 16 }).map((b) => Buffer.from(b));

test('property: a transparent source is always of the destination family and inside what the CPE owns; otherwise no-source-address', () => {
  const v4 = fc.tuple(fc.constant('198.18'), fc.integer({ min: 0, max: 3 }), fc.integer({ min: 1, max: 254 })).map(([p, a, b]) => `${p}.${a}.${b}`);
  const v6 = fc.tuple(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: 0xffff })).map(([a, b]) => `2001:db8:${a.toString(16)}::${b.toString(16)}`);
  const addr = fc.oneof(v4, v6);
  const table = new CustomerPrefixes([
    { cpe: '198.18.1.0/24', prefixes: ['198.18.0.0/24', '2001:db8::/64'] },
    { cpe: '2001:db8:2::/64', prefixes: ['198.18.2.2/32', '2001:db8:3::/64'] },
  ]);
  const maps = nptv6Mappings(table, ['2001:db8:300::/64', '2001:db8:301::/64']);
  fc.assert(
    fc.property(addr, fc.option(addr, { nil: undefined }), fc.constantFrom(4 as const, 6 as const), fc.constantFrom('cpe' as const, 'host' as const), fc.constantFrom('host' as const, 'prefix' as const, 'cpe' as const), bytes16, (cpe, claimed, family, ipv4, ipv6, host) => {
      const owned = table.owned(cpe);
      if (claimedSourceGate(claimed, owned)) return; // refused before any choice
      const input = { cpe, claimed, family, owned };
      const t = transparentSource(input, opts({ ipv4, ipv6, prefixHost: bytesToIpv6(host) }));
      if (typeof t === 'string') {
        assert.equal(t.includes(':') ? 6 : 4, family, `${t} is IPv${family}`);
        assert.equal(claimedSourceGate(t, owned), undefined, `${t} is owned by ${cpe}`);
      } else assert.equal(t.code, 'no-source-address');
      const n = nptv6Source({ ...input, family: 6 }, maps);
      if (typeof n === 'string') {
        const m = maps.find((x) => cidrContains(x.external, n));
        assert.ok(m, `${n} is in an external prefix`);
        const internal = untranslate(m, n);
        assert.ok(internal !== null && claimedSourceGate(internal, owned) === undefined, `the address it maps from (${internal}) is owned by ${cpe}`);
      } else assert.equal(n.code, 'no-source-address');
    }),
    { numRuns: 3000 },
  );
});
