/**
 * The CPE keeps converting through a concentrator that refused one connection, and comes back to one that
 * was unreachable as soon as it answers (hardening: "one refusal turns conversion off for 30 seconds").
 * Loopback, fake platforms, the real Concentrator component.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { randomBytes, createHash } from 'node:crypto';
import { Concentrator } from '../../../src/concentrator/concentrator.js';
import { concentratorConfigSchema } from '../../../src/concentrator/config.js';
import { cpeConfigSchema } from '../../../src/cpe/config.js';
import { ConcentratorSelector } from '../../../src/cpe/concentrators.js';
import { ConcentratorProbe } from '../../../src/cpe/probe.js';
import { handleClient, dialFailure } from '../../../src/cpe/session.js';
import { createMetrics } from '../../../src/control/metrics.js';
import { silentLogger } from '../../../src/log.js';
import type { DialSpec } from '../../../src/platform/types.js';
import { fakeKernel, fakeSockets } from '../../support/fake-platform.js';
import { exchange as exchangeWith } from '../../support/loopback.js';
import { metric } from '../../support/metrics.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const counter = async (m: ReturnType<typeof createMetrics>, name: string, label: string) => metric(await m.registry.metrics(), name, label);

test('dial failures: only a reset after the handshake is a refusal; everything else is unreachable', () => {
  assert.equal(dialFailure('ECONNRESET'), 'refused');
  assert.equal(dialFailure('EPIPE'), 'refused');
  for (const e of ['ECONNREFUSED', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ABORT_ERR', undefined]) assert.equal(dialFailure(e), 'unreachable', String(e));
});

describe('CPE availability (loopback)', () => {
  let upstream: net.Server;
  let upstreamPort: number;
  let conc: Concentrator;
  let concPort: number;
  const reply = randomBytes(50_000);

  before(async () => {
    upstream = net.createServer({ allowHalfOpen: true }, (s) => {
      s.on('data', () => {});
      s.on('end', () => s.end(reply));
      s.on('error', () => {});
    });
    upstream.listen(0, '127.0.0.1');
    await once(upstream, 'listening');
    upstreamPort = (upstream.address() as net.AddressInfo).port;
    conc = new Concentrator(concentratorConfigSchema.parse({ listen: ['127.0.0.1:0'], allow: ['127.0.0.0/8'] }), {
      sockets: fakeSockets({ route: () => ({ host: '127.0.0.1', port: upstreamPort }) }),
      kernel: fakeKernel(),
      logger: silentLogger(),
      metrics: createMetrics('concentrator'),
    });
    await conc.start();
    concPort = conc.addresses[0]!.port;
  });

  after(async () => {
    await conc.stop(0);
    upstream.close();
  });

  /** A CPE front whose dials to the concentrator go through `concRoute` (an Error = that dial fails so). */
  async function front(concRoute: (spec: DialSpec) => { host: string; port: number } | Error) {
    const config = cpeConfigSchema.parse({ lan: ['lan0'], uplinks: [{ interface: 'up1' }], concentrators: [{ address: `127.0.0.1:${concPort}` }], firstDataWaitMs: 1000 });
    const sockets = fakeSockets({ route: (spec) => (spec.protocol === 'mptcp' ? concRoute(spec) : { host: '127.0.0.1', port: upstreamPort }) });
    const selector = new ConcentratorSelector(config.concentrators, { capabilityTtlMs: 60_000, unreachableHoldMs: 60_000 });
    const metrics = createMetrics('cpe');
    const server = net.createServer({ allowHalfOpen: true }, (client) => {
      void handleClient(client, { sockets, logger: silentLogger(), metrics, selector, config: () => config, track: () => {}, originalDestination: () => ({ address: '198.19.0.11', port: 8080 }) });
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const exchange = () => exchangeWith((server.address() as net.AddressInfo).port, randomBytes(100));
    return { server, selector, metrics, sockets, exchange };
  }

  test('a concentrator that resets one connection after the handshake is not held off: the next one converts through it', async () => {
    // Two resets: the 0-RTT dial and its retry without SYN data (the SYN-cookie case) are both refused.
    let resets = 2;
    const f = await front(() => {
      if (resets > 0) {
        resets--;
        return Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' });
      }
      return { host: '127.0.0.1', port: concPort };
    });
    try {
      const refused = await f.exchange();
      assert.equal(refused.how, 'reset', 'the refused connection is reset, not sent direct');
      assert.equal(await counter(f.metrics, 'mpconvert_refused_total', 'reason="concentrator-refused"'), 1);
      assert.equal(await counter(f.metrics, 'mpconvert_concentrator_capability_total', 'result="zero-rtt-retry"'), 1, 'the 0-RTT dial was retried once without SYN data');
      assert.equal(f.selector.candidates().length, 1, 'the concentrator is still a candidate');
      const next = await f.exchange();
      assert.equal(next.how, 'end');
      assert.equal(sha(next.received), sha(reply));
      assert.equal(await counter(f.metrics, 'mpconvert_fallback_total', 'to="direct"'), 0, 'nothing went direct');
      assert.equal(await counter(f.metrics, 'mpconvert_concentrator_capability_total', 'result="ok"'), 1, 'the second connection was converted');
    } finally {
      f.server.close();
    }
  });

  test('an unreachable concentrator is held off, and the probe ends the hold as soon as it answers', async () => {
    let down = true;
    const f = await front(() => (down ? Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }) : { host: '127.0.0.1', port: concPort }));
    const probe = new ConcentratorProbe({
      sockets: f.sockets,
      logger: silentLogger(),
      selector: f.selector,
      intervalMs: 20,
      timeoutMs: () => 1000,
    });
    f.selector.opts.onUnreachable = (t) => probe.watch(t);
    try {
      const direct = await f.exchange();
      assert.equal(direct.how, 'end', 'while the concentrator is down the connection goes direct');
      assert.equal(await counter(f.metrics, 'mpconvert_fallback_total', 'to="direct"'), 1);
      assert.equal(f.selector.candidates().length, 0, 'held off');
      down = false;
      // The hold is 1 s at least; the probe (every 20 ms) must end it long before.
      const t0 = Date.now();
      while (f.selector.candidates().length === 0 && Date.now() - t0 < 5_000) await new Promise((r) => setImmediate(r));
      assert.ok(Date.now() - t0 < 900, `the probe ended the hold after ${Date.now() - t0} ms (the hold alone is 1000 ms)`);
      const converted = await f.exchange();
      assert.equal(converted.how, 'end');
      assert.equal(await counter(f.metrics, 'mpconvert_concentrator_capability_total', 'result="ok"'), 1, 'converted again');
    } finally {
      probe.stop();
      f.server.close();
    }
  });
});
