/**
 * Implicit (on-path) mode without root: the nft rules (pure) in the order the demux needs them, inside the
 * concentrator's own table; the settings' defaults; the source gate; the MPTCP option helpers of the lab's pcap
 * reader; and the component inside the Concentrator against the recording fake kernel (C-bit sysctl set and
 * restored, the join endpoint added with its port and removed, the table carrying the on-path chain).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { buildOnPathRules, nativeElement, ONPATH_RULE_COMMENTS, ONPATH_SETS, type OnPathRuleOptions } from '../../../src/concentrator/onpath-ruleset.js';
import { buildConcentratorRuleset, concentratorRulesetWanted } from '../../../src/concentrator/ruleset.js';
import { concentratorConfigSchema } from '../../../src/concentrator/config.js';
import { Concentrator } from '../../../src/concentrator/concentrator.js';
import { onPathRuleOptions } from '../../../src/concentrator/onpath.js';
import { onPathSourceGate } from '../../../src/policy/onpath.js';
import { PrefixSet } from '../../../src/policy/destination.js';
import { MPTCP_SUBTYPE, mpCapableCBit, mptcpSubtype, type TcpSegment } from '../../../src/lab/pcap.js';
import { createMetrics } from '../../../src/control/metrics.js';
import { silentLogger } from '../../../src/log.js';
import { fakeKernel, fakeSockets } from '../../support/fake-platform.js';

const base: OnPathRuleOptions = { sources: ['198.18.1.0/24', '198.18.2.0/24', '2001:db8:1::/64'], port: 4243, mark: 0x6d70, withdrawal: 'maintain', nativeServers: [], synRateLimit: 0 };
const c = (k: keyof typeof ONPATH_RULE_COMMENTS) => `comment "${ONPATH_RULE_COMMENTS[k]}"`;

function chainOf(text: string, name: string): string[] {
  const start = text.indexOf(`chain ${name} {`);
  assert.ok(start >= 0, `chain ${name} in\n${text}`);
  const end = text.indexOf('\n  }', start);
  return text.slice(start, end).split('\n').slice(1).map((l) => l.trim());
}

describe('buildOnPathRules', () => {
  it('maintain: only MP_CAPABLE SYNs jump to onpath_syn; local, foreign sources return; then TPROXY and the mark', () => {
    const r = buildOnPathRules(base);
    assert.deepEqual(r.sets, [], 'no learned set without withdrawal');
    assert.deepEqual(r.preroutingHead, [
      `meta l4proto tcp socket transparent 1 meta mark set meta mark | 0x6d70 counter accept ${c('established')}`,
      'tcp flags & (syn | ack) == syn tcp option mptcp subtype 0 jump onpath_syn',
    ]);
    assert.deepEqual(r.chain.slice(1, -1).map((l) => l.trim()), [
      'fib daddr type { local, broadcast, multicast } return',
      'meta nfproto ipv4 ip saddr != { 198.18.1.0/24, 198.18.2.0/24 } return',
      'meta nfproto ipv6 ip6 saddr != 2001:db8:1::/64 return',
      `meta nfproto ipv4 meta l4proto tcp tproxy ip to 127.0.0.1:4243 meta mark set meta mark | 0x6d70 counter accept ${c('intercept')}`,
      `meta nfproto ipv6 meta l4proto tcp tproxy ip6 to [::1]:4243 meta mark set meta mark | 0x6d70 counter accept ${c('intercept')}`,
    ]);
  });

  it('a family without sources is never intercepted', () => {
    const r = buildOnPathRules({ ...base, sources: ['198.18.1.0/24'] });
    assert.ok(r.chain.some((l) => l.trim() === 'meta nfproto ipv6 return'));
  });

  it('withdraw: the learned sets, and native servers accepted (routed untouched) before the rate limit and TPROXY', () => {
    const r = buildOnPathRules({ ...base, withdrawal: 'withdraw', nativeServers: ['198.19.0.0/28', '2001:db8:100::/64'], synRateLimit: 50 });
    assert.ok(r.sets.join('\n').includes(`set ${ONPATH_SETS.native4} {\n    type ipv4_addr . inet_service\n    flags timeout`));
    assert.ok(r.sets.join('\n').includes(`set ${ONPATH_SETS.native6} {\n    type ipv6_addr . inet_service`));
    const rules = r.chain.slice(1, -1).map((l) => l.trim());
    const at = (needle: string) => rules.findIndex((l) => l.includes(needle));
    assert.equal(rules[at('ip daddr 198.19.0.0/28')], `ip daddr 198.19.0.0/28 counter accept ${c('native')}`);
    assert.equal(rules[at('@onpath_native4')], `ip daddr . tcp dport @onpath_native4 counter accept ${c('native')}`);
    assert.ok(at('@onpath_native6') > 0);
    assert.equal(rules[at('limit rate')], `limit rate over 50/second burst 50 packets counter drop ${c('rateLimit')}`);
    assert.ok(at('saddr !=') < at('@onpath_native4'), 'sources first');
    assert.ok(at('@onpath_native6') < at('limit rate'), 'a native server is never rate-limited by the box');
    assert.ok(at('limit rate') < at('tproxy ip to'), 'the limit before the interception');
  });

  it('refuses bad input', () => {
    assert.throws(() => buildOnPathRules({ ...base, sources: [] }), /no source prefix/);
    assert.throws(() => buildOnPathRules({ ...base, port: 0 }), /port 0/);
    assert.throws(() => buildOnPathRules({ ...base, sources: ['198.18.1.300/24'] }), /MPC_ERR_CONC_RULESET|Cannot build/);
    assert.throws(() => buildOnPathRules({ ...base, synRateLimit: -1 }), /synRateLimit/);
  });

  it('learned elements: address . port with the timeout, in the set of its family', () => {
    assert.deepEqual(nativeElement('198.19.0.12', 8080, 600), { set: 'onpath_native4', element: '198.19.0.12 . 8080 timeout 600s' });
    assert.deepEqual(nativeElement('2001:db8:100::12', 443, 60), { set: 'onpath_native6', element: '2001:db8:100::12 . 443 timeout 60s' });
  });
});

describe('the on-path rules in the concentrator table', () => {
  const listeners = [{ family: 4 as const, address: '198.18.200.1', port: 5000 }];
  const o = { instance: 'default', listeners, synWindowClamp: false, allow: ['198.18.0.0/15'], dropNonCustomers: false, synRateLimit: 0 };

  it('wanted even without any listener guard; the head of prerouting comes before the listeners\' rules', () => {
    assert.equal(concentratorRulesetWanted(o), false);
    const withOnPath = { ...o, onPath: base };
    assert.equal(concentratorRulesetWanted(withOnPath), true);
    const text = buildConcentratorRuleset(withOnPath);
    const pre = chainOf(text, 'prerouting').slice(1);
    assert.equal(pre[1], 'tcp flags & (syn | ack) == syn tcp option mptcp subtype 0 jump onpath_syn');
    assert.equal(pre[2], 'tcp flags & (syn | ack) != syn accept', 'jump returns here for what is not intercepted');
    assert.ok(chainOf(text, 'onpath_syn').length > 3);
  });

  it('the settings: defaults, and the mark is the return path\'s', () => {
    const config = concentratorConfigSchema.parse({ listen: ['198.18.200.1:5000'], allow: ['198.18.0.0/15'], onPath: { sources: ['198.18.1.0/24'] } });
    assert.deepEqual(config.onPath, { sources: ['198.18.1.0/24'], port: 4243, withdrawal: 'maintain', nativeServers: [], learnTtlS: 3600, announce: [], joinPort: 4244, denyJoinInitial: true, synRateLimit: 0 });
    assert.equal(onPathRuleOptions(config)?.mark, 0x6d70);
    assert.equal(onPathRuleOptions({ ...config, onPath: undefined }), undefined);
    assert.throws(() => concentratorConfigSchema.parse({ listen: ['198.18.200.1:5000'], allow: ['198.18.0.0/15'], onPath: { sources: [] } }));
    assert.throws(() => concentratorConfigSchema.parse({ listen: ['198.18.200.1:5000'], allow: ['198.18.0.0/15'], onPath: { sources: ['198.18.1.0/24'], withdrawal: 'always' } }));
  });
});

describe('onPathSourceGate', () => {
  it('passes the configured sources, refuses the rest as onpath-source', () => {
    const set = PrefixSet.from(['198.18.1.0/24']);
    assert.equal(onPathSourceGate('198.18.1.2', set), undefined);
    assert.equal(onPathSourceGate('198.18.0.2', set)?.code, 'onpath-source');
  });
});

describe('pcap MPTCP helpers', () => {
  const seg = (mptcp?: string): TcpSegment => ({
    src: 'a', dst: 'b', sport: 1, dport: 2, seq: 0, ack: 0, flags: { syn: true, ack: true, fin: false, rst: false }, window: 0, options: [30],
    ...(mptcp ? { mptcp: Buffer.from(mptcp, 'hex') } : {}), payload: Buffer.alloc(0), length: 0,
  });
  it('reads the subtype and the MP_CAPABLE C bit (captured on the lab: 0x21 = C + HMAC-SHA256)', () => {
    assert.equal(mptcpSubtype(seg('1e0c012161de4d87fef210b5')), MPTCP_SUBTYPE.capable);
    assert.equal(mpCapableCBit(seg('1e0c012161de4d87fef210b5')), true);
    assert.equal(mpCapableCBit(seg('1e040101')), false);
    assert.equal(mptcpSubtype(seg('1e0c1002cfb5e1aba0db3be8')), MPTCP_SUBTYPE.join);
    assert.equal(mpCapableCBit(seg('1e0c1002cfb5e1aba0db3be8')), undefined, 'not an MP_CAPABLE');
    assert.equal(mptcpSubtype(seg()), undefined);
  });
});

describe('OnPath in the Concentrator (fake kernel)', () => {
  it('start: C-bit sysctl, join endpoint with its port, the on-path chain in the table; stop undoes them', async () => {
    const kernel = fakeKernel();
    kernel.sysctls.set('net.mptcp.allow_join_initial_addr_port', '1');
    const port = 40_000 + Math.floor(Math.random() * 20_000);
    const config = concentratorConfigSchema.parse({
      listen: ['127.0.0.1:0'],
      allow: ['127.0.0.0/8'],
      onPath: { sources: ['198.18.1.0/24'], port, announce: ['198.18.200.1'], joinPort: 4244 },
    });
    const sockets = fakeSockets();
    const conc = new Concentrator(config, { sockets, kernel, logger: silentLogger(), metrics: createMetrics('concentrator') });
    await conc.start();
    try {
      assert.equal(kernel.sysctls.get('net.mptcp.allow_join_initial_addr_port'), '0');
      assert.ok(kernel.calls.includes('mptcp.addEndpoint [{"address":"198.18.200.1","port":4244,"flags":["signal"]}]'), kernel.calls.join('\n'));
      const applied = kernel.calls.find((x) => x.startsWith('nft.applyTable ["inet","mpconvert_conc_default"'));
      assert.ok(applied?.includes(`tproxy ip to 127.0.0.1:${port}`), applied);
      assert.ok(kernel.calls.some((x) => x.startsWith('routes.addRule')), 'the return path\'s fwmark rule (local delivery of intercepted packets)');
      const transparent = sockets.listens.filter((l) => l.transparent).map((l) => [l.protocol, l.host, l.port]);
      assert.deepEqual(transparent, [['mptcp', '127.0.0.1', port], ['mptcp', '::1', port]], 'a transparent MPTCP listener per family on onPath.port');
      assert.deepEqual((conc.status() as { onPath?: unknown }).onPath, { port, active: 0, intercepted: 0, learned: [] });
      const changed = concentratorConfigSchema.parse({ ...config, onPath: { ...config.onPath, withdrawal: 'withdraw' } });
      const report = await conc.reload(changed);
      assert.deepEqual(report.needRestart, ['onPath'], 'a change of onPath is reported as needing a restart');
      assert.equal(conc.config.onPath?.withdrawal, 'maintain', 'and keeps the running value');
    } finally {
      await conc.stop(0);
    }
    assert.equal(kernel.sysctls.get('net.mptcp.allow_join_initial_addr_port'), '1', 'restored at stop');
  });
});
