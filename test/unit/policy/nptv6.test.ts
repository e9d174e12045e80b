/** NPTv6 (RFC 6296 section 3): the worked example, the adjustment-word rules, and checksum neutrality + inverse as properties. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { addressSum, nptv6Mapping, translate, untranslate } from '../../../src/policy/nptv6.js';
import { bytesToIpv6, ipv6ToBytes } from '../../../src/protocol/address.js';
import { cidrContains } from '../../../src/policy/cidr.js';

test('RFC 6296 section 3.6: FD01:0203:0405::/48 -> 2001:0DB8:0001::/48 maps FD01:0203:0405:0001::1234 to 2001:0DB8:0001:D550::1234', () => {
  const m = nptv6Mapping('FD01:0203:0405::/48', '2001:0DB8:0001::/48');
  // "0xD245 - 0xFCF5 = 0xD54F" (the checksums of the two prefixes).
  assert.equal(m.adjustment, 0xd54f);
  assert.equal(translate(m, 'FD01:0203:0405:0001::1234'), '2001:db8:1:d550::1234');
  assert.equal(untranslate(m, '2001:0DB8:0001:D550::1234'), 'fd01:203:405:1::1234');
  assert.equal(addressSum('fd01:203:405:1::1234'), addressSum('2001:db8:1:d550::1234'));
});

test('/48: a result of 0xFFFF is written as 0x0000 and maps back; a subnet word of 0xFFFF is not mappable', () => {
  const m = nptv6Mapping('fd01:203:405::/48', '2001:db8:1::/48');
  // 0x2AB0 + 0xD54F = 0xFFFF -> 0x0000.
  assert.equal(translate(m, 'fd01:203:405:2ab0::1'), '2001:db8:1::1');
  assert.equal(untranslate(m, '2001:db8:1::1'), 'fd01:203:405:2ab0::1');
  assert.equal(translate(m, 'fd01:203:405:ffff::1'), null);
  // The IID is never touched with a /48.
  assert.equal(translate(m, 'fd01:203:405:1:ffff:ffff:ffff:ffff'), '2001:db8:1:d550:ffff:ffff:ffff:ffff');
});

test('/49../64 (section 3.5): the first IID word that is not 0xFFFF takes the adjustment; all four 0xFFFF is not mappable', () => {
  const m = nptv6Mapping('fd01:203:405:1::/64', '2001:db8:1:2::/64');
  const a = translate(m, 'fd01:203:405:1::1234');
  assert.ok(a !== null);
  assert.equal(a.split(':').slice(0, 4).join(':'), '2001:db8:1:2', 'the whole /64 is replaced');
  assert.equal(ipv6ToBytes(a).readUInt16BE(8), (0 + m.adjustment) % 0xffff, 'word 64..79 took the adjustment');
  const skip = translate(m, 'fd01:203:405:1:ffff::7');
  assert.ok(skip !== null);
  assert.equal(ipv6ToBytes(skip).readUInt16BE(8), 0xffff, 'a 0xFFFF word is skipped');
  assert.notEqual(ipv6ToBytes(skip).readUInt16BE(10), 0, 'the next word took it');
  assert.equal(untranslate(m, skip), 'fd01:203:405:1:ffff::7');
  assert.equal(translate(m, 'fd01:203:405:1:ffff:ffff:ffff:ffff'), null);
});

test('addresses outside the prefix, IPv4, and bad mappings', () => {
  const m = nptv6Mapping('fd01:203:405::/48', '2001:db8:1::/48');
  assert.equal(translate(m, 'fd01:203:406::1'), null);
  assert.equal(translate(m, '198.18.0.1'), null);
  assert.equal(untranslate(m, 'fd01:203:405:1::1'), null);
  assert.throws(() => nptv6Mapping('fd01::/48', '2001:db8::/56'), /same length/);
  assert.throws(() => nptv6Mapping('fd01::/80', '2001:db8::/80'), /1\.\.64/);
  assert.throws(() => nptv6Mapping('198.18.0.0/15', '2001:db8::/15'), /IPv6/);
});

const bytes16 = fc.uint8Array({ minLength: 16, maxLength: 16 }).map((b) => Buffer.from(b));

test('property: any mapping of any length 1..64 is checksum-neutral, stays in the external prefix, and untranslate inverts it', () => {
  fc.assert(
    fc.property(bytes16, bytes16, bytes16, fc.integer({ min: 1, max: 64 }), (ip, ep, host, bits) => {
      const m = nptv6Mapping(`${bytesToIpv6(ip)}/${bits}`, `${bytesToIpv6(ep)}/${bits}`);
      // An address inside the internal prefix: the prefix's bits, then the host's.
      const a = Buffer.from(host);
      for (let b = 0; b < 16; b++) {
        const keep = Math.max(0, Math.min(8, bits - b * 8));
        const mask = (0xff << (8 - keep)) & 0xff;
        a[b] = ((m.internal.bytes[b] as number) & mask) | ((a[b] as number) & ~mask & 0xff);
      }
      const inside = bytesToIpv6(a);
      const out = translate(m, inside);
      if (out === null) {
        // Only the documented unmappable cases.
        const words = [0, 1, 2, 3, 4, 5, 6, 7].map((w) => a.readUInt16BE(w * 2));
        assert.ok(bits <= 48 ? words[3] === 0xffff : words.slice(4).every((w) => w === 0xffff), `unmappable ${inside}/${bits}`);
        return;
      }
      assert.ok(cidrContains(m.external, out), `${out} in ${m.external.text}`);
      assert.equal(addressSum(out), addressSum(inside), 'checksum-neutral');
      assert.equal(untranslate(m, out), bytesToIpv6(ipv6ToBytes(inside)), 'inverse');
    }),
    { numRuns: 2000 },
  );
});
