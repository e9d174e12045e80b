/**
 * A concentrator in worker mode (`deps.worker`) on loopback with the fake platform, its shared state served by a
 * primary concentrator's LocalSharedState: one admit per connection with what the steps need, the lease
 * released when the connection ends, the primary's per-CPE limit applied to the worker's connections, a
 * shared-state refusal answered and counted, UDP channels and reverse connections refused, the listeners opened with SO_REUSEPORT, and no
 * kernel change made by the worker.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { Concentrator } from '../../../src/concentrator/concentrator.js';
import { concentratorConfigSchema, type ConcentratorConfigInput } from '../../../src/concentrator/config.js';
import { createMetrics, type Metrics } from '../../../src/control/metrics.js';
import { silentLogger } from '../../../src/log.js';
import { encodeMpConvert } from '../../../src/protocol/index.js';
import { refuse } from '../../../src/policy/refusals.js';
import type { AdmitAnswer, AdmitRequest, SharedState } from '../../../src/concentrator/shared-state.js';
import { fakeKernel, fakeSockets } from '../../support/fake-platform.js';

const dest = (address: string, port: number) => encodeMpConvert([{ type: 0, direction: 'destination', address, port }]);

async function counter(metrics: Metrics, reason: string): Promise<number> {
  const m = new RegExp(`mpconvert_refused_total\\{reason="${reason}"[^}]*\\} (\\d+)`).exec(await metrics.registry.metrics());
  return m ? Number(m[1]) : 0;
}

/** Sends the signalling, waits for the echo or the end; `hold` keeps it open. */
async function connect(port: number, signalling: Buffer, hold = false) {
  const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  s.on('error', () => {});
  await once(s, 'connect');
  const parts: Buffer[] = [];
  s.on('data', (d: Buffer) => parts.push(d));
  const ended = new Promise<'end' | 'reset'>((resolve) => {
    s.once('end', () => resolve('end'));
    s.once('close', () => resolve('reset'));
  });
  s.write(signalling);
  if (hold) {
    const how = await Promise.race([once(s, 'data').then(() => 'held' as const), ended]);
    return { how, socket: s, received: () => Buffer.concat(parts) };
  }
  s.end();
  const how = await ended;
  s.destroy();
  return { how, socket: s, received: () => Buffer.concat(parts) };
}

describe('concentrator worker pipeline', () => {
  let upstream: net.Server;
  let upPort = 0;
  before(async () => {
    upstream = net.createServer({ allowHalfOpen: true }, (s) => {
      s.on('error', () => {});
      s.resume();
      s.on('end', () => s.end('pong'));
    });
    upstream.listen(0, '127.0.0.1');
    await once(upstream, 'listening');
    upPort = (upstream.address() as net.AddressInfo).port;
  });
  after(() => upstream.close());

  async function pair(extra: Partial<ConcentratorConfigInput> = {}, answer?: (req: AdmitRequest) => AdmitAnswer | undefined) {
    const config = concentratorConfigSchema.parse({ listen: ['127.0.0.1:0'], allow: ['127.0.0.0/8'], workers: 2, transports: ['tcp'], ...extra });
    const primary = new Concentrator(config, { sockets: fakeSockets({ route: () => ({ host: '127.0.0.1', port: upPort }) }), kernel: fakeKernel(), logger: silentLogger(), metrics: createMetrics('concentrator') });
    const requests: AdmitRequest[] = [];
    const released: number[] = [];
    const shared: SharedState = {
      admit: async (req) => {
        requests.push(req);
        return answer?.(req) ?? primary.shared.admitFor('worker-1', req);
      },
      release: (lease) => {
        released.push(lease);
        primary.shared.release(lease);
      },
    };
    const sockets = fakeSockets({ route: () => ({ host: '127.0.0.1', port: upPort }) });
    const kernel = fakeKernel();
    const metrics = createMetrics('concentrator');
    const worker = new Concentrator(config, { sockets, kernel, logger: silentLogger(), metrics, worker: { index: 1, shared } });
    await worker.start();
    return { primary, worker, sockets, kernel, metrics, requests, released, port: worker.addresses[0]!.port };
  }

  test('a conversion: one admit with what the steps need, the echo and the reply, the lease released at the end; no kernel change, SO_REUSEPORT', async () => {
    const p = await pair();
    try {
      const sig = dest('198.19.0.11', 80);
      const r = await connect(p.port, sig);
      assert.equal(r.how, 'end');
      assert.equal(r.received().subarray(0, sig.length).toString('hex'), sig.toString('hex'), 'the echo');
      assert.equal(r.received().subarray(sig.length).toString(), 'pong');
      assert.equal(p.requests.length, 1);
      const q = p.requests[0]!;
      assert.deepEqual([q.cpe, q.format, q.family, Buffer.from(q.raw).toString('hex')], ['127.0.0.1', 'mp-convert', 4, sig.toString('hex')]);
      for (let i = 0; i < 100 && p.released.length === 0; i++) await new Promise((res) => setTimeout(res, 10));
      assert.equal(p.released.length, 1, 'the lease went back once');
      assert.equal(p.primary.shared.leases, 0);
      assert.equal(p.worker.accepted, 1);
      assert.deepEqual(p.kernel.calls, [], 'a worker leaves the kernel to the primary');
      assert.deepEqual(p.sockets.listens.map((l) => l.reusePort), [true]);
    } finally {
      await p.worker.stop(0);
      assert.deepEqual(p.kernel.calls, [], 'its stop too');
    }
  });

  test("the primary's per-CPE limit holds the worker's connections; the refusal is answered and counted in the worker", async () => {
    const p = await pair({ limits: { maxConnectionsPerCpe: 1 } });
    try {
      const held = await connect(p.port, dest('198.19.0.11', 80), true);
      assert.equal(held.how, 'held');
      const before = await counter(p.metrics, 'max-connections-per-cpe');
      const over = await connect(p.port, dest('198.19.0.11', 80));
      assert.equal(over.how, 'reset');
      assert.equal((await counter(p.metrics, 'max-connections-per-cpe')) - before, 1);
      held.socket.end();
      await once(held.socket, 'close');
      for (let i = 0; i < 100 && p.primary.shared.leases > 0; i++) await new Promise((res) => setTimeout(res, 10));
      assert.equal((await connect(p.port, dest('198.19.0.11', 80))).how, 'end', 'the slot is free again');
    } finally {
      await p.worker.stop(0);
    }
  });

  test('no answer from the primary: refused as primary-unavailable, nothing dialled; a UDP channel is refused before any request', async () => {
    const p = await pair({}, () => ({ ok: false, step: 'limits', refusal: refuse('primary-unavailable') }));
    try {
      const r = await connect(p.port, dest('198.19.0.11', 80));
      assert.equal(r.how, 'reset');
      assert.equal(await counter(p.metrics, 'primary-unavailable'), 1);
      assert.equal(p.sockets.dials.length, 0);
      const udp = encodeMpConvert([{ type: 0x80, protocol: 17 }]);
      const n = p.requests.length;
      const u = await connect(p.port, udp);
      assert.equal(u.how, 'reset');
      assert.equal(p.requests.length, n, 'no request for a refused transport');
      assert.equal(await counter(p.metrics, 'udp-not-offered'), 1);
      const reverse = await connect(p.port, encodeMpConvert([{ type: 0x83, port: 8080 }]));
      assert.equal(reverse.how, 'reset');
      assert.equal(await counter(p.metrics, 'binding-off'), 1, 'a reverse connection is refused as without bindings');
      assert.equal(p.requests.length, n);
    } finally {
      await p.worker.stop(0);
    }
  });
});
