/**
 * The concentrator's nft table (pure): the SYN window clamp on SYNs to the listeners only, the SYN-flood guards,
 * refusals of bad input. And its owner inside the Concentrator against the recording fake kernel: installed at
 * start for the bound listeners, replaced on a reload that changes them, left alone when nothing changed,
 * removed at stop.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  buildConcentratorRuleset,
  concentratorRulesetWanted,
  concentratorTableName,
  CONC_RULE_COMMENTS,
  SYN_CLAMP_EDGE,
  type ConcentratorRulesetOptions,
} from '../../../src/concentrator/ruleset.js';
import { Concentrator } from '../../../src/concentrator/concentrator.js';
import { concentratorConfigSchema } from '../../../src/concentrator/config.js';
import { createMetrics } from '../../../src/control/metrics.js';
import { silentLogger } from '../../../src/log.js';
import { fakeKernel, fakeSockets } from '../../support/fake-platform.js';

const base: ConcentratorRulesetOptions = {
  instance: 'default',
  listeners: [
    { family: 4, address: '198.18.200.1', port: 5000 },
    { family: 6, address: '2001:db8:200::1', port: 5000 },
  ],
  synWindowClamp: true,
  allow: ['198.18.0.0/15', '2001:db8::/32'],
  dropNonCustomers: false,
  synRateLimit: 0,
};

function chain(text: string, name: string): string[] {
  const start = text.indexOf(`chain ${name} {`);
  assert.ok(start >= 0, `chain ${name} in\n${text}`);
  const end = text.indexOf('\n  }', start);
  return text
    .slice(start, end)
    .split('\n')
    .slice(1)
    .map((l) => l.trim());
}

describe('buildConcentratorRuleset', () => {
  it('one inet table named after the instance; prerouting at priority mangle sends SYNs to the listeners, and only those, to the clamp', () => {
    const text = buildConcentratorRuleset(base);
    assert.match(text, /^table inet mpconvert_conc_default \{\n {2}chain prerouting \{\n {4}type filter hook prerouting priority mangle; policy accept;\n/);
    assert.equal(concentratorTableName('default'), 'mpconvert_conc_default');
    assert.deepEqual(chain(text, 'prerouting').slice(1), [
      'tcp flags & (syn | ack) != syn accept',
      'ip daddr 198.18.200.1 tcp dport 5000 goto listener_syn',
      'ip6 daddr 2001:db8:200::1 tcp dport 5000 goto listener_syn',
    ]);
    const clamp = chain(text, 'listener_syn');
    assert.equal(clamp.length, 14, 'one rule per window scale 1-14');
    assert.equal(clamp[0], `tcp option window count 1 tcp window > 8192 tcp window set 8192 counter comment "${CONC_RULE_COMMENTS.windowClamp}"`);
    assert.equal(clamp[9], `tcp option window count 10 tcp window > 16 tcp window set 16 counter comment "${CONC_RULE_COMMENTS.windowClamp}"`);
    assert.equal(clamp[13], `tcp option window count 14 tcp window > 1 tcp window set 1 counter comment "${CONC_RULE_COMMENTS.windowClamp}"`);
    for (const [i, rule] of clamp.entries()) {
      const [, w, gt, set] = /^tcp option window count (\d+) tcp window > (\d+) tcp window set (\d+) /.exec(rule) ?? [];
      assert.equal(Number(w), i + 1);
      assert.equal(Number(gt), Number(set), 'only ever lowered');
      assert.equal(Number(set) << Number(w), SYN_CLAMP_EDGE, 'the MPTCP edge is 16 KiB at every scale');
    }
    assert.ok(text.endsWith('}\n'));
  });

  it('wildcard listeners match by port (:: also IPv4, dual-stack); duplicates collapse', () => {
    const text = buildConcentratorRuleset({
      ...base,
      listeners: [
        { family: 6, address: '::', port: 5000 },
        { family: 4, address: '0.0.0.0', port: 6000 },
        { family: 4, address: '0.0.0.0', port: 6000 },
      ],
    });
    assert.deepEqual(chain(text, 'prerouting').slice(2), ['tcp dport 5000 goto listener_syn', 'meta nfproto ipv4 tcp dport 6000 goto listener_syn']);
  });

  it('SYN-flood guards come before the clamp: non-customers dropped per family, then the rate limit, then the clamp', () => {
    const text = buildConcentratorRuleset({ ...base, dropNonCustomers: true, synRateLimit: 300, allow: ['198.18.0.0/15', '10.0.0.0/8'] });
    assert.deepEqual(chain(text, 'listener_syn').slice(0, 3), [
      `meta nfproto ipv4 ip saddr != { 198.18.0.0/15, 10.0.0.0/8 } counter drop comment "${CONC_RULE_COMMENTS.nonCustomer}"`,
      `meta nfproto ipv6 counter drop comment "${CONC_RULE_COMMENTS.nonCustomer}"`,
      `limit rate over 300/second burst 300 packets counter drop comment "${CONC_RULE_COMMENTS.rateLimit}"`,
    ]);
    const noClamp = buildConcentratorRuleset({ ...base, synWindowClamp: false, dropNonCustomers: true });
    assert.doesNotMatch(noClamp, /window set/);
    assert.match(noClamp, /ip6 saddr != 2001:db8::\/32 counter drop/);
  });

  it('nothing wanted: no listener, or every rule off', () => {
    assert.equal(concentratorRulesetWanted(base), true);
    assert.equal(concentratorRulesetWanted({ ...base, listeners: [] }), false);
    assert.equal(concentratorRulesetWanted({ ...base, synWindowClamp: false }), false);
    assert.equal(concentratorRulesetWanted({ ...base, synWindowClamp: false, synRateLimit: 10 }), true);
  });

  it('refuses bad input with the option named', () => {
    for (const [o, re] of [
      [{ instance: 'A-b' }, /instance/],
      [{ listeners: [{ family: 4, address: '2001:db8::1', port: 5000 }] }, /not an IPv4 address/],
      [{ listeners: [{ family: 4, address: '198.18.200.1', port: 0 }] }, /port/],
      [{ synRateLimit: -1 }, /synRateLimit/],
      [{ dropNonCustomers: true, allow: ['nope'] }, /nope|prefix|address/i],
      [{ listeners: [] }, /no listener/],
    ] as Array<[Partial<ConcentratorRulesetOptions>, RegExp]>) {
      assert.throws(() => buildConcentratorRuleset({ ...base, ...o }), (e: Error & { code?: string }) => re.test(e.message) && e.code === 'MPC_ERR_CONC_RULESET', JSON.stringify(o));
    }
  });
});

describe('the Concentrator owns its nft table', () => {
  const nftCalls = (calls: string[]) => calls.filter((c) => c.startsWith('nft.'));

  it('installed at start for the bound port, replaced on a reload that changes the listeners, untouched when nothing changed, removed at stop', async () => {
    const kernel = fakeKernel();
    const config = concentratorConfigSchema.parse({ listen: ['127.0.0.1:0'], allow: ['127.0.0.0/8'] });
    const c = new Concentrator(config, { sockets: fakeSockets(), kernel, logger: silentLogger(), metrics: createMetrics('concentrator') });
    await c.start();
    const port = c.addresses[0]!.port;
    const applied = nftCalls(kernel.calls);
    assert.equal(applied.length, 1, applied.join('\n'));
    const [name, text] = JSON.parse(applied[0]!.slice('nft.applyTable '.length)).slice(1) as [string, string];
    assert.equal(name, 'mpconvert_conc_default');
    assert.match(text, new RegExp(`ip daddr 127\\.0\\.0\\.1 tcp dport ${port} goto listener_syn`), 'the actual port, not 0');
    assert.match(text, /tcp option window count 10 tcp window > 16 tcp window set 16 /, 'synWindowClamp is on by default');

    kernel.calls.length = 0;
    await c.reload(config);
    assert.deepEqual(nftCalls(kernel.calls), [], 'an unchanged configuration does not touch the kernel');

    await c.reload(concentratorConfigSchema.parse({ listen: ['127.0.0.1:0', '127.0.0.2:0'], allow: ['127.0.0.0/8'] }));
    const again = nftCalls(kernel.calls);
    assert.equal(again.length, 1);
    assert.match(again[0]!, /127\.0\.0\.2 tcp dport \d+ goto listener_syn/, 'the new listener is covered');

    kernel.calls.length = 0;
    await c.reload(concentratorConfigSchema.parse({ listen: ['127.0.0.1:0', '127.0.0.2:0'], allow: ['127.0.0.0/8'], synWindowClamp: false }));
    assert.deepEqual(nftCalls(kernel.calls), ['nft.deleteTable ["inet","mpconvert_conc_default"]', 'nft.deleteTable ["inet","mpconvert_conc_default"]'], 'nothing wanted: the table goes');

    await c.reload(concentratorConfigSchema.parse({ listen: ['127.0.0.1:0'], allow: ['127.0.0.0/8'], instance: 'b' }));
    kernel.calls.length = 0;
    await c.stop(0);
    assert.deepEqual(nftCalls(kernel.calls), ['nft.deleteTable ["inet","mpconvert_conc_b"]'], 'stop removes the table');
  });
});
