/**
 * Concentrators from DHCP on the CPE side: the shipped hooks (run by sh with the variables dhclient and dhcpcd
 * give them) write, replace and remove the per-uplink lease files; the CPE's parse of those files; the watcher's
 * change events; how static and DHCP concentrators combine by concentratorSource; the shipped snippets are the
 * generator's for the default codes; the configuration keys.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DhcpWatcher, dhcpClientSnippet, learnedFrom, parseLeaseFile } from '../../../src/cpe/dhcp.js';
import { concentratorsInUse } from '../../../src/policy/concentrator-source.js';
import { cpeConfigSchema } from '../../../src/cpe/config.js';
import { createLogger } from '../../../src/log.js';

const ROOT = join(import.meta.dirname, '../../../..');
const HOOKS = { dhclient: join(ROOT, 'packaging/dhcp/dhclient-exit-hook'), dhcpcd: join(ROOT, 'packaging/dhcp/dhcpcd-hook') };
const dir = mkdtempSync(join(tmpdir(), 'mpc-dhcp-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const logger = createLogger({ level: 'silent', name: 'test' });

/** Sources the hook as the client's script does, with its variables; returns the variables it left set. */
function runHook(hook: keyof typeof HOOKS, env: Record<string, string>, leaseDir: string): string {
  return execFileSync('sh', ['-c', `. "$HOOK"; echo "rc=$?"; set | grep '^mpconvert_' || true`], {
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOOK: HOOKS[hook], MPCONVERT_DHCP_DIR: leaseDir, ...env },
    encoding: 'utf8',
  });
}
const read = (leaseDir: string, name: string) => parseLeaseFile(readFileSync(join(leaseDir, name), 'utf8'));

test('dhclient hook: BOUND writes up1.v4, RENEW with other addresses replaces it, a lease without the option empties it, EXPIRE removes it', () => {
  const d = join(dir, 'dhclient');
  const out = runHook('dhclient', { reason: 'BOUND', interface: 'up1', new_mpconvert_mcp: '198.19.0.2 198.19.0.3', new_expiry: '1900000000' }, d);
  assert.match(out, /^rc=0\n$/, 'exit status 0 and no variable left behind');
  assert.deepEqual(read(d, 'up1.v4'), { ok: true, lease: { interface: 'up1', family: 4, addresses: ['198.19.0.2', '198.19.0.3'], dropped: [], expires: 1900000000 } });
  runHook('dhclient', { reason: 'RENEW', interface: 'up1', new_mpconvert_mcp: '198.19.0.3', new_expiry: '1900000600' }, d);
  assert.deepEqual(read(d, 'up1.v4'), { ok: true, lease: { interface: 'up1', family: 4, addresses: ['198.19.0.3'], dropped: [], expires: 1900000600 } });
  runHook('dhclient', { reason: 'REBIND', interface: 'up1', new_expiry: '1900001200' }, d);
  assert.deepEqual(read(d, 'up1.v4'), { ok: true, lease: { interface: 'up1', family: 4, addresses: [], dropped: [], expires: 1900001200 } });
  assert.deepEqual(readdirSync(d), ['up1.v4'], 'no temporary file left');
  runHook('dhclient', { reason: 'EXPIRE', interface: 'up1' }, d);
  assert.deepEqual(readdirSync(d), []);
});

test('dhclient hook: DHCPv6 events write and remove up2.v6; an IPv4 event leaves it alone', () => {
  const d = join(dir, 'dhclient6');
  runHook('dhclient', { reason: 'BOUND6', interface: 'up2', new_dhcp6_mpconvert_mcp: '2001:db8::2', new_max_life: '3600' }, d);
  const r = read(d, 'up2.v6');
  assert.ok(r.ok && r.lease.family === 6 && r.lease.addresses[0] === '2001:db8::2' && Math.abs(r.lease.expires! - (Date.now() / 1000 + 3600)) < 30, JSON.stringify(r));
  runHook('dhclient', { reason: 'STOP', interface: 'up2' }, d);
  assert.ok(existsSync(join(d, 'up2.v6')));
  runHook('dhclient', { reason: 'RELEASE6', interface: 'up2' }, d);
  assert.ok(!existsSync(join(d, 'up2.v6')));
});

test('hooks: what the server sends cannot add lines or reach a shell; an interface name with a slash writes nothing', () => {
  const d = join(dir, 'hostile');
  runHook('dhclient', { reason: 'BOUND', interface: 'up1', new_mpconvert_mcp: '198.19.0.2\nexpires=1\n$(touch pwned)`id`', new_expiry: '2000000000; rm -rf /' }, d);
  const text = readFileSync(join(d, 'up1.v4'), 'utf8');
  assert.equal(text.split('\n').filter((l) => l.startsWith('expires=')).length, 1);
  assert.match(text, /^expires=2000000000$/m);
  assert.ok(!existsSync('pwned') && !existsSync(join(d, 'pwned')));
  assert.equal(read(d, 'up1.v4').ok, false, 'the mangled list is refused by the CPE, not half-used');
  runHook('dhcpcd', { reason: 'BOUND', interface: '../etc', new_mpconvert_mcp: '198.19.0.2' }, d);
  assert.deepEqual(readdirSync(d).sort(), ['up1.v4']);
});

test('dhcpcd hook: BOUND (lease time) and BOUND6 write, NOCARRIER removes both families', () => {
  const d = join(dir, 'dhcpcd');
  runHook('dhcpcd', { reason: 'BOUND', interface: 'wan0', new_mpconvert_mcp: '198.19.0.2', new_dhcp_lease_time: '600' }, d);
  runHook('dhcpcd', { reason: 'BOUND6', interface: 'wan0', new_dhcp6_mpconvert_mcp: '2001:db8::2 2001:db8::3' }, d);
  const v4 = read(d, 'wan0.v4');
  assert.ok(v4.ok && v4.lease.addresses[0] === '198.19.0.2' && Math.abs(v4.lease.expires! - (Date.now() / 1000 + 600)) < 30, JSON.stringify(v4));
  assert.deepEqual(read(d, 'wan0.v6'), { ok: true, lease: { interface: 'wan0', family: 6, addresses: ['2001:db8::2', '2001:db8::3'], dropped: [] } });
  runHook('dhcpcd', { reason: 'NOCARRIER', interface: 'wan0' }, d);
  assert.deepEqual(readdirSync(d), []);
});

test('parseLeaseFile refuses what is not a lease file', () => {
  assert.equal(parseLeaseFile('interface=up1\nfamily=5\nmcp=\n').ok, false);
  assert.equal(parseLeaseFile('interface=a/b\nfamily=4\nmcp=\n').ok, false);
  assert.equal(parseLeaseFile('interface=up1\nfamily=4\nmcp=198.19.0.2\nexpires=soon\n').ok, false);
  assert.equal(parseLeaseFile('interface=up1\nfamily=4\njunk\n').ok, false);
  assert.equal(parseLeaseFile('x'.repeat(5000)).ok, false);
});

test('learnedFrom: uplinks in configured order, an expired lease counts as none', () => {
  const leases = [
    { interface: 'up2', family: 4 as const, addresses: ['198.19.0.3'], dropped: [], expires: 2000 },
    { interface: 'up1', family: 4 as const, addresses: ['198.19.0.2'], dropped: [], expires: 1000 },
    { interface: 'lan0', family: 4 as const, addresses: ['198.19.0.9'], dropped: [] },
  ];
  assert.deepEqual(learnedFrom(['up1', 'up2'], leases, 1500), [{ uplink: 'up1', v4: [], v6: [] }, { uplink: 'up2', v4: ['198.19.0.3'], v6: [] }]);
});

test('concentratorsInUse: each source mode, the port, duplicates with the static settings, where each came from', () => {
  const statics = [{ address: '198.19.0.1:5000', keyId: 'static' }];
  const learned = [{ uplink: 'up1', v4: ['198.19.0.2'], v6: ['2001:db8::2'] }, { uplink: 'up2', v4: ['198.19.0.1', '198.19.0.2'], v6: [] }];
  const make = (address: string) => ({ address, keyId: 'dhcp' });
  const list = (m: Parameters<typeof concentratorsInUse>[0], l = learned) => concentratorsInUse(m, statics, l, make, 5000).targets.map((t) => `${t.address}/${t.keyId}`);
  assert.deepEqual(list('static'), ['198.19.0.1:5000/static']);
  assert.deepEqual(list('dhcp'), ['198.19.0.2:5000/dhcp', '[2001:db8::2]:5000/dhcp', '198.19.0.1:5000/dhcp']);
  assert.deepEqual(list('dhcp-first'), ['198.19.0.2:5000/dhcp', '[2001:db8::2]:5000/dhcp', '198.19.0.1:5000/static']);
  assert.deepEqual(list('static-first'), ['198.19.0.1:5000/static', '198.19.0.2:5000/dhcp', '[2001:db8::2]:5000/dhcp']);
  assert.deepEqual(list('dhcp-first', [{ uplink: 'up1', v4: [], v6: [] }]), ['198.19.0.1:5000/static'], 'a lease without the option: the static list');
  assert.deepEqual(list('dhcp', []), [], 'DHCP only and no lease: none (fallback decides)');
  const { sources } = concentratorsInUse('dhcp-first', statics, learned, make, 5000);
  assert.deepEqual(Object.fromEntries(sources), { '198.19.0.1:5000': ['static', 'dhcp:up2'], '198.19.0.2:5000': ['dhcp:up1', 'dhcp:up2'], '[2001:db8::2]:5000': ['dhcp:up1'] });
});

test('DhcpWatcher: a lease that was there before start counts at once; replaced, renamed past its end, removed: one change each', async () => {
  const d = join(dir, 'watch');
  const cfgUplinks = ['up1', 'up2'];
  rmSync(d, { recursive: true, force: true });
  const w0 = new DhcpWatcher({ dir: d, uplinks: () => cfgUplinks, pollMs: 60_000, logger });
  await w0.start();
  assert.deepEqual(w0.learned(), [{ uplink: 'up1', v4: [], v6: [] }, { uplink: 'up2', v4: [], v6: [] }], 'no directory: no lease');
  w0.stop();
  runHook('dhclient', { reason: 'BOUND', interface: 'up1', new_mpconvert_mcp: '198.19.0.2', new_expiry: '4000000000' }, d);
  runHook('dhclient', { reason: 'BOUND', interface: 'lan0', new_mpconvert_mcp: '198.19.0.9', new_expiry: '4000000000' }, d);
  let now = Date.now();
  const w = new DhcpWatcher({ dir: d, uplinks: () => cfgUplinks, pollMs: 60_000, logger, now: () => now });
  await w.start();
  assert.deepEqual(w.learned()[0], { uplink: 'up1', v4: ['198.19.0.2'], v6: [] }, 'read at start; lan0 is no uplink');
  const changes: unknown[] = [];
  w.on('change', (next) => changes.push(next));
  await w.poll();
  assert.equal(changes.length, 0, 'nothing changed');
  runHook('dhclient', { reason: 'RENEW', interface: 'up1', new_mpconvert_mcp: '198.19.0.3', new_expiry: '4000000000' }, d);
  await w.poll();
  assert.deepEqual((changes.at(-1) as Array<{ v4: string[] }>)[0]!.v4, ['198.19.0.3']);
  runHook('dhclient', { reason: 'RENEW', interface: 'up1', new_mpconvert_mcp: '198.19.0.3', new_expiry: '4000000600' }, d);
  await w.poll();
  assert.equal(changes.length, 1, 'a renewal naming the same concentrators is no change');
  now = 4000000601 * 1000;
  await w.poll();
  assert.deepEqual((changes.at(-1) as Array<{ v4: string[] }>)[0]!.v4, [], 'past its end: withdrawn');
  now = Date.now();
  await w.poll();
  runHook('dhclient', { reason: 'RELEASE', interface: 'up1' }, d);
  await w.poll();
  assert.equal(changes.length, 4);
  assert.deepEqual(w.learned()[0], { uplink: 'up1', v4: [], v6: [] });
  writeFileSync(join(d, 'up2.v4'), 'interface=up1\nfamily=4\nmcp=198.19.0.2\n');
  utimesSync(join(d, 'up2.v4'), new Date(), new Date());
  await w.poll();
  assert.equal(changes.length, 4, 'a file whose content names another uplink is ignored');
  w.stop();
});

test('the shipped snippets are the generator\'s for the default codes; --config codes change them', () => {
  const codes = { optionV4: 224, optionV6: 65224 };
  assert.equal(readFileSync(join(ROOT, 'packaging/dhcp/dhclient-mpconvert.conf'), 'utf8'), dhcpClientSnippet('dhclient', codes));
  assert.equal(readFileSync(join(ROOT, 'packaging/dhcp/dhclient6-mpconvert.conf'), 'utf8'), dhcpClientSnippet('dhclient6', codes));
  assert.equal(readFileSync(join(ROOT, 'packaging/dhcp/dhcpcd-mpconvert.conf'), 'utf8'), dhcpClientSnippet('dhcpcd', codes));
  assert.match(dhcpClientSnippet('dhclient', { optionV4: 250, optionV6: 1 }), /^option mpconvert-mcp code 250 = array of ip-address;$/m);
});

test('configuration: concentratorSource and dhcp defaults; no static concentrator only with concentratorSource dhcp', () => {
  const base = { lan: ['lan0'], uplinks: [{ interface: 'up1' }] };
  const c = cpeConfigSchema.parse({ ...base, concentrators: [{ address: '198.19.0.1:5000' }] });
  assert.equal(c.concentratorSource, 'static');
  assert.deepEqual({ ...c.dhcp, concentrator: undefined }, { leaseDir: '/run/mpconvert-dhcp', optionV4: 224, optionV6: 65224, pollMs: 1000, concentrator: undefined });
  assert.equal(c.dhcp.concentrator.port, 5000);
  assert.equal(c.dhcp.concentrator.zeroRtt, true);
  assert.equal(cpeConfigSchema.safeParse(base).success, false);
  assert.equal(cpeConfigSchema.safeParse({ ...base, concentratorSource: 'dhcp-first' }).success, false);
  assert.equal(cpeConfigSchema.safeParse({ ...base, concentratorSource: 'dhcp' }).success, true);
  assert.equal(cpeConfigSchema.safeParse({ ...base, concentratorSource: 'dhcp', dhcp: { concentrator: { keyId: 'k' } } }).success, false, 'keyId without secretFile');
  assert.equal(cpeConfigSchema.safeParse({ ...base, concentratorSource: 'dhcp', dhcp: { optionV4: 255 } }).success, false);
});

test('the CPE (fake platform): a lease from before start is in use at once; a changed lease flushes the capability cache; a reload switches the source', async () => {
  const { Cpe } = await import('../../../src/cpe/cpe.js');
  const { createMetrics } = await import('../../../src/control/metrics.js');
  const { fakeKernel, fakeSockets } = await import('../../support/fake-platform.js');
  const d = join(dir, 'cpe');
  runHook('dhclient', { reason: 'BOUND', interface: 'up1', new_mpconvert_mcp: '198.19.0.2', new_expiry: '4000000000' }, d);
  const base = { lan: ['lan0'], uplinks: [{ interface: 'up1' }], concentrators: [{ address: '198.19.0.1:5000' }], tproxyPort: 15998, dhcp: { leaseDir: d, pollMs: 100 } };
  const cpe = new Cpe(cpeConfigSchema.parse({ ...base, concentratorSource: 'dhcp-first' }), { sockets: fakeSockets(), kernel: fakeKernel(), logger, metrics: createMetrics('cpe', { runtime: false }) });
  type View = { concentrators: Array<{ address: string; sources: string[] }>; concentratorSource: string; dhcp?: unknown };
  const view = () => cpe.status() as unknown as View;
  const addresses = () => view().concentrators.map((c) => c.address);
  /** Polls (the watcher reads every 100 ms) until the concentrators are `want`. */
  const until = async (want: string[]) => {
    for (const deadline = Date.now() + 5_000; JSON.stringify(addresses()) !== JSON.stringify(want); await new Promise((r) => setTimeout(r, 20))) {
      assert.ok(Date.now() < deadline, `concentrators ${JSON.stringify(addresses())}, not ${JSON.stringify(want)}`);
    }
  };
  await cpe.start();
  try {
    assert.deepEqual(view().concentrators.map((c) => [c.address, c.sources]), [['198.19.0.2:5000', ['dhcp:up1']], ['198.19.0.1:5000', ['static']]]);
    assert.deepEqual(view().dhcp, [{ uplink: 'up1', v4: ['198.19.0.2'], v6: [] }]);
    // The concentrator A turned out not capable: cached as such...
    cpe.selector.markNotCapable(cpe.selector.targets[0]!);
    assert.deepEqual(cpe.selector.candidates().map((t) => t.address), ['198.19.0.1:5000']);
    // ...until a lease names other concentrators: the cache is flushed with the new list.
    runHook('dhclient', { reason: 'RENEW', interface: 'up1', new_mpconvert_mcp: '198.19.0.2 198.19.0.3', new_expiry: '4000000000' }, d);
    await until(['198.19.0.2:5000', '198.19.0.3:5000', '198.19.0.1:5000']);
    assert.deepEqual(cpe.selector.candidates().map((t) => t.address), ['198.19.0.2:5000', '198.19.0.3:5000', '198.19.0.1:5000']);
    // A learned concentrator gets the template's settings.
    assert.equal(cpe.selector.targets[1]!.zeroRtt, true);
    const r = await cpe.reload(cpeConfigSchema.parse({ ...base, concentratorSource: 'static' }));
    assert.deepEqual(r.applied, ['concentratorSource']);
    assert.deepEqual(addresses(), ['198.19.0.1:5000']);
    assert.equal(view().dhcp, undefined, 'static: the leases are not read');
    await cpe.reload(cpeConfigSchema.parse({ ...base, concentrators: [], concentratorSource: 'dhcp' }));
    assert.deepEqual(addresses(), ['198.19.0.2:5000', '198.19.0.3:5000'], 'read again at once on the switch');
    runHook('dhclient', { reason: 'EXPIRE', interface: 'up1' }, d);
    await until([]);
    assert.deepEqual(cpe.readiness(), { ready: true }, 'fallback direct: ready without a concentrator');
  } finally {
    await cpe.stop(0);
  }
});
