import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PIN_MARK_MASK, classifyFlow, inClass, pinMark, pinUplink, type FlowClass, type PinCandidate } from '../../../src/policy/flow-class.js';
import { cpeConfigSchema } from '../../../src/cpe/config.js';
import { pinRuleset, pinTableName } from '../../../src/cpe/pinning.js';
import { DSCP_MARK_SHIFT } from '../../../src/cpe/ruleset.js';
const DSCP_MARK_BITS = 0x3f << DSCP_MARK_SHIFT;

const voice: FlowClass = { name: 'voice', dscp: [46] };
const games: FlowClass = { name: 'games', destinations: [{ prefix: '198.51.100.0/24', ports: [3074, [27000, 27050]] }, { prefix: '2001:db8:5::/48' }] };
const sip: FlowClass = { name: 'sip', dscp: [24, 26], destinations: [{ prefix: '0.0.0.0/0', ports: [5060] }] };
const flow = (address: string, port: number, dscp = 0) => ({ dscp, dst: { address, port } });

test('a class matches on every criterion it names: DSCP, destination prefix, ports and port ranges', () => {
  assert.equal(inClass(voice, flow('192.0.2.1', 443, 46)), true);
  assert.equal(inClass(voice, flow('192.0.2.1', 443, 0)), false);
  assert.equal(inClass(games, flow('198.51.100.7', 3074)), true);
  assert.equal(inClass(games, flow('198.51.100.7', 27050)), true, 'range end included');
  assert.equal(inClass(games, flow('198.51.100.7', 27051)), false);
  assert.equal(inClass(games, flow('198.51.101.7', 3074)), false, 'outside the prefix');
  assert.equal(inClass(games, flow('2001:db8:5::9', 1)), true, 'no ports: any port');
  assert.equal(inClass(games, flow('2001:db8:6::9', 1)), false);
  assert.equal(inClass(sip, flow('203.0.113.5', 5060, 26)), true, 'both criteria');
  assert.equal(inClass(sip, flow('203.0.113.5', 5060, 0)), false, 'port without the DSCP');
  assert.equal(inClass(sip, flow('203.0.113.5', 5061, 26)), false, 'DSCP without the port');
  assert.equal(inClass({ name: 'empty' }, flow('203.0.113.5', 1)), false, 'a class with no criterion matches nothing');
});

test('the first class that matches wins; no class: undefined (aggregated)', () => {
  assert.equal(classifyFlow([voice, sip], flow('203.0.113.5', 5060, 46))?.name, 'voice');
  assert.equal(classifyFlow([sip, voice], flow('203.0.113.5', 5060, 26))?.name, 'sip');
  assert.equal(classifyFlow([voice, games], flow('203.0.113.5', 80)), undefined);
  assert.equal(classifyFlow([], flow('203.0.113.5', 80, 46)), undefined);
});

test('pinUplink: the named uplink while usable, else the lowest RTT among subflow uplinks, then backup ones', () => {
  const u = (name: string, rttMs: number | null, extra: Partial<PinCandidate> = {}): PinCandidate => ({ interface: name, usable: true, mode: 'subflow', rttMs, ...extra });
  assert.equal(pinUplink({}, [u('dsl', 12), u('lte', 45)]), 'dsl');
  assert.equal(pinUplink({}, [u('dsl', 60), u('lte', 45)]), 'lte');
  assert.equal(pinUplink({}, [u('dsl', null), u('lte', null)]), 'dsl', 'nothing measured: configuration order');
  assert.equal(pinUplink({}, [u('dsl', null), u('lte', 45)]), 'lte', 'a measured uplink before an unmeasured one');
  assert.equal(pinUplink({}, [u('dsl', 5, { usable: false }), u('lte', 45)]), 'lte', 'an unusable uplink is skipped');
  assert.equal(pinUplink({}, [u('dsl', 5, { mode: 'backup' }), u('lte', 45)]), 'lte', 'a backup uplink (over quota) only as a last resort');
  assert.equal(pinUplink({}, [u('dsl', 5, { mode: 'backup' }), u('lte', 45, { usable: false })]), 'dsl');
  assert.equal(pinUplink({ uplink: 'lte' }, [u('dsl', 5), u('lte', 45)]), 'lte', 'named');
  assert.equal(pinUplink({ uplink: 'lte' }, [u('dsl', 5), u('lte', 45, { usable: false })]), 'dsl', 'named but down: the lowest RTT');
  assert.equal(pinUplink({}, [u('dsl', 5, { usable: false })]), undefined);
});

test('pin marks sit in bits 16-23, clear of the interception mark and the DSCP bits', () => {
  assert.equal(pinMark(0), 0x10000);
  assert.equal(pinMark(1), 0x20000);
  assert.equal(PIN_MARK_MASK & DSCP_MARK_BITS, 0);
  assert.equal(PIN_MARK_MASK & 0xff, 0);
  for (let i = 0; i < 8; i++) assert.equal(pinMark(i) & ~PIN_MARK_MASK, 0);
  assert.throws(() => pinMark(255), RangeError);
});

test('the pin table resets marked SYNs leaving through any other uplink, one rule per uplink', () => {
  const text = pinRuleset(['up1', 'up2']);
  assert.match(text, /type filter hook output priority 0; policy accept;/);
  assert.match(text, /meta mark & 0x00ff0000 == 0x00010000 tcp flags & \(syn \| ack\) == syn oifname != "up1" counter reject with tcp reset/);
  assert.match(text, /meta mark & 0x00ff0000 == 0x00020000 tcp flags & \(syn \| ack\) == syn oifname != "up2" counter reject with tcp reset/);
  assert.equal(pinTableName('default'), 'mpconvert_pin_default');
  assert.throws(() => pinRuleset(['bad name"; drop']), RangeError);
});

test('config: classes need a criterion and unique names; defaults leave no class', () => {
  const base = { lan: ['lan0'], uplinks: [{ interface: 'up1' }, { interface: 'up2' }], concentrators: [{ address: '198.18.200.1:5000' }] };
  assert.deepEqual(cpeConfigSchema.parse(base).distribution.classes, []);
  const ok = cpeConfigSchema.parse({ ...base, distribution: { classes: [{ name: 'voice', dscp: [46], uplink: 'up2' }, { name: 'ssh', destinations: [{ prefix: '0.0.0.0/0', ports: [22] }] }] } });
  assert.equal(ok.distribution.scheme, 'aggregate');
  assert.equal(ok.distribution.classes.length, 2);
  assert.equal(cpeConfigSchema.safeParse({ ...base, distribution: { classes: [{ name: 'x' }] } }).success, false, 'no criterion');
  assert.equal(cpeConfigSchema.safeParse({ ...base, distribution: { classes: [{ name: 'x', dscp: [46] }, { name: 'x', dscp: [34] }] } }).success, false, 'duplicate name');
  assert.equal(cpeConfigSchema.safeParse({ ...base, distribution: { classes: [{ name: 'x', dscp: [64] }] } }).success, false, 'DSCP is 6 bits');
});
