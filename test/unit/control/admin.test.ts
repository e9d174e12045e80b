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

// --- the admin API: authentication, exposure, write operations, request log, events, dashboard ---
import { Writable } from 'node:stream';
import { pino } from 'pino';
import type { Logger } from '../../../src/log.js';
import { adminExposureProblem, loadAdminToken, type AdminApi } from '../../../src/control/admin.js';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const TOKEN = 'unit-test-token-0123456789';

function capturedLogger(): { logger: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { logger: pino({ level: 'info' }, sink) as unknown as Logger, lines };
}

async function withAdmin(api: Partial<AdminApi>, token: string | undefined, f: (base: string, lines: Array<Record<string, unknown>>) => Promise<void>) {
  const { logger, lines } = capturedLogger();
  const admin = await startAdmin({ endpoint: { host: '127.0.0.1', port: 0, family: 4 }, token, logger, role: 'cpe', liveIntervalMs: 50 }, { registry: new Registry(), status: () => ({ ok: 1 }), ...api });
  try {
    await f(`http://127.0.0.1:${admin.port}`, lines);
  } finally {
    await admin.close();
  }
}

test('with a token: every route but /healthz needs it (Bearer header or ?access_token=), a wrong one is refused', async () => {
  await withAdmin({}, TOKEN, async (base) => {
    assert.equal((await fetch(`${base}/healthz`)).status, 200);
    const no = await fetch(`${base}/status`);
    assert.equal(no.status, 401);
    assert.equal(no.headers.get('www-authenticate'), 'Bearer realm="mpconvert"');
    assert.equal((await fetch(`${base}/status`, { headers: { authorization: 'Bearer wrong-token-0123456789' } })).status, 401);
    assert.equal((await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).status, 200);
    assert.deepEqual(await (await fetch(`${base}/status?access_token=${TOKEN}`)).json(), { ok: 1 });
  });
});

test('without a token only a loopback address may be bound; the token file is checked', async () => {
  assert.match(adminExposureProblem({ host: '198.18.0.1', port: 9091, family: 4 }, undefined) ?? '', /not a loopback address.*adminTokenFile/);
  assert.equal(adminExposureProblem({ host: '198.18.0.1', port: 9091, family: 4 }, TOKEN), undefined);
  assert.equal(adminExposureProblem({ host: '::1', port: 9091, family: 6 }, undefined), undefined);
  assert.equal(adminExposureProblem({ host: '127.0.0.2', port: 9091, family: 4 }, undefined), undefined);
  await assert.rejects(startAdmin({ endpoint: { host: '0.0.0.0', port: 0, family: 4 } }, { registry: new Registry(), status: () => ({}) }), /not a loopback address/);
  const dir = mkdtempSync(join(tmpdir(), 'mpc-token-'));
  try {
    const f = join(dir, 't');
    writeFileSync(f, `${TOKEN}\n`, { mode: 0o600 });
    assert.equal(await loadAdminToken(f), TOKEN);
    writeFileSync(join(dir, 's'), 'short\n', { mode: 0o600 });
    await assert.rejects(loadAdminToken(join(dir, 's')), /at least 16/);
    writeFileSync(join(dir, 'o'), `${TOKEN}\n`, { mode: 0o644 });
    await assert.rejects(loadAdminToken(join(dir, 'o')), /accessible to every user/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('write operations: close a connection, close a CPE, set an uplink mode, drain; wrong methods and bodies; every request logged with its outcome', async () => {
  const calls: string[] = [];
  const api: Partial<AdminApi> = {
    closeConnection: (id) => (calls.push(`close ${id}`), id === 7),
    closeCpe: (cpe) => (calls.push(`cpe ${cpe}`), 3),
    setUplinkMode: async (u, m) => {
      calls.push(`mode ${u} ${m}`);
      if (u !== 'up1') throw new Error(`Cannot set the mode of uplink '${u}': no such uplink`);
    },
    drain: () => calls.push('drain'),
  };
  await withAdmin(api, TOKEN, async (base, lines) => {
    const h = { authorization: `Bearer ${TOKEN}` };
    assert.equal((await fetch(`${base}/connections/7`, { method: 'DELETE', headers: h })).status, 200);
    assert.equal((await fetch(`${base}/connections/8`, { method: 'DELETE', headers: h })).status, 404);
    assert.deepEqual(await (await fetch(`${base}/cpes/key%3Acpe-1`, { method: 'DELETE', headers: h })).json(), { cpe: 'key:cpe-1', closed: 3 });
    assert.equal((await fetch(`${base}/uplinks/up1/mode`, { method: 'POST', headers: h, body: '{"mode":"backup"}' })).status, 200);
    assert.equal((await fetch(`${base}/uplinks/up9/mode`, { method: 'POST', headers: h, body: '{"mode":"backup"}' })).status, 404);
    assert.equal((await fetch(`${base}/uplinks/up1/mode`, { method: 'POST', headers: h, body: '{"mode":"fast"}' })).status, 400);
    assert.equal((await fetch(`${base}/uplinks/up1/mode`, { method: 'POST', headers: h, body: 'x'.repeat(5000) })).status, 413);
    const get = await fetch(`${base}/uplinks/up1/mode`, { headers: h });
    assert.equal(get.status, 405);
    assert.equal(get.headers.get('allow'), 'POST');
    assert.equal((await fetch(`${base}/drain`, { method: 'POST' })).status, 401, 'no write without the token');
    assert.equal((await fetch(`${base}/drain`, { method: 'POST', headers: h })).status, 202);
    assert.deepEqual(calls, ['close 7', 'close 8', 'cpe key:cpe-1', 'mode up1 backup', 'mode up9 backup', 'drain']);
    await new Promise((r) => setImmediate(r));
    const logged = lines.filter((l) => l['msg'] === 'admin request').map((l) => `${String(l['method'])} ${String(l['path'])} ${String(l['status'])}`);
    assert.deepEqual(logged, [
      'DELETE /connections/7 200', 'DELETE /connections/8 404', 'DELETE /cpes/key%3Acpe-1 200', 'POST /uplinks/up1/mode 200', 'POST /uplinks/up9/mode 404',
      'POST /uplinks/up1/mode 400', 'POST /uplinks/up1/mode 413', 'GET /uplinks/up1/mode 405', 'POST /drain 401', 'POST /drain 202',
    ]);
  });
});

test('GET /events: the history first, then the live state periodically and at once on a change; the dashboard page and uPlot are served', async () => {
  let n = 0;
  let changed: (() => void) | undefined;
  await withAdmin({ live: () => ({ n: n++ }), history: () => ({ samples: [] }), watch: (f) => ((changed = f), () => (changed = undefined)) }, undefined, async (base) => {
    const ac = new AbortController();
    const res = await fetch(`${base}/events`, { signal: ac.signal });
    assert.equal(res.headers.get('content-type'), 'text/event-stream');
    const reader = res.body!.getReader();
    let text = '';
    while ((text.match(/^data: /gm) ?? []).length < 3) text += new TextDecoder().decode((await reader.read()).value);
    assert.match(text, /^event: history\ndata: \{"samples":\[\]\}\n\n/);
    assert.match(text, /data: \{"n":0\}\n\n/);
    assert.ok(changed, 'the stream watches for changes');
    ac.abort();
    const page = await (await fetch(`${base}/`)).text();
    assert.match(page, /<title>mpconvert cpe<\/title>/);
    assert.match(page, /new EventSource\('\/events' \+ suffix\)/);
    const js = await fetch(`${base}/assets/uPlot.iife.min.js`);
    assert.equal(js.status, 200);
    assert.match(await js.text(), /uPlot/);
    assert.equal((await fetch(`${base}/assets/nope.js`)).status, 404);
  });
});
