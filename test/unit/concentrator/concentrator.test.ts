/**
 * The concentrator's logic on loopback with a fake platform: gates, signalling in one or many pieces,
 * confirmation, relaying, refusals with the right reaction, limits, fallback cache, shutdown.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';
import { Concentrator } from '../../../src/concentrator/concentrator.js';
import { concentratorConfigSchema, type ConcentratorConfigInput } from '../../../src/concentrator/config.js';
import { createMetrics } from '../../../src/control/metrics.js';
import { silentLogger } from '../../../src/log.js';
import { decodeProxyV2, encodeMpConvert, encodeConvertMessage } from '../../../src/protocol/index.js';
import { fakeKernel, fakeSockets, type FakeOptions } from '../../support/fake-platform.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** An upstream server on loopback that records what it gets and answers `reply` then FIN. */
async function echoServer(reply: Buffer) {
  const got: Buffer[] = [];
  let connections = 0;
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    connections++;
    const parts: Buffer[] = [];
    s.on('data', (d: Buffer) => parts.push(d));
    s.on('end', () => {
      got.push(Buffer.concat(parts));
      s.end(reply);
    });
    s.on('error', () => {});
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, got, port: (server.address() as net.AddressInfo).port, connections: () => connections };
}

async function startConcentrator(extra: Partial<ConcentratorConfigInput> = {}, fake: FakeOptions = {}, upstreamPort = 0) {
  const sockets = fakeSockets({
    // Every lab destination 198.19.0.x maps to the loopback upstream; 198.19.0.99 does not exist.
    route: (spec) =>
      spec.host === '198.19.0.99' ? Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }) : { host: '127.0.0.1', port: upstreamPort },
    ...fake,
  });
  const kernel = fakeKernel();
  const metrics = createMetrics('concentrator');
  const config = concentratorConfigSchema.parse({ listen: ['127.0.0.1:0'], allow: ['127.0.0.0/8'], ...extra });
  const c = new Concentrator(config, { sockets, kernel, logger: silentLogger(), metrics });
  await c.start();
  const port = c.addresses[0]!.port;
  return { c, sockets, kernel, metrics, port };
}

/** Client: sends `chunks` (with a pause between them), then `body` and FIN; returns all it received. */
async function converse(port: number, chunks: Buffer[], body = Buffer.alloc(0)) {
  const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  try {
    await once(s, 'connect');
  } catch {
    return { how: 'reset' as const, received: Buffer.alloc(0), localPort: 0 };
  }
  const localPort = s.localPort ?? 0;
  const parts: Buffer[] = [];
  s.on('data', (d: Buffer) => parts.push(d));
  const ended = new Promise<'end' | 'reset'>((resolve) => {
    s.once('end', () => resolve('end'));
    s.once('error', () => resolve('reset'));
  });
  for (const c of chunks) {
    s.write(c);
    await new Promise((r) => setTimeout(r, 5));
  }
  if (body.length) s.write(body);
  s.end();
  const how = await ended;
  s.destroy();
  return { how, received: Buffer.concat(parts), localPort };
}

const dest = (address: string, port?: number) => encodeMpConvert([{ type: 0, direction: 'destination', address, ...(port ? { port } : {}) }]);

describe('concentrator (loopback, fake platform)', () => {
  let up: Awaited<ReturnType<typeof echoServer>>;
  const reply = randomBytes(100_000);
  before(async () => {
    up = await echoServer(reply);
  });
  after(() => up.server.close());

  test('MP_CONVERT: echo byte for byte, then server bytes; SYN data and later bytes reach the server exactly', async () => {
    const { c, kernel, sockets, port } = await startConcentrator({}, {}, up.port);
    try {
      assert.equal(kernel.sysctls.get('net.ipv4.tcp_fastopen'), '3', 'the TFO server bit was set');
      const ies = dest('198.19.0.11', 8080);
      const early = Buffer.from('GET / HTTP/1.1\r\n\r\n');
      const body = randomBytes(300_000);
      const before = up.got.length;
      const r = await converse(port, [Buffer.concat([ies, early])], body);
      assert.equal(r.how, 'end');
      assert.equal(r.received.subarray(0, ies.length).toString('hex'), ies.toString('hex'));
      assert.equal(sha(r.received.subarray(ies.length)), sha(reply));
      assert.equal(sha(up.got[before]!), sha(Buffer.concat([early, body])));
      assert.equal(sockets.dials.at(-1)!.protocol, 'mptcp', 'servers are dialled with MPTCP');
      assert.equal(sockets.dials.at(-1)!.host, '198.19.0.11');
    } finally {
      await c.stop(0);
    }
  });

  test('PROXY v2: a listed destination gets the header then the client bytes exactly; an unlisted one none; a reload applies to new connections', async () => {
    const proxyProtocol = [{ prefix: '198.19.0.11/32', ports: [8443] }, { prefix: '2001:db8:100::/64' }];
    const { c, port } = await startConcentrator({ server: { proxyProtocol } }, {}, up.port);
    try {
      const early = Buffer.from('GET / HTTP/1.1\r\n\r\n');
      const body = randomBytes(50_000);
      const withSource = (d: string, dport: number, s: string, sport: number) =>
        encodeMpConvert([
          { type: 0, direction: 'destination', address: d, port: dport },
          { type: 0, direction: 'source', address: s, port: sport },
        ]);
      const serverGot = async (chunks: Buffer[]) => {
        const before = up.got.length;
        const r = await converse(port, chunks, body);
        assert.equal(r.how, 'end');
        assert.equal(sha(r.received.subarray(r.received.length - reply.length)), sha(reply), 'the client got the confirmation, then the server bytes');
        assert.equal(up.got.length, before + 1);
        return { got: up.got[before]!, clientPort: r.localPort };
      };
      // The LAN host from the source IE, the signalled destination (the golden bytes HAProxy sends for it).
      const v4 = await serverGot([Buffer.concat([withSource('198.19.0.11', 8443, '198.18.0.2', 40000), early])]);
      const h4 = Buffer.from('0d0a0d0a000d0a515549540a2111000cc6120002c613000b9c4020fb', 'hex');
      assert.equal(v4.got.subarray(0, h4.length).toString('hex'), h4.toString('hex'), 'the header comes first');
      assert.equal(sha(v4.got.subarray(h4.length)), sha(Buffer.concat([early, body])), 'then the client bytes, exactly');
      const v6 = await serverGot([Buffer.concat([withSource('2001:db8:100::b', 443, '2001:db8::2', 40000), early])]);
      const d6 = decodeProxyV2(v6.got);
      assert.equal(d6.status, 'done');
      if (d6.status !== 'done') return;
      assert.deepEqual(d6.header.addresses, { source: { address: '2001:db8::2', port: 40000 }, destination: { address: '2001:db8:100::b', port: 443 } });
      assert.equal(sha(d6.rest), sha(Buffer.concat([early, body])));
      // No source IE (MP_CONVERT without it, RFC 8803): the CPE's own address and port.
      for (const signalling of [dest('198.19.0.11', 8443), encodeConvertMessage({ tlvs: [{ type: 'connect', address: '198.19.0.11', port: 8443, options: Buffer.alloc(0) }] })]) {
        const r = await serverGot([Buffer.concat([signalling, early])]);
        const d = decodeProxyV2(r.got);
        assert.equal(d.status, 'done');
        if (d.status !== 'done') return;
        assert.deepEqual(d.header.addresses, { source: { address: '127.0.0.1', port: r.clientPort }, destination: { address: '198.19.0.11', port: 8443 } });
        assert.equal(sha(d.rest), sha(Buffer.concat([early, body])));
      }
      // Not listed: another port of the listed host, another host. The server gets the client bytes only.
      for (const [d, p] of [['198.19.0.11', 8080], ['198.19.0.12', 8443]] as const) {
        const r = await serverGot([Buffer.concat([withSource(d, p, '198.18.0.2', 40000), early])]);
        assert.equal(sha(r.got), sha(Buffer.concat([early, body])), `${d}:${p} gets no header`);
      }
      // A reload without the setting: the next connection to the same destination gets none.
      await c.reload(concentratorConfigSchema.parse({ ...c.config, server: { ...c.config.server, proxyProtocol: [] } }));
      const off = await serverGot([Buffer.concat([withSource('198.19.0.11', 8443, '198.18.0.2', 40000), early])]);
      assert.equal(sha(off.got), sha(Buffer.concat([early, body])), 'no header after the reload');
    } finally {
      await c.stop(0);
    }
  });

  test('signalling split at every byte offset is read the same', async () => {
    const { c, port } = await startConcentrator({}, {}, up.port);
    try {
      const ies = encodeMpConvert([
        { type: 0, direction: 'destination', address: '2001:db8:100::b', port: 8080 },
        { type: 0, direction: 'source', address: '198.18.0.2', port: 40000 },
      ]);
      for (let cut = 1; cut < ies.length; cut++) {
        const r = await converse(port, [ies.subarray(0, cut), ies.subarray(cut)], Buffer.from('x'));
        assert.equal(r.received.subarray(0, ies.length).toString('hex'), ies.toString('hex'), `cut at ${cut}`);
      }
    } finally {
      await c.stop(0);
    }
  });

  test('RFC 8803: Convert reply header, then data; Error TLV 96 when the server refuses', async () => {
    const { c, port } = await startConcentrator({}, {}, up.port);
    try {
      const ok = await converse(port, [encodeConvertMessage({ tlvs: [{ type: 'connect', address: '198.19.0.11', port: 8080, options: Buffer.alloc(0) }] })]);
      assert.equal(ok.received.subarray(0, 4).toString('hex'), '01012263');
      assert.equal(sha(ok.received.subarray(4)), sha(reply));
      const bad = await converse(port, [encodeConvertMessage({ tlvs: [{ type: 'connect', address: '198.19.0.99', port: 8080, options: Buffer.alloc(0) }] })]);
      assert.equal(bad.how, 'end', 'an Error TLV is followed by FIN, not RST');
      assert.equal(bad.received.toString('hex'), '010222631e016000');
    } finally {
      await c.stop(0);
    }
  });

  test('RFC 8803 refusals: Error TLV 1 for a never-a-server destination, 32 for policy; a malformed message is echoed', async () => {
    const { c, port } = await startConcentrator({ deny: ['198.19.0.0/24'] }, {}, up.port);
    try {
      const connect = (address: string) => encodeConvertMessage({ tlvs: [{ type: 'connect', address, port: 80, options: Buffer.alloc(0) }] });
      const loop = await converse(port, [connect('127.0.0.1')]);
      assert.equal(loop.how, 'end');
      assert.equal(loop.received.subarray(4, 7).toString('hex'), '1e0101', 'Error TLV, code 1: not a server address');
      const denied = await converse(port, [connect('198.19.0.11')]);
      assert.equal(denied.received.subarray(4, 7).toString('hex'), '1e0120', 'Error TLV, code 32: refused by policy');
      // Version 1, 2 words, magic, then a TLV whose length (2 words) runs past the message.
      const malformed = Buffer.from('0102226316020000', 'hex');
      const m = await converse(port, [malformed]);
      assert.equal(m.how, 'end', 'answered with an Error TLV, then FIN');
      assert.equal(m.received[4], 30, 'an Error TLV');
      assert.ok(m.received.includes(malformed), `the offending message is echoed in the Error TLV: ${m.received.toString('hex')}`);
    } finally {
      await c.stop(0);
    }
  });

  test('refusals: forbidden destinations, malformed signalling, non-customers, fallen-back connections: reset, nothing dialled', async () => {
    const { c, port, sockets, metrics } = await startConcentrator({}, {}, up.port);
    try {
      const dialsBefore = sockets.dials.length;
      for (const d of ['127.0.0.1', '224.0.0.1', '0.0.0.0', '255.255.255.255', '::1', '::ffff:127.0.0.1', 'ff02::1', 'fe80::1']) {
        const r = await converse(port, [dest(d, 80)]);
        assert.equal(r.how, 'reset', d);
        assert.equal(r.received.length, 0, d);
      }
      const malformed = await converse(port, [Buffer.from('faa8faa80005000000000000', 'hex')]);
      assert.equal(malformed.how, 'reset');
      const garbage = await converse(port, [Buffer.from('GET / HTTP/1.1\r\n\r\n')]);
      assert.equal(garbage.how, 'reset');
      const truncated = await converse(port, [dest('198.19.0.11', 80).subarray(0, 9)]);
      assert.equal(truncated.how, 'reset');
      assert.equal(sockets.dials.length, dialsBefore, 'nothing was dialled');
      const text = await metrics.registry.metrics();
      assert.match(text, /mpconvert_refused_total\{reason="destination"[^}]*\} 8/);
    } finally {
      await c.stop(0);
    }
    const other = await startConcentrator({ allow: ['198.18.0.0/15'] }, {}, up.port);
    try {
      const r = await converse(other.port, [dest('198.19.0.11', 80)]);
      assert.equal(r.how, 'reset');
      assert.equal(other.sockets.dials.length, 0);
    } finally {
      await other.c.stop(0);
    }
    const fallen = await startConcentrator({}, { mptcp: false }, up.port);
    try {
      const r = await converse(fallen.port, [dest('198.19.0.11', 80)]);
      assert.equal(r.how, 'reset');
      assert.match(await fallen.metrics.registry.metrics(), /reason="tcp-fallback"/);
    } finally {
      await fallen.c.stop(0);
    }
  });

  test('per-CPE limit: the connection over the limit is refused, the others work', async () => {
    const { c, port } = await startConcentrator({ limits: { maxConnectionsPerCpe: 1 } }, {}, up.port);
    try {
      const hold = net.connect({ port, host: '127.0.0.1' });
      await once(hold, 'connect');
      hold.write(dest('198.19.0.11', 80));
      await once(hold, 'data');
      const over = await converse(port, [dest('198.19.0.11', 80)]);
      assert.equal(over.how, 'reset');
      hold.end();
      await once(hold, 'close');
      await new Promise((r) => setTimeout(r, 50));
      const again = await converse(port, [dest('198.19.0.11', 80)]);
      assert.equal(again.how, 'end');
    } finally {
      await c.stop(0);
    }
  });

  test('a server that broke MPTCP is cached and dialled with TCP next time; the switch turns MPTCP off', async () => {
    let calls = 0;
    const { c, port, sockets } = await startConcentrator({}, {
      route: (spec) => {
        calls++;
        if (spec.protocol === 'mptcp' && spec.host === '198.19.0.12') return Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' });
        return { host: '127.0.0.1', port: up.port };
      },
    });
    try {
      const r1 = await converse(port, [dest('198.19.0.12', 80)]);
      assert.equal(r1.how, 'end');
      assert.deepEqual(c.fallbackCache, ['198.19.0.12']);
      const n = sockets.dials.length;
      await converse(port, [dest('198.19.0.12', 80)]);
      assert.deepEqual(sockets.dials.slice(n).map((d) => d.protocol), ['tcp'], 'one dial, straight with TCP');
      assert.ok(calls >= 3);
    } finally {
      await c.stop(0);
    }
  });

  test('an unreachable server (MPTCP and TCP both time out) is not put in the MPTCP fallback cache', async () => {
    const { c, port } = await startConcentrator({}, {
      route: (spec) => (spec.host === '198.19.0.13' ? Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' }) : { host: '127.0.0.1', port: up.port }),
    });
    try {
      const r = await converse(port, [dest('198.19.0.13', 80)]);
      assert.equal(r.how, 'reset', 'MP_CONVERT: the client connection is aborted');
      assert.deepEqual(c.fallbackCache, []);
    } finally {
      await c.stop(0);
    }
  });

  test('stop drains: a relayed connection may finish within the deadline; new ones are refused', async () => {
    const { c, port } = await startConcentrator({}, {}, up.port);
    const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    await once(s, 'connect');
    s.write(dest('198.19.0.11', 80));
    await once(s, 'data');
    const stopping = c.stop(2_000);
    const parts: Buffer[] = [];
    s.on('data', (d: Buffer) => parts.push(d));
    s.end(Buffer.from('late bytes'));
    await once(s, 'end');
    await stopping;
    assert.ok(Buffer.concat(parts).length >= reply.length - 100_000);
    await assert.rejects(new Promise((resolve, reject) => net.connect({ port, host: '127.0.0.1' }).once('connect', resolve).once('error', reject)));
  });
});
