import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Registry } from 'prom-client';
import { startAdmin, type Readiness } from '../../../src/control/admin.js';
import { Concentrator } from '../../../src/concentrator/concentrator.js';
import { concentratorConfigSchema } from '../../../src/concentrator/config.js';
import { createMetrics } from '../../../src/control/metrics.js';
import { silentLogger } from '../../../src/log.js';
import { fakeKernel, fakeSockets } from '../../support/fake-platform.js';

test('/healthz tells readiness: 200 ok, or 503 with the reason', async () => {
  let r: Readiness = { ready: true };
  const admin = await startAdmin({ endpoint: { host: '127.0.0.1', port: 0, family: 4 } }, { registry: new Registry(), status: () => ({}), readiness: () => r });
  try {
    const get = async () => {
      const res = await fetch(`http://127.0.0.1:${admin.port}/healthz`);
      return { status: res.status, body: await res.text() };
    };
    assert.deepEqual(await get(), { status: 200, body: 'ok\n' });
    r = { ready: false, reason: 'no concentrator is usable' };
    assert.deepEqual(await get(), { status: 503, body: 'not ready: no concentrator is usable\n' });
  } finally {
    await admin.close();
  }
});

test('the concentrator is ready while it listens, not once it stops', async () => {
  const c = new Concentrator(concentratorConfigSchema.parse({ listen: ['127.0.0.1:0'], allow: ['127.0.0.0/8'] }), {
    sockets: fakeSockets(),
    kernel: fakeKernel(),
    logger: silentLogger(),
    metrics: createMetrics('concentrator'),
  });
  assert.deepEqual(c.readiness(), { ready: false, reason: 'no listener' });
  await c.start();
  assert.deepEqual(c.readiness(), { ready: true });
  await c.stop(0);
  assert.deepEqual(c.readiness(), { ready: false, reason: 'stopping' });
});

test('a second stop() waits for the first (the same promise), it does not return at once', async () => {
  const c = new Concentrator(concentratorConfigSchema.parse({ listen: ['127.0.0.1:0'], allow: ['127.0.0.0/8'] }), {
    sockets: fakeSockets(),
    kernel: fakeKernel(),
    logger: silentLogger(),
    metrics: createMetrics('concentrator'),
  });
  await c.start();
  const first = c.stop(0);
  const second = c.stop(0);
  assert.equal(second, first);
  await second;
  assert.deepEqual(c.readiness(), { ready: false, reason: 'stopping' });
});

test('mpconvert status: readiness and the status as text, from the admin endpoint', async () => {
  const { readStatus, statusText } = await import('../../../src/control/status.js');
  assert.deepEqual(statusText({ relays: 2, concentrators: [{ address: '198.18.200.1:5000', format: 'mp-convert' }], uplinks: [] }), [
    'relays: 2',
    'concentrators:',
    '  0:',
    '    address: 198.18.200.1:5000',
    '    format: mp-convert',
    'uplinks: []',
  ]);
  let r: Readiness = { ready: true };
  const admin = await startAdmin({ endpoint: { host: '127.0.0.1', port: 0, family: 4 } }, { registry: new Registry(), status: () => ({ relays: 1 }), readiness: () => r });
  try {
    assert.deepEqual(await readStatus({ host: '127.0.0.1', port: admin.port, family: 4 }), { ready: true, text: 'readiness: ok\nrelays: 1\n' });
    r = { ready: false, reason: 'stopping' };
    assert.deepEqual(await readStatus({ host: '127.0.0.1', port: admin.port, family: 4 }), { ready: false, text: 'readiness: not ready: stopping\nrelays: 1\n' });
  } finally {
    await admin.close();
  }
});
