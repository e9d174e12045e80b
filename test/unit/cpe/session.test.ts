/**
 * The CPE's conversion logic on loopback: CPE session -> real Concentrator component -> upstream server,
 * with fake platforms. Echo verification, fallback to the next concentrator and to a direct connection
 * with the kept bytes replayed, destination failure, early FIN from the client.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';
import { Concentrator } from '../../../src/concentrator/concentrator.js';
import { concentratorConfigSchema } from '../../../src/concentrator/config.js';
import { cpeConfigSchema, type CpeConfigInput } from '../../../src/cpe/config.js';
import { ConcentratorSelector } from '../../../src/cpe/concentrators.js';
import { handleClient, type SessionContext } from '../../../src/cpe/session.js';
import { createMetrics } from '../../../src/control/metrics.js';
import { createLogger, silentLogger } from '../../../src/log.js';
import { fakeKernel, fakeSockets, type FakeOptions } from '../../support/fake-platform.js';
import { exchange } from '../../support/loopback.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('CPE conversion (loopback)', () => {
  let upstream: net.Server;
  let upstreamPort: number;
  let conc: Concentrator;
  let concPort: number;
  let silent: net.Server;
  let silentPort: number;
  const upstreamGot: Buffer[] = [];
  const reply = randomBytes(200_000);

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
    conc = new Concentrator(concentratorConfigSchema.parse({ listen: ['127.0.0.1:0'], allow: ['127.0.0.0/8'] }), {
      sockets: fakeSockets({
        route: (spec) => (spec.host === '198.19.0.99' ? Object.assign(new Error('refused'), { code: 'ECONNREFUSED' }) : { host: '127.0.0.1', port: upstreamPort }),
      }),
      kernel: fakeKernel(),
      logger: silentLogger(),
      metrics: createMetrics('concentrator'),
    });
    await conc.start();
    concPort = conc.addresses[0]!.port;
    // A listener that is no converter: it reads and never answers.
    silent = net.createServer((s) => {
      s.resume();
      s.on('error', () => {});
    });
    silent.listen(0, '127.0.0.1');
    await once(silent, 'listening');
    silentPort = (silent.address() as net.AddressInfo).port;
  });

  after(async () => {
    await conc.stop(0);
    upstream.close();
    silent.close();
  });

  /** A CPE front on loopback: each accepted client is converted as if TPROXY had sent it to `dst`. */
  async function cpeFront(cfg: Partial<CpeConfigInput>, dst: { address: string; port: number }, fake: FakeOptions = {}, extra: Partial<SessionContext> = {}) {
    const config = cpeConfigSchema.parse({ lan: ['lan0'], uplinks: [{ interface: 'up1' }], echoTimeoutMs: 300, ...cfg });
    const sockets = fakeSockets({
      ...fake,
      // Direct connections (the fallback) to 198.19.0.11 land on the upstream too.
      route: fake.route ?? ((spec) => (spec.host === '198.19.0.11' ? { host: '127.0.0.1', port: upstreamPort } : { host: spec.host, port: spec.port })),
    });
    const selector = new ConcentratorSelector(config.concentrators, { capabilityTtlMs: 60_000, unreachableHoldMs: 60_000 });
    const metrics = createMetrics('cpe');
    const front = net.createServer({ allowHalfOpen: true }, (client) => {
      void handleClient(client, { sockets, logger: process.env['DBG'] ? createLogger({ level: 'debug' }) : silentLogger(), metrics, selector, config: () => config, track: () => {}, originalDestination: () => dst, ...extra });
    });
    front.listen(0, '127.0.0.1');
    await once(front, 'listening');
    return { front, port: (front.address() as net.AddressInfo).port, selector, metrics, sockets };
  }

  const clientExchange = (port: number, request: Buffer) => exchange(port, request);

  test('converted through the concentrator: the client gets exactly the server bytes, the server exactly the client bytes', async () => {
    // A long first-data wait (it ends at the first chunk) so a loaded machine cannot make the bytes miss the SYN.
    const { front, port, sockets } = await cpeFront({ concentrators: [{ address: `127.0.0.1:${concPort}`, zeroRtt: true }], firstDataWaitMs: 1000 }, { address: '198.19.0.11', port: 8080 });
    try {
      const request = randomBytes(500_000);
      const n = upstreamGot.length;
      const r = await clientExchange(port, request);
      assert.equal(r.how, 'end');
      assert.equal(sha(r.received), sha(reply));
      assert.equal(sha(upstreamGot[n]!), sha(request));
      const first = sockets.dials[0]!;
      assert.equal(first.protocol, 'mptcp');
      assert.equal(first.fastOpen, 'no-cookie');
      assert.equal(first.data!.subarray(0, 4).toString('hex'), 'faa8faa8', 'the signalling leads the SYN data');
      assert.ok(first.data!.length > 24, 'the client bytes follow the signalling in the SYN');
    } finally {
      front.close();
    }
  });

  test('a flow-class connection is dialled bound to its uplink\'s address with its pin mark and takes no warm connection; others unpinned', async () => {
    const asked: Array<{ dscp: number; port: number; family: number }> = [];
    let warmTaken = 0;
    const extra: Partial<SessionContext> = {
      pin: (flow, family) => {
        asked.push({ dscp: flow.dscp, port: flow.dst.port, family });
        return flow.dst.port === 5060 ? { class: 'voice', uplink: 'up2', mark: 0x20000, localAddress: '127.0.0.1' } : undefined;
      },
      warm: {
        take: () => {
          warmTaken++;
          return undefined;
        },
      },
    };
    const concentrators = [{ address: `127.0.0.1:${concPort}` }];
    const pinned = await cpeFront({ concentrators, distribution: { classes: [{ name: 'voice', destinations: [{ prefix: '0.0.0.0/0', ports: [5060] }] }] } }, { address: '198.19.0.11', port: 5060 }, {}, extra);
    try {
      const r = await clientExchange(pinned.port, Buffer.from('INVITE'));
      assert.equal(sha(r.received), sha(reply), 'bytes first: converted as usual');
      assert.equal(pinned.sockets.dials[0]!.mark, 0x20000);
      assert.equal(pinned.sockets.dials[0]!.localAddress, '127.0.0.1');
      assert.equal(warmTaken, 0, 'a pinned flow dials its own connection');
      assert.deepEqual(asked, [{ dscp: 0, port: 5060, family: 4 }]);
    } finally {
      pinned.front.close();
    }
    const free = await cpeFront({ concentrators }, { address: '198.19.0.11', port: 8080 }, {}, extra);
    try {
      const r = await clientExchange(free.port, Buffer.from('GET'));
      assert.equal(sha(r.received), sha(reply));
      assert.equal(free.sockets.dials[0]!.mark, undefined);
      assert.equal(free.sockets.dials[0]!.localAddress, undefined);
      assert.equal(warmTaken, 1, 'an unclassified flow may take a warm connection');
    } finally {
      free.front.close();
    }
  });

  test('RFC 8803 concentrator; by default the signalling rides in the SYN (zeroRtt on), with zeroRtt off right after the handshake', async () => {
    const on = await cpeFront({ concentrators: [{ address: `127.0.0.1:${concPort}`, format: 'rfc8803' }] }, { address: '198.19.0.11', port: 8080 });
    try {
      const r = await clientExchange(on.port, Buffer.from('hello'));
      assert.equal(sha(r.received), sha(reply));
      assert.equal(on.sockets.dials.length, 1);
      assert.equal(on.sockets.dials[0]!.fastOpen, 'no-cookie');
    } finally {
      on.front.close();
    }
    const { front, port, sockets } = await cpeFront({ concentrators: [{ address: `127.0.0.1:${concPort}`, format: 'rfc8803', zeroRtt: false }] }, { address: '198.19.0.11', port: 8080 });
    try {
      const r = await clientExchange(port, Buffer.from('hello'));
      assert.equal(sha(r.received), sha(reply));
      assert.equal(sockets.dials[0]!.fastOpen, 'off');
      assert.equal(sockets.dials[0]!.data!.readUInt8(0), 1, 'the Convert message (version 1) leads the first bytes');
    } finally {
      front.close();
    }
  });

  test('no echo: cached as not capable, next concentrator, kept bytes replayed once', async () => {
    const { front, port, selector } = await cpeFront(
      { concentrators: [{ address: `127.0.0.1:${silentPort}` }, { address: `127.0.0.1:${concPort}` }] },
      { address: '198.19.0.11', port: 8080 },
    );
    try {
      const request = randomBytes(3000);
      const n = upstreamGot.length;
      const r = await clientExchange(port, request);
      assert.equal(sha(r.received), sha(reply));
      assert.equal(sha(upstreamGot[n]!), sha(request), 'nothing lost, nothing duplicated');
      assert.deepEqual(selector.candidates().map((t) => t.address), [`127.0.0.1:${concPort}`]);
    } finally {
      front.close();
    }
  });

  test('a 0-RTT dial whose SYN data was not taken (a SYN-cookie answer) is retried at once without data in the SYN: converted, counted, still capable', async () => {
    const { front, port, sockets, metrics, selector } = await cpeFront(
      { concentrators: [{ address: `127.0.0.1:${concPort}` }], firstDataWaitMs: 1000 },
      { address: '198.19.0.11', port: 8080 },
      {
        synDataAccepted: (_spec, nth) => nth > 0,
        // The first connection goes nowhere useful, as under SYN cookies (the concentrator refuses it as TCP).
        route: (spec) => (spec.fastOpen === 'no-cookie' ? { host: '127.0.0.1', port: silentPort } : { host: spec.host, port: spec.port }),
      },
    );
    try {
      const request = randomBytes(2000);
      const n = upstreamGot.length;
      const r = await clientExchange(port, request);
      assert.equal(r.how, 'end');
      assert.equal(sha(r.received), sha(reply));
      assert.equal(sha(upstreamGot[n]!), sha(request), 'nothing lost, nothing duplicated');
      assert.deepEqual(sockets.dials.map((d) => [d.port, d.fastOpen]), [[concPort, 'no-cookie'], [concPort, 'off']], 'the same concentrator, at once, without SYN data');
      assert.equal(upstreamGot.length, n + 1, 'one server connection');
      assert.equal(sockets.dials[1]!.data!.subarray(0, 4).toString('hex'), 'faa8faa8', 'the signalling leads the first bytes again');
      const m = await metrics.registry.metrics();
      assert.match(m, /mpconvert_concentrator_capability_total\{result="zero-rtt-retry"[^}]*\} 1/);
      assert.match(m, /mpconvert_concentrator_capability_total\{result="ok"[^}]*\} 1/);
      assert.equal(selector.candidates().length, 1, 'not cached as not capable');
    } finally {
      front.close();
    }
  });

  test('a 0-RTT dial reset after the SYN/ACK (SYN cookies) is retried at once without SYN data; a plain dial reset is not', async () => {
    const reset = () => Object.assign(new Error('connect ECONNRESET'), { code: 'ECONNRESET' });
    const { front, port, sockets, metrics, selector } = await cpeFront(
      { concentrators: [{ address: `127.0.0.1:${concPort}` }] },
      { address: '198.19.0.11', port: 8080 },
      { route: (spec) => (spec.fastOpen === 'no-cookie' ? reset() : spec.host === '198.19.0.11' ? { host: '127.0.0.1', port: upstreamPort } : { host: spec.host, port: spec.port }) },
    );
    try {
      const r = await clientExchange(port, Buffer.from('hello'));
      assert.equal(sha(r.received), sha(reply));
      assert.deepEqual(sockets.dials.map((d) => d.fastOpen), ['no-cookie', 'off']);
      assert.match(await metrics.registry.metrics(), /result="zero-rtt-retry"[^}]*\} 1/);
      assert.equal(selector.candidates().length, 1, 'not held as unreachable');
    } finally {
      front.close();
    }
    const plain = await cpeFront({ concentrators: [{ address: `127.0.0.1:${concPort}`, zeroRtt: false }] }, { address: '198.19.0.11', port: 8080 }, {
      route: (spec) => (spec.host === '127.0.0.1' ? reset() : { host: '127.0.0.1', port: upstreamPort }),
    });
    try {
      await clientExchange(plain.port, Buffer.from('hello'));
      assert.equal(plain.sockets.dials.filter((d) => d.host === '127.0.0.1').length, 1, 'no retry without 0-RTT');
      assert.doesNotMatch(await plain.metrics.registry.metrics(), /zero-rtt-retry/);
    } finally {
      plain.front.close();
    }
  });

  test('no concentrator reachable: direct connection with the kept bytes; refuse mode resets', async () => {
    const closed = net.createServer();
    closed.listen(0, '127.0.0.1');
    await once(closed, 'listening');
    const deadPort = (closed.address() as net.AddressInfo).port;
    closed.close();
    const direct = await cpeFront({ concentrators: [{ address: `127.0.0.1:${deadPort}` }] }, { address: '198.19.0.11', port: 8080 });
    try {
      const request = Buffer.from('direct please');
      const n = upstreamGot.length;
      const r = await clientExchange(direct.port, request);
      assert.equal(sha(r.received), sha(reply));
      assert.equal(upstreamGot[n]!.toString(), 'direct please');
      assert.match(await direct.metrics.registry.metrics(), /mpconvert_fallback_total\{to="direct"[^}]*\} 1/);
    } finally {
      direct.front.close();
    }
    const refuse = await cpeFront({ concentrators: [{ address: `127.0.0.1:${deadPort}` }], fallback: 'refuse' }, { address: '198.19.0.11', port: 8080 });
    try {
      const r = await clientExchange(refuse.port, Buffer.from('x'));
      assert.equal(r.how, 'reset');
    } finally {
      refuse.front.close();
    }
  });

  test('the concentrator cannot reach the destination: the client is reset, the concentrator stays capable', async () => {
    const { front, port, selector } = await cpeFront({ concentrators: [{ address: `127.0.0.1:${concPort}` }] }, { address: '198.19.0.99', port: 8080 });
    try {
      const r = await clientExchange(port, Buffer.from('x'));
      assert.equal(r.how, 'reset');
      assert.equal(selector.candidates().length, 1);
    } finally {
      front.close();
    }
  });

  test('a server-first protocol: the client sends nothing, the conversion still happens after the short wait', async () => {
    const { front, port } = await cpeFront({ concentrators: [{ address: `127.0.0.1:${concPort}` }] }, { address: '198.19.0.11', port: 8080 });
    try {
      const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
      await once(s, 'connect');
      await new Promise((r) => setTimeout(r, 100));
      const parts: Buffer[] = [];
      s.on('data', (d: Buffer) => parts.push(d));
      s.end();
      await once(s, 'end');
      assert.equal(sha(Buffer.concat(parts)), sha(reply));
    } finally {
      front.close();
    }
  });
});
