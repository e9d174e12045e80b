/**
 * Lab tests of the kernel configuration adapters and the doctor, each in a fresh namespace: nft tables
 * replaced atomically and deleted idempotently, MPTCP endpoints and limits, policy rules and routes, sysctls,
 * and a doctor that fails with the right advice where net.mptcp.enabled=0.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { labCapabilityMissing, requireLab } from '../../support/capabilities.js';
import { createNetns, type Netns } from './netns.js';
import { createLinuxKernelConfig } from '../../../src/platform/linux/kernel.js';
import { doctorCommand, runDoctor } from '../../../src/control/doctor.js';

function rulesOf(table: unknown[] | null): string[] {
  return (table ?? []).flatMap((e) => {
    const rule = (e as { rule?: { chain: string; expr: unknown[] } }).rule;
    return rule ? [`${rule.chain}:${JSON.stringify(rule.expr)}`] : [];
  });
}

describe('kernel configuration in a namespace', () => {
  let ns: Netns | undefined;
  before(() => {
    if (labCapabilityMissing() === null) ns = createNetns();
  });
  after(() => ns?.remove());

  it('applies, replaces and deletes an nft table atomically and idempotently', async (t) => {
    if (!requireLab(t) || !ns) return;
    const k = createLinuxKernelConfig({ netns: ns.name });
    const name = 'mpconvert_test';
    await k.nft.deleteTable('inet', name); // absent: no error
    await k.nft.applyTable('inet', name, 'chain pre {\n type filter hook prerouting priority mangle;\n tcp dport 80 counter accept\n}');
    let rules = rulesOf(await k.nft.getTable('inet', name));
    assert.equal(rules.length, 1);
    assert.match(rules[0]!, /"right":80/);
    // Replace: the old rule is gone, the new ones are there, in one transaction.
    await k.nft.applyTable('inet', name, `table inet ${name} {\n chain pre {\n  type filter hook prerouting priority mangle;\n  tcp dport 443 counter accept\n  tcp dport 8443 counter accept\n }\n}`);
    rules = rulesOf(await k.nft.getTable('inet', name));
    assert.equal(rules.length, 2);
    assert.ok(rules.every((r) => !/"right":80[,}]/.test(r)));
    assert.deepEqual((await k.nft.listTables()).filter((x) => x.name === name).map((x) => x.family), ['inet']);
    // A broken ruleset leaves the previous table untouched.
    await assert.rejects(k.nft.applyTable('inet', name, 'chain pre {\n type filter hook prerouting priority mangle;\n tcp dport bogus accept\n}'), (err: Error & { code?: string }) => err.code === 'MPC_ERR_COMMAND');
    assert.equal(rulesOf(await k.nft.getTable('inet', name)).length, 2);
    await assert.rejects(k.nft.applyTable('inet', name, 'table ip other {\n}'), /another table/);
    await k.nft.deleteTable('inet', name);
    await k.nft.deleteTable('inet', name);
    assert.equal(await k.nft.getTable('inet', name), null);
    assert.deepEqual((await k.nft.listTables()).filter((x) => x.name === name), []);
    // The root namespace never saw it.
    assert.deepEqual((await createLinuxKernelConfig().nft.listTables()).filter((x) => x.name === name), []);
  });

  it('manages MPTCP endpoints and limits', async (t) => {
    if (!requireLab(t) || !ns) return;
    const k = createLinuxKernelConfig({ netns: ns.name });
    await k.mptcp.setLimits({ subflows: 4, addAddrAccepted: 3 });
    assert.deepEqual(await k.mptcp.limits(), { subflows: 4, addAddrAccepted: 3 });
    await k.mptcp.addEndpoint({ address: '127.0.0.3', id: 7, dev: 'lo', flags: ['subflow', 'backup'] });
    await k.mptcp.addEndpoint({ address: '127.0.0.4', id: 8, flags: ['signal'] });
    const eps = await k.mptcp.endpoints();
    assert.deepEqual(eps.map((e) => [e.id, e.address, e.flags.join(',')]).sort(), [
      [7, '127.0.0.3', 'subflow,backup'],
      [8, '127.0.0.4', 'signal'],
    ]);
    assert.equal(eps.find((e) => e.id === 7)?.dev, 'lo');
    await k.mptcp.deleteEndpoint(7);
    await k.mptcp.deleteEndpoint(7);
    assert.deepEqual((await k.mptcp.endpoints()).map((e) => e.id), [8]);
    await k.mptcp.flushEndpoints();
    assert.deepEqual(await k.mptcp.endpoints(), []);
  });

  it('adds and removes policy rules and routes (TPROXY style local route), idempotently', async (t) => {
    if (!requireLab(t) || !ns) return;
    const k = createLinuxKernelConfig({ netns: ns.name });
    ns.exec('ip', ['link', 'add', 'upl0', 'type', 'veth', 'peer', 'name', 'upl0p']);
    ns.exec('ip', ['addr', 'add', '198.18.1.2/24', 'dev', 'upl0']);
    ns.exec('ip', ['link', 'set', 'upl0', 'up']);
    for (const family of [4, 6] as const) {
      const rule = { family, priority: 1234, fwmark: 0x100, fwmask: 0xff00, iif: 'upl0', table: 4242 };
      await k.routes.addRule(rule);
      const rules = await k.routes.listRules(family);
      const mine = rules.filter((r) => r.priority === 1234);
      assert.equal(mine.length, 1);
      assert.equal(mine[0]!.table, '4242');
      assert.equal(mine[0]!.fwmark, '0x100');
      assert.equal(mine[0]!.iif, 'upl0');
      await k.routes.addRoute({ family, table: 4242, type: 'local', dst: family === 4 ? '0.0.0.0/0' : '::/0', dev: 'lo' });
      await k.routes.addRoute({ family, table: 4242, type: 'local', dst: family === 4 ? '0.0.0.0/0' : '::/0', dev: 'lo' });
      const routes = await k.routes.listRoutes(4242, family);
      assert.deepEqual(routes.map((r) => [r.type, r.dst]), [['local', 'default']]);
      await k.routes.deleteRule(rule);
      await k.routes.deleteRule(rule);
      assert.equal((await k.routes.listRules(family)).filter((r) => r.priority === 1234).length, 0);
      await k.routes.flushTable(4242, family);
      assert.deepEqual(await k.routes.listRoutes(4242, family), []);
    }
    await k.routes.addRoute({ family: 4, table: 101, dst: 'default', via: '198.18.1.1', dev: 'upl0' });
    assert.deepEqual((await k.routes.listRoutes(101, 4)).map((r) => [r.dst, r.gateway, r.dev]), [['default', '198.18.1.1', 'upl0']]);
    await k.routes.deleteRoute({ family: 4, table: 101, dst: 'default', via: '198.18.1.1', dev: 'upl0' });
    await k.routes.deleteRoute({ family: 4, table: 101, dst: 'default', via: '198.18.1.1', dev: 'upl0' });
    assert.deepEqual(await k.routes.listRoutes(101, 4), []);
    const addrs = await k.routes.listAddresses('upl0');
    assert.equal(addrs[0]?.addr_info.find((a) => a.family === 'inet')?.local, '198.18.1.2');
  });

  it('watches link events: a change is reported, a monitor that dies is restarted, close ends it', async (t) => {
    if (!requireLab(t) || !ns) return;
    const k = createLinuxKernelConfig({ netns: ns.name });
    assert.ok(k.watchLinks);
    const monitors = () => {
      try {
        return execFileSync('pgrep', ['-f', `^ip -o monitor link address route$`]).toString().trim().split('\n').filter(Boolean).length;
      } catch {
        return 0; // pgrep: nothing matched
      }
    };
    const before = monitors();
    let changes = 0;
    const errors: Error[] = [];
    const watch = k.watchLinks((() => void changes++), (err) => void errors.push(err));
    const until = async (what: string, ok: () => boolean) => {
      for (let i = 0; i < 100 && !ok(); i++) await new Promise((r) => setTimeout(r, 50));
      assert.ok(ok(), what);
    };
    try {
      await until('the monitor runs', () => monitors() === before + 1);
      await new Promise((r) => setTimeout(r, 200)); // let it subscribe
      ns.exec('ip', ['link', 'add', 'watch0', 'type', 'veth', 'peer', 'name', 'watch0p']);
      await until('a new link is reported', () => changes > 0);
      // The monitor dies: reported and restarted; events are seen again.
      execFileSync('pkill', ['-f', '^ip -o monitor link address route$']);
      await until('the end is reported', () => errors.length === 1);
      assert.match(errors[0]!.message, /ip monitor: .*restarting/);
      await until('restarted', () => monitors() === before + 1);
      await new Promise((r) => setTimeout(r, 200));
      const seen = changes;
      ns.exec('ip', ['addr', 'add', '198.18.9.1/24', 'dev', 'watch0']);
      await until('an address change is reported after the restart', () => changes > seen);
    } finally {
      watch.close();
      try {
        ns.exec('ip', ['link', 'del', 'watch0']);
      } catch {
        // not created
      }
    }
    await until('close ends the monitor', () => monitors() === before);
    assert.equal(errors.length, 1, 'close is not reported as an error');
  });

  it('reads and writes sysctls in the namespace only', async (t) => {
    if (!requireLab(t) || !ns) return;
    const k = createLinuxKernelConfig({ netns: ns.name });
    const root = await createLinuxKernelConfig().sysctl.get('net.ipv4.tcp_fastopen');
    await k.sysctl.set('net.ipv4.tcp_fastopen', '3');
    assert.equal(await k.sysctl.get('net.ipv4.tcp_fastopen'), '3');
    assert.equal(await createLinuxKernelConfig().sysctl.get('net.ipv4.tcp_fastopen'), root);
    await assert.rejects(k.sysctl.get('net.ipv4.no_such_thing'), (err: Error & { code?: string }) => err.code === 'MPC_ERR_COMMAND');
  });
});

describe('mpconvert doctor', () => {
  it('passes in this namespace', async (t) => {
    if (!requireLab(t)) return;
    const checks = await runDoctor();
    assert.deepEqual(checks.filter((c) => !c.ok), []);
    assert.ok(['privileges', 'mptcp', 'mptcp-socket', 'tfo-client', 'nft', 'iproute2', 'tproxy'].every((n) => checks.some((c) => c.name === n)));
  });

  it('fails with the right advice in a namespace with net.mptcp.enabled=0, and exits 1', async (t) => {
    if (!requireLab(t)) return;
    const ns = createNetns({ 'net.mptcp.enabled': '0', 'net.ipv4.tcp_fastopen': '0' });
    try {
      const checks = await runDoctor({ netns: ns.name, role: 'concentrator' });
      const failed = new Map(checks.filter((c) => !c.ok).map((c) => [c.name, c]));
      assert.deepEqual([...failed.keys()].sort(), ['mptcp', 'tfo-client', 'tfo-server']);
      assert.equal(failed.get('mptcp')!.detail, `net.mptcp.enabled = 0 (namespace ${ns.name})`);
      assert.match(failed.get('mptcp')!.fix ?? '', new RegExp(`ip netns exec ${ns.name} sysctl -w net\\.mptcp\\.enabled=1`));
      assert.match(failed.get('tfo-client')!.fix ?? '', /net\.ipv4\.tcp_fastopen=1'/);
      assert.match(failed.get('tfo-server')!.fix ?? '', /net\.ipv4\.tcp_fastopen=3'/);
      assert.equal(checks.find((c) => c.name === 'tproxy')?.ok, true);

      let printed = '';
      const write = process.stdout.write.bind(process.stdout);
      process.stdout.write = ((chunk: string | Uint8Array) => {
        printed += chunk.toString();
        return true;
      }) as typeof process.stdout.write;
      const saved = process.exitCode;
      try {
        await doctorCommand().parseAsync(['--netns', ns.name, '--role', 'concentrator'], { from: 'user' });
        assert.equal(process.exitCode, 1);
      } finally {
        process.stdout.write = write;
        process.exitCode = saved;
      }
      assert.match(printed, /FAIL\s+mptcp\s+net\.mptcp\.enabled = 0/);
      assert.match(printed, /fix: Enable MPTCP/);
      assert.match(printed, /\n3 of 10 checks failed\n?$/);
    } finally {
      ns.remove();
    }
    assert.equal((await createLinuxKernelConfig().nft.listTables()).filter((x) => x.name.startsWith('mpconvert_doctor')).length, 0);
  });
});
