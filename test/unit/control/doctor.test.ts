import { test } from 'node:test';
import assert from 'node:assert/strict';
import { doctorReport, formatDoctor } from '../../../src/control/doctor.js';
import { configCheck, effectiveRpFilter, forwardingCheck, rpFilterCheck, uplinkRouteChecks, type DoctorCheck } from '../../../src/control/doctor-checks.js';
import { kernelProblems } from '../../../src/control/check.js';
import { cpeConfigSchema } from '../../../src/cpe/config.js';
import { concentratorConfigSchema } from '../../../src/concentrator/config.js';
import type { AddressEntry, RouteEntry } from '../../../src/platform/types.js';
import { assertAgree } from '../../support/doctor-report.js';

const cpe = cpeConfigSchema.parse({ lan: ['lan0'], uplinks: [{ interface: 'dsl0' }, { interface: 'lte0', gateway4: '100.64.0.1' }], concentrators: [{ address: '203.0.113.1:5000' }] });

test('forwarding: IPv4 required for a CPE (fix names the sysctl), IPv6 advised; a concentrator needs neither', () => {
  const off = forwardingCheck('cpe', { ipv4: '0\n', ipv6: '1' }, 'ip netns exec x ');
  assert.equal(off.ok, false);
  assert.equal(off.fix, "'ip netns exec x sysctl -w net.ipv4.ip_forward=1' (persist it in /etc/sysctl.d/90-mpconvert.conf)");
  const v6 = forwardingCheck('cpe', { ipv4: '1', ipv6: '0' });
  assert.equal(v6.ok, true);
  assert.match(v6.fix ?? '', /net\.ipv6\.conf\.all\.forwarding=1/);
  assert.deepEqual(forwardingCheck('cpe', { ipv4: '1', ipv6: '1' }), { name: 'forwarding', ok: true, detail: 'net.ipv4.ip_forward = 1, net.ipv6.conf.all.forwarding = 1' });
  assert.equal(forwardingCheck('concentrator', { ipv4: '0', ipv6: '0' }).ok, true);
});

test('rp_filter: the effective value is max(all, iface); strict on a CPE uplink is an advisory naming it, loose or off pass', () => {
  assert.equal(effectiveRpFilter(0, 1), 1);
  assert.equal(effectiveRpFilter(2, 1), 2);
  assert.equal(effectiveRpFilter(1, undefined), 1);
  const strict = rpFilterCheck('cpe', 0, new Map([['dsl0', 0], ['lte0', 1]]));
  assert.equal(strict.ok, true);
  assert.match(strict.detail, /lte0 = 1 \(strict\): strict on lte0 drops forwarded traffic/);
  assert.equal(strict.fix, "Loose mode: 'sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.lte0.rp_filter=2' (persist it in /etc/sysctl.d/90-mpconvert.conf)");
  const all = rpFilterCheck('cpe', 1, new Map([['dsl0', 2], ['lte0', undefined]]));
  assert.match(all.detail, /dsl0 = 2 \(loose\), lte0 = 1 \(strict\)/);
  assert.deepEqual(rpFilterCheck('cpe', 2, new Map([['dsl0', 0]])), { name: 'rp_filter', ok: true, detail: 'net.ipv4.conf.*.rp_filter: all = 2 (loose), dsl0 = 2 (loose)' });
  assert.equal(rpFilterCheck('cpe', 1, new Map()).fix, "Loose mode: 'sysctl -w net.ipv4.conf.all.rp_filter=2' (persist it in /etc/sysctl.d/90-mpconvert.conf)");
  assert.equal(rpFilterCheck('concentrator', 1, new Map()).fix, undefined);
});

const addr = (ifname: string, up: boolean, ...locals: string[]): AddressEntry => ({
  ifname,
  ifindex: 1,
  operstate: up ? 'UP' : 'DOWN',
  flags: up ? ['UP', 'LOWER_UP'] : [],
  addr_info: locals.map((local) => ({ family: local.includes(':') ? 'inet6' : 'inet', local, prefixlen: 24, scope: 'global' })),
});
const dflt = (dev: string, gateway?: string): RouteEntry => ({ dst: 'default', dev, ...(gateway ? { gateway } : {}) });

test('per-uplink routes: a gateway for each family with an address (configured or the main table\'s default), the CPE\'s table when installed', () => {
  const facts = { addresses: [addr('dsl0', true, '192.0.2.2'), addr('lte0', true, '100.64.0.2')], main4: [dflt('dsl0', '192.0.2.1')], main6: [], table4: [], table6: [] };
  const [dsl, lte] = uplinkRouteChecks(cpe, facts);
  assert.deepEqual(dsl, { name: 'route:dsl0', ok: true, detail: 'dsl0: 192.0.2.2 via 192.0.2.1 (main table); table 200: not installed (no CPE running)' });
  assert.equal(lte!.ok, true);
  assert.match(lte!.detail, /100\.64\.0\.2 via 100\.64\.0\.1 \(configured\)/);
  const installed = uplinkRouteChecks({ uplinks: [cpe.uplinks[0]!], routingTableBase: 200 }, { ...facts, table4: [dflt('dsl0', '192.0.2.1')] });
  assert.match(installed[0]!.detail, /table 200: default route installed/);
  const noGw = uplinkRouteChecks(cpe, { ...facts, main4: [] })[0]!;
  assert.equal(noGw.ok, false);
  assert.match(noGw.detail, /without a gateway/);
  assert.match(noGw.fix ?? '', /gateway4\/gateway6 for dsl0/);
  const v6only = uplinkRouteChecks(cpe, { ...facts, addresses: [addr('dsl0', true, '192.0.2.2', '2001:db8:1::2')], main6: [] })[0]!;
  assert.equal(v6only.ok, false, 'an IPv6 address without an IPv6 gateway');
  const down = uplinkRouteChecks(cpe, { ...facts, addresses: [addr('dsl0', false, '192.0.2.2')] })[0]!;
  assert.equal(down.ok, false);
  assert.match(down.fix ?? '', /ip link set dsl0 up/);
  const none = uplinkRouteChecks(cpe, { ...facts, addresses: [] });
  assert.deepEqual(none.map((c) => [c.name, c.ok, c.detail]), [['route:dsl0', false, 'no interface dsl0'], ['route:lte0', false, 'no interface lte0']]);
  const bare = uplinkRouteChecks(cpe, { ...facts, addresses: [addr('dsl0', true)] })[0]!;
  assert.equal(bare.detail, 'dsl0 has no global address');
});

test('config: a file that does not load, a host that lacks what it names, and a good one', () => {
  assert.deepEqual(configCheck('cpe', '/etc/mpconvert/cpe.yaml', { error: 'lan: Required' }), {
    name: 'config',
    ok: false,
    detail: '/etc/mpconvert/cpe.yaml: lan: Required',
    fix: 'Fix the file (docs/cpe.md lists every setting)',
  });
  const bad = configCheck('cpe', 'c.yaml', { problems: ['uplinks: interface wwan0 does not exist on this host', 'kernel MPTCP is off'] });
  assert.equal(bad.detail, 'c.yaml: uplinks: interface wwan0 does not exist on this host; kernel MPTCP is off');
  assert.equal(configCheck('concentrator', 'c.yaml', { problems: [] }).ok, true);
});

test('--check kernel problems come from the doctor\'s probes: what each role and configuration needs, nothing else', () => {
  const probe = (name: string, ok: boolean): DoctorCheck => (ok ? { name, ok, detail: `${name} fine` } : { name, ok, detail: `${name} broken`, fix: `fix ${name}` });
  const all = (failing: string[]) => ['mptcp', 'mptcp-socket', 'tfo-client', 'tfo-server', 'nft', 'iproute2', 'tproxy', 'ip-transparent'].map((n) => probe(n, !failing.includes(n)));
  assert.deepEqual(kernelProblems('cpe', cpe, all([])), []);
  assert.deepEqual(kernelProblems('cpe', cpe, all(['tproxy'])), ['kernel: the interception (nft tproxy and socket expressions) cannot work here: tproxy broken; fix tproxy']);
  assert.equal(kernelProblems('cpe', cpe, all(['tfo-client'])).length, 1, 'zeroRtt is on by default');
  const noZeroRtt = cpeConfigSchema.parse({ ...cpe, concentrators: [{ address: '203.0.113.1:5000', zeroRtt: false }] });
  assert.deepEqual(kernelProblems('cpe', noZeroRtt, all(['tfo-client'])), []);
  assert.deepEqual(kernelProblems('cpe', cpe, all(['tfo-server'])), [], 'a CPE does not need the server bit');
  assert.deepEqual(kernelProblems('cpe', cpe, all(['mptcp', 'mptcp-socket'])), [], 'MPTCP off is checkCpe\'s line, not repeated');
  const conc = concentratorConfigSchema.parse({ listen: ['203.0.113.1:5000'], allow: ['198.18.0.0/15'] });
  assert.deepEqual(kernelProblems('concentrator', conc, all(['tproxy', 'ip-transparent', 'iproute2', 'tfo-client', 'tfo-server'])), [], 'kernel source addresses, manageSysctls on');
  const manual = concentratorConfigSchema.parse({ listen: ['203.0.113.1:5000'], allow: ['198.18.0.0/15'], manageSysctls: false });
  assert.deepEqual(kernelProblems('concentrator', manual, all(['tfo-server'])), ['kernel: accepting the signalling in the SYN with manageSysctls: false cannot work here: tfo-server broken; fix tfo-server']);
  assert.deepEqual(kernelProblems('concentrator', conc, all(['nft'])), ["kernel: the concentrator's nftables table cannot work here: nft broken; fix nft"]);
});

test('doctor: the text and the JSON carry the same checks, in the same order, with the same verdict', () => {
  const checks: DoctorCheck[] = [
    { name: 'privileges', ok: true, detail: 'uid 0, CAP_NET_ADMIN and CAP_NET_RAW' },
    { name: 'forwarding', ok: false, detail: 'net.ipv4.ip_forward = 0, net.ipv6.conf.all.forwarding = 1: the CPE forwards', fix: "'sysctl -w net.ipv4.ip_forward=1'" },
    { name: 'rp_filter', ok: true, detail: 'all = 1 (strict)', fix: 'Loose mode' },
    { name: 'route:dsl0', ok: true, detail: 'dsl0: 192.0.2.2 via 192.0.2.1 (main table)' },
    { name: 'config', ok: true, detail: 'c.yaml: valid for a cpe, and this host has what it names' },
  ];
  assertAgree(formatDoctor(checks), JSON.parse(JSON.stringify(doctorReport(checks))) as unknown);
  assert.deepEqual(doctorReport([]), { ok: true, failed: 0, total: 0, checks: [] });
});
