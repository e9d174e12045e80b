/**
 * The radius step in the concentrator's pipeline (loopback, fake platform, a scripted RADIUS server on
 * loopback UDP): an accepted CPE is relayed and accounted; a rejected one is reset with no dial (counted);
 * with the server silent, failMode closed refuses and a SIGHUP to failMode open lets the next connection
 * through; a reload whose secret file does not load is refused and changes nothing.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Concentrator } from '../../../src/concentrator/concentrator.js';
import { concentratorConfigSchema, type ConcentratorConfigInput } from '../../../src/concentrator/config.js';
import { createMetrics } from '../../../src/control/metrics.js';
import { silentLogger } from '../../../src/log.js';
import { encodeMpConvert } from '../../../src/protocol/index.js';
import { AcctStatusType, RadiusAttr, RadiusCode, decodePacket, encodeResponse, findAttr, readUint32, type RadiusPacket } from '../../../src/protocol/radius.js';
import { fakeKernel, fakeSockets } from '../../support/fake-platform.js';

const SECRET = 'pipeline-radius-secret';
const dir = mkdtempSync(join(tmpdir(), 'mpc-radius-unit-'));
const secretFile = join(dir, 'secret');
writeFileSync(secretFile, `${SECRET}\n`, { mode: 0o600 });

/** Answers Access-Requests with `verdict()` (or nothing), and every Accounting-Request. */
async function radiusServer(verdict: () => number | undefined) {
  const socket: UdpSocket = createSocket('udp4');
  const requests: RadiusPacket[] = [];
  socket.on('message', (msg, rinfo) => {
    const p = decodePacket(msg);
    requests.push(p);
    const code = p.code === RadiusCode.AccountingRequest ? RadiusCode.AccountingResponse : verdict();
    if (code === undefined) return;
    socket.send(encodeResponse({ code, identifier: p.identifier, attributes: [] }, p.authenticator, Buffer.from(SECRET)), rinfo.port, rinfo.address);
  });
  socket.bind(0, '127.0.0.1');
  await once(socket, 'listening');
  return { socket, requests, port: socket.address().port };
}

async function converse(port: number, data: Buffer): Promise<{ how: 'end' | 'reset'; received: Buffer }> {
  const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  const parts: Buffer[] = [];
  s.on('data', (d: Buffer) => parts.push(d));
  const ended = new Promise<'end' | 'reset'>((resolve) => {
    s.once('end', () => resolve('end'));
    s.once('error', () => resolve('reset'));
  });
  s.end(data);
  const how = await ended;
  s.destroy();
  return { how, received: Buffer.concat(parts) };
}

describe('the radius step (loopback, fake platform)', () => {
  let upstream: net.Server;
  let upstreamPort = 0;
  let verdict: number | undefined = RadiusCode.AccessAccept;
  let radius: Awaited<ReturnType<typeof radiusServer>>;
  before(async () => {
    upstream = net.createServer({ allowHalfOpen: true }, (s) => {
      s.on('data', () => {});
      s.on('end', () => s.end('pong'));
      s.on('error', () => {});
    });
    upstream.listen(0, '127.0.0.1');
    await once(upstream, 'listening');
    upstreamPort = (upstream.address() as net.AddressInfo).port;
    radius = await radiusServer(() => verdict);
  });
  after(() => {
    upstream.close();
    radius.socket.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function start(extra: Partial<ConcentratorConfigInput['radius']> = {}) {
    const sockets = fakeSockets({ route: () => ({ host: '127.0.0.1', port: upstreamPort }) });
    const metrics = createMetrics('concentrator', { runtime: false });
    const config = concentratorConfigSchema.parse({
      listen: ['127.0.0.1:0'],
      allow: ['127.0.0.0/8'],
      radius: { servers: [{ host: '127.0.0.1', authPort: radius.port, acctPort: radius.port, secretFile }], timeoutMs: 100, retries: 0, maxWaitMs: 1_000, accounting: { stopAfterIdleS: 0 }, ...extra },
    });
    const c = new Concentrator(config, { sockets, kernel: fakeKernel(), logger: silentLogger(), metrics });
    await c.start();
    return { c, sockets, metrics, port: c.addresses[0]!.port };
  }
  const refused = async (metrics: ReturnType<typeof createMetrics>, reason: string) =>
    (await metrics.refused.get()).values.find((v) => v.labels.reason === reason)?.value ?? 0;
  const sig = encodeMpConvert([{ type: 0, direction: 'destination', address: '198.19.0.11', port: 8080 }]);

  test('accepted: relayed, then accounting Start and Stop with the bytes; rejected: reset with no dial, counted', async () => {
    verdict = RadiusCode.AccessAccept;
    const { c, sockets, metrics, port } = await start();
    try {
      const ok = await converse(port, Buffer.concat([sig, Buffer.from('ping!')]));
      assert.equal(ok.how, 'end');
      assert.equal(ok.received.subarray(sig.length).toString(), 'pong');
      const status = (p: RadiusPacket) => (p.code === RadiusCode.AccountingRequest ? readUint32(findAttr(p, RadiusAttr.AcctStatusType)!) : undefined);
      for (let i = 0; i < 200 && !radius.requests.some((p) => status(p) === AcctStatusType.Stop); i++) await new Promise((r) => setTimeout(r, 10));
      const stop = radius.requests.find((p) => status(p) === AcctStatusType.Stop)!;
      assert.ok(stop, 'a Stop record');
      assert.equal(readUint32(findAttr(stop, RadiusAttr.AcctInputOctets)!), 5);
      assert.equal(readUint32(findAttr(stop, RadiusAttr.AcctOutputOctets)!), 4);

      verdict = RadiusCode.AccessReject;
      // Every loopback client is the CPE 127.0.0.1, whose accept is cached: a settings change empties the cache.
      await c.reload(concentratorConfigSchema.parse({ ...c.config, radius: { ...c.config.radius!, rejectTtlS: 61 } }));
      const dials = sockets.dials.length;
      const bad = await converse(port, Buffer.concat([sig, Buffer.from('ping!')]));
      assert.equal(bad.how, 'reset');
      assert.equal(bad.received.length, 0, 'no echo');
      assert.equal(sockets.dials.length, dials, 'nothing dialled');
      assert.equal(await refused(metrics, 'radius-reject'), 1);
    } finally {
      await c.stop(0);
    }
  });

  test('stopping the concentrator sends Stop (NAS-Request) with the bytes of the connections it cuts', async () => {
    verdict = RadiusCode.AccessAccept;
    const { c, port } = await start();
    const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    s.on('error', () => {});
    s.on('data', () => {});
    s.write(Buffer.concat([sig, Buffer.from('ping!')]));
    s.write(Buffer.alloc(1000, 7));
    const status = (p: RadiusPacket) => (p.code === RadiusCode.AccountingRequest ? readUint32(findAttr(p, RadiusAttr.AcctStatusType)!) : undefined);
    const startsBefore = radius.requests.filter((p) => status(p) === AcctStatusType.Start).length;
    for (let i = 0; i < 200 && radius.requests.filter((p) => status(p) === AcctStatusType.Start).length === startsBefore; i++) await new Promise((r) => setTimeout(r, 10));
    const acctSession = findAttr(radius.requests.filter((p) => status(p) === AcctStatusType.Start).at(-1)!, RadiusAttr.AcctSessionId)!.toString();
    // Until the relay has moved the 1000 bytes (the live count the Stop must carry).
    for (let i = 0; i < 200 && (c.cpeFigures()[0]?.bytesUp ?? 0) < 1000; i++) await new Promise((r) => setTimeout(r, 10));
    await c.stop(0);
    s.destroy();
    const stop = radius.requests.find((p) => status(p) === AcctStatusType.Stop && findAttr(p, RadiusAttr.AcctSessionId)!.toString() === acctSession);
    assert.ok(stop, 'the Stop was sent before stop() resolved');
    assert.equal(readUint32(findAttr(stop, RadiusAttr.AcctTerminateCause)!), 10, 'NAS-Request');
    assert.equal(readUint32(findAttr(stop, RadiusAttr.AcctInputOctets)!), 1005, 'the client bytes with the signalling and the 1000 relayed');
  });

  test('silent server: failMode closed refuses; a SIGHUP to failMode open lets the next connection through; a bad secret file is refused', async () => {
    verdict = undefined;
    const { c, metrics, port } = await start({ failMode: 'closed', failTtlS: 1 });
    try {
      const a = await converse(port, Buffer.concat([sig, Buffer.from('x')]));
      assert.equal(a.how, 'reset');
      assert.equal(await refused(metrics, 'radius-unavailable:no-answer'), 1);
      const report = await c.reload(concentratorConfigSchema.parse({ ...c.config, radius: { ...c.config.radius!, failMode: 'open' } }));
      assert.ok(report.applied.includes('radius'), JSON.stringify(report));
      const b = await converse(port, Buffer.concat([sig, Buffer.from('x')]));
      assert.equal(b.how, 'end', 'fail open');
      chmodSync(secretFile, 0o644);
      await assert.rejects(c.reload(concentratorConfigSchema.parse({ ...c.config, radius: { ...c.config.radius!, failMode: 'closed' } })), /accessible to every user/);
      chmodSync(secretFile, 0o600);
      assert.equal(c.config.radius?.failMode, 'open', 'the running configuration is kept');
    } finally {
      chmodSync(secretFile, 0o600);
      await c.stop(0);
    }
  });
});
