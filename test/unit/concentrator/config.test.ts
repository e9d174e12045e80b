import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveConcentratorConfig } from '../../../src/concentrator/config.js';

const dir = mkdtempSync(join(tmpdir(), 'mpc-conf-'));

test('flags alone give a valid config with defaults', async () => {
  const c = await resolveConcentratorConfig({ listen: ['198.18.200.1:5000', '[2001:db8:200::1]:5000'], allow: ['198.18.0.0/16'] });
  assert.deepEqual(c.listen, ['198.18.200.1:5000', '[2001:db8:200::1]:5000']);
  assert.equal(c.server.mptcp, true);
  assert.equal(c.server.fallbackCacheTtlS, 86_400);
  assert.equal(c.server.tcpServersTtlS, 0, 'every server leg starts with MPTCP by default');
  assert.equal(c.sourcePool.mode, 'shared');
  assert.equal(c.sessionLog, true);
});

test('an invalid file names the key and the problem', async () => {
  const f = join(dir, 'bad.yaml');
  writeFileSync(f, 'listen: ["198.18.200.1:99999"]\nallow: ["198.18.0.0/99"]\nlimits:\n  maxConnectionsPerCpe: 0\nbogus: 1\n');
  await assert.rejects(resolveConcentratorConfig({ config: f }), (err: Error) => {
    assert.match(err.message, /listen\.0: must be ADDR:PORT/);
    assert.match(err.message, /allow\.0: must be an IP prefix/);
    assert.match(err.message, /limits\.maxConnectionsPerCpe/);
    assert.match(err.message, /bogus/);
    assert.equal((err as { code?: string }).code, 'MPC_ERR_CONFIG');
    return true;
  });
});

test('flags override the file', async () => {
  const f = join(dir, 'ok.yaml');
  writeFileSync(f, 'listen: ["198.18.200.1:5000"]\nallow: ["198.18.0.0/16"]\nserver:\n  connectTimeoutMs: 2000\n');
  const c = await resolveConcentratorConfig({ config: f, listen: ['198.18.200.1:6000'], noServerMptcp: true });
  assert.deepEqual(c.listen, ['198.18.200.1:6000']);
  assert.equal(c.server.mptcp, false);
  assert.equal(c.server.connectTimeoutMs, 2000);
});

test('an unreadable file is a clear error', async () => {
  await assert.rejects(resolveConcentratorConfig({ config: join(dir, 'missing.yaml') }), /Cannot read config file/);
});

test('server.proxyProtocol: none by default; prefixes and ports checked, every bad key named', async () => {
  const base = { listen: ['198.18.200.1:5000'], allow: ['198.18.0.0/16'] };
  assert.deepEqual((await resolveConcentratorConfig(base)).server.proxyProtocol, []);
  const f = join(dir, 'proxy.yaml');
  writeFileSync(f, 'listen: ["198.18.200.1:5000"]\nallow: ["198.18.0.0/16"]\nserver:\n  proxyProtocol:\n    - { prefix: "198.19.0.11/32", ports: [8443] }\n    - { prefix: "2001:db8:100::/64" }\n');
  assert.deepEqual((await resolveConcentratorConfig({ config: f })).server.proxyProtocol, [{ prefix: '198.19.0.11/32', ports: [8443] }, { prefix: '2001:db8:100::/64' }]);
  writeFileSync(f, 'listen: ["198.18.200.1:5000"]\nallow: ["198.18.0.0/16"]\nserver:\n  proxyProtocol:\n    - { prefix: "198.19.0.11/33", ports: [0] }\n    - { prefix: "198.19.0.0/24", ports: [] }\n    - { prefix: "198.19.0.0/24", port: 80 }\n');
  await assert.rejects(resolveConcentratorConfig({ config: f }), (err: Error) => {
    assert.match(err.message, /server\.proxyProtocol\.0\.prefix: must be an IP prefix/);
    assert.match(err.message, /server\.proxyProtocol\.0\.ports\.0/);
    assert.match(err.message, /server\.proxyProtocol\.1\.ports: list at least one port/);
    assert.match(err.message, /server\.proxyProtocol\.2: Unrecognized key: "port"/);
    return true;
  });
});

test('bindings: off by default; addresses needed unless a source pool gives each CPE its own', async () => {
  const base = { listen: ['198.18.200.1:5000'], allow: ['198.18.0.0/16'] };
  assert.equal((await resolveConcentratorConfig(base)).bindings, undefined);
  const f = join(dir, 'bindings.yaml');
  writeFileSync(f, 'listen: ["198.18.200.1:5000"]\nallow: ["198.18.0.0/16"]\nbindings: { addresses: ["198.19.0.1"] }\n');
  assert.deepEqual((await resolveConcentratorConfig({ config: f })).bindings, {
    addresses: ['198.19.0.1'], ports: { from: 1024, to: 65535 }, maxPerCpe: 8, idlePerBinding: 8, idleS: 600, graceS: 10, waitMs: 2000,
  });
  writeFileSync(f, 'listen: ["198.18.200.1:5000"]\nallow: ["198.18.0.0/16"]\nsourcePool: { addresses: ["198.19.0.128"] }\nbindings: {}\n');
  assert.deepEqual((await resolveConcentratorConfig({ config: f })).bindings?.addresses, []);
  writeFileSync(f, 'listen: ["198.18.200.1:5000"]\nallow: ["198.18.0.0/16"]\nbindings: { ports: { from: 9000, to: 8000 } }\n');
  await assert.rejects(resolveConcentratorConfig({ config: f }), (err: Error) => {
    assert.match(err.message, /bindings\.addresses: list the addresses bindings open on/);
    assert.match(err.message, /bindings\.ports: from must not be above to/);
    return true;
  });
});


test('workers: 1 by default; workers > 1 needs transports [tcp] and refuses bindings, onPath, radius and portBlocks, each named', async () => {
  const c = await resolveConcentratorConfig({ listen: ['198.18.200.1:5000'], allow: ['198.18.0.0/16'] });
  assert.equal(c.workers, 1);
  const ok = join(dir, 'workers-ok.yaml');
  writeFileSync(ok, 'listen: ["198.18.200.1:5000"]\nallow: ["198.18.0.0/16"]\nworkers: 4\ntransports: [tcp]\nsourcePool:\n  addresses: ["198.19.0.128"]\n');
  assert.equal((await resolveConcentratorConfig({ config: ok })).workers, 4);
  const bad = join(dir, 'workers-bad.yaml');
  writeFileSync(
    bad,
    'listen: ["198.18.200.1:5000"]\nallow: ["198.18.0.0/16"]\nworkers: 2\nsourcePool:\n  addresses: ["198.19.0.128"]\nportBlocks: {}\nbindings: {}\nonPath:\n  sources: ["198.18.0.0/16"]\n',
  );
  await assert.rejects(resolveConcentratorConfig({ config: bad }), (err: Error) => {
    assert.match(err.message, /workers: workers > 1 needs transports: \[tcp\]/);
    for (const key of ['bindings', 'onPath', 'portBlocks']) assert.match(err.message, new RegExp(`workers > 1 cannot be combined with ${key}`));
    return true;
  });
});
