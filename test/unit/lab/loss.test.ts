import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MpconvertError } from '../../../src/errors.js';
import { checkLossPercent, lossRuleset, parseLossTable } from '../../../src/lab/loss.js';

test('no loss: the script only removes the table (and is valid whether or not it exists)', () => {
  assert.equal(lossRuleset(new Map()), 'table inet mpconvert_lab_loss\ndelete table inet mpconvert_lab_loss\n');
  assert.equal(lossRuleset(new Map([[1, 0]])), 'table inet mpconvert_lab_loss\ndelete table inet mpconvert_lab_loss\n');
});

test('loss on two uplinks: one rule per uplink and direction, numgen in 0.01 % steps, comments carry the setting', () => {
  const s = lossRuleset(new Map([[2, 12.5], [1, 30]]));
  assert.match(s, /hook prerouting/);
  assert.match(s, /hook postrouting/);
  assert.ok(s.includes('iifname "up1" numgen random mod 10000 < 3000 counter drop comment "loss up1 30"'));
  assert.ok(s.includes('oifname "up1" numgen random mod 10000 < 3000 counter drop comment "loss up1 30"'));
  assert.ok(s.includes('iifname "up2" numgen random mod 10000 < 1250 counter drop comment "loss up2 12.5"'));
  assert.ok(s.indexOf('"up1"') < s.indexOf('"up2"'), 'sorted by uplink');
  assert.equal(s.match(/ drop /g)?.length, 4);
});

test('loss percent must be 0..100', () => {
  for (const bad of [-1, 100.5, NaN, Infinity]) {
    assert.throws(() => checkLossPercent(bad), (e: unknown) => e instanceof MpconvertError && e.code === 'MPC_ERR_LAB_SPEC');
    assert.throws(() => lossRuleset(new Map([[1, bad]])));
  }
  assert.throws(() => lossRuleset(new Map([[9, 10]])), RangeError);
});

test('parseLossTable reads the settings back from nft -j output; garbage is no loss', () => {
  const json = JSON.stringify({
    nftables: [
      { metainfo: { json_schema_version: 1 } },
      { table: { family: 'inet', name: 'mpconvert_lab_loss' } },
      { rule: { chain: 'ingress', comment: 'loss up1 30' } },
      { rule: { chain: 'egress', comment: 'loss up1 30' } },
      { rule: { chain: 'egress', comment: 'loss up3 0.5' } },
      { rule: { chain: 'egress', comment: 'something else' } },
    ],
  });
  assert.deepEqual([...parseLossTable(json)], [[1, 30], [3, 0.5]]);
  assert.deepEqual([...parseLossTable('not json')], []);
});
