/**
 * The interception ruleset (pure): rule order, the DSCP map, passthrough/intercept of native MPTCP, include and
 * exclude matches, MSS clamp, refusals of unsafe options. And the Interception installer against a recording
 * fake kernel: what start adds, that stop removes exactly that in reverse, and that a failed start undoes itself.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { buildInterceptionRuleset, dscpFromMark, dscpMark, interceptionTableName, RULE_COMMENTS, type InterceptionRulesetOptions } from '../../../src/cpe/ruleset.js';
import { Interception } from '../../../src/cpe/interception.js';
import { silentLogger } from '../../../src/log.js';
import type { KernelConfig } from '../../../src/platform/types.js';

const base: InterceptionRulesetOptions = {
  instance: 'home',
  lanInterfaces: ['lan0'],
  tproxyPort: 15001,
  mark: 0x1,
  include: [{ prefix: '0.0.0.0/0' }, { prefix: '::/0' }],
  exclude: [{ prefix: '198.18.200.1/32' }],
  nativeMptcp: 'passthrough',
  dscpToMark: true,
};

/** The prerouting chain's rules, one per line, without indentation. */
function prerouting(text: string): string[] {
  const start = text.indexOf('chain prerouting {');
  const end = text.indexOf('\n  }', start);
  return text
    .slice(start, end)
    .split('\n')
    .slice(2)
    .map((l) => l.trim());
}

describe('buildInterceptionRuleset', () => {
  it('declares one inet table named after the instance, with prerouting at priority mangle', () => {
    const text = buildInterceptionRuleset(base);
    assert.match(text, /^table inet mpconvert_cpe_home \{\n {2}chain prerouting \{\n {4}type filter hook prerouting priority mangle; policy accept;\n/);
    assert.equal(text.match(/^table /gm)?.length, 1);
    assert.ok(text.endsWith('}\n'));
    assert.equal(interceptionTableName('home'), 'mpconvert_cpe_home');
    assert.doesNotMatch(text, /chain forward/, 'no MSS clamp unless asked');
  });

  it('orders the rules: non-TCP, other interfaces, established, non-SYN, local, LAN, native MPTCP, exclude, include', () => {
    const rules = prerouting(buildInterceptionRuleset(base));
    assert.deepEqual(rules.slice(0, 4), [
      'meta l4proto != tcp accept',
      'iifname != "lan0" accept',
      `meta l4proto tcp socket transparent 1 meta mark set 0x00000001 counter accept comment "${RULE_COMMENTS.established}"`,
      'tcp flags & (syn | ack) != syn accept',
    ]);
    assert.equal(rules[4], `fib daddr type { local, broadcast, multicast } counter accept comment "${RULE_COMMENTS.local}"`);
    assert.equal(rules[5], `fib daddr oifname "lan0" counter accept comment "${RULE_COMMENTS.lan}"`);
    assert.equal(rules[6], `tcp option mptcp exists counter accept comment "${RULE_COMMENTS.nativeMptcp}"`);
    assert.equal(rules[7], `ip daddr 198.18.200.1/32 counter accept comment "${RULE_COMMENTS.exclude}"`);
    assert.match(rules[8] ?? '', /^meta nfproto ipv4 meta l4proto tcp tproxy ip to 127\.0\.0\.1:15001 meta mark set ip dscp map \{ 0 : 0x00000001, 1 : 0x00000101, .* 63 : 0x00003f01 \} counter accept comment "mpconvert: intercepted"$/);
    assert.match(rules[9] ?? '', /^meta nfproto ipv6 meta l4proto tcp tproxy ip6 to \[::1\]:15001 meta mark set ip6 dscp map \{ 0 : 0x00000001, .* \} counter accept comment "mpconvert: intercepted"$/);
    assert.equal(rules.length, 10);
  });

  it('fails open: every intercept rule diverts (tproxy) before it marks, in both families and mark modes', () => {
    // Without a listener (daemon killed) tproxy gives NFT_BREAK: a mark set before it would stay and route the
    // SYN to the local table, where nobody answers it but an RST.
    for (const dscpToMark of [true, false]) {
      const rules = prerouting(buildInterceptionRuleset({ ...base, dscpToMark })).filter((r) => r.includes(RULE_COMMENTS.intercept));
      assert.equal(rules.length, 2);
      for (const r of rules) {
        assert.ok(r.indexOf('tproxy ') >= 0 && r.indexOf('tproxy ') < r.indexOf('meta mark set'), r.slice(0, 120));
      }
    }
  });

  it('maps all 64 DSCP values to dscp << 8 | mark', () => {
    const rule = prerouting(buildInterceptionRuleset({ ...base, mark: 0x4, markMask: 0xff }))[8] ?? '';
    const pairs = [...rule.matchAll(/(\d+) : (0x[0-9a-f]{8})/g)].map((m) => [Number(m[1]), Number(m[2])]);
    assert.equal(pairs.length, 64);
    for (const [d, mark] of pairs) assert.equal(mark, ((d as number) << 8) | 0x4);
    assert.equal(pairs.find(([d]) => d === 46)?.[1], 0x2e04);
  });

  it('dscpMark and dscpFromMark are inverse for every DSCP and mark bit', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 63 }), fc.integer({ min: 1, max: 0xff }), (d, m) => {
        const mark = dscpMark(d, m);
        return dscpFromMark(mark) === d && (mark & 0xff) === m;
      }),
    );
  });

  it('without dscpToMark sets the mark bit alone', () => {
    const rules = prerouting(buildInterceptionRuleset({ ...base, dscpToMark: false, mark: 0x10 }));
    assert.ok(rules[8]?.includes('tproxy ip to 127.0.0.1:15001 meta mark set 0x00000010'));
    assert.ok(!rules.some((r) => r.includes('dscp')));
  });

  it("'intercept' takes native MPTCP but never MP_JOIN SYNs", () => {
    const rules = prerouting(buildInterceptionRuleset({ ...base, nativeMptcp: 'intercept' }));
    assert.ok(!rules.some((r) => r.includes('mptcp exists')));
    assert.equal(rules[6], `tcp option mptcp subtype 1 counter accept comment "${RULE_COMMENTS.mptcpJoin}"`);
  });

  it('writes prefixes (host bits cleared), ports and ranges; exclude before include', () => {
    const rules = prerouting(
      buildInterceptionRuleset({
        ...base,
        lanInterfaces: ['lan0', 'wlan0'],
        include: [{ prefix: '198.19.0.1/16', ports: [80, [8000, 8080], [443, 443]] }, { prefix: '2001:db8:100::/48', ports: [443] }],
        exclude: [{ prefix: '198.19.7.0/24', ports: [22] }, { prefix: '2001:db8:100::11' }],
      }),
    );
    assert.equal(rules[1], 'iifname != { "lan0", "wlan0" } accept');
    assert.equal(rules[5], `fib daddr oifname { "lan0", "wlan0" } counter accept comment "${RULE_COMMENTS.lan}"`);
    assert.equal(rules[7], `ip daddr 198.19.7.0/24 tcp dport 22 counter accept comment "${RULE_COMMENTS.exclude}"`);
    assert.equal(rules[8], `ip6 daddr 2001:db8:100::11/128 counter accept comment "${RULE_COMMENTS.exclude}"`);
    assert.match(rules[9] ?? '', /^ip daddr 198\.19\.0\.0\/16 tcp dport \{ 80, 8000-8080, 443 \} meta l4proto tcp tproxy ip to 127\.0\.0\.1:15001 meta mark set ip dscp map/);
    assert.match(rules[10] ?? '', /^ip6 daddr 2001:db8:100::\/48 tcp dport 443 meta l4proto tcp tproxy ip6 to \[::1\]:15001 meta mark set ip6 dscp map .* /);
  });

  it('leaves out the families not asked for', () => {
    const rules = prerouting(buildInterceptionRuleset({ ...base, families: [4], exclude: [{ prefix: '2001:db8::/32' }] }));
    assert.ok(!rules.some((r) => r.includes('ip6') || r.includes('ipv6')));
    assert.equal(rules.filter((r) => r.includes('tproxy ip to')).length, 1);
  });

  it('clamps the MSS of forwarded SYNs to the route MTU or a value, both directions', () => {
    const pmtu = buildInterceptionRuleset({ ...base, mssClamp: 'pmtu' });
    assert.match(pmtu, /chain forward \{\n {4}type filter hook forward priority mangle; policy accept;\n {4}iifname "lan0" tcp flags & \(syn \| rst\) == syn tcp option maxseg size set rt mtu counter comment "mpconvert: MSS clamp"\n {4}oifname "lan0" tcp flags & \(syn \| rst\) == syn tcp option maxseg size set rt mtu counter comment/);
    const fixed = buildInterceptionRuleset({ ...base, mssClamp: 1360 });
    assert.equal(fixed.match(/maxseg size set 1360 counter/g)?.length, 2);
  });

  it('clamps the window of its own SYNs to the concentrators that ask for it (output hook), and only then', () => {
    assert.doesNotMatch(buildInterceptionRuleset(base), /chain output/, 'no egress clamp unless asked');
    assert.doesNotMatch(buildInterceptionRuleset({ ...base, synWindowClamp: [] }), /chain output/);
    const text = buildInterceptionRuleset({ ...base, synWindowClamp: [{ address: '198.18.200.1', port: 5000 }, { address: '2001:db8:200::1', port: 5001 }] });
    const start = text.indexOf('chain output {');
    const rules = text.slice(start, text.indexOf('\n  }', start)).split('\n').slice(1).map((l) => l.trim());
    assert.deepEqual(rules, [
      'type filter hook output priority mangle; policy accept;',
      `ip daddr 198.18.200.1 tcp dport 5000 tcp flags & (syn | ack) == syn tcp window set 62 counter comment "${RULE_COMMENTS.synWindowClamp}"`,
      `ip6 daddr 2001:db8:200::1 tcp dport 5001 tcp flags & (syn | ack) == syn tcp window set 62 counter comment "${RULE_COMMENTS.synWindowClamp}"`,
    ]);
  });

  it('masquerades what it forwards out of the NAT uplinks (IPv4, postrouting srcnat), never its own packets, and only when asked', () => {
    assert.doesNotMatch(buildInterceptionRuleset(base), /chain postrouting/);
    assert.doesNotMatch(buildInterceptionRuleset({ ...base, natInterfaces: [] }), /chain postrouting/);
    const text = buildInterceptionRuleset({ ...base, natInterfaces: ['up1', 'up2'] });
    const start = text.indexOf('chain postrouting {');
    const rules = text.slice(start, text.indexOf('\n  }', start)).split('\n').slice(1).map((l) => l.trim());
    assert.deepEqual(rules, [
      'type nat hook postrouting priority srcnat; policy accept;',
      `meta nfproto ipv4 oifname { "up1", "up2" } fib saddr type != local counter masquerade comment "${RULE_COMMENTS.nat}"`,
    ]);
  });

  it('refuses unsafe or meaningless options', () => {
    const bad: Array<[Partial<InterceptionRulesetOptions>, RegExp]> = [
      [{ synWindowClamp: [{ address: 'concentrator.example', port: 5000 }] }, /synWindowClamp target/],
      [{ synWindowClamp: [{ address: '198.18.200.1', port: 0 }] }, /synWindowClamp port/],
      [{ instance: 'Home-1' }, /instance/],
      [{ instance: '' }, /instance/],
      [{ lanInterfaces: [] }, /no LAN interface/],
      [{ lanInterfaces: ['lan0" accept; drop'] }, /bad interface name/],
      [{ lanInterfaces: ['a-very-long-interface-name'] }, /bad interface name/],
      [{ tproxyPort: 0 }, /tproxyPort/],
      [{ tproxyPort: 70000 }, /tproxyPort/],
      [{ mark: 0 }, /mark/],
      [{ mark: 0x100 }, /bits 8-13/],
      [{ mark: 0x3, markMask: 0x1 }, /outside markMask/],
      [{ mark: 0x1, markMask: 0xffff }, /bits 8-13/],
      [{ include: [{ prefix: '198.19.0.0/33' }] }, /Cannot parse prefix/],
      [{ include: [{ prefix: 'example.com' }] }, /Cannot parse prefix/],
      [{ exclude: [{ prefix: '198.19.0.0/24', ports: [] }] }, /empty port list/],
      [{ exclude: [{ prefix: '198.19.0.0/24', ports: [[90, 80]] }] }, /reversed/],
      [{ exclude: [{ prefix: '198.19.0.0/24', ports: [0] }] }, /not a port/],
      [{ mssClamp: 100 }, /mssClamp/],
      [{ families: [] }, /families/],
      [{ natInterfaces: ['up1"; accept'] }, /bad NAT interface name/],
      [{ natInterfaces: ['lan0'] }, /both a LAN interface and a NAT uplink/],
    ];
    for (const [patch, re] of bad) {
      assert.throws(
        () => buildInterceptionRuleset({ ...base, ...patch }),
        (err: Error & { code?: string }) => err.code === 'MPC_ERR_CPE_RULESET' && re.test(err.message),
        JSON.stringify(patch),
      );
    }
    // A mask wider than the mark is fine when it leaves the DSCP bits alone, or when DSCP is not carried.
    assert.doesNotThrow(() => buildInterceptionRuleset({ ...base, mark: 0x1, markMask: 0xff }));
    assert.doesNotThrow(() => buildInterceptionRuleset({ ...base, mark: 0x100, dscpToMark: false }));
  });
});

/** A fake kernel recording every call; `failOn` makes the named call reject once. */
function recordingKernel(failOn?: string) {
  const calls: string[] = [];
  const sysctls = new Map([['net.ipv4.tcp_fwmark_accept', '0']]);
  let failed = false;
  const rec = (name: string) => async (...args: unknown[]) => {
    const line = `${name} ${JSON.stringify(args)}`;
    if (failOn !== undefined && !failed && line.startsWith(failOn)) {
      failed = true;
      throw new Error(`injected failure: ${line}`);
    }
    calls.push(line);
  };
  const kernel = {
    netns: undefined,
    nft: { applyTable: rec('nft.applyTable'), deleteTable: rec('nft.deleteTable') },
    routes: { addRoute: rec('addRoute'), deleteRoute: rec('deleteRoute'), addRule: rec('addRule'), deleteRule: rec('deleteRule') },
    sysctl: {
      get: async (n: string) => sysctls.get(n) ?? '0',
      set: async (n: string, v: string) => {
        await rec('sysctl.set')(n, v);
        sysctls.set(n, v);
      },
    },
  };
  return { kernel: kernel as unknown as KernelConfig, calls, sysctls };
}

describe('Interception', () => {
  const opts = { ...base, lanInterfaces: ['lan0', 'lan1'], table: 150, rulePriority: 9100 };

  it('installs table, sysctl, local routes and per-LAN fwmark rules; stop removes exactly those, in reverse', async () => {
    const { kernel, calls, sysctls } = recordingKernel();
    const i = new Interception({ kernel, logger: silentLogger() }, opts);
    await i.start();
    const added = [...calls];
    assert.match(added[0] ?? '', /^nft\.applyTable \["inet","mpconvert_cpe_home","table inet mpconvert_cpe_home \{/);
    assert.equal(added[1], 'sysctl.set ["net.ipv4.tcp_fwmark_accept","1"]');
    const rule4 = { family: 4, priority: 9100, iif: 'lan0', fwmark: 1, fwmask: 1, table: 150 };
    assert.ok(added.includes(`addRoute ${JSON.stringify([{ family: 4, table: 150, dst: 'default', type: 'local', dev: 'lo' }])}`));
    assert.ok(added.includes(`addRule ${JSON.stringify([rule4])}`));
    assert.ok(added.includes(`addRule ${JSON.stringify([{ ...rule4, family: 6, iif: 'lan1' }])}`));
    assert.equal(added.filter((c) => c.startsWith('addRule')).length, 4);
    assert.equal(i.installed().length, 1 + 1 + 2 + 4);
    calls.length = 0;
    await i.stop();
    const removed = [...calls];
    assert.equal(removed.at(-1), 'nft.deleteTable ["inet","mpconvert_cpe_home"]');
    assert.equal(removed.at(-2), 'sysctl.set ["net.ipv4.tcp_fwmark_accept","0"]');
    assert.equal(removed.filter((c) => c.startsWith('deleteRule')).length, 4);
    assert.equal(removed.filter((c) => c.startsWith('deleteRoute')).length, 2);
    assert.equal(sysctls.get('net.ipv4.tcp_fwmark_accept'), '0');
    calls.length = 0;
    await i.stop();
    assert.deepEqual(calls, [], 'a second stop does nothing');
  });

  it('leaves tcp_fwmark_accept alone when already 1 or when DSCP is not carried', async () => {
    const a = recordingKernel();
    a.sysctls.set('net.ipv4.tcp_fwmark_accept', '1');
    const i = new Interception({ kernel: a.kernel, logger: silentLogger() }, opts);
    await i.start();
    await i.stop();
    assert.ok(!a.calls.some((c) => c.startsWith('sysctl')));
    const b = recordingKernel();
    const j = new Interception({ kernel: b.kernel, logger: silentLogger() }, { ...opts, dscpToMark: false });
    await j.start();
    assert.ok(!b.calls.some((c) => c.startsWith('sysctl')));
    await j.stop();
  });

  it('a failed start removes what it had added and rejects; a later start works', async () => {
    const { kernel, calls, sysctls } = recordingKernel('addRule [{"family":6');
    const i = new Interception({ kernel, logger: silentLogger() }, opts);
    await assert.rejects(i.start(), /injected failure/);
    const adds = calls.filter((c) => /^(addRule|addRoute)/.test(c)).length;
    const dels = calls.filter((c) => /^(deleteRoute)/.test(c)).length + calls.filter((c) => c.startsWith('deleteRule')).length;
    assert.ok(adds > 0);
    assert.ok(calls.includes('nft.deleteTable ["inet","mpconvert_cpe_home"]'));
    assert.equal(sysctls.get('net.ipv4.tcp_fwmark_accept'), '0');
    assert.ok(dels >= adds, 'every add undone (plus the pre-add deletes of stale rules)');
    assert.deepEqual(i.installed(), []);
    await i.start();
    assert.equal(i.installed().length, 8);
    await i.stop();
  });

  it('refuses bad options at construction', () => {
    const { kernel } = recordingKernel();
    assert.throws(() => new Interception({ kernel, logger: silentLogger() }, { ...opts, instance: 'x y' }), /instance/);
  });
  it('update (reload): a new policy replaces the table in one nft call; a change of what rules hang on is refused', async () => {
    const { kernel, calls } = recordingKernel();
    const i = new Interception({ kernel, logger: silentLogger() }, opts);
    assert.equal(await i.update(opts), false, 'nothing to update before start');
    await i.start();
    calls.length = 0;
    const next = { ...opts, exclude: [{ prefix: '198.19.77.0/24' }] };
    assert.equal(await i.update(next), true);
    assert.equal(calls.length, 1, calls.join('\n'));
    assert.match(calls[0]!, /^nft\.applyTable \["inet","mpconvert_cpe_home",".*198\.19\.77\.0\/24/s);
    calls.length = 0;
    for (const changed of [{ lanInterfaces: ['lan0'] }, { tproxyPort: 15_002 }, { table: 151 }, { rulePriority: 9101 }, { mark: 2 }, { dscpToMark: !opts.dscpToMark }]) {
      assert.equal(await i.update({ ...next, ...changed }), false, JSON.stringify(changed));
    }
    assert.deepEqual(calls, [], 'a refused update changes nothing');
    await i.stop();
  });
});

describe('UDP interception rules', () => {
  it('with udpTproxyPort: UDP passes the first rule, included UDP is TPROXYed (every datagram), port excludes get a udp twin', () => {
    const text = buildInterceptionRuleset({ ...base, udpTproxyPort: 15001, exclude: [{ prefix: '198.19.9.0/24', ports: [53] }] });
    assert.match(text, /meta l4proto != \{ tcp, udp \} accept/);
    assert.match(text, /ip daddr 198\.19\.9\.0\/24 udp dport 53 counter accept comment "mpconvert: excluded"/);
    assert.match(text, /meta l4proto udp tproxy ip to 127\.0\.0\.1:15001 meta mark set 0x[0-9a-f]+ counter accept comment "mpconvert: intercepted \(udp\)"/);
    // Local, broadcast and multicast destinations (DHCP, mDNS, DNS to the CPE) come before and stay untouched.
    assert.ok(text.indexOf(RULE_COMMENTS.local) < text.indexOf(RULE_COMMENTS.interceptUdp));
  });
  it('without it: no UDP rule at all (UDP forwarded untouched)', () => {
    const text = buildInterceptionRuleset(base);
    assert.match(text, /meta l4proto != tcp accept/);
    assert.doesNotMatch(text, /udp/);
  });
});
