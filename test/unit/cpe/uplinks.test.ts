/**
 * UplinkManager against a stateful fake kernel (addresses, main-table routes, endpoints with kernel-assigned
 * ids, rules, routes, limits): what it installs per uplink and family, how it follows address, link and
 * gateway changes, that it never touches what it did not add, and that stop leaves the kernel as it found it.
 */
import { afterEach, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { UplinkManager, WATCHED_POLL_MS, defaultGateway, observeLink, type EndpointLedger, type OwnedEndpoint, type UplinkChange, type UplinkManagerOptions } from '../../../src/cpe/uplinks.js';
import { silentLogger } from '../../../src/log.js';
import type { AddressEntry, KernelConfig, MptcpEndpoint, MptcpLimits, RouteEntry, RouteSpec, RuleSpec } from '../../../src/platform/types.js';

interface Iface {
  up: boolean;
  v4?: string;
  v6?: string;
  v6tentative?: boolean;
}

class FakeKernel {
  ifaces = new Map<string, Iface>();
  main: { 4: RouteEntry[]; 6: RouteEntry[] } = { 4: [], 6: [] };
  endpoints: MptcpEndpoint[] = [];
  rules: RuleSpec[] = [];
  routes: RouteSpec[] = [];
  limitsNow: MptcpLimits = { subflows: 2, addAddrAccepted: 0 };
  nextId = 1;
  /** Calls that reject (once each) with an injected error. */
  failures = new Set<string>();
  calls: string[] = [];

  #maybeFail(name: string): void {
    this.calls.push(name);
    if (this.failures.delete(name)) throw new Error(`injected: ${name}`);
  }

  addresses(): AddressEntry[] {
    return [...this.ifaces].map(([ifname, i], ifindex) => ({
      ifname,
      ifindex: ifindex + 2,
      operstate: i.up ? 'UP' : 'DOWN',
      flags: i.up ? ['BROADCAST', 'MULTICAST', 'UP', 'LOWER_UP'] : ['BROADCAST', 'MULTICAST'],
      addr_info: [
        ...(i.v4 ? [{ family: 'inet', local: i.v4, prefixlen: 24, scope: 'global' }] : []),
        { family: 'inet6', local: 'fe80::1', prefixlen: 64, scope: 'link' },
        ...(i.v6 ? [{ family: 'inet6', local: i.v6, prefixlen: 64, scope: 'global', ...(i.v6tentative ? { tentative: true } : {}) }] : []),
      ],
    }));
  }

  get api(): KernelConfig {
    // eslint-disable-next-line @typescript-eslint/no-this-alias -- the fake's methods read its state
    const self = this;
    const same = (a: object, b: object) => JSON.stringify(a) === JSON.stringify(b);
    return {
      netns: undefined,
      nft: {} as KernelConfig['nft'],
      mptcp: {
        async endpoints() {
          return self.endpoints.map((e) => ({ ...e, flags: [...e.flags] }));
        },
        async addEndpoint(spec) {
          self.#maybeFail('addEndpoint');
          if (self.endpoints.some((e) => e.address === spec.address)) throw new Error('EEXIST');
          self.endpoints.push({ address: spec.address, id: spec.id ?? self.nextId++, ...(spec.dev ? { dev: spec.dev } : {}), flags: [...spec.flags] });
        },
        async deleteEndpoint(id) {
          self.#maybeFail('deleteEndpoint');
          self.endpoints = self.endpoints.filter((e) => e.id !== id);
        },
        async setEndpointBackup(id, backup) {
          self.#maybeFail('setEndpointBackup');
          const e = self.endpoints.find((x) => x.id === id);
          if (!e) throw new Error('ENOENT');
          e.flags = [...e.flags.filter((f) => f !== 'backup'), ...(backup ? ['backup'] : [])];
        },
        async flushEndpoints() {
          throw new Error('must never flush');
        },
        async limits() {
          return { ...self.limitsNow };
        },
        async setLimits(l) {
          self.#maybeFail('setLimits');
          self.limitsNow = { ...self.limitsNow, ...l };
        },
      },
      routes: {
        async addRule(spec) {
          self.#maybeFail('addRule');
          if (self.rules.some((r) => same(r, spec))) throw new Error('EEXIST');
          self.rules.push(spec);
        },
        async deleteRule(spec) {
          self.#maybeFail('deleteRule');
          self.rules = self.rules.filter((r) => !same(r, spec));
        },
        async listRules() {
          return [];
        },
        async addRoute(spec) {
          self.#maybeFail('addRoute');
          self.routes = self.routes.filter((r) => !(r.family === spec.family && r.table === spec.table && r.dst === spec.dst));
          self.routes.push(spec);
        },
        async deleteRoute(spec) {
          self.#maybeFail('deleteRoute');
          self.routes = self.routes.filter((r) => !same(r, spec));
        },
        async listRoutes(table, family) {
          self.calls.push(`listRoutes ${table} ${family}`);
          return table === 'main' ? self.main[family] : [];
        },
        async flushTable() {
          throw new Error('must never flush');
        },
        async listAddresses() {
          return self.addresses();
        },
      },
      sysctl: {} as KernelConfig['sysctl'],
    };
  }
}

/** The lab's CPE: two uplinks with addresses and DHCP-style default routes (metrics 100, 200). */
function labHost(): FakeKernel {
  const k = new FakeKernel();
  k.ifaces.set('lan0', { up: true, v4: '198.18.0.1' });
  k.ifaces.set('up1', { up: true, v4: '198.18.1.2', v6: '2001:db8:1::2' });
  k.ifaces.set('up2', { up: true, v4: '198.18.2.2', v6: '2001:db8:2::2' });
  k.main[4] = [
    { dst: '198.18.1.0/24', dev: 'up1', prefsrc: '198.18.1.2' },
    { dst: 'default', gateway: '198.18.1.1', dev: 'up1', metric: 100 },
    { dst: 'default', gateway: '198.18.2.1', dev: 'up2', metric: 200 },
    { dst: 'default', gateway: '198.18.2.99', dev: 'up2', metric: 900 },
  ];
  k.main[6] = [
    { dst: 'default', gateway: 'fe80::1', dev: 'up1', metric: 1024 },
    { dst: 'default', gateway: '2001:db8:2::1', dev: 'up2', metric: 200 },
  ];
  return k;
}

const opts: UplinkManagerOptions = {
  uplinks: [
    { interface: 'up1', mode: 'subflow' },
    { interface: 'up2', mode: 'backup' },
  ],
  tableBase: 200,
  rulePriorityBase: 10_000,
  pollIntervalMs: 3_600_000,
  limits: { subflows: 4, addAddrAccepted: 3 },
};

function manager(k: FakeKernel, o: Partial<UplinkManagerOptions> = {}) {
  let t = 1000;
  const mgr = new UplinkManager({ kernel: k.api, logger: silentLogger(), now: () => t }, { ...opts, ...o });
  const changes: UplinkChange[] = [];
  mgr.on('change', (c) => changes.push(c));
  return { mgr, changes, tick: (ms: number) => (t += ms) };
}

describe('observeLink / defaultGateway', () => {
  it('reads up/down and the first global, non-tentative address of each family', () => {
    const k = labHost();
    k.ifaces.set('up3', { up: true, v4: '198.18.3.2', v6: '2001:db8:3::2', v6tentative: true });
    k.ifaces.set('up4', { up: false, v4: '198.18.4.2' });
    const a = k.addresses();
    assert.deepEqual(observeLink(a, 'up1'), { up: true, address4: '198.18.1.2', address6: '2001:db8:1::2' });
    assert.deepEqual(observeLink(a, 'up3'), { up: true, address4: '198.18.3.2', address6: null });
    assert.deepEqual(observeLink(a, 'up4'), { up: false, address4: '198.18.4.2', address6: null });
    assert.deepEqual(observeLink(a, 'nope'), { up: false, address4: null, address6: null });
    // Without flags, operstate decides (e.g. a ppp device).
    assert.equal(observeLink([{ ifname: 'ppp0', ifindex: 9, operstate: 'UP', addr_info: [] }], 'ppp0').up, true);
  });

  it('takes the lowest-metric default route of the interface; null for a gateway-less one; undefined for none', () => {
    const k = labHost();
    assert.equal(defaultGateway(k.main[4], 'up2'), '198.18.2.1');
    assert.equal(defaultGateway(k.main[4], 'up1'), '198.18.1.1');
    assert.equal(defaultGateway(k.main[4], 'lan0'), undefined);
    assert.equal(defaultGateway([{ dst: 'default', dev: 'ppp0' }], 'ppp0'), null);
    assert.equal(defaultGateway([{ dst: 'default', dev: 'up1', type: 'blackhole' }], 'up1'), undefined);
  });
});

describe('UplinkManager', () => {
  // The manager's own timers are unref'd (they must not keep a daemon alive by themselves); a test that awaits
  // one of them needs something that holds the event loop open, or node:test ends it as "still pending".
  let keepAlive: NodeJS.Timeout | undefined;
  beforeEach(() => {
    keepAlive = setInterval(() => {}, 1_000);
  });
  afterEach(() => clearInterval(keepAlive));

  it('installs, per uplink and family: table with the default route, source rule, endpoint; sets limits', async () => {
    const k = labHost();
    const { mgr, changes } = manager(k);
    await mgr.start();
    assert.deepEqual(k.limitsNow, { subflows: 4, addAddrAccepted: 3 });
    assert.deepEqual(
      k.endpoints.map((e) => [e.address, e.dev, e.flags.join(',')]),
      [
        ['198.18.1.2', 'up1', 'subflow'],
        ['2001:db8:1::2', 'up1', 'subflow'],
        ['198.18.2.2', 'up2', 'subflow,backup'],
        ['2001:db8:2::2', 'up2', 'subflow,backup'],
      ],
    );
    assert.deepEqual(k.rules, [
      { family: 4, priority: 10_000, from: '198.18.1.2', table: 200 },
      { family: 6, priority: 10_000, from: '2001:db8:1::2', table: 200 },
      { family: 4, priority: 10_001, from: '198.18.2.2', table: 201 },
      { family: 6, priority: 10_001, from: '2001:db8:2::2', table: 201 },
    ]);
    assert.deepEqual(k.routes, [
      { family: 4, table: 200, dst: 'default', dev: 'up1', via: '198.18.1.1' },
      { family: 6, table: 200, dst: 'default', dev: 'up1', via: 'fe80::1' },
      { family: 4, table: 201, dst: 'default', dev: 'up2', via: '198.18.2.1' },
      { family: 6, table: 201, dst: 'default', dev: 'up2', via: '2001:db8:2::1' },
    ]);
    const snap = mgr.snapshot();
    assert.deepEqual(snap[1], {
      interface: 'up2',
      mode: 'backup',
      up: true,
      table: 201,
      rulePriority: 10_001,
      ipv4: { address: '198.18.2.2', gateway: '198.18.2.1', endpointId: 3, routed: true },
      ipv6: { address: '2001:db8:2::2', gateway: '2001:db8:2::1', endpointId: 4, routed: true },
      changedAt: 1000,
    });
    assert.deepEqual(changes, [], 'the initial state is not a change');
    await mgr.stop();
  });

  it('uses a configured gateway instead of the main table (and does not read it)', async () => {
    const k = labHost();
    const { mgr } = manager(k, { uplinks: [{ interface: 'up2', mode: 'subflow', gateway4: '198.18.2.254', gateway6: '2001:db8:2::fe' }] });
    await mgr.start();
    assert.deepEqual(k.routes.map((r) => r.via), ['198.18.2.254', '2001:db8:2::fe']);
    assert.ok(!k.calls.some((c) => c.startsWith('listRoutes')));
    await mgr.stop();
  });

  it('follows an address change: change event, old endpoint and rule removed, new ones added', async () => {
    const k = labHost();
    const { mgr, changes, tick } = manager(k);
    await mgr.start();
    const oldId = k.endpoints.find((e) => e.address === '198.18.2.2')?.id;
    k.ifaces.set('up2', { up: true, v4: '198.18.2.3', v6: '2001:db8:2::2' });
    tick(5000);
    await mgr.refresh();
    assert.deepEqual(changes, [{ interface: 'up2', before: { up: true, ipv4: '198.18.2.2', ipv6: '2001:db8:2::2' }, after: { up: true, ipv4: '198.18.2.3', ipv6: '2001:db8:2::2' } }]);
    assert.ok(!k.endpoints.some((e) => e.address === '198.18.2.2'));
    const fresh = k.endpoints.find((e) => e.address === '198.18.2.3');
    assert.ok(fresh && fresh.id !== oldId);
    assert.deepEqual(fresh.flags, ['subflow', 'backup']);
    assert.deepEqual(k.rules.filter((r) => r.priority === 10_001 && r.family === 4), [{ family: 4, priority: 10_001, from: '198.18.2.3', table: 201 }]);
    assert.equal(k.endpoints.length, 4, 'the IPv6 endpoint of up2 was left alone');
    assert.equal(mgr.snapshot()[1]?.changedAt, 6000);
    assert.equal(mgr.snapshot()[0]?.changedAt, 1000);
    // Nothing changed: no event, no kernel write.
    const writes = k.calls.length;
    await mgr.refresh();
    assert.equal(changes.length, 1);
    assert.deepEqual(k.calls.slice(writes).filter((c) => !c.startsWith('listRoutes')), []);
    await mgr.stop();
  });

  it('link down removes the uplink; link up re-creates it; an address disappearing removes its family only', async () => {
    const k = labHost();
    const { mgr, changes } = manager(k);
    await mgr.start();
    k.ifaces.set('up1', { up: false, v4: '198.18.1.2' });
    await mgr.refresh();
    assert.equal(changes.at(-1)?.after.up, false);
    assert.deepEqual(k.endpoints.map((e) => e.address), ['198.18.2.2', '2001:db8:2::2']);
    assert.ok(!k.rules.some((r) => r.table === 200));
    assert.ok(!k.routes.some((r) => r.table === 200));
    assert.equal(mgr.snapshot()[0]?.ipv4, null);
    k.ifaces.set('up1', { up: true, v4: '198.18.1.2', v6: '2001:db8:1::2' });
    await mgr.refresh();
    assert.equal(changes.at(-1)?.after.up, true);
    assert.equal(k.endpoints.filter((e) => e.dev === 'up1').length, 2);
    assert.equal(k.routes.filter((r) => r.table === 200).length, 2);
    k.ifaces.set('up2', { up: true, v4: '198.18.2.2' });
    await mgr.refresh();
    assert.deepEqual(changes.at(-1)?.after, { up: true, ipv4: '198.18.2.2', ipv6: null });
    assert.ok(!k.endpoints.some((e) => e.address === '2001:db8:2::2'));
    assert.ok(k.endpoints.some((e) => e.address === '198.18.2.2'));
    await mgr.stop();
  });

  it('a gateway change replaces the route only (same endpoint, no change event); no gateway = no route and rule', async () => {
    const k = labHost();
    const { mgr, changes } = manager(k);
    await mgr.start();
    const ids = k.endpoints.map((e) => e.id);
    k.main[4] = k.main[4].map((r) => (r.dev === 'up2' && r.metric === 200 ? { ...r, gateway: '198.18.2.7' } : r));
    await mgr.refresh();
    assert.deepEqual(k.routes.filter((r) => r.table === 201 && r.family === 4), [{ family: 4, table: 201, dst: 'default', dev: 'up2', via: '198.18.2.7' }]);
    assert.deepEqual(k.endpoints.map((e) => e.id), ids);
    assert.deepEqual(changes, []);
    k.main[4] = k.main[4].filter((r) => r.dev !== 'up2');
    await mgr.refresh();
    assert.ok(!k.routes.some((r) => r.table === 201 && r.family === 4));
    assert.ok(!k.rules.some((r) => r.table === 201 && r.family === 4));
    assert.equal(mgr.snapshot()[1]?.ipv4?.routed, false);
    assert.equal(mgr.snapshot()[1]?.ipv4?.endpointId, ids[2], 'the endpoint stays');
    k.main[4].push({ dst: 'default', gateway: '198.18.2.1', dev: 'up2', metric: 200 });
    await mgr.refresh();
    assert.equal(mgr.snapshot()[1]?.ipv4?.routed, true);
    assert.ok(k.rules.some((r) => r.table === 201 && r.family === 4));
    await mgr.stop();
  });

  it('uses a pre-existing endpoint as is and leaves it; stop restores limits and removes only its own; idempotent', async () => {
    const k = labHost();
    k.endpoints.push({ address: '198.18.1.2', id: 42, dev: 'up1', flags: ['signal'] });
    k.endpoints.push({ address: '198.18.9.9', id: 43, flags: ['signal'] });
    k.nextId = 50;
    const { mgr } = manager(k);
    await mgr.start();
    assert.equal(mgr.snapshot()[0]?.ipv4?.endpointId, 42);
    assert.equal(k.endpoints.length, 5);
    await mgr.stop();
    assert.deepEqual(k.endpoints.map((e) => e.id), [42, 43]);
    assert.deepEqual(k.rules, []);
    assert.deepEqual(k.routes, []);
    assert.deepEqual(k.limitsNow, { subflows: 2, addAddrAccepted: 0 });
    const n = k.calls.length;
    await mgr.stop();
    assert.deepEqual(k.calls.slice(n), []);
  });

  it('after a crash: endpoints the ledger lists are taken back and removed on stop; the operator\'s are left', async () => {
    const k = labHost();
    k.endpoints.push({ address: '198.18.1.2', id: 7, dev: 'up1', flags: ['subflow'] }); // left by the crashed run
    k.endpoints.push({ address: '198.18.2.9', id: 8, dev: 'up2', flags: ['backup'] }); // ditto, an address up2 no longer has
    k.endpoints.push({ address: '198.18.9.9', id: 43, flags: ['signal'] }); // the operator's
    k.nextId = 50;
    const saved: OwnedEndpoint[][] = [];
    let stored: OwnedEndpoint[] = [
      { id: 7, address: '198.18.1.2' },
      { id: 8, address: '198.18.2.9' },
      { id: 9, address: '198.18.5.5' }, // gone already
      { id: 43, address: '198.18.9.8' }, // the number was reused by the operator for another address: not ours
    ];
    const ledger: EndpointLedger = {
      load: async () => stored,
      save: async (owned) => {
        stored = owned;
        saved.push(owned);
      },
    };
    const mgr = new UplinkManager({ kernel: k.api, logger: silentLogger(), ledger }, opts);
    await mgr.start();
    assert.equal(mgr.snapshot()[0]?.ipv4?.endpointId, 7, 'the leftover is used again');
    assert.deepEqual(
      stored.map((o) => o.id).sort((x, y) => x - y),
      [7, 8, 9, 43, 50, 51, 52],
      'the ledger lists what this run owns and what it inherited and has not removed yet',
    );
    await mgr.stop();
    assert.deepEqual(k.endpoints.map((e) => e.id), [43], 'only the operator\'s endpoint is left');
    assert.deepEqual(stored, []);
    assert.ok(saved.length >= 2);
  });

  it('a removal that fails is reported and retried by the next stop', async () => {
    const k = labHost();
    const { mgr } = manager(k);
    await mgr.start();
    k.failures.add('deleteEndpoint');
    await assert.rejects(mgr.stop(), /Cannot remove the MPTCP endpoint of uplink up1/);
    assert.equal(k.endpoints.length, 1);
    await mgr.stop();
    assert.deepEqual(k.endpoints, []);
    assert.deepEqual(k.rules, []);
  });

  it('a failed start rejects and leaves nothing; an endpoint failure after start is retried at the next poll', async () => {
    const k = labHost();
    k.failures.add('addRule');
    const { mgr } = manager(k);
    await assert.rejects(mgr.start(), /Cannot install the policy routing for uplink up1/);
    assert.deepEqual([k.endpoints, k.rules, k.routes], [[], [], []]);
    assert.deepEqual(k.limitsNow, { subflows: 2, addAddrAccepted: 0 });

    const k2 = labHost();
    const m2 = manager(k2);
    await m2.mgr.start();
    k2.ifaces.set('up2', { up: true, v4: '198.18.2.3', v6: '2001:db8:2::2' });
    k2.failures.add('addEndpoint');
    await m2.mgr.refresh();
    assert.ok(!k2.endpoints.some((e) => e.address === '198.18.2.3'));
    assert.equal(m2.mgr.snapshot()[1]?.ipv4?.endpointId, null);
    await m2.mgr.refresh();
    assert.ok(k2.endpoints.some((e) => e.address === '198.18.2.3'), 'retried');
    await m2.mgr.stop();
    assert.deepEqual([k2.endpoints, k2.rules, k2.routes], [[], [], []]);
  });

  it('polls on its own and emits change', async () => {
    const k = labHost();
    const { mgr } = manager(k, { pollIntervalMs: 10 });
    await mgr.start();
    const got = once(mgr, 'change') as Promise<[UplinkChange]>;
    k.ifaces.set('up1', { up: false });
    const [change] = await got;
    assert.deepEqual(change.after, { up: false, ipv4: null, ipv6: null });
    await mgr.stop();
    const n = k.calls.length;
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(k.calls.length, n, 'no polling after stop');
  });

  it('reconciles on a link event (one reconcile per burst), not only at the poll; stop closes the watch', async () => {
    const k = labHost();
    let fire: (() => void) | undefined;
    let report: ((err: Error) => void) | undefined;
    let closed = 0;
    const api: KernelConfig = {
      ...k.api,
      watchLinks(onChange, onError) {
        fire = onChange;
        report = onError;
        return { close: () => void closed++ };
      },
    };
    const mgr = new UplinkManager({ kernel: api, logger: silentLogger() }, opts); // poll: once an hour
    await mgr.start();
    assert.ok(fire, 'the manager watches link events');
    const reads = () => k.calls.filter((c) => c.startsWith('listRoutes main')).length;
    const before = reads();
    const got = once(mgr, 'change') as Promise<[UplinkChange]>;
    k.ifaces.set('up2', { up: false });
    for (let i = 0; i < 5; i++) fire!();
    const [change] = await got;
    assert.equal(change.interface, 'up2');
    assert.deepEqual(change.after, { up: false, ipv4: null, ipv6: null });
    assert.ok(!k.endpoints.some((e) => e.address === '198.18.2.2'), 'the downed uplink\'s endpoint is gone');
    await new Promise((r) => setTimeout(r, 120));
    assert.equal(reads() - before, 2, 'five events in a burst: one reconcile (main table read once per family)');
    report!(new Error('monitor ended')); // logged, not fatal
    await mgr.stop();
    assert.equal(closed, 1);
    fire!();
    await new Promise((r) => setTimeout(r, 80));
    assert.equal(reads() - before, 2, 'no reconcile after stop');
  });

  it('while link events arrive the backstop poll slows to WATCHED_POLL_MS; once their monitor failed, pollIntervalMs again', async () => {
    const k = labHost();
    let report: ((err: Error) => void) | undefined;
    let polls = 0;
    const api: KernelConfig = {
      ...k.api,
      routes: { ...k.api.routes, listAddresses: () => (polls++, k.api.routes.listAddresses()) },
      watchLinks(_onChange, onError) {
        report = onError;
        return { close: () => {} };
      },
    };
    const mgr = new UplinkManager({ kernel: api, logger: silentLogger() }, { ...opts, pollIntervalMs: 10 });
    await mgr.start();
    const reads = () => polls;
    const before = reads();
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(reads(), before, `no poll within 100 ms while events arrive (WATCHED_POLL_MS ${WATCHED_POLL_MS})`);
    report!(new Error('monitor ended'));
    const after = reads();
    await new Promise((r) => setTimeout(r, 100));
    assert.ok(reads() - after >= 3, `polling every 10 ms again: ${reads() - after} polls in 100 ms`);
    await mgr.stop();
  });

  it('refuses bad options', () => {
    const k = labHost();
    const mk = (o: Partial<UplinkManagerOptions>) => () => new UplinkManager({ kernel: k.api, logger: silentLogger() }, { ...opts, ...o });
    assert.throws(mk({ uplinks: [] }), /none configured/);
    assert.throws(mk({ uplinks: [{ interface: 'up1; rm', mode: 'subflow' }] }), /bad interface name/);
    assert.throws(mk({ uplinks: [{ interface: 'up1', mode: 'subflow' }, { interface: 'up1', mode: 'backup' }] }), /listed twice/);
    assert.throws(mk({ rulePriorityBase: 0 }), /rulePriorityBase/);
    assert.throws(mk({ tableBase: 0 }), /tableBase/);
  });
});
