import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isIP } from 'node:net';
import { FIELD, LAB, LAB_NAMESPACE_RE, PREFIX_RE, fieldAccess, namespaceName, poolAddress, serverAddressing, uplinkAddressing } from '../../../src/lab/addressing.js';
import { cidrContains, parseCidr } from '../../../src/policy/cidr.js';

const V4 = parseCidr('198.18.0.0/15');
const V6 = parseCidr('2001:db8::/32');
const inLabRanges = (a: string) => cidrContains(isIP(a) === 4 ? V4 : V6, a);

test('uplink i: up{i}/acc{i}, 198.18.i.2 <-> .1, 2001:db8:i::2 <-> ::1, table 100+i, metric 100*i', () => {
  assert.deepEqual(uplinkAddressing(3), {
    index: 3, cpeDev: 'up3', concDev: 'acc3', cpeV4: '198.18.3.2', cpeV6: '2001:db8:3::2', concV4: '198.18.3.1', concV6: '2001:db8:3::1',
    v4Prefix: '198.18.3.0/24', v6Prefix: '2001:db8:3::/64', table: 103, metric: 300,
  });
  assert.throws(() => uplinkAddressing(0), RangeError);
  assert.throws(() => uplinkAddressing(LAB.maxUplinks + 1), RangeError);
  assert.throws(() => uplinkAddressing(1.5), RangeError);
});

test('servers 198.19.0.(10+k) and 2001:db8:100::(10+k); pool from 198.19.0.128 and 2001:db8:100::8000', () => {
  assert.equal(serverAddressing(1).v4, '198.19.0.11');
  assert.equal(serverAddressing(2).v6, '2001:db8:100::12');
  assert.equal(serverAddressing(2).bridgePort, 'srv2');
  assert.deepEqual(poolAddress(0), { v4: '198.19.0.128', v6: '2001:db8:100::8000' });
  assert.deepEqual(poolAddress(126), { v4: '198.19.0.254', v6: '2001:db8:100::807e' });
  assert.throws(() => poolAddress(127), RangeError);
  assert.throws(() => poolAddress(-1), RangeError);
});

test('every address the lab uses is valid and inside 198.18.0.0/15 or 2001:db8::/32', () => {
  const all: string[] = [
    LAB.lan.client.v4, LAB.lan.client.v6, LAB.lan.cpe.v4, LAB.lan.cpe.v6,
    LAB.concentrator.v4, LAB.concentrator.v6, LAB.concentrator.inetV4, LAB.concentrator.inetV6,
  ];
  for (let i = 1; i <= LAB.maxUplinks; i++) {
    const u = uplinkAddressing(i);
    all.push(u.cpeV4, u.cpeV6, u.concV4, u.concV6);
  }
  for (let k = 1; k <= LAB.maxServers; k++) all.push(serverAddressing(k).v4, serverAddressing(k).v6);
  for (let j = 0; j < LAB.pool.max; j++) all.push(poolAddress(j).v4, poolAddress(j).v6);
  for (const a of all) {
    assert.notEqual(isIP(a), 0, a);
    assert.ok(inLabRanges(a), `${a} outside the lab ranges`);
  }
  assert.equal(new Set(all).size, all.length, 'addresses are unique');
  const pool4 = parseCidr(LAB.pool.v4Prefix);
  const pool6 = parseCidr(LAB.pool.v6Prefix);
  for (let j = 0; j < LAB.pool.max; j++) {
    assert.ok(cidrContains(pool4, poolAddress(j).v4));
    assert.ok(cidrContains(pool6, poolAddress(j).v6));
  }
  for (let k = 1; k <= LAB.maxServers; k++) assert.ok(!cidrContains(pool4, serverAddressing(k).v4), 'servers are outside the pool');
});

test('namespace names: prefix-role, start with mpc, recognised by the leftover pattern; interface names fit 15 chars', () => {
  assert.equal(namespaceName('mpcabc123', 'conc'), 'mpcabc123-conc');
  for (const role of ['client', 'cpe', 'conc', 'inet', 'srv1', 'srv16'] as const) {
    const n = namespaceName('mpc0a1b2c', role);
    assert.ok(n.startsWith('mpc'));
    assert.match(n, LAB_NAMESPACE_RE);
  }
  assert.doesNotMatch('mpc45488fcpe', LAB_NAMESPACE_RE);
  assert.doesNotMatch('mpcabc-router', LAB_NAMESPACE_RE);
  assert.match('mpc0a1b2c', PREFIX_RE);
  for (const bad of ['abc123', 'mpc', 'mpc-x', 'mpcABC', 'mpc1234567890']) assert.doesNotMatch(bad, PREFIX_RE, bad);
  for (let i = 1; i <= LAB.maxUplinks; i++) assert.ok(uplinkAddressing(i).concDev.length <= 15);
});

test('field topology: access networks, ISP core addresses, the public concentrator: in the lab ranges, unique, DHCP pools inside their access network', () => {
  const all: string[] = [FIELD.concentrator.v4, LAB.lan.client.v4, LAB.lan.cpe.v4];
  for (let k = 1; k <= LAB.maxServers; k++) all.push(serverAddressing(k).v4);
  for (let j = 0; j < LAB.pool.max; j++) all.push(poolAddress(j).v4);
  const lan = parseCidr(LAB.lan.v4Prefix);
  for (let i = 1; i <= LAB.maxUplinks; i++) {
    const a = fieldAccess(i);
    all.push(a.gatewayV4, a.coreV4);
    const net = parseCidr(a.v4Prefix);
    for (const x of [...a.pool, ...a.renumberedPool, a.gatewayV4]) assert.ok(cidrContains(net, x), `${x} in ${a.v4Prefix}`);
    assert.ok(!cidrContains(lan, a.gatewayV4), 'the access networks are not the LAN');
    assert.equal(a.metric, 100 * i);
    assert.ok(a.ispPort.length <= 15 && a.ispDev.length <= 15);
  }
  for (const a of all) assert.ok(inLabRanges(a), `${a} outside the lab ranges`);
  assert.equal(new Set(all).size, all.length, 'addresses are unique');
  assert.match(namespaceName('mpc0a1b2c', 'isp2'), LAB_NAMESPACE_RE);
  assert.throws(() => fieldAccess(0), RangeError);
});
