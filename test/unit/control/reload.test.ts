import { test } from 'node:test';
import assert from 'node:assert/strict';
import { diffConfig, effectiveConfig } from '../../../src/control/reload.js';
import { Concentrator } from '../../../src/concentrator/concentrator.js';
import { concentratorConfigSchema } from '../../../src/concentrator/config.js';
import { createMetrics } from '../../../src/control/metrics.js';
import { silentLogger } from '../../../src/log.js';
import { fakeKernel, fakeSockets } from '../../support/fake-platform.js';

test('diffConfig: changed keys split into applied and needing a restart; the effective configuration keeps the running value of the latter', () => {
  const old = { a: 1, b: [1, 2], c: 'x', d: { e: 1 } };
  const next = { a: 2, b: [1, 2], c: 'y', d: { e: 2 } };
  const r = diffConfig(old, next, new Set(['a', 'd']), 5);
  assert.deepEqual(r, { at: 5, applied: ['a', 'd'], needRestart: ['c'] });
  assert.deepEqual(effectiveConfig(old, next, r), { a: 2, b: [1, 2], c: 'x', d: { e: 2 } });
  const none = diffConfig(old, structuredClone(old), new Set());
  assert.deepEqual([none.applied, none.needRestart], [[], []]);
});

test('concentrator reload: the log level and limits apply, announce and metrics are reported as needing a restart and keep their running values', async () => {
  const logger = silentLogger();
  const base = { listen: ['127.0.0.1:0'], allow: ['127.0.0.0/8'] };
  const c = new Concentrator(concentratorConfigSchema.parse(base), { sockets: fakeSockets(), kernel: fakeKernel(), logger, metrics: createMetrics('concentrator', { runtime: false }) });
  await c.start();
  try {
    const r = await c.reload(concentratorConfigSchema.parse({ ...base, logLevel: 'debug', limits: { maxConnectionsPerCpe: 7 }, announce: ['127.0.0.9'], metrics: { perCpe: true } }));
    assert.deepEqual(r.applied, ['limits', 'logLevel']);
    assert.deepEqual(r.needRestart, ['announce', 'metrics']);
    assert.equal(logger.level, 'debug');
    assert.deepEqual(c.config.announce, [], 'the running value is kept');
    assert.equal(c.config.metrics.perCpe, false);
    assert.deepEqual((c.status() as { lastReload?: unknown }).lastReload, r);
  } finally {
    await c.stop(0);
  }
});

test('CPE reload: live keys applied (log level, fallback, LAN interfaces), restart keys named and kept at their running value', async () => {
  const { Cpe } = await import('../../../src/cpe/cpe.js');
  const { cpeConfigSchema } = await import('../../../src/cpe/config.js');
  const logger = silentLogger();
  const base = { lan: ['lan0'], uplinks: [{ interface: 'up1' }], concentrators: [{ address: '198.18.200.1:5000' }], tproxyPort: 15999 };
  const cpe = new Cpe(cpeConfigSchema.parse(base), { sockets: fakeSockets(), kernel: fakeKernel(), logger, metrics: createMetrics('cpe', { runtime: false }) });
  await assert.rejects(cpe.reload(cpeConfigSchema.parse(base)), /before start/);
  await cpe.start();
  try {
    const wanted = { ...base, logLevel: 'warn', fallback: 'refuse', tproxyPort: 16000, lan: ['lan1'] };
    const r = await cpe.reload(cpeConfigSchema.parse(wanted));
    assert.deepEqual(r.applied, ['fallback', 'lan', 'logLevel']);
    assert.deepEqual(r.needRestart, ['tproxyPort']);
    assert.equal(logger.level, 'warn');
    assert.deepEqual((cpe.status() as { lastReload?: unknown }).lastReload, r);
    // Reloading the same file again reports the restart key again (the running value was kept).
    const again = await cpe.reload(cpeConfigSchema.parse(wanted));
    assert.deepEqual([again.applied, again.needRestart], [[], ['tproxyPort']]);
  } finally {
    await cpe.stop(0);
  }
});

test('CPE reload: the distribution changes live: another scheme, flow classes (the pin table replaced, then removed); a bad name keeps the running one', async () => {
  const { Cpe } = await import('../../../src/cpe/cpe.js');
  const { cpeConfigSchema } = await import('../../../src/cpe/config.js');
  const kernel = fakeKernel();
  const base = { lan: ['lan0'], uplinks: [{ interface: 'up1' }, { interface: 'up2' }], concentrators: [{ address: '198.18.200.1:5000' }] };
  const cpe = new Cpe(cpeConfigSchema.parse(base), { sockets: fakeSockets(), kernel, logger: silentLogger(), metrics: createMetrics('cpe', { runtime: false }) });
  await cpe.start();
  try {
    const overflow = { ...base, distribution: { scheme: 'overflow', overflow: { primary: 'up1', capacityMbit: 50 }, classes: [{ name: 'voice', dscp: [46] }] } };
    const r = await cpe.reload(cpeConfigSchema.parse(overflow));
    assert.deepEqual([r.applied, r.needRestart], [['distribution'], []]);
    assert.deepEqual(cpe.distribution(), { scheme: 'overflow', primary: 'up1', joined: false, quotas: {}, classes: [{ name: 'voice', pin: 'lowest-rtt', lastUplink: null }], pathRttMs: {} });
    const applied = kernel.calls.filter((c) => c.startsWith('nft.applyTable') && c.includes('mpconvert_pin_default'));
    assert.equal(applied.length, 1, kernel.calls.join('\n'));
    assert.match(applied[0]!, /oifname != \\"up2\\" counter reject with tcp reset/);
    await assert.rejects(cpe.reload(cpeConfigSchema.parse({ ...overflow, distribution: { ...overflow.distribution, classes: [{ name: 'voice', dscp: [46], uplink: 'wwan0' }] } })), /uplink wwan0 is not one of the uplinks/);
    assert.equal(cpe.distribution().scheme, 'overflow', 'the running distribution is kept');
    const back = await cpe.reload(cpeConfigSchema.parse(base));
    assert.deepEqual(back.applied, ['distribution']);
    assert.deepEqual(cpe.distribution(), { scheme: 'aggregate', quotas: {} });
    assert.equal(kernel.calls.filter((c) => c.startsWith('nft.deleteTable') && c.includes('mpconvert_pin_default')).length, 1, 'no class left: the pin table is removed');
  } finally {
    await cpe.stop(0);
  }
});

test('CPE reload: serverMptcp is applied live (the cache of MPTCP servers starts anew); /status shows the mode', async () => {
  const { Cpe } = await import('../../../src/cpe/cpe.js');
  const { cpeConfigSchema } = await import('../../../src/cpe/config.js');
  const base = { lan: ['lan0'], uplinks: [{ interface: 'up1' }], concentrators: [{ address: '198.18.200.1:5000' }], serverMptcp: { mode: 'direct' } };
  const cpe = new Cpe(cpeConfigSchema.parse(base), { sockets: fakeSockets(), kernel: fakeKernel(), logger: silentLogger(), metrics: createMetrics('cpe', { runtime: false }) });
  await cpe.start();
  try {
    assert.deepEqual((cpe.status() as { serverMptcp?: unknown }).serverMptcp, { mode: 'direct', cached: 0 });
    const r = await cpe.reload(cpeConfigSchema.parse({ ...base, serverMptcp: { mode: 'maintain', cacheTtlS: 60 } }));
    assert.deepEqual([r.applied, r.needRestart], [['serverMptcp'], []]);
    assert.deepEqual((cpe.status() as { serverMptcp?: unknown }).serverMptcp, { mode: 'maintain', cached: 0 });
  } finally {
    await cpe.stop(0);
  }
});
