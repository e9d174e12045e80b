/** Which destinations get a PROXY v2 header: prefix and ports, both families, nothing when not listed. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compileProxyProtocolTargets } from '../../../src/policy/proxy-protocol.js';

test('no rules: no destination gets a header', () => {
  const t = compileProxyProtocolTargets([]);
  assert.equal(t.wants('198.19.0.11', 8443), false);
  assert.equal(t.wants('2001:db8:100::11', 443), false);
});

test('prefix and ports: only the listed ports of the listed prefixes; absent ports = every port', () => {
  const t = compileProxyProtocolTargets([
    { prefix: '198.19.0.11/32', ports: [8443, 9443] },
    { prefix: '2001:db8:100::/64' },
  ]);
  assert.equal(t.wants('198.19.0.11', 8443), true);
  assert.equal(t.wants('198.19.0.11', 9443), true);
  assert.equal(t.wants('198.19.0.11', 8080), false, 'another port of a listed host');
  assert.equal(t.wants('198.19.0.12', 8443), false, 'another host, listed port');
  assert.equal(t.wants('::ffff:198.19.0.11', 8443), true, 'the IPv4-mapped form is the same address');
  assert.equal(t.wants('2001:db8:100::11', 1), true);
  assert.equal(t.wants('2001:db8:100::11', 65535), true);
  assert.equal(t.wants('2001:db8:101::11', 443), false, 'outside the /64');
  assert.equal(t.wants('not-an-address', 443), false);
});

test('an IPv4 prefix never matches an IPv6 destination and the reverse', () => {
  const t = compileProxyProtocolTargets([{ prefix: '0.0.0.0/0' }]);
  assert.equal(t.wants('198.19.0.11', 80), true);
  assert.equal(t.wants('2001:db8:100::11', 80), false);
  const t6 = compileProxyProtocolTargets([{ prefix: '::/0' }]);
  assert.equal(t6.wants('2001:db8:100::11', 80), true);
  assert.equal(t6.wants('198.19.0.11', 80), false);
});
