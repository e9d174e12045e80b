/**
 * Inbound bindings on loopback with the fake platform: the concentrator echoes a claim and hands an internet
 * connection to the reverse connection with a source IE naming the client, then relays (bytes equal both
 * ways); a second claim of the port by another CPE, a CPE over bindings.maxPerCpe, a binding on the
 * concentrator's own listener port or outside bindings.ports, too many idle reverse connections: refused and
 * counted; a binding whose CPE went away is closed after graceS and can be claimed by another CPE. The CPE's
 * ReverseBindings against the real Concentrator: an HTTP-like LAN server reached from an internet client.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';
import { Concentrator } from '../../../src/concentrator/concentrator.js';
import { concentratorConfigSchema, type ConcentratorConfigInput } from '../../../src/concentrator/config.js';
import { createMetrics, type Metrics } from '../../../src/control/metrics.js';
import { silentLogger, type Logger } from '../../../src/log.js';
import { encodeMpConvert, parseMpConvert } from '../../../src/protocol/index.js';
import { ReverseBindings, claimFor } from '../../../src/cpe/bindings.js';
import { cpeConfigSchema } from '../../../src/cpe/config.js';
import { fakeKernel, fakeSockets } from '../../support/fake-platform.js';

async function freePort(): Promise<number> {
  const s = net.createServer().listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as net.AddressInfo).port;
  s.close();
  await once(s, 'close');
  return port;
}

async function value(metrics: Metrics, family: string, label: string): Promise<number> {
  const text = await metrics.registry.metrics();
  const line = text.split('\n').find((l) => l.startsWith(`${family}{`) && l.includes(label));
  return line ? Number(line.split(' ').pop()) : 0;
}

async function poll(what: string, ok: () => boolean | Promise<boolean>, ms = 5_000): Promise<void> {
  for (const t0 = Date.now(); Date.now() - t0 < ms; await new Promise((r) => setTimeout(r, 10))) if (await ok()) return;
  assert.fail(`timed out waiting for ${what}`);
}

async function startConcentrator(bindings: ConcentratorConfigInput['bindings'], extra: Partial<ConcentratorConfigInput> = {}) {
  const metrics = createMetrics('concentrator', { runtime: false });
  const config = concentratorConfigSchema.parse({ listen: ['127.0.0.1:0'], allow: ['127.0.0.0/8'], relayEngine: 'streams', bindings, ...extra });
  const sessions: Array<Record<string, unknown>> = [];
  const sessionLog = { info: (line: Record<string, unknown>) => sessions.push(line) } as unknown as Logger;
  const c = new Concentrator(config, { sockets: fakeSockets(), kernel: fakeKernel(), logger: silentLogger(), metrics, sessionLog });
  await c.start();
  return { c, metrics, config, sessions, port: c.addresses[0]!.port };
}

/** A reverse connection as a CPE opens it (from `from`, a loopback address = a CPE without auth). */
async function reverse(concPort: number, port: number, from = '127.0.0.2') {
  const s = net.connect({ host: '127.0.0.1', port: concPort, localAddress: from, allowHalfOpen: true });
  s.on('error', () => {});
  await once(s, 'connect');
  const claim = claimFor(port);
  s.write(claim);
  let got = Buffer.alloc(0);
  s.on('data', (d: Buffer) => (got = Buffer.concat([got, d])));
  const ended = new Promise<'end' | 'reset'>((resolve) => {
    s.once('end', () => resolve('end'));
    s.once('close', (hadError) => resolve(hadError ? 'reset' : 'end'));
  });
  return { s, claim, received: () => got, ended };
}

const claimed = async (r: Awaited<ReturnType<typeof reverse>>) => {
  await Promise.race([poll('the echo', () => r.received().length >= r.claim.length), r.ended.then(() => assert.fail('closed before the echo'))]);
  assert.equal(r.received().subarray(0, r.claim.length).toString('hex'), r.claim.toString('hex'), 'the claim echoed byte for byte');
};

const refusedWith = async (metrics: Metrics, r: Awaited<ReturnType<typeof reverse>>, reason: string, before: number) => {
  assert.equal(await r.ended, 'reset', `${reason}: reset`);
  assert.equal(r.received().length, 0, 'nothing echoed');
  assert.equal((await value(metrics, 'mpconvert_refused_total', `reason="${reason}"`)) - before, 1, `counted as ${reason}`);
};

describe('inbound bindings, concentrator (loopback)', () => {
  test('claim echoed; an internet connection gets the reverse connection with a source IE naming it, then bytes both ways', { timeout: 15_000 }, async () => {
    const bindPort = await freePort();
    const { c, metrics, sessions, port } = await startConcentrator({ addresses: ['127.0.0.1'], ports: { from: 1024, to: 65535 } });
    try {
      const r = await reverse(port, bindPort);
      await claimed(r);
      assert.deepEqual(c.status().bindings, [{ addresses: ['127.0.0.1'], port: bindPort, owner: '127.0.0.2', idle: 1, active: 0 }]);
      const up = randomBytes(300_000);
      const down = randomBytes(200_000);
      const client = net.connect({ host: '127.0.0.1', port: bindPort, localAddress: '127.0.0.9', allowHalfOpen: true });
      await once(client, 'connect');
      const clientPort = client.localPort;
      const clientGot: Buffer[] = [];
      client.on('data', (d: Buffer) => clientGot.push(d));
      client.end(up);
      // The CPE side: after the echo, the header then the client's bytes until its FIN.
      await once(r.s, 'end');
      const after = r.received().subarray(r.claim.length);
      const h = parseMpConvert(after);
      assert.equal(h.status, 'done');
      if (h.status !== 'done') return;
      assert.deepEqual(h.signalling.source, { address: '127.0.0.9', port: clientPort });
      assert.equal(h.signalling.ies.length, 1);
      assert.equal(createHash('sha256').update(after.subarray(h.length)).digest('hex'), createHash('sha256').update(up).digest('hex'), 'client bytes intact');
      r.s.end(down);
      await once(client, 'end');
      assert.equal(createHash('sha256').update(Buffer.concat(clientGot)).digest('hex'), createHash('sha256').update(down).digest('hex'), 'LAN bytes intact');
      assert.equal(await value(metrics, 'mpconvert_binding_inbound_total', 'outcome="relayed"'), 1);
      assert.equal(await value(metrics, 'mpconvert_binding_reverse_total', 'event="used"'), 1);
      await poll('the close line', () => sessions.some((l) => l['event'] === 'close'));
      const [open, close] = [sessions.find((l) => l['event'] === 'open'), sessions.find((l) => l['event'] === 'close')];
      assert.deepEqual(open, { event: 'open', kind: 'inbound', session: open?.['session'], cpe: '127.0.0.2', binding: `127.0.0.1:${bindPort}`, client: `127.0.0.9:${clientPort}` });
      assert.equal(close?.['bytesUp'], down.length, 'up = from the CPE');
      assert.equal(close?.['bytesDown'], up.length);
    } finally {
      await c.stop(0);
    }
  });

  test('pool mode: each CPE\'s binding opens on its paired pool address, so two CPEs may claim the same port', { timeout: 15_000 }, async () => {
    const bindPort = await freePort();
    const { c, metrics, port } = await startConcentrator({}, { sourcePool: { addresses: ['127.0.0.50', '127.0.0.51'], mode: 'dedicated' } });
    try {
      const a = await reverse(port, bindPort, '127.0.0.2');
      await claimed(a);
      const b = await reverse(port, bindPort, '127.0.0.3');
      await claimed(b);
      const views = c.status().bindings.map((v) => [v.owner, v.addresses.join(',')]).sort();
      assert.deepEqual(views, [['127.0.0.2', '127.0.0.50'], ['127.0.0.3', '127.0.0.51']]);
      // Both pool addresses are held by the bindings: a third CPE has none (dedicated pool).
      const before = await value(metrics, 'mpconvert_refused_total', 'reason="binding-no-address"');
      await refusedWith(metrics, await reverse(port, bindPort, '127.0.0.4'), 'binding-no-address', before);
      const client = net.connect({ host: '127.0.0.51', port: bindPort });
      client.on('error', () => {});
      await once(client, 'connect');
      await poll('B\'s reverse connection used', () => b.received().length > b.claim.length);
      assert.equal(a.received().length, a.claim.length, 'not A\'s');
      client.destroy();
      a.s.destroy();
      b.s.destroy();
    } finally {
      await c.stop(0);
    }
  });

  test('a reload without bindings closes them; the port is refused', { timeout: 15_000 }, async () => {
    const bindPort = await freePort();
    const { c, config, port } = await startConcentrator({ addresses: ['127.0.0.1'] });
    try {
      const r = await reverse(port, bindPort);
      await claimed(r);
      await c.reload({ ...config, bindings: undefined });
      assert.equal(c.status().bindings.length, 0);
      assert.equal(await r.ended, 'reset', 'the idle reverse connection ends');
      const probe = net.connect({ host: '127.0.0.1', port: bindPort });
      const [err] = (await once(probe, 'error')) as [NodeJS.ErrnoException];
      assert.equal(err.code, 'ECONNREFUSED');
    } finally {
      await c.stop(0);
    }
  });

  test('a second claim by another CPE, over maxPerCpe, on an own service or outside the ports, over idlePerBinding: refused and counted', { timeout: 15_000 }, async () => {
    const [p1, p2, p3] = [await freePort(), await freePort(), await freePort()];
    const { c, metrics, port } = await startConcentrator({ addresses: ['127.0.0.1'], ports: { from: 1024, to: 65535 }, maxPerCpe: 2, idlePerBinding: 2 });
    try {
      const a1 = await reverse(port, p1, '127.0.0.2');
      await claimed(a1);
      let before = await value(metrics, 'mpconvert_refused_total', 'reason="binding-taken"');
      await refusedWith(metrics, await reverse(port, p1, '127.0.0.3'), 'binding-taken', before);
      const a2 = await reverse(port, p2, '127.0.0.2');
      await claimed(a2);
      before = await value(metrics, 'mpconvert_refused_total', 'reason="binding-limit"');
      await refusedWith(metrics, await reverse(port, p3, '127.0.0.2'), 'binding-limit', before);
      // The destination gate in reverse: the concentrator's own MPTCP listener, and a port below bindings.ports.
      before = await value(metrics, 'mpconvert_refused_total', 'reason="binding-port"');
      await refusedWith(metrics, await reverse(port, port, '127.0.0.4'), 'binding-port', before);
      await refusedWith(metrics, await reverse(port, 80, '127.0.0.4'), 'binding-port', before + 1);
      const a3 = await reverse(port, p1, '127.0.0.2');
      await claimed(a3);
      before = await value(metrics, 'mpconvert_refused_total', 'reason="binding-idle-limit"');
      await refusedWith(metrics, await reverse(port, p1, '127.0.0.2'), 'binding-idle-limit', before);
      before = await value(metrics, 'mpconvert_refused_total', 'reason="binding-data"');
      const withData = net.connect({ host: '127.0.0.1', port, localAddress: '127.0.0.5', allowHalfOpen: true });
      withData.on('error', () => {});
      await once(withData, 'connect');
      withData.write(Buffer.concat([claimFor(p3), Buffer.from('early')]));
      await new Promise((resolve) => withData.once('close', resolve));
      assert.equal((await value(metrics, 'mpconvert_refused_total', 'reason="binding-data"')) - before, 1, 'bytes after the claim: refused');
      assert.equal(c.status().bindings.length, 2, 'no binding was opened by a refused claim');
      for (const r of [a1, a2, a3]) r.s.destroy();
    } finally {
      await c.stop(0);
    }
  });

  test('a binding whose CPE went away closes after graceS; then the port is refused, and another CPE may claim it', { timeout: 15_000 }, async () => {
    const bindPort = await freePort();
    const { c, port } = await startConcentrator({ addresses: ['127.0.0.1'], graceS: 0.2, waitMs: 0 });
    try {
      const r = await reverse(port, bindPort, '127.0.0.2');
      await claimed(r);
      r.s.end(); // the CPE retires it / stops
      await poll('the binding closed', () => c.status().bindings.length === 0);
      const probe = net.connect({ host: '127.0.0.1', port: bindPort });
      const [err] = (await once(probe, 'error')) as [NodeJS.ErrnoException];
      assert.equal(err.code, 'ECONNREFUSED', 'nothing listens on the port any more');
      const other = await reverse(port, bindPort, '127.0.0.3');
      await claimed(other);
      assert.equal(c.status().bindings[0]?.owner, '127.0.0.3');
      other.s.destroy();
    } finally {
      await c.stop(0);
    }
  });

  test('without a reverse connection idle, an internet connection is reset after waitMs; a binding IE to a concentrator without bindings is refused', { timeout: 15_000 }, async () => {
    const bindPort = await freePort();
    const { c, metrics, port } = await startConcentrator({ addresses: ['127.0.0.1'], waitMs: 100, graceS: 30 });
    try {
      const r = await reverse(port, bindPort);
      await claimed(r);
      const first = net.connect({ host: '127.0.0.1', port: bindPort });
      first.on('error', () => {});
      await once(first, 'connect');
      const second = net.connect({ host: '127.0.0.1', port: bindPort });
      second.on('error', () => {});
      // events.once would reject on the reset's 'error': the close is what the test waits for.
      await new Promise((resolve) => second.once('close', resolve));
      assert.equal(await value(metrics, 'mpconvert_binding_inbound_total', 'outcome="no-reverse"'), 1);
      first.destroy();
      r.s.destroy();
    } finally {
      await c.stop(0);
    }
    const off = await startConcentrator(undefined);
    try {
      await refusedWith(off.metrics, await reverse(off.port, bindPort), 'binding-off', 0);
    } finally {
      await off.c.stop(0);
    }
  });
});

describe('inbound bindings, CPE ReverseBindings against the concentrator (loopback)', () => {
  test('the pool fills, an internet client reaches the LAN server through it, the pool refills; stop closes the entries', { timeout: 15_000 }, async () => {
    const bindPort = await freePort();
    const { c, port } = await startConcentrator({ addresses: ['127.0.0.1'], graceS: 0.2 });
    const body = randomBytes(500_000);
    const lan = net.createServer({ allowHalfOpen: true }, (s) => {
      s.on('error', () => {});
      s.once('data', () => s.end(body));
    });
    lan.listen(0, '127.0.0.1');
    await once(lan, 'listening');
    const lanPort = (lan.address() as net.AddressInfo).port;
    const metrics = createMetrics('cpe', { runtime: false });
    const cfg = cpeConfigSchema.parse({
      lan: ['lo'],
      uplinks: [{ interface: 'lo' }],
      concentrators: [{ address: `127.0.0.1:${port}` }],
      bindings: [{ port: bindPort, to: `127.0.0.1:${lanPort}`, pool: 2 }],
      relayEngine: 'streams',
    });
    const rb = new ReverseBindings({
      sockets: fakeSockets(),
      logger: silentLogger(),
      metrics,
      connectTimeoutMs: () => 2_000,
      credentials: () => undefined,
      relaySettings: () => cfg,
    });
    try {
      rb.configure(cfg.bindings, cfg.concentrators);
      await poll('a full pool', () => rb.snapshot()[0]?.ready === 2);
      assert.equal(c.status().bindings[0]?.idle, 2);
      const client = net.connect({ host: '127.0.0.1', port: bindPort });
      const parts: Buffer[] = [];
      client.on('data', (d: Buffer) => parts.push(d));
      client.write('GET / HTTP/1.0\r\n\r\n');
      await once(client, 'end');
      assert.equal(createHash('sha256').update(Buffer.concat(parts)).digest('hex'), createHash('sha256').update(body).digest('hex'));
      await poll('refilled', () => rb.snapshot()[0]?.ready === 2 && c.status().bindings[0]?.idle === 2);
      assert.equal(await value(metrics, 'mpconvert_binding_reverse_total', 'event="used"'), 1);
      // A reload that drops the binding closes its reverse connections (FIN): the concentrator closes the binding.
      rb.configure([], cfg.concentrators);
      assert.deepEqual(rb.snapshot(), []);
      await poll('the binding closed at the concentrator', () => c.status().bindings.length === 0);
      rb.configure(cfg.bindings, cfg.concentrators);
      await poll('claimed again', () => rb.snapshot()[0]?.ready === 2 && c.status().bindings[0]?.idle === 2);
      rb.stop();
      await poll('the binding closed at the concentrator', () => c.status().bindings.length === 0);
    } finally {
      rb.stop();
      lan.close();
      await c.stop(0);
    }
  });

  test('a header that is not one source IE with a port, or a wrong echo: the CPE resets the reverse connection and replaces it', { timeout: 15_000 }, async () => {
    // A hand-driven concentrator: the first connection gets a wrong echo, the second a destination IE as header.
    const seen: Array<'reset' | 'end'> = [];
    let n = 0;
    const fake = net.createServer({ allowHalfOpen: true }, (s) => {
      const nth = n++;
      s.on('error', () => {});
      s.once('close', (hadError) => seen.push(hadError ? 'reset' : 'end'));
      s.once('data', (claim: Buffer) => {
        if (nth === 0) s.write(Buffer.from(claim).fill(0, 4, 5)); // Type byte changed
        else if (nth === 1) s.write(Buffer.concat([claim, encodeMpConvert([{ type: 0, direction: 'destination', address: '198.19.0.11', port: 80 }])]));
        else s.write(claim);
      });
    });
    fake.listen(0, '127.0.0.1');
    await once(fake, 'listening');
    const metrics = createMetrics('cpe', { runtime: false });
    const cfg = cpeConfigSchema.parse({
      lan: ['lo'],
      uplinks: [{ interface: 'lo' }],
      concentrators: [{ address: `127.0.0.1:${(fake.address() as net.AddressInfo).port}` }],
      bindings: [{ port: 8080, to: '127.0.0.1:9', pool: 1 }],
    });
    const rb = new ReverseBindings({ sockets: fakeSockets(), logger: silentLogger(), metrics, connectTimeoutMs: () => 2_000, credentials: () => undefined, relaySettings: () => cfg });
    try {
      rb.configure(cfg.bindings, cfg.concentrators);
      // 1: wrong echo (failed, backoff 1 s); 2: bad header (died); 3: good, stays ready.
      await poll('a ready entry after two bad ones', () => n >= 3 && rb.snapshot()[0]?.ready === 1, 10_000);
      assert.deepEqual(seen, ['reset', 'reset'], 'both bad ones reset by the CPE');
      assert.equal(await value(metrics, 'mpconvert_binding_reverse_total', 'event="failed"'), 1, 'the wrong echo');
      assert.equal(await value(metrics, 'mpconvert_binding_reverse_total', 'event="died"'), 1, 'the bad header');
      assert.equal(await value(metrics, 'mpconvert_binding_reverse_total', 'event="used"'), 0, 'nothing relayed');
    } finally {
      rb.stop();
      fake.close();
    }
  });
});
