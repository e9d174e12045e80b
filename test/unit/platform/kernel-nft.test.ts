/**
 * The nft adapter's `addSetElements` (used by the on-path withdrawal to add learned servers) checks its input
 * before anything runs: a bad table, set or element never reaches `nft -f`. The valid path runs in the lab
 * (test/lab/onpath.test.ts reads the learned element back with `nft list set`).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createLinuxKernelConfig } from '../../../src/platform/linux/kernel.js';

test('nft.addSetElements refuses a bad table, set name or element with EINVAL, and does nothing for no element', async () => {
  const nft = createLinuxKernelConfig({ netns: 'mpc-never-used' }).nft;
  const add = nft.addSetElements;
  assert.ok(add, 'the Linux adapter has it');
  const call = (...a: Parameters<typeof add>) => add.apply(nft, a);
  await assert.rejects(call('inet', 'bad name', 'onpath_native4', ['198.19.0.12 . 80 timeout 60s']), { code: 'EINVAL' });
  await assert.rejects(call('inet', 'mpconvert_conc_default', 'set;flush', ['198.19.0.12 . 80']), { code: 'EINVAL' });
  await assert.rejects(call('inet', 'mpconvert_conc_default', 'onpath_native4', ['1.2.3.4 . 80 }; flush ruleset; {']), { code: 'EINVAL' });
  await call('inet', 'mpconvert_conc_default', 'onpath_native4', []);
});
