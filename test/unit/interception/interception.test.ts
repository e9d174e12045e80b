/**
 * The role-agnostic interception component (src/interception) against the fake platform's recording kernel:
 * LocalDelivery adds the `local default` routes and the fwmark rules per family (per interface or any) into
 * the owner's KernelLedger, whose undo removes exactly those, newest first, keeping what fails for the next
 * try; the pure nft builders give the statements both roles' tables are made of (checked in the CPE's and
 * the on-path tables: the same TPROXY and socket statements, tproxy before the mark).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  KernelLedger, LocalDelivery, markOr, markSet, nftChain, nftSet, prefixesByFamily, tproxyTo, transparentSocket, type LocalDeliverySpec,
} from '../../../src/interception/index.js';
import { buildInterceptionRuleset } from '../../../src/cpe/ruleset.js';
import { buildOnPathRules } from '../../../src/concentrator/onpath-ruleset.js';
import { ReturnPath, returnPathOptions, returnPathRuleset } from '../../../src/concentrator/return-path.js';
import { concentratorConfigSchema } from '../../../src/concentrator/config.js';
import { onPathRuleOptions } from '../../../src/concentrator/onpath.js';
import { silentLogger } from '../../../src/log.js';
import { fakeKernel } from '../../support/fake-platform.js';
import type { KernelConfig } from '../../../src/platform/types.js';

/** The fake kernel, with the `nth` routes call (0-based) failing once. */
function kernelFailingAt(nth: number): ReturnType<typeof fakeKernel> {
  const k = fakeKernel();
  let i = 0;
  const routes = k.routes;
  const wrapped = new Proxy(routes, {
    get: (t, p) => {
      const f = Reflect.get(t, p) as (...a: unknown[]) => Promise<void>;
      return async (...a: unknown[]) => {
        if (i++ === nth) throw new Error(`injected: routes.${String(p)}`);
        return f(...a);
      };
    },
  });
  return Object.assign(k, { routes: wrapped as KernelConfig['routes'] });
}

const perLan: LocalDeliverySpec = { families: [4, 6], table: 150, priority: 9100, mark: 0x1, mask: 0xff, iifs: ['lan0', 'lan1'] };
const anyIf: LocalDeliverySpec = { families: [4, 6], table: 4242, priority: 9100, mark: 0x6d70, mask: 0x6d70 };
const routeCalls = (calls: string[]) => calls.filter((c) => c.startsWith('routes.'));

describe('LocalDelivery', () => {
  it('per interface: per family the local route, then one fwmark rule per interface (a stale twin deleted first)', async () => {
    const k = fakeKernel();
    const ledger = new KernelLedger(k);
    await new LocalDelivery(perLan).install(ledger);
    const route = (family: number) => JSON.stringify([{ family, table: 150, dst: 'default', type: 'local', dev: 'lo' }]);
    const rule = (family: number, iif: string) => JSON.stringify([{ family, priority: 9100, iif, fwmark: 1, fwmask: 0xff, table: 150 }]);
    assert.deepEqual(routeCalls(k.calls), [
      `routes.addRoute ${route(4)}`,
      `routes.deleteRule ${rule(4, 'lan0')}`, `routes.addRule ${rule(4, 'lan0')}`,
      `routes.deleteRule ${rule(4, 'lan1')}`, `routes.addRule ${rule(4, 'lan1')}`,
      `routes.addRoute ${route(6)}`,
      `routes.deleteRule ${rule(6, 'lan0')}`, `routes.addRule ${rule(6, 'lan0')}`,
      `routes.deleteRule ${rule(6, 'lan1')}`, `routes.addRule ${rule(6, 'lan1')}`,
    ]);
    assert.deepEqual(ledger.entries(), [
      'route -4 local default dev lo table 150',
      'rule -4 priority 9100 iif lan0 fwmark 1/255 lookup 150',
      'rule -4 priority 9100 iif lan1 fwmark 1/255 lookup 150',
      'route -6 local default dev lo table 150',
      'rule -6 priority 9100 iif lan0 fwmark 1/255 lookup 150',
      'rule -6 priority 9100 iif lan1 fwmark 1/255 lookup 150',
    ]);
  });

  it('any interface: one rule per family without iif; the undo removes exactly what was added, newest first', async () => {
    const k = fakeKernel();
    const ledger = new KernelLedger(k);
    await new LocalDelivery(anyIf).install(ledger);
    const added = routeCalls(k.calls).filter((c) => /^routes\.add/.test(c));
    assert.ok(added.every((c) => !c.includes('"iif"')), added.join('\n'));
    assert.equal(added.length, 4);
    k.calls.length = 0;
    assert.deepEqual(await ledger.undoAll(), []);
    const removed = routeCalls(k.calls);
    assert.deepEqual(removed, added.map((c) => c.replace(/^routes\.add/, 'routes.delete')).reverse());
    assert.ok(ledger.empty);
    k.calls.length = 0;
    assert.deepEqual(await ledger.undoAll(), []);
    assert.deepEqual(k.calls, [], 'a second undo does nothing');
  });

  it('a failure at any step leaves in the ledger exactly what exists, and the undo removes it', async () => {
    for (let nth = 0; nth < 10; nth++) {
      const k = kernelFailingAt(nth);
      const ledger = new KernelLedger(k);
      await assert.rejects(new LocalDelivery(perLan).install(ledger), /injected/);
      const added = routeCalls(k.calls).filter((c) => /^routes\.add/.test(c));
      assert.equal(ledger.entries().length, added.length, `failure at call ${nth}`);
      k.calls.length = 0;
      assert.deepEqual(await ledger.undoAll(), []);
      assert.deepEqual(routeCalls(k.calls), added.map((c) => c.replace(/^routes\.add/, 'routes.delete')).reverse(), `failure at call ${nth}`);
    }
  });

  it('sameAs: any change of family, table, priority, mark, mask or interfaces is a different delivery', () => {
    const d = new LocalDelivery(perLan);
    assert.ok(d.sameAs({ ...perLan, iifs: ['lan0', 'lan1'] }));
    for (const patch of [{ families: [4] as const }, { table: 151 }, { priority: 9101 }, { mark: 0x2 }, { mask: 0x1 }, { iifs: ['lan0'] }, { iifs: undefined }]) {
      assert.equal(d.sameAs({ ...perLan, ...patch }), false, JSON.stringify(patch));
    }
  });
});

describe('KernelLedger', () => {
  it('applyTable and setSysctl record their undo; a sysctl already at the value is left alone', async () => {
    const k = fakeKernel();
    k.sysctls.set('net.a', '0');
    k.sysctls.set('net.b', '1');
    const ledger = new KernelLedger(k);
    await ledger.applyTable('inet', 't', 'chain c {\n}\n');
    await ledger.setSysctl('net.a', '1');
    await ledger.setSysctl('net.b', '1');
    assert.deepEqual(ledger.entries(), ['nft table inet t', 'sysctl net.a=1 (was 0)']);
    k.calls.length = 0;
    await ledger.undoAll();
    assert.deepEqual(k.calls, ['sysctl net.a=0', 'nft.deleteTable ["inet","t"]']);
    assert.equal(k.sysctls.get('net.a'), '0');
    assert.equal(k.sysctls.get('net.b'), '1');
  });

  it('an undo that fails stays recorded (in order) and is returned; the next undoAll retries only it', async () => {
    const k = fakeKernel();
    const ledger = new KernelLedger(k);
    const done: string[] = [];
    let failB = true;
    ledger.add('a', async () => void done.push('a'));
    ledger.add('b', async () => {
      if (failB) throw new Error('busy');
      done.push('b');
    });
    ledger.add('c', async () => void done.push('c'));
    const failures = await ledger.undoAll();
    assert.deepEqual(failures.map((f) => [f.what, (f.err as Error).message]), [['b', 'busy']]);
    assert.deepEqual(done, ['c', 'a']);
    assert.deepEqual(ledger.entries(), ['b']);
    failB = false;
    assert.deepEqual(await ledger.undoAll(), []);
    assert.deepEqual(done, ['c', 'a', 'b']);
    assert.ok(ledger.empty);
  });
});

describe('nft builders', () => {
  it('give the statements, per family and transport', () => {
    assert.equal(tproxyTo(4, 15001), 'meta l4proto tcp tproxy ip to 127.0.0.1:15001');
    assert.equal(tproxyTo(6, 15001), 'meta l4proto tcp tproxy ip6 to [::1]:15001');
    assert.equal(tproxyTo(4, 15002, 'udp'), 'meta l4proto udp tproxy ip to 127.0.0.1:15002');
    assert.equal(transparentSocket(), 'meta l4proto tcp socket transparent 1');
    assert.equal(markSet(0x2e01), 'meta mark set 0x00002e01');
    assert.equal(markOr(0x6d70), 'meta mark set meta mark | 0x6d70');
    assert.equal(nftSet(['"a"']), '"a"');
    assert.equal(nftSet(['1', '2']), '{ 1, 2 }');
    assert.deepEqual(nftChain('x', 'type filter hook forward priority mangle; policy accept;', ['accept']), [
      '  chain x {', '    type filter hook forward priority mangle; policy accept;', '    accept', '  }',
    ]);
    assert.deepEqual(nftChain('y', undefined, ['drop'], ''), ['chain y {', '  drop', '}']);
    assert.deepEqual(prefixesByFamily(['198.18.1.7/24', '2001:db8::1/64', '198.19.0.0/16'], (m) => new Error(m)), { v4: ['198.18.1.0/24', '198.19.0.0/16'], v6: ['2001:db8::/64'] });
    assert.throws(() => prefixesByFamily(['198.18.0.0/33'], (m) => new RangeError(`wrapped: ${m}`)), (e: Error) => e instanceof RangeError && /^wrapped: Cannot parse prefix/.test(e.message));
  });

  it('both roles build their TPROXY and socket rules from them, tproxy before the mark (fail open)', () => {
    const cpe = buildInterceptionRuleset({
      instance: 'home', lanInterfaces: ['lan0'], tproxyPort: 15001, mark: 0x1, include: [{ prefix: '0.0.0.0/0' }, { prefix: '::/0' }], exclude: [], nativeMptcp: 'passthrough', dscpToMark: false,
    });
    const onPath = buildOnPathRules({ sources: ['198.18.1.0/24', '2001:db8:1::/64'], port: 4243, mark: 0x6d70, withdrawal: 'maintain', nativeServers: [], synRateLimit: 0 });
    const onPathText = [...onPath.preroutingHead, ...onPath.chain].join('\n');
    for (const [text, port, mark] of [[cpe, 15001, markSet(0x1)], [onPathText, 4243, markOr(0x6d70)]] as const) {
      for (const family of [4, 6] as const) {
        const line = text.split('\n').find((l) => l.includes(tproxyTo(family, port)));
        assert.ok(line, `${tproxyTo(family, port)} in\n${text}`);
        assert.ok(line.indexOf(tproxyTo(family, port)) < line.indexOf(mark), line);
      }
      assert.ok(text.includes(`${transparentSocket()} ${mark}`), text);
    }
    assert.ok(returnPathRuleset(0x6d70).includes(`${transparentSocket()} ${markOr(0x6d70)} accept`));
  });
});

describe('the concentrator\'s local delivery', () => {
  it('one mark for on-path SYNs and the return path: the installed fwmark rules match what the on-path rules set', async () => {
    for (const sourceAddress of [undefined, { mode: 'transparent' as const, returnMark: 0x40, returnTable: 77, returnRulePriority: 8000 }]) {
      const config = concentratorConfigSchema.parse({ listen: ['198.18.200.1:5000'], allow: ['198.18.0.0/15'], onPath: { sources: ['198.18.1.0/24'] }, ...(sourceAddress ? { sourceAddress } : {}) });
      const o = returnPathOptions(config);
      assert.equal(onPathRuleOptions(config)?.mark, o.mark);
      const k = fakeKernel();
      const rp = new ReturnPath({ kernel: k, logger: silentLogger() }, o);
      await rp.start();
      const rules = k.calls.filter((c) => c.startsWith('routes.addRule')).map((c) => (JSON.parse(c.slice('routes.addRule '.length)) as Array<Record<string, unknown>>)[0]);
      assert.deepEqual(rules, [4, 6].map((family) => ({ family, priority: o.rulePriority, fwmark: o.mark, fwmask: o.mark, table: o.table })));
      assert.equal(o.mark, sourceAddress?.returnMark ?? 0x6d70);
      k.calls.length = 0;
      await rp.stop();
      assert.equal(k.calls.filter((c) => c.startsWith('routes.delete')).length, 4);
      assert.equal(rp.installed, false);
    }
  });
});
