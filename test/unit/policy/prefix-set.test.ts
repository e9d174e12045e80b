/**
 * PrefixSet (longest-prefix match) and AddressSet: the same answers as the linear cidrContains scan (fast-check),
 * edge cases (/0, host prefixes, mapped forms, overlaps, duplicates), and a lookup's cost bounded by the address
 * length whatever the list size (counted in trie nodes, not timed).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { AddressSet, PrefixSet } from '../../../src/policy/prefix-set.js';
import { bytesInCidr, cidrContains, parseCidr } from '../../../src/policy/cidr.js';
import { bytesToIpv4, bytesToIpv6 } from '../../../src/protocol/address.js';

/** The reference: scan every prefix, keep the longest that holds the address. */
function linear(list: readonly string[], address: string): string | undefined {
  let best: { bits: number; text: string } | undefined;
  for (const p of list) {
    if (!cidrContains(p, address)) continue;
    const c = parseCidr(p);
    if (!best || c.bits > best.bits) best = c;
  }
  return best?.text;
}

const v4Bytes = fc.uint8Array({ minLength: 4, maxLength: 4 }).map((b) => Buffer.from(b));
// IPv6 addresses from few distinct first bytes, so that random prefixes overlap and share trie branches.
const v6Bytes = fc
  .tuple(fc.constantFrom(0x20, 0x64, 0xfd, 0x00), fc.uint8Array({ minLength: 15, maxLength: 15 }))
  .map(([h, t]) => Buffer.from([h, ...t]));

const prefixText = fc.oneof(
  fc.tuple(v4Bytes, fc.integer({ min: 0, max: 32 })).map(([b, n]) => `${bytesToIpv4(b)}/${n}`),
  fc.tuple(v4Bytes, fc.integer({ min: 0, max: 32 })).map(([b, n]) => `::ffff:${bytesToIpv4(b)}/${96 + n}`),
  fc.tuple(v6Bytes, fc.integer({ min: 0, max: 128 })).map(([b, n]) => `${bytesToIpv6(b)}/${n}`),
  v4Bytes.map((b) => bytesToIpv4(b)), // a bare address: a host prefix
);

/** An address near a prefix of the list (its network with some host bits flipped), or anywhere. */
function addressFor(list: readonly string[]): fc.Arbitrary<string> {
  const near = fc.tuple(fc.nat(), fc.nat({ max: 127 }), fc.boolean(), fc.boolean()).map(([i, flip, doFlip, mapped]) => {
    const c = parseCidr(list[i % list.length] as string);
    const b = Buffer.from(c.bytes);
    const bit = flip % (b.length * 8);
    if (doFlip) b[bit >> 3] = (b[bit >> 3] as number) ^ (0x80 >> (bit & 7));
    if (c.family === 6) return bytesToIpv6(b);
    return mapped ? `::ffff:${bytesToIpv4(b)}` : bytesToIpv4(b);
  });
  const anywhere = fc.oneof(v4Bytes.map(bytesToIpv4), v6Bytes.map(bytesToIpv6));
  return list.length === 0 ? anywhere : fc.oneof(near, anywhere);
}

test('property: match = the longest prefix of a linear cidrContains scan; has = some()', () => {
  fc.assert(
    fc.property(
      fc.array(prefixText, { maxLength: 40 }).chain((list) => fc.tuple(fc.constant(list), fc.array(addressFor(list), { minLength: 1, maxLength: 20 }))),
      ([list, addresses]) => {
        const set = PrefixSet.from(list);
        assert.equal(set.size, new Set(list.map((p) => parseCidr(p).text)).size);
        for (const a of addresses) {
          assert.equal(set.match(a), linear(list, a), `${a} in ${JSON.stringify(list)}`);
          assert.equal(set.has(a), list.some((p) => cidrContains(p, a)));
        }
      },
    ),
    { numRuns: 2_000 },
  );
});

test('edge cases: /0, host prefixes, mapped forms, overlaps, duplicates, families apart', () => {
  const set = PrefixSet.from(['0.0.0.0/0', '198.18.0.0/15', '198.18.200.0/24', '198.18.200.1/32', '::ffff:198.19.0.0/112', '2001:db8::/32', '2001:db8::1/128', '198.18.0.1/15']);
  assert.equal(set.size, 7, '198.18.0.1/15 is 198.18.0.0/15 again');
  assert.equal(set.match('198.18.200.1'), '198.18.200.1/32');
  assert.equal(set.match('198.18.200.2'), '198.18.200.0/24');
  assert.equal(set.match('198.18.3.4'), '198.18.0.0/15');
  assert.equal(set.match('198.19.0.7'), '198.19.0.0/16', 'a mapped prefix is an IPv4 prefix');
  assert.equal(set.match('::ffff:198.18.200.1'), '198.18.200.1/32', 'a mapped address is its IPv4 address');
  assert.equal(set.match('::ffff:c612:c802'), '198.18.200.0/24');
  assert.equal(set.match('8.8.8.8'), '0.0.0.0/0');
  assert.equal(set.match('255.255.255.255'), '0.0.0.0/0');
  assert.equal(set.match('2001:db8::1'), '2001:db8::1/128');
  assert.equal(set.match('2001:DB8:0:0::2'), '2001:db8::/32');
  assert.equal(set.match('2001:db9::1'), undefined, 'IPv4 /0 does not hold IPv6');
  assert.equal(set.match('not an address'), undefined);
  assert.equal(set.has('fe80::1%eth0'), false);

  const v6 = PrefixSet.from(['::/0', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128', '::/128']);
  assert.equal(v6.match('ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'), 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128');
  assert.equal(v6.match('ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe'), '::/0');
  assert.equal(v6.match('::'), '::/128');
  assert.equal(v6.match('198.18.0.1'), undefined, 'IPv6 /0 does not hold IPv4');
  assert.equal(v6.match('::ffff:198.18.0.1'), undefined, 'nor its mapped form');

  // Inserted in either order, a prefix and the prefixes inside it give the same answers.
  const nested = ['10.0.0.0/8', '10.128.0.0/9', '10.0.0.0/9', '10.64.0.0/10', '10.64.0.0/11', '11.0.0.0/8'];
  for (const list of [nested, [...nested].reverse()]) {
    const s = PrefixSet.from(list);
    assert.equal(s.match('10.64.1.1'), '10.64.0.0/11');
    assert.equal(s.match('10.96.1.1'), '10.64.0.0/10');
    assert.equal(s.match('10.1.1.1'), '10.0.0.0/9');
    assert.equal(s.match('10.200.1.1'), '10.128.0.0/9');
    assert.equal(s.match('11.1.1.1'), '11.0.0.0/8');
    assert.equal(s.match('12.1.1.1'), undefined);
  }
  assert.equal(PrefixSet.from([]).size, 0);
  assert.equal(PrefixSet.from([]).has('198.18.0.1'), false);
});

test('a bad prefix throws the same TypeError as parseCidr', () => {
  for (const bad of ['198.18.0.0/33', '2001:db8::/129', 'x/8', '198.18.0.0/', '1.2.3.4/1/2']) {
    let expected: unknown;
    try {
      parseCidr(bad);
    } catch (err) {
      expected = err;
    }
    assert.ok(expected instanceof TypeError);
    assert.throws(() => PrefixSet.from(['198.18.0.0/15', bad]), { name: 'TypeError', message: (expected as Error).message });
  }
});

test('cost: a lookup visits at most 33 / 129 nodes with 100,000 prefixes, as with 10', () => {
  // xorshift32: a fixed, reproducible list.
  let seed = 0x9e3779b9;
  const rnd = () => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 24) & 0xff;
  };
  const v4 = Array.from({ length: 60_000 }, () => `${rnd()}.${rnd()}.${rnd()}.${rnd()}/${16 + (rnd() % 17)}`);
  const v6 = Array.from({ length: 40_000 }, () => {
    const b = Buffer.from(Array.from({ length: 16 }, rnd));
    b[0] = 0x20;
    return `${bytesToIpv6(b)}/${16 + (rnd() % 113)}`;
  });
  const big = PrefixSet.from([...v4, ...v6]);
  const parsed = [...v4, ...v6].map((t) => parseCidr(t));
  const small = PrefixSet.from([...v4.slice(0, 6), ...v6.slice(0, 4)]);
  assert.ok(big.size > 90_000, `${big.size} distinct prefixes`);
  let maxBig4 = 0;
  let maxBig6 = 0;
  let sumBig = 0;
  let sumSmall = 0;
  for (let i = 0; i < 20_000; i++) {
    // Addresses inside listed prefixes (the deepest walks) and anywhere.
    const p = parseCidr((i % 2 ? v4 : v6)[(i * 7919) % (i % 2 ? v4.length : v6.length)] as string);
    const b = Buffer.from(p.bytes);
    if (i % 3 === 0) for (let j = 0; j < b.length; j++) b[j] = rnd();
    const l = big.lookupBytes(p.family, b);
    if (p.family === 4) maxBig4 = Math.max(maxBig4, l.visits);
    else maxBig6 = Math.max(maxBig6, l.visits);
    sumBig += l.visits;
    sumSmall += small.lookupBytes(p.family, b).visits;
    if (i % 1000 === 0) {
      const want = parsed.filter((c) => bytesInCidr(p.family, b, c)).sort((x, y) => y.bits - x.bits)[0]?.text;
      assert.equal(l.match, want);
    }
  }
  assert.ok(maxBig4 <= 33, `IPv4 lookups visited up to ${maxBig4} nodes`);
  assert.ok(maxBig6 <= 129, `IPv6 lookups visited up to ${maxBig6} nodes`);
  // A linear scan would look at 100,000 prefixes per lookup, 10,000 times the small list's 10.
  assert.ok(sumBig / 20_000 < 40, `mean ${sumBig / 20_000} nodes per lookup on 100,000 prefixes (10 prefixes: ${sumSmall / 20_000})`);
  process.stdout.write(`# mean nodes per lookup: ${(sumBig / 20_000).toFixed(1)} with ${big.size} prefixes, ${(sumSmall / 20_000).toFixed(1)} with ${small.size}\n`);
});

test('AddressSet: members by normalized bytes, any spelling; no prefixes', () => {
  const own = AddressSet.from(['198.18.200.1', '2001:DB8:200::1', '::ffff:198.18.1.1']);
  assert.equal(own.size, 3);
  for (const a of ['198.18.200.1', '::ffff:198.18.200.1', '::ffff:c612:c801', '2001:db8:200:0::1', '198.18.1.1']) assert.equal(own.has(a), true, a);
  for (const a of ['198.18.200.2', '2001:db8:200::2', '64:ff9b::c612:c801', 'x']) assert.equal(own.has(a), false, a);
  assert.throws(() => AddressSet.from(['198.18.0.0/24']), TypeError);
  assert.equal(AddressSet.from(['fe80::1%eth0']).has('fe80::1'), true, 'a zone index is not part of the address');
});
