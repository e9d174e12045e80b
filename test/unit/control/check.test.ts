import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkConcentrator, checkCpe, reportCheck, type HostFacts } from '../../../src/control/check.js';
import { cpeConfigSchema } from '../../../src/cpe/config.js';
import { concentratorConfigSchema } from '../../../src/concentrator/config.js';

const host: HostFacts = { interfaces: new Set(['lo', 'lan0', 'up1', 'up2']), addresses: new Set(['127.0.0.1', '198.18.200.1']), mptcp: true };

test('CPE check: missing interfaces, an interface both LAN and uplink, duplicates, MPTCP off; each named', () => {
  const good = cpeConfigSchema.parse({ lan: ['lan0'], uplinks: [{ interface: 'up1' }, { interface: 'up2' }], concentrators: [{ address: '198.18.200.1:5000' }] });
  assert.deepEqual(checkCpe(good, host), []);
  const bad = cpeConfigSchema.parse({
    lan: ['lan0', 'eth9'],
    uplinks: [{ interface: 'up1' }, { interface: 'up1' }, { interface: 'lan0' }, { interface: 'wwan0' }],
    concentrators: [{ address: '198.18.200.1:5000' }, { address: '198.18.200.1:5000' }],
  });
  assert.deepEqual(checkCpe(bad, { ...host, mptcp: false }), [
    'lan: interface eth9 does not exist on this host',
    'uplinks: interface wwan0 does not exist on this host',
    'interface lan0 is both a LAN interface and an uplink',
    'uplinks: interface up1 is listed more than once',
    'concentrators: 198.18.200.1:5000 is listed more than once',
    "kernel MPTCP is off or missing (net.mptcp.enabled is not 1): try 'sysctl -w net.mptcp.enabled=1'",
  ]);
});

test('CPE check: NAT uplinks on a host that does not forward IPv4 are named; unknown forwarding or no NAT: no problem', () => {
  const router = cpeConfigSchema.parse({ mode: 'router', lan: ['lan0'], uplinks: [{ interface: 'up1' }, { interface: 'up2', nat: false }], concentrators: [{ address: '198.18.200.1:5000' }] });
  assert.deepEqual(checkCpe(router, { ...host, ipv4Forwarding: false }), [
    "uplinks up1 NAT what the CPE forwards (mode: router), but this host does not forward IPv4 (net.ipv4.ip_forward is 0): try 'sysctl -w net.ipv4.ip_forward=1'",
  ]);
  assert.deepEqual(checkCpe(router, { ...host, ipv4Forwarding: true }), []);
  assert.deepEqual(checkCpe(router, host), []);
  const transit = cpeConfigSchema.parse({ lan: ['lan0'], uplinks: [{ interface: 'up1' }], concentrators: [{ address: '198.18.200.1:5000' }] });
  assert.deepEqual(checkCpe(transit, { ...host, ipv4Forwarding: false }), []);
});

test('CPE check: an overflow primary or a flow class uplink that is not an uplink is named (before anything is installed)', () => {
  const cfg = cpeConfigSchema.parse({
    lan: ['lan0'],
    uplinks: [{ interface: 'up1' }, { interface: 'up2' }],
    concentrators: [{ address: '198.18.200.1:5000' }],
    distribution: { scheme: 'overflow', overflow: { primary: 'up9', capacityMbit: 50 }, classes: [{ name: 'voice', dscp: [46], uplink: 'lte0' }, { name: 'ssh', destinations: [{ prefix: '0.0.0.0/0', ports: [22] }], uplink: 'up2' }] },
  });
  assert.deepEqual(checkCpe(cfg, host), ['distribution.overflow.primary: up9 is not one of the uplinks', 'distribution.classes voice: uplink lte0 is not one of the uplinks']);
});

test('concentrator check: listen addresses must be local (or a wildcard), no duplicate listener', () => {
  const good = concentratorConfigSchema.parse({ listen: ['198.18.200.1:5000', '0.0.0.0:5001', '[::]:5002'], allow: ['198.18.0.0/15'] });
  assert.deepEqual(checkConcentrator(good, host), []);
  const bad = concentratorConfigSchema.parse({ listen: ['198.18.250.1:5000', '198.18.200.1:5000', '198.18.200.1:5000'], allow: ['198.18.0.0/15'] });
  assert.deepEqual(checkConcentrator(bad, host), [
    'listen: 198.18.200.1:5000 is listed more than once',
    'listen 198.18.250.1:5000: the address is not an address of this host (listen addresses must be local)',
  ]);
});

test('concentrator check: bindings.addresses must be local', () => {
  const c = concentratorConfigSchema.parse({ listen: ['198.18.200.1:5000'], allow: ['198.18.0.0/15'], bindings: { addresses: ['198.18.200.1', '198.19.0.9'] } });
  assert.deepEqual(checkConcentrator(c, host), ['bindings.addresses: 198.19.0.9 is not an address of this host (bindings listen on it)']);
});

test('concentrator check, onPath: announced addresses local, distinct ports, IPv4 forwarding on', () => {
  const good = concentratorConfigSchema.parse({ listen: ['198.18.200.1:5000'], allow: ['198.18.0.0/15'], onPath: { sources: ['198.18.1.0/24'], announce: ['198.18.200.1'] } });
  assert.deepEqual(checkConcentrator(good, { ...host, ipv4Forwarding: true }), []);
  const bad = concentratorConfigSchema.parse({ listen: ['198.18.200.1:5000'], allow: ['198.18.0.0/15'], onPath: { sources: ['198.18.1.0/24'], announce: ['198.18.250.1'], port: 4244 } });
  assert.deepEqual(checkConcentrator(bad, { ...host, ipv4Forwarding: false }), [
    'onPath.announce 198.18.250.1: not an address of this host (hosts join it: it must be local)',
    'onPath.joinPort and onPath.port are both 4244: the join listener and the transparent listener need their own ports',
    "onPath: this host does not forward IPv4 (net.ipv4.ip_forward is 0), so it cannot route what it does not take: try 'sysctl -w net.ipv4.ip_forward=1'",
  ]);
});

test('--check report: problems on stderr, one a line, exit code 2; none: one OK line, 0', () => {
  const out: string[] = [];
  const err: string[] = [];
  const io = { out: (s: string) => void out.push(s), err: (s: string) => void err.push(s) };
  assert.equal(reportCheck('cpe', ['a', 'b'], io), 2);
  assert.deepEqual(err, ['mpconvert cpe: a\n', 'mpconvert cpe: b\n']);
  assert.equal(reportCheck('cpe', [], io), 0);
  assert.deepEqual(out, ['mpconvert cpe: configuration and host OK\n']);
});

test('--check: an admin endpoint others can reach without adminTokenFile is a problem', () => {
  const base = { lan: ['lan0'], uplinks: [{ interface: 'up1' }], concentrators: [{ address: '198.18.200.1:5000' }] };
  const open = checkCpe(cpeConfigSchema.parse({ ...base, admin: '198.18.200.1:9091' }), host);
  assert.ok(open.some((p) => /not a loopback address/.test(p)), open.join('\n'));
  assert.deepEqual(checkCpe(cpeConfigSchema.parse({ ...base, admin: '198.18.200.1:9091', adminTokenFile: '/etc/mpconvert/admin.token' }), host), []);
  assert.deepEqual(checkCpe(cpeConfigSchema.parse({ ...base, admin: '127.0.0.1:9091' }), host), []);
});
