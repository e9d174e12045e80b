/**
 * Direct MPTCP to servers (serverMptcp: direct): the server MPTCP query and its answer in the echo (the CPE's
 * verifier fed split at every offset, the concentrator's confirmation), the bounded expiring cache, and the
 * whole flow on loopback (CPE session -> real Concentrator component -> upstream, fake platforms): learnt
 * through the concentrator, then dialled directly; a server that answers plain TCP falls back to the
 * concentrator; maintain mode never asks and never goes direct.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';
import { Concentrator } from '../../../src/concentrator/concentrator.js';
import { concentratorConfigSchema } from '../../../src/concentrator/config.js';
import { confirmation, type ReadSignalling } from '../../../src/concentrator/signalling.js';
import { cpeConfigSchema, type CpeConfigInput } from '../../../src/cpe/config.js';
import { ConcentratorSelector } from '../../../src/cpe/concentrators.js';
import { EchoVerifier, type EchoResult } from '../../../src/cpe/echo.js';
import { ServerMptcpCache, asksServerMptcp, serverMptcpAnswerAt } from '../../../src/cpe/server-mptcp.js';
import { handleClient, signallingFor } from '../../../src/cpe/session.js';
import { createMetrics } from '../../../src/control/metrics.js';
import { silentLogger } from '../../../src/log.js';
import { SignallingDecoder, decodeMpConvert } from '../../../src/protocol/index.js';
import { fakeKernel, fakeSockets, type FakeOptions } from '../../support/fake-platform.js';
import { exchange } from '../../support/loopback.js';
import { metric } from '../../support/metrics.js';
import { splits } from '../protocol/helpers.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const DST = { address: '198.19.0.11', port: 8080 };
const MP = { format: 'mp-convert', sourceIe: false } as const;

/** Feeds the verifier piece by piece until it settles; `after`: the pieces it was not given. */
function verify(v: EchoVerifier, pieces: Buffer[]): EchoResult & { after: Buffer } {
  for (const [i, p] of pieces.entries()) {
    const r = v.push(p);
    if (r.status !== 'need-more') return { ...r, after: Buffer.concat(pieces.slice(i + 1)) };
  }
  return { status: 'need-more', after: Buffer.alloc(0) };
}

describe('server MPTCP query and answer', () => {
  for (const warm of [false, true]) {
    test(`the query sits where serverMptcpAnswerAt(${warm}) says, and decodes there (warm ${warm})`, () => {
      const sig = signallingFor(MP, DST, undefined, undefined, warm, true);
      const at = serverMptcpAnswerAt(warm);
      assert.equal(sig[at - 4], 0x85, 'the IE type');
      assert.equal(sig[at - 3], 5, 'Length 5');
      assert.equal(sig[at], 0, 'the CPE asks with Answer 0');
      assert.equal(decodeMpConvert(sig).serverMptcpAt, at);
      assert.equal(decodeMpConvert(signallingFor(MP, DST, undefined, undefined, warm, false)).serverMptcpAt, undefined, 'not asked: no query');
    });
  }

  test('the CPE reads the answer from the echo, split at every offset; the bytes after it are the server\'s', () => {
    const sig = signallingFor(MP, DST, undefined, undefined, false, true);
    const at = serverMptcpAnswerAt(false);
    const server = Buffer.from('HTTP/1.1 200 OK\r\n');
    for (const answer of [0, 1]) {
      const echo = Buffer.from(sig);
      echo[at] = answer;
      for (const pieces of splits(Buffer.concat([echo, server]))) {
        const r = verify(new EchoVerifier('mp-convert', sig, at), pieces);
        assert.equal(r.status, 'confirmed');
        assert.equal(r.status === 'confirmed' && r.serverMptcp, answer === 1);
        // What the verifier hands on (leftover of the chunk that completed it) and what follows: the server's bytes.
        assert.equal(r.status === 'confirmed' && Buffer.concat([r.leftover, r.after]).toString('hex'), server.toString('hex'));
      }
    }
  });

  test('anything else in the echo is a mismatch: an answer other than 0/1, any other byte, the answer without a query', () => {
    const sig = signallingFor(MP, DST, undefined, undefined, false, true);
    const at = serverMptcpAnswerAt(false);
    const bad = Buffer.from(sig);
    bad[at] = 2;
    for (const pieces of splits(bad)) assert.equal(verify(new EchoVerifier('mp-convert', sig, at), pieces).status, 'mismatch');
    for (let i = 0; i < sig.length; i++) {
      if (i === at) continue;
      const other = Buffer.from(sig);
      other[i] = (other[i]! + 1) & 0xff;
      assert.equal(verify(new EchoVerifier('mp-convert', sig, at), [other]).status, 'mismatch', `byte ${i}`);
    }
    const answered = Buffer.from(sig);
    answered[at] = 1;
    assert.equal(verify(new EchoVerifier('mp-convert', sig), [answered]).status, 'mismatch', 'without a query the echo is byte for byte');
    assert.throws(() => new EchoVerifier('rfc8803', sig, at), RangeError);
  });

  test('the concentrator answers in the echo only at the query, and the query never reaches the server', () => {
    const sig = signallingFor(MP, DST, undefined, undefined, false, true);
    const client = Buffer.from('GET / HTTP/1.1\r\n\r\n');
    for (const pieces of splits(Buffer.concat([sig, client]))) {
      const d = new SignallingDecoder();
      let done: ReadSignalling | undefined;
      const rest: Buffer[] = [];
      for (const p of pieces) {
        if (done) {
          rest.push(p);
          continue;
        }
        const r = d.push(p);
        if (r.status === 'done' && r.signalling.format === 'mp-convert') {
          done = { format: 'mp-convert', raw: r.raw, rest: r.rest, serverMptcpAt: r.signalling.serverMptcpAt };
          rest.push(r.rest);
        }
      }
      assert.ok(done);
      assert.equal(Buffer.concat(rest).toString('hex'), client.toString('hex'), 'what follows the signalling (the server\'s bytes) is exactly the client\'s');
      const yes = confirmation(done, true);
      const no = confirmation(done, false);
      assert.equal(no.toString('hex'), sig.toString('hex'), 'answer 0: the echo is the signalling');
      const diff = [...yes].flatMap((b, i) => (b !== sig[i] ? [i] : []));
      assert.deepEqual(diff, [serverMptcpAnswerAt(false)], 'answer 1: one octet differs, the Answer');
      assert.equal(yes[serverMptcpAnswerAt(false)], 1);
    }
    const plain = signallingFor(MP, DST);
    assert.equal(confirmation({ format: 'mp-convert', raw: plain, rest: Buffer.alloc(0) }, true).toString('hex'), plain.toString('hex'), 'no query: byte for byte');
  });

  test('asked only in direct mode towards an MP_CONVERT concentrator', () => {
    const cfg = (mode: 'maintain' | 'direct') => ({ serverMptcp: { mode, cacheTtlS: 60, cacheSize: 4 } });
    assert.equal(asksServerMptcp(cfg('direct'), { format: 'mp-convert' }), true);
    assert.equal(asksServerMptcp(cfg('maintain'), { format: 'mp-convert' }), false);
    assert.equal(asksServerMptcp(cfg('direct'), { format: 'rfc8803' }), false);
  });
});

describe('server MPTCP cache', () => {
  test('bounded (the oldest goes first), expires after its TTL, keyed by address and port, flushed', () => {
    let now = 0;
    const cache = new ServerMptcpCache({ mode: 'direct', cacheTtlS: 10, cacheSize: 2 }, () => now);
    const a = { address: '198.19.0.11', port: 80 };
    const b = { address: '2001:db8:100::11', port: 80 };
    const c = { address: '198.19.0.12', port: 80 };
    assert.equal(cache.learn(a), true);
    assert.equal(cache.learn(a), false, 'known already');
    assert.equal(cache.has({ ...a, port: 443 }), false, 'another port is another server');
    cache.learn(b);
    cache.learn(c);
    assert.equal(cache.has(a), false, 'the oldest went first');
    assert.equal(cache.has(b) && cache.has(c), true);
    now = 10_000;
    assert.equal(cache.has(b), false, 'expired');
    cache.learn(a);
    assert.equal(cache.flush(), 2);
    assert.equal(cache.has(a), false);
    cache.learn(a);
    assert.equal(cache.configure({ mode: 'direct', cacheTtlS: 1, cacheSize: 1 }), 1, 'a reload starts empty');
  });
});

describe('direct MPTCP to servers (loopback)', () => {
  let upstream: net.Server;
  let upstreamPort: number;
  let conc: Concentrator;
  let concPort: number;
  const rfc8803: Record<string, { conc: Concentrator; port: number }> = {};
  const concMetrics = createMetrics('concentrator');
  const upstreamGot: Buffer[] = [];
  const reply = randomBytes(100_000);

  before(async () => {
    upstream = net.createServer({ allowHalfOpen: true }, (s) => {
      const parts: Buffer[] = [];
      s.on('data', (d: Buffer) => parts.push(d));
      s.on('end', () => {
        upstreamGot.push(Buffer.concat(parts));
        s.end(reply);
      });
      s.on('error', () => {});
    });
    upstream.listen(0, '127.0.0.1');
    await once(upstream, 'listening');
    upstreamPort = (upstream.address() as net.AddressInfo).port;
    // The concentrator's server leg reports MPTCP (the fake's default): its echo answers 1.
    conc = new Concentrator(concentratorConfigSchema.parse({ listen: ['127.0.0.1:0'], allow: ['127.0.0.0/8'] }), {
      sockets: fakeSockets({ route: () => ({ host: '127.0.0.1', port: upstreamPort }) }),
      kernel: fakeKernel(),
      logger: silentLogger(),
      metrics: concMetrics,
    });
    await conc.start();
    concPort = conc.addresses[0]!.port;
    // RFC 8803 concentrators: one says MPTCP in its reply's TLV (server.reportMptcp), one does not (the default).
    for (const reportMptcp of [true, false]) {
      const c = new Concentrator(concentratorConfigSchema.parse({ listen: ['127.0.0.1:0'], allow: ['127.0.0.0/8'], server: { reportMptcp } }), {
        sockets: fakeSockets({ route: () => ({ host: '127.0.0.1', port: upstreamPort }) }),
        kernel: fakeKernel(),
        logger: silentLogger(),
        metrics: createMetrics('concentrator'),
      });
      await c.start();
      rfc8803[reportMptcp ? 'reporting' : 'silent'] = { conc: c, port: c.addresses[0]!.port };
    }
  });

  after(async () => {
    await conc.stop(0);
    for (const r of Object.values(rfc8803)) await r.conc.stop(0);
    upstream.close();
  });

  async function cpeFront(cfg: Partial<CpeConfigInput>, fake: FakeOptions = {}) {
    const config = cpeConfigSchema.parse({ lan: ['lan0'], uplinks: [{ interface: 'up1' }], echoTimeoutMs: 1000, concentrators: [{ address: `127.0.0.1:${concPort}` }], ...cfg });
    const sockets = fakeSockets({ ...fake, route: fake.route ?? ((spec) => (spec.host === DST.address ? { host: '127.0.0.1', port: upstreamPort } : { host: spec.host, port: spec.port })) });
    const selector = new ConcentratorSelector(config.concentrators, { capabilityTtlMs: 60_000, unreachableHoldMs: 60_000 });
    const metrics = createMetrics('cpe');
    const cache = new ServerMptcpCache(config.serverMptcp);
    const front = net.createServer({ allowHalfOpen: true }, (client) => {
      void handleClient(client, { sockets, logger: silentLogger(), metrics, selector, config: () => config, track: () => {}, originalDestination: () => DST, serverMptcp: cache });
    });
    front.listen(0, '127.0.0.1');
    await once(front, 'listening');
    return { front, port: (front.address() as net.AddressInfo).port, metrics, sockets, cache };
  }

  /** One LAN connection: the client gets the server's reply, the server exactly the client's bytes. */
  async function transfer(port: number): Promise<void> {
    const request = randomBytes(50_000);
    const n = upstreamGot.length;
    const r = await exchange(port, request);
    assert.equal(r.how, 'end');
    assert.equal(sha(r.received), sha(reply));
    assert.equal(sha(upstreamGot[n]!), sha(request), 'the server got exactly the client\'s bytes (no signalling)');
  }
  const concConverted = async () => metric(await concMetrics.registry.metrics(), 'mpconvert_server_leg_total', 'transport="mptcp"');
  const cpeCount = async (m: ReturnType<typeof createMetrics>, event: string) => metric(await m.registry.metrics(), 'mpconvert_server_mptcp_total', `event="${event}"`);

  test('direct: the first connection goes through the concentrator and learns; the second dials the server over MPTCP', async () => {
    const cpe = await cpeFront({ serverMptcp: { mode: 'direct' } });
    try {
      const c0 = await concConverted();
      await transfer(cpe.port);
      assert.equal(cpe.sockets.dials.length, 1);
      assert.equal(cpe.sockets.dials[0]!.port, concPort, 'first: to the concentrator');
      assert.equal(cpe.sockets.dials[0]!.data![4], 0x85, 'with the server MPTCP query first');
      assert.equal(await cpeCount(cpe.metrics, 'learned'), 1);
      assert.equal(cpe.cache.has(DST), true);
      await transfer(cpe.port);
      assert.equal(cpe.sockets.dials.length, 2);
      const second = cpe.sockets.dials[1]!;
      assert.deepEqual([second.host, second.port, second.protocol, second.data], [DST.address, DST.port, 'mptcp', undefined], 'second: MPTCP to the server itself, no signalling');
      assert.equal(await cpeCount(cpe.metrics, 'direct'), 1);
      assert.equal((await concConverted()) - c0, 1, 'the concentrator saw only the first connection');
    } finally {
      cpe.front.close();
    }
  });

  test('direct: a server that answers with plain TCP is dropped from the cache and the connection goes through the concentrator', async () => {
    // The CPE's own dial to the server reports plain TCP; its dial to the concentrator MPTCP.
    const cpe = await cpeFront({ serverMptcp: { mode: 'direct' } }, { mptcp: (s) => s.remotePort !== upstreamPort });
    try {
      cpe.cache.learn(DST);
      const c0 = await concConverted();
      await transfer(cpe.port);
      assert.deepEqual(cpe.sockets.dials.map((d) => d.port), [DST.port, concPort], 'tried the server, then the concentrator');
      assert.equal(await cpeCount(cpe.metrics, 'fallback'), 1);
      assert.equal((await concConverted()) - c0, 1);
      assert.equal(await cpeCount(cpe.metrics, 'learned'), 1, 'the concentrator\'s answer taught it again');
    } finally {
      cpe.front.close();
    }
  });

  test('direct: a direct dial that fails falls back to the concentrator', async () => {
    const refused = () => Object.assign(new Error('refused'), { code: 'ECONNREFUSED' });
    const cpe = await cpeFront({ serverMptcp: { mode: 'direct' } }, { route: (spec) => (spec.host === DST.address ? refused() : { host: spec.host, port: spec.port }) });
    try {
      cpe.cache.learn(DST);
      await transfer(cpe.port);
      assert.deepEqual(cpe.sockets.dials.map((d) => d.port), [DST.port, concPort]);
      assert.equal(await cpeCount(cpe.metrics, 'fallback'), 1);
    } finally {
      cpe.front.close();
    }
  });

  for (const mode of ['direct', 'maintain'] as const) {
    test(`RFC 8803 (${mode}): the reply's TLV (server.reportMptcp) ${mode === 'direct' ? 'teaches the server, the second connection goes direct' : 'is ignored: nothing learnt, never direct'}`, async () => {
      const port = rfc8803.reporting!.port;
      const cpe = await cpeFront({ serverMptcp: { mode }, concentrators: [{ address: `127.0.0.1:${port}`, format: 'rfc8803' }] });
      try {
        await transfer(cpe.port);
        await transfer(cpe.port);
        const ports = cpe.sockets.dials.map((d) => d.port);
        assert.deepEqual(ports, mode === 'direct' ? [port, DST.port] : [port, port]);
        assert.equal(await cpeCount(cpe.metrics, 'learned'), mode === 'direct' ? 1 : 0);
        assert.equal(await cpeCount(cpe.metrics, 'direct'), mode === 'direct' ? 1 : 0);
        assert.equal(cpe.cache.size, mode === 'direct' ? 1 : 0);
      } finally {
        cpe.front.close();
      }
    });
  }

  test('RFC 8803 without server.reportMptcp: nothing learnt, every connection through the concentrator', async () => {
    const port = rfc8803.silent!.port;
    const cpe = await cpeFront({ serverMptcp: { mode: 'direct' }, concentrators: [{ address: `127.0.0.1:${port}`, format: 'rfc8803' }] });
    try {
      await transfer(cpe.port);
      await transfer(cpe.port);
      assert.deepEqual(cpe.sockets.dials.map((d) => d.port), [port, port]);
      assert.equal(await cpeCount(cpe.metrics, 'learned'), 0);
    } finally {
      cpe.front.close();
    }
  });

  test('maintain (the default): never asks, never direct', async () => {
    const cpe = await cpeFront({});
    try {
      await transfer(cpe.port);
      await transfer(cpe.port);
      assert.deepEqual(cpe.sockets.dials.map((d) => d.port), [concPort, concPort]);
      assert.equal(cpe.sockets.dials[0]!.data![4], 0, 'the first IE is the destination, no query');
      assert.equal(cpe.cache.size, 0);
    } finally {
      cpe.front.close();
    }
  });
});
