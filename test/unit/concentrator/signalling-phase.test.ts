/**
 * Connections that hold the signalling phase open (slowloris) are bounded per CPE and in total, the oldest
 * are shed near the descriptor limit, and every accepted connection ends in exactly one counter.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { Concentrator } from '../../../src/concentrator/concentrator.js';
import { concentratorConfigSchema, type ConcentratorConfigInput } from '../../../src/concentrator/config.js';
import { createMetrics } from '../../../src/control/metrics.js';
import { silentLogger } from '../../../src/log.js';
import { WARM_IE, encodeMpConvert } from '../../../src/protocol/index.js';
import type { ProcessResources } from '../../../src/platform/types.js';
import { fakeKernel, fakeSockets } from '../../support/fake-platform.js';

async function refusedByReason(m: ReturnType<typeof createMetrics>): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const line of (await m.registry.metrics()).split('\n')) {
    const x = /^mpconvert_refused_total\{reason="([^"]+)"[^}]*\} (\d+)/.exec(line);
    if (x) out[x[1]!] = Number(x[2]);
  }
  return out;
}

const total = (r: Record<string, number>) => Object.values(r).reduce((a, b) => a + b, 0);

describe('signalling phase bounds (loopback)', () => {
  let upstream: net.Server;
  let upstreamPort: number;
  before(async () => {
    upstream = net.createServer({ allowHalfOpen: true }, (s) => {
      s.on('data', () => {});
      s.on('end', () => s.end('pong'));
      s.on('error', () => {});
    });
    upstream.listen(0, '127.0.0.1');
    await once(upstream, 'listening');
    upstreamPort = (upstream.address() as net.AddressInfo).port;
  });
  after(() => upstream.close());

  async function start(extra: Partial<ConcentratorConfigInput>, resources?: ProcessResources) {
    const metrics = createMetrics('concentrator');
    const config = concentratorConfigSchema.parse({ listen: ['127.0.0.1:0'], allow: ['127.0.0.0/8'], ...extra });
    const c = new Concentrator(config, {
      sockets: fakeSockets({ route: () => ({ host: '127.0.0.1', port: upstreamPort }) }),
      kernel: fakeKernel(),
      logger: silentLogger(),
      metrics,
      resources,
    });
    await c.start();
    return { c, metrics, port: c.addresses[0]!.port };
  }

  /** Opens `n` connections from `localAddress` that send nothing; resolves once all are connected. */
  async function idle(port: number, n: number, localAddress: string) {
    const socks: net.Socket[] = [];
    const resets = { n: 0, which: new Set<number>() };
    for (let i = 0; i < n; i++) {
      const s = net.connect({ port, host: '127.0.0.1', localAddress });
      s.on('error', () => {
        resets.n++;
        resets.which.add(i);
      });
      // A refusal can reset the connection before the client even saw it connected.
      await new Promise((r) => {
        s.once('connect', r);
        s.once('close', r);
      });
      socks.push(s);
    }
    return { socks, resets };
  }

  /** A real conversion from `localAddress`: the echo and the server's bytes come back. */
  async function convert(port: number, localAddress: string): Promise<string> {
    const ies = encodeMpConvert([{ type: 0, direction: 'destination', address: '198.19.0.11', port: 8080 }]);
    const s = net.connect({ port, host: '127.0.0.1', localAddress, allowHalfOpen: true });
    s.on('error', () => {});
    await once(s, 'connect');
    const parts: Buffer[] = [];
    s.on('data', (d: Buffer) => parts.push(d));
    s.end(Buffer.concat([ies, randomBytes(10)]));
    await once(s, 'close');
    const got = Buffer.concat(parts);
    return got.subarray(0, ies.length).equals(ies) ? got.subarray(ies.length).toString() : `no echo (${got.length} bytes)`;
  }

  const settle = async (c: Concentrator) => {
    for (const t0 = Date.now(); c.status().activeSessions > 0 && Date.now() - t0 < 5_000; ) await new Promise((r) => setTimeout(r, 10));
  };

  test('one CPE holding connections without signalling is capped; another CPE is served; every accept is counted once', async () => {
    const { c, metrics, port } = await start({ signalling: { timeoutMs: 60_000, maxPendingPerCpe: 5, maxPending: 100 } });
    try {
      const flood = await idle(port, 12, '127.0.0.2');
      for (const t0 = Date.now(); flood.resets.n < 7 && Date.now() - t0 < 5_000; ) await new Promise((r) => setTimeout(r, 10));
      assert.equal(flood.resets.n, 7, 'the 7 connections over the per-CPE cap are reset at once');
      assert.equal(c.status().signallingPending, 5);
      assert.equal(await convert(port, '127.0.0.3'), 'pong', 'another CPE is served while the first one holds its cap');
      for (const s of flood.socks) s.destroy();
      await settle(c);
      const r = await refusedByReason(metrics);
      assert.equal(r['signalling-per-cpe'], 7);
      assert.equal(r['signalling-empty'], 5, 'the held ones are counted when they close');
      assert.equal(total(r), 12, `every refused accept counted exactly once: ${JSON.stringify(r)}`);
    } finally {
      await c.stop(0);
    }
  });

  test('the total cap refuses new connections in signalling from any CPE', async () => {
    const { c, metrics, port } = await start({ signalling: { timeoutMs: 60_000, maxPendingPerCpe: 50, maxPending: 6 } });
    try {
      const a = await idle(port, 4, '127.0.0.2');
      const b = await idle(port, 4, '127.0.0.4');
      for (const t0 = Date.now(); b.resets.n < 2 && Date.now() - t0 < 5_000; ) await new Promise((r) => setTimeout(r, 10));
      assert.equal(a.resets.n + b.resets.n, 2);
      assert.equal((await refusedByReason(metrics))['signalling-total'], 2);
      for (const s of [...a.socks, ...b.socks]) s.destroy();
    } finally {
      await c.stop(0);
    }
  });

  test('near the descriptor limit the oldest connection in signalling is shed for a new one, and conversions go on', async () => {
    // 10 descriptors besides the sessions, a limit of 40: short from 16 sessions on (10 + 2 x 16 >= 36).
    const resources: ProcessResources = { descriptors: () => ({ open: 10, limit: 40 }) };
    const { c, metrics, port } = await start({ signalling: { timeoutMs: 60_000, maxPendingPerCpe: 1000, maxPending: 1000 } }, resources);
    try {
      const flood = await idle(port, 30, '127.0.0.2');
      for (const t0 = Date.now(); flood.resets.n < 15 && Date.now() - t0 < 5_000; ) await new Promise((r) => setTimeout(r, 10));
      assert.equal(await convert(port, '127.0.0.3'), 'pong', 'a real conversion still gets through');
      const r = await refusedByReason(metrics);
      assert.ok((r['shed-fd-limit'] ?? 0) >= 15, `old idle connections shed: ${JSON.stringify(r)}`);
      assert.ok(c.status().activeSessions <= 16, `sessions bounded near the limit: ${c.status().activeSessions}`);
      assert.equal(flood.resets.n, r['shed-fd-limit'], 'each shed connection was reset');
      // The oldest were shed: the first ten are among them, the newest is still waiting.
      for (let i = 0; i < 10; i++) assert.ok(flood.resets.which.has(i), `connection ${i} (old) was shed`);
      assert.ok(!flood.resets.which.has(29), 'the newest connection was not shed');
      for (const s of flood.socks) s.destroy();
    } finally {
      await c.stop(0);
    }
  });

  /** Opens a warm connection (the CPE pool's): the warm IE alone, then nothing. */
  async function warm(port: number, localAddress: string) {
    const s = net.connect({ port, host: '127.0.0.1', localAddress, allowHalfOpen: true });
    const state = { reset: false, closed: false };
    s.on('error', () => (state.reset = true));
    s.on('close', () => (state.closed = true));
    await once(s, 'connect');
    s.write(WARM_IE);
    return { s, state };
  }

  test('a warm connection waits past the signalling timeout, then converts what it is given, echoing the warm IE too', async () => {
    const { c, metrics, port } = await start({ signalling: { timeoutMs: 200, warmIdleS: 30 } });
    try {
      const { s, state } = await warm(port, '127.0.0.5');
      // Longer than signalling.timeoutMs: a connection that sent a partial signalling would be refused by now.
      await new Promise((r) => setTimeout(r, 600));
      assert.equal(state.closed, false, 'still open after the signalling timeout');
      assert.equal(c.status().warm, 1);
      const rest = encodeMpConvert([{ type: 0x82 }, { type: 0, direction: 'destination', address: '198.19.0.11', port: 8080 }]);
      const parts: Buffer[] = [];
      s.on('data', (d: Buffer) => parts.push(d));
      s.end(Buffer.concat([rest.subarray(WARM_IE.length), randomBytes(10)]));
      await once(s, 'close');
      const got = Buffer.concat(parts);
      assert.equal(got.subarray(0, rest.length).toString('hex'), rest.toString('hex'), 'the echo is the whole signalling, warm IE included');
      assert.equal(got.subarray(rest.length).toString(), 'pong');
      assert.equal(total(await refusedByReason(metrics)), 0);
      assert.equal(c.status().warm, 0);
    } finally {
      await c.stop(0);
    }
  });

  test('warm connections: over warmMaxPerCpe reset at once (and out of the signalling admission), closed unused counted as warm-unused, idle past warmIdleS closed as warm-idle', async () => {
    const { c, metrics, port } = await start({ signalling: { timeoutMs: 200, warmIdleS: 1, warmMaxPerCpe: 2 } });
    try {
      const a = await warm(port, '127.0.0.6');
      const b = await warm(port, '127.0.0.6');
      const over = await warm(port, '127.0.0.6');
      for (const t0 = Date.now(); !over.state.closed && Date.now() - t0 < 5_000; ) await new Promise((r) => setTimeout(r, 10));
      assert.ok(over.state.reset, 'the third warm connection of one CPE is reset');
      assert.equal(c.status().warm, 2);
      assert.equal(c.status().signallingPending, 0, 'warm connections are out of the signalling admission');
      const other = await warm(port, '127.0.0.7');
      a.s.end();
      for (const t0 = Date.now(); !a.state.closed && Date.now() - t0 < 5_000; ) await new Promise((r) => setTimeout(r, 10));
      // b and the other CPE's are closed by the concentrator after warmIdleS.
      for (const t0 = Date.now(); !(b.state.closed && other.state.closed) && Date.now() - t0 < 5_000; ) await new Promise((r) => setTimeout(r, 20));
      assert.ok(b.state.closed && other.state.closed, 'idle warm connections are closed after warmIdleS');
      await settle(c);
      const r = await refusedByReason(metrics);
      assert.deepEqual(r, { 'warm-limit': 1, 'warm-unused': 1, 'warm-idle': 2 });
      assert.equal(c.status().warm, 0);
    } finally {
      await c.stop(0);
    }
  });
});
