import { test } from 'node:test';
import assert from 'node:assert/strict';
import { applySysctls, concentratorSysctls, cpeSysctls } from '../../../src/control/prepare.js';
import { runPrepare } from '../../../src/control/daemon.js';
import { cpeConfigSchema } from '../../../src/cpe/config.js';
import { concentratorConfigSchema } from '../../../src/concentrator/config.js';
import { fakeKernel } from '../../support/fake-platform.js';

const cpe = cpeConfigSchema.parse({ lan: ['lan0'], uplinks: [{ interface: 'up1' }], concentrators: [{ address: '198.18.200.1:5000' }] });

test('CPE --prepare: MPTCP on, the TFO client bit kept with the others, tcp_fwmark_accept for preserveDscp; only what differs is written', async () => {
  const k = fakeKernel();
  k.sysctls.set('net.mptcp.enabled', '1');
  k.sysctls.set('net.ipv4.tcp_fastopen', '2');
  k.sysctls.set('net.ipv4.tcp_fwmark_accept', '0');
  const lines = await applySysctls(cpeSysctls(cpe), k.sysctl);
  assert.equal(k.sysctls.get('net.ipv4.tcp_fastopen'), '3');
  assert.equal(k.sysctls.get('net.ipv4.tcp_fwmark_accept'), '1');
  assert.deepEqual(lines.map((l) => l.split(':')[0]), ['net.mptcp.enabled = 1', 'net.ipv4.tcp_fastopen = 3 (was 2)', 'net.ipv4.tcp_fwmark_accept = 1 (was 0)']);
  assert.match(lines[0]!, /already set/);
  const noDscp = cpeConfigSchema.parse({ ...cpe, preserveDscp: false, concentrators: [{ address: '198.18.200.1:5000', zeroRtt: false }] });
  assert.deepEqual(cpeSysctls(noDscp).map((n) => n.name), ['net.mptcp.enabled']);
});

test('concentrator --prepare: the TFO server bit and tcp_reflect_tos with manageSysctls; only MPTCP without it', async () => {
  const c = concentratorConfigSchema.parse({ listen: ['198.18.200.1:5000'], allow: ['198.18.0.0/15'] });
  const k = fakeKernel();
  k.sysctls.set('net.mptcp.enabled', '0');
  k.sysctls.set('net.ipv4.tcp_fastopen', '1');
  k.sysctls.set('net.ipv4.tcp_reflect_tos', '0');
  await applySysctls(concentratorSysctls(c), k.sysctl);
  assert.deepEqual([...['net.mptcp.enabled', 'net.ipv4.tcp_fastopen', 'net.ipv4.tcp_reflect_tos'].map((n) => k.sysctls.get(n))], ['1', '3', '1']);
  assert.deepEqual(concentratorSysctls({ ...c, manageSysctls: false }).map((n) => n.name), ['net.mptcp.enabled']);
});

test('concentrator --prepare with onPath: the C-bit sysctl (allow_join_initial_addr_port=0), unless denyJoinInitial is off', async () => {
  const c = concentratorConfigSchema.parse({ listen: ['198.18.200.1:5000'], allow: ['198.18.0.0/15'], onPath: { sources: ['198.18.1.0/24'] } });
  const k = fakeKernel();
  k.sysctls.set('net.mptcp.allow_join_initial_addr_port', '1');
  await applySysctls(concentratorSysctls(c), k.sysctl);
  assert.equal(k.sysctls.get('net.mptcp.allow_join_initial_addr_port'), '0');
  const off = concentratorConfigSchema.parse({ listen: ['198.18.200.1:5000'], allow: ['198.18.0.0/15'], onPath: { sources: ['198.18.1.0/24'], denyJoinInitial: false } });
  assert.ok(!concentratorSysctls(off).some((n) => n.name === 'net.mptcp.allow_join_initial_addr_port'));
});

test('--prepare output: one line per sysctl, exit 0; a failure names itself and says to run it as root, exit 1', async () => {
  const out: string[] = [];
  const err: string[] = [];
  const io = { out: (s: string) => void out.push(s), err: (s: string) => void err.push(s) };
  assert.equal(await runPrepare('cpe', async () => ['net.mptcp.enabled = 1: already set (kernel MPTCP on)'], io), 0);
  assert.deepEqual(out, ['mpconvert cpe --prepare: net.mptcp.enabled = 1: already set (kernel MPTCP on)\n']);
  assert.equal(await runPrepare('cpe', async () => { throw new Error('sysctl -q -w net.ipv4.tcp_fwmark_accept=1 failed (exit 255): sysctl: permission denied on key "net.ipv4.tcp_fwmark_accept"'); }, io), 1);
  assert.match(err[0]!, /permission denied .* \(run it as root: the unit runs it with the \+ prefix\)\n$/);
});
