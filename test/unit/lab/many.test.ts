import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isIP } from 'node:net';
import { LAB, LAB_NAMESPACE_RE, MANY, manyCpeAddressing, namespaceName } from '../../../src/lab/addressing.js';
import { inBatches, manyAddressLines, manyLinkLines } from '../../../src/lab/many.js';
import { cidrContains, parseCidr } from '../../../src/policy/cidr.js';

const V4 = parseCidr('198.18.0.0/15');

test('many-CPE addressing: CPE c uplink u is 198.18.c.(4u-4)/30 (concentrator .4u-3, CPE .4u-2), LAN 198.18.(100+c).0/24', () => {
  const m = manyCpeAddressing(7);
  assert.deepEqual(m.uplink(2), { index: 2, cpeDev: 'up2', concDev: 'c7u2', concV4: '198.18.7.5', cpeV4: '198.18.7.6', v4Len: 30, metric: 200 });
  assert.equal(m.lanV4, '198.18.107.1');
  assert.equal(m.clientV4, '198.18.107.2');
  assert.equal(m.lanPrefix, '198.18.107.0/24');
  assert.throws(() => manyCpeAddressing(0), RangeError);
  assert.throws(() => manyCpeAddressing(MANY.maxCpes + 1), RangeError);
  assert.throws(() => m.uplink(MANY.maxUplinks + 1), RangeError);
});

test('many-CPE addresses: all in 198.18.0.0/15, unique, apart from the service address, interface names fit IFNAMSIZ', () => {
  const all = new Set<string>();
  const add = (a: string) => {
    assert.equal(isIP(a), 4, a);
    assert.ok(cidrContains(V4, a), `${a} outside the lab range`);
    assert.ok(!all.has(a), `${a} used twice`);
    all.add(a);
  };
  add(LAB.concentrator.v4);
  add(LAB.concentrator.inetV4);
  for (let c = 1; c <= MANY.maxCpes; c++) {
    const m = manyCpeAddressing(c);
    add(m.lanV4);
    add(m.clientV4);
    for (let u = 1; u <= MANY.maxUplinks; u++) {
      const a = m.uplink(u);
      add(a.concV4);
      add(a.cpeV4);
      // Both ends in one /30, neither the network nor the broadcast address.
      const last = (x: string) => Number(x.split('.')[3]);
      assert.equal(last(a.concV4) >> 2, last(a.cpeV4) >> 2);
      assert.ok(last(a.concV4) % 4 === 1 && last(a.cpeV4) % 4 === 2);
      assert.ok(a.concDev.length <= 15);
    }
  }
});

test('many-CPE namespaces are recognised by the leftover sweep', () => {
  for (const role of ['cpe1', 'cpe99', 'cli1', 'cli50'] as const) assert.match(namespaceName('mpcab12', role), LAB_NAMESPACE_RE);
  assert.doesNotMatch('mpcab12-cpe100', LAB_NAMESPACE_RE);
});

test('many-CPE links: one LAN veth and one per uplink for each CPE, then the shared link; each line names both namespaces', () => {
  const h = (name: string) => ({ name, v4: '', v6: '', exec: () => Promise.reject(new Error('no')), spawn: () => { throw new Error('no'); } });
  const hosts = { cpes: [h('p-cpe1'), h('p-cpe2')], clients: [h('p-cli1'), h('p-cli2')], concentrator: h('p-conc'), servers: [h('p-srv1')] };
  const lines = manyLinkLines(hosts, 2);
  assert.equal(lines.length, 2 * 3 + 1);
  assert.equal(lines[0], 'link add lan0 netns p-cli1 type veth peer name lan0 netns p-cpe1');
  assert.equal(lines[5], 'link add up2 netns p-cpe2 type veth peer name c2u2 netns p-conc');
  assert.equal(lines[6], 'link add inet0 netns p-conc type veth peer name eth0 netns p-srv1');
  const a = manyAddressLines(2, 2);
  assert.ok(a.cpe.includes('route add default via 198.18.2.5 dev up2 metric 200'));
  assert.ok(a.client.includes('route add default via 198.18.102.1 dev lan0'));
  assert.ok(a.concentrator.includes('route add 198.18.102.0/24 via 198.18.2.2 dev c2u1 metric 100'));
});

test('inBatches runs at most `limit` at once, every item once, and rethrows the first failure', async () => {
  let running = 0;
  let peak = 0;
  const seen: number[] = [];
  await inBatches([1, 2, 3, 4, 5, 6, 7], 3, async (x) => {
    running++;
    peak = Math.max(peak, running);
    await new Promise((r) => setImmediate(r));
    seen.push(x);
    running--;
  });
  assert.equal(peak, 3);
  assert.deepEqual(seen.sort(), [1, 2, 3, 4, 5, 6, 7]);
  await assert.rejects(inBatches([1, 2, 3], 2, async (x) => { if (x === 2) throw new Error('two'); }), /two/);
});
