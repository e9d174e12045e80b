import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveCpeConfig } from '../../../src/cpe/config.js';

test('zeroRtt is on unless turned off, per concentrator; --no-zero-rtt turns it off for the flag-given ones; synWindowClamp is off', async () => {
  const base = { lan: ['lan0'], uplink: ['up1', 'up2:backup'], concentrator: ['198.18.200.1:5000', '[2001:db8:200::1]:5000'] };
  const on = await resolveCpeConfig(base);
  assert.deepEqual(on.concentrators.map((c) => [c.zeroRtt, c.synWindowClamp]), [[true, false], [true, false]]);
  assert.deepEqual(on.uplinks.map((u) => u.mode), ['subflow', 'backup']);
  const off = await resolveCpeConfig({ ...base, zeroRtt: false, format: 'rfc8803' });
  assert.deepEqual(off.concentrators.map((c) => [c.zeroRtt, c.format]), [[false, 'rfc8803'], [false, 'rfc8803']]);
  const explicit = await resolveCpeConfig({ ...base, zeroRtt: true });
  assert.deepEqual(explicit.concentrators.map((c) => c.zeroRtt), [true, true]);
});

test('an invalid zeroRtt in the file names the key', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mpc-cpe-config-'));
  try {
    const file = join(dir, 'cpe.yaml');
    writeFileSync(file, 'lan: [lan0]\nuplinks: [{interface: up1}]\nconcentrators:\n  - address: "198.18.200.1:5000"\n    zeroRtt: "yes"\n');
    await assert.rejects(resolveCpeConfig({ config: file }), (err: Error) => /concentrators/.test(err.message) && /zeroRtt/.test(err.message));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
