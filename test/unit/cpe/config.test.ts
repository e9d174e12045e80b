import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { natUplinks, resolveCpeConfig } from '../../../src/cpe/config.js';

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

test('nat: on by default on every uplink in router mode, off in transit mode (the default), per-uplink nat wins', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mpc-cpe-config-'));
  try {
    const file = (name: string, text: string) => {
      const f = join(dir, name);
      writeFileSync(f, `lan: [lan0]\nconcentrators: [{address: "198.19.0.1:5000"}]\n${text}`);
      return f;
    };
    const router = await resolveCpeConfig({ config: file('r.yaml', 'mode: router\nuplinks: [{interface: up1}, {interface: up2, nat: false}]\n') });
    assert.deepEqual(natUplinks(router), ['up1']);
    const transit = await resolveCpeConfig({ config: file('t.yaml', 'uplinks: [{interface: up1}, {interface: up2, nat: true}]\n') });
    assert.equal(transit.mode, 'transit');
    assert.deepEqual(natUplinks(transit), ['up2']);
    await assert.rejects(resolveCpeConfig({ config: file('b.yaml', 'mode: gateway\nuplinks: [{interface: up1}]\n') }), (err: Error) => /mode/.test(err.message));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('bindings: none by default; a binding names a known MP_CONVERT concentrator and a port bound once', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mpc-cpe-config-'));
  try {
    const file = join(dir, 'cpe.yaml');
    const head = 'lan: [lan0]\nuplinks: [{interface: up1}]\nconcentrators:\n  - { address: "198.18.200.1:5000" }\n  - { address: "198.18.200.2:5000", format: rfc8803 }\n';
    writeFileSync(file, head);
    assert.deepEqual((await resolveCpeConfig({ config: file })).bindings, []);
    writeFileSync(file, `${head}bindings:\n  - { port: 8080, to: "198.18.0.2:80" }\n`);
    assert.deepEqual((await resolveCpeConfig({ config: file })).bindings, [{ port: 8080, to: '198.18.0.2:80', pool: 2, idleS: 240 }]);
    writeFileSync(file, `${head}bindings:\n  - { port: 8080, to: "198.18.0.2:80", concentrator: "198.18.200.9:5000" }\n  - { port: 8081, to: "198.18.0.2:80", concentrator: "198.18.200.2:5000" }\n  - { port: 8082, to: "198.18.0.2:80" }\n  - { port: 8082, to: "198.18.0.3:80" }\n  - { port: 0, to: "nowhere" }\n`);
    await assert.rejects(resolveCpeConfig({ config: file }), (err: Error) => {
      assert.match(err.message, /bindings\.0\.concentrator: no concentrator with address 198\.18\.200\.9:5000/);
      assert.match(err.message, /bindings\.1\.concentrator: bindings need a concentrator with format mp-convert/);
      assert.match(err.message, /bindings\.3\.port: port 8082 is bound twice/);
      assert.match(err.message, /bindings\.4\.port/);
      assert.match(err.message, /bindings\.4\.to/);
      return true;
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('transports: tcp only by default; --transports tcp,udp turns UDP channels on with their defaults; an unknown transport is refused', async () => {
  const base = { lan: ['lan0'], uplink: ['up1'], concentrator: ['198.18.200.1:5000'] };
  const plain = await resolveCpeConfig(base);
  assert.deepEqual(plain.transports, ['tcp']);
  const both = await resolveCpeConfig({ ...base, transports: ['tcp', 'udp'] });
  assert.deepEqual(both.transports, ['tcp', 'udp']);
  assert.equal(both.udp.sendBuffer, 131_072);
  assert.equal(both.udp.queueMs, 50);
  await assert.rejects(resolveCpeConfig({ ...base, transports: ['sctp'] }), (err: Error) => /transports/.test(err.message));
});
