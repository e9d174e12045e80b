import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { once } from 'node:events';
import { RESET_ON_CLOSE, createRelay, type RelayStats } from '../../../src/relay/index.js';
import type { SpliceRelayOptions } from '../../../src/relay/splice-relay.js';
import { LinuxSpliceEngine } from '../../../src/platform/linux/splice.js';
import { LinuxSockets } from '../../../src/platform/linux/sockets.js';
import type { SpliceEngine } from '../../../src/platform/types.js';

// Every behaviour below holds for both relays: the stream relay (bytes through Node) and the zero-copy one
// (splice(2) in the engine's thread).
const splice = new LinuxSpliceEngine();
after(() => splice.close());
let engine: SpliceEngine | undefined;
/** The splice tests hand the pair to the engine at once, unless a test says otherwise. */
let spliceAfterBytes = 0;

/**
 * Builds client <-> [relay: a | b] <-> server on loopback. `a` is the relay's accepted socket from the
 * client, `b` its connection to the server.
 */
async function pair(
  idleTimeoutMs = 10_000,
  beforeRelay?: (a: net.Socket, b: net.Socket, client: net.Socket, s: net.Socket) => Promise<void>,
  extra: Partial<SpliceRelayOptions> = {},
) {
  const server = net.createServer({ allowHalfOpen: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const serverConn = once(server, 'connection') as Promise<[net.Socket]>;
  const front = net.createServer({ allowHalfOpen: true });
  front.listen(0, '127.0.0.1');
  await once(front, 'listening');
  const frontConn = once(front, 'connection') as Promise<[net.Socket]>;
  const client = net.connect({ port: (front.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
  const [a] = await frontConn;
  const b = net.connect({ port: (server.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
  const [s] = await serverConn;
  await once(b, 'connect');
  await beforeRelay?.(a, b, client, s);
  const relay = createRelay(a, b, { idleTimeoutMs, spliceAfterBytes, ...extra }, engine);
  const closed = new Promise<[RelayStats]>((resolve) => relay.once('close', (stats) => resolve([stats])));
  /** The outer ends go; the relay sees them go and ends; only then its own sockets (a relay owns them). */
  const cleanup = async () => {
    client.destroy();
    s.destroy();
    await Promise.race([closed, new Promise((r) => setTimeout(r, 5_000))]);
    for (const x of [a, b]) x.destroy();
    server.close();
    front.close();
  };
  return { client, s, relay, closed, cleanup };
}

function collect(sock: net.Socket): Promise<Buffer> {
  const parts: Buffer[] = [];
  sock.on('data', (d: Buffer) => parts.push(d));
  return new Promise((resolve, reject) => {
    sock.once('end', () => resolve(Buffer.concat(parts)));
    sock.once('error', reject);
  });
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** The real platform calls (no root needed): SO_LINGER, SO_ERROR. */
const sockets = new LinuxSockets();

/**
 * How the peer's side ended: 'end' (FIN) or the error code. A Node peer's 'end' may hide a reset (libuv reports
 * EOF when the RST came in behind queued bytes), so an 'end' is checked against the socket's pending error, as
 * a read(2) loop would see it.
 */
function ending(sock: net.Socket): Promise<string> {
  return new Promise((resolve) => {
    sock.once('end', () => resolve(sockets.takeError(sock) ?? 'end'));
    sock.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

for (const name of ['streams', 'splice'] as const) {
describe(`relay (${name})`, () => {
  before(() => {
    engine = name === 'splice' ? splice : undefined;
  });
  test('relays bytes both ways exactly, half-close in each direction, counts bytes', async () => {
    const { client, s, closed, cleanup } = await pair();
    try {
      const up = randomBytes(3 * 1024 * 1024 + 17);
      const down = randomBytes(2 * 1024 * 1024 + 5);
      const atServer = collect(s);
      const atClient = collect(client);
      client.end(up);
      // The server still sends after the client's FIN arrived: the half-close must not cut the other way.
      assert.equal(sha(await atServer), sha(up));
      s.end(down);
      assert.equal(sha(await atClient), sha(down));
      const [stats] = await closed;
      assert.equal(stats.outcome, 'done');
      assert.equal(stats.aToB, up.length);
      assert.equal(stats.bToA, down.length);
    } finally {
      await cleanup();
    }
  });

  test('a reset on one side resets the other', async () => {
    const { client, s, closed, cleanup } = await pair();
    try {
      const serverError = once(s, 'error');
      client.write('hello');
      await once(s, 'data');
      client.resetAndDestroy();
      const [err] = (await serverError) as [NodeJS.ErrnoException];
      assert.equal(err.code, 'ECONNRESET');
      const [stats] = await closed;
      assert.equal(stats.outcome, 'reset-a');
      assert.equal(stats.aToB, 5);
    } finally {
      await cleanup();
    }
  });

  for (const side of ['client', 'server'] as const) {
    test(`a reset by the ${side} reaches the other end as a reset, never a FIN, whatever is in flight`, async () => {
      const { client, s, closed, cleanup } = await pair(10_000, undefined, { sockets });
      try {
        const [resetter, peer] = side === 'client' ? [client, s] : [s, client];
        const atPeer = ending(peer);
        // Bytes flowing both ways when the reset comes.
        client.write(randomBytes(512 * 1024));
        s.write(randomBytes(512 * 1024));
        await once(peer, 'data');
        resetter.resetAndDestroy();
        peer.resume();
        assert.equal(await atPeer, 'ECONNRESET');
        const [stats] = await closed;
        assert.equal(stats.outcome, side === 'client' ? 'reset-a' : 'reset-b');
      } finally {
        await cleanup();
      }
    });
  }

  test('a reset that arrives behind queued bytes stays a reset (libuv reports it as EOF)', async () => {
    const { client, s, closed, cleanup } = await pair(10_000, undefined, { sockets });
    try {
      // The client does not read: the relay stops reading the server leg, whose receive queue fills up.
      client.pause();
      const atClient = ending(client);
      const chunk = Buffer.alloc(256 * 1024, 1);
      for (let i = 0; i < 64 && s.write(chunk); i++);
      await new Promise((r) => setTimeout(r, 300));
      s.resetAndDestroy();
      await new Promise((r) => setTimeout(r, 100));
      client.resume();
      assert.equal(await atClient, 'ECONNRESET', 'the client sees the server\'s reset, not a clean end of a cut stream');
      const [stats] = await closed;
      assert.equal(stats.outcome, 'reset-b');
    } finally {
      await cleanup();
    }
  });

  test('a graceful end with SO_LINGER 0 armed (as the daemons arm it) still delivers every byte, then FIN', async () => {
    const { client, s, closed, cleanup } = await pair(
      10_000,
      async (a, b) => {
        sockets.setLinger(a, RESET_ON_CLOSE.seconds);
        sockets.setLinger(b, RESET_ON_CLOSE.seconds);
      },
      { sockets },
    );
    try {
      const down = randomBytes(192 * 1024 + 1);
      // The client reads only once the relay has closed: the kernel still holds bytes for it at that moment,
      // which close() with linger 0 would throw away (and reset).
      client.pause();
      const atClient = collect(client);
      client.end();
      s.end(down);
      await collect(s);
      const [stats] = await closed;
      assert.equal(stats.outcome, 'done');
      client.resume();
      assert.equal(sha(await atClient), sha(down));
    } finally {
      await cleanup();
    }
  });

  test('the pair shares one idle timeout and both legs are reset', async () => {
    const { client, s, closed, cleanup } = await pair(150);
    try {
      client.on('error', () => {});
      const serverError = once(s, 'error');
      const [stats] = await closed;
      assert.equal(stats.outcome, 'idle-timeout');
      const [err] = (await serverError) as [NodeJS.ErrnoException];
      assert.equal(err.code, 'ECONNRESET');
    } finally {
      await cleanup();
    }
  });

  test('backpressure: a reader that does not read bounds what the relay buffers', async () => {
    const { client, s, relay, cleanup } = await pair();
    try {
      s.pause();
      const chunk = Buffer.alloc(64 * 1024, 7);
      let written = 0;
      // Write until the client's own socket buffer is full: the relay must have stopped reading long before.
      while (written < 64 * 1024 * 1024 && client.write(chunk)) written += chunk.length;
      await new Promise((r) => setTimeout(r, 300));
      // Everything written is either in kernel buffers or in the relay's user-space queue; the latter is bounded.
      const relayed = relay.bytesAToB;
      assert.ok(written < 64 * 1024 * 1024, 'the client saw backpressure');
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(relay.bytesAToB, relayed, 'the relay stopped reading while the server does not read');
      const received = collect(s);
      s.resume();
      client.end();
      const got = await received;
      assert.ok(got.length >= written);
    } finally {
      await cleanup();
    }
  });

    test('bytes Node already read and writes it still queues go first, in order (the hand-over)', async () => {
      const early = randomBytes(100_000);
      const confirmation = Buffer.from('confirmation');
      const { client, s, relay, closed, cleanup } = await pair(10_000, async (a, b, c) => {
        // The caller read the client's first bytes (as the signalling parser does) and left them in Node...
        c.write(early);
        let got = 0;
        await new Promise<void>((resolve) => {
          const onData = (d: Buffer) => {
            got += d.length;
            if (got >= 1000) {
              a.off('data', onData);
              a.pause();
              a.unshift(d);
              resolve();
            }
          };
          a.on('data', onData);
        });
        // ...and queued a reply on the other leg (as the concentrator's confirmation).
        b.write(confirmation);
      });
      try {
        const rest = randomBytes(2 * 1024 * 1024 + 3);
        const atServer = collect(s);
        client.end(rest);
        const all = await atServer;
        assert.equal(all.subarray(0, confirmation.length).toString(), 'confirmation');
        assert.equal(sha(all.subarray(confirmation.length)), sha(Buffer.concat([early, rest])));
        s.end();
        const [stats] = await closed;
        assert.equal(stats.outcome, 'done');
        assert.equal(relay.mode, name);
      } finally {
        await cleanup();
      }
    });

    test('destroy() resets both sides; close() half-closes both ways', async () => {
      const one = await pair();
      try {
        const errs = [once(one.client, 'error'), once(one.s, 'error')];
        one.client.write('x');
        await once(one.s, 'data');
        one.relay.destroy();
        const [stats] = await one.closed;
        assert.equal(stats.outcome, 'aborted');
        for (const e of await Promise.all(errs)) assert.equal((e[0] as NodeJS.ErrnoException).code, 'ECONNRESET');
      } finally {
        await one.cleanup();
      }
      const two = await pair();
      try {
        const atServer = collect(two.s);
        const atClient = collect(two.client);
        two.client.write('last words');
        await new Promise((r) => setTimeout(r, 50));
        two.relay.close();
        assert.equal((await atServer).toString(), 'last words', 'the server got the bytes in flight, then FIN');
        assert.equal((await atClient).length, 0, 'the client got FIN');
        two.client.end();
        two.s.end();
        const [stats] = await two.closed;
        assert.ok(stats.outcome === 'done' || stats.outcome === 'close-timeout', stats.outcome);
      } finally {
        await two.cleanup();
      }
    });
  });
}

test('memory: stream relays share their five listeners and one idle timer (nothing per connection); an ended pair leaves none behind', async () => {
  engine = undefined;
  const legs: net.Socket[] = [];
  const grab = async (a: net.Socket, b: net.Socket) => void legs.push(a, b);
  const p1 = await pair(10_000, grab);
  // The second relay arms no timer of its own: the idle sweep the first one started covers it.
  let armed = 0;
  const { setTimeout: st, setInterval: si } = globalThis;
  globalThis.setTimeout = ((...a: Parameters<typeof st>) => (armed++, st(...a))) as typeof st;
  globalThis.setInterval = ((...a: Parameters<typeof si>) => (armed++, si(...a))) as typeof si;
  let p2: Awaited<ReturnType<typeof pair>>;
  try {
    p2 = await pair(10_000, grab);
  } finally {
    globalThis.setTimeout = st;
    globalThis.setInterval = si;
  }
  try {
    assert.equal(armed, 0, 'timers armed for the second relay');
    const [a1, b1, a2, b2] = legs as [net.Socket, net.Socket, net.Socket, net.Socket];
    for (const ev of ['data', 'end', 'error', 'close', 'drain']) {
      // The relay's listener is the last one on each event (Node's own come first).
      const ours = (s: net.Socket) => s.listeners(ev).at(-1);
      assert.equal(ours(a1), ours(a2), `${ev}: one function for every relay`);
      assert.equal(ours(b1), ours(b2), `${ev}: one function for every relay`);
    }
    const dataListeners = b1.listenerCount('data');
    p1.client.end('x');
    p1.s.end('y');
    const [stats] = await p1.closed;
    assert.equal(stats.outcome, 'done');
    assert.equal(b1.listenerCount('data'), dataListeners - 1, 'the relay took its data listener away');
    assert.equal(a1.listenerCount('drain'), 0);
  } finally {
    await p1.cleanup();
    await p2.cleanup();
  }
});

test('splice: a pair starts on the stream relay and is handed over mid-transfer, exact both ways', async () => {
  engine = splice;
  spliceAfterBytes = 128 * 1024;
  const p = await pair();
  try {
    // A short exchange stays on the stream relay...
    const atServer = collect(p.s);
    p.client.write('GET / HTTP/1.1\r\n\r\n');
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(p.relay.mode, 'streams');
    // ...a bulk transfer is moved to the engine while bytes are in flight both ways.
    const up = randomBytes(5 * 1024 * 1024 + 1);
    const down = randomBytes(4 * 1024 * 1024 + 7);
    const atClient = collect(p.client);
    p.client.end(up);
    p.s.end(down);
    assert.equal(sha(await atServer), sha(Buffer.concat([Buffer.from('GET / HTTP/1.1\r\n\r\n'), up])));
    assert.equal(sha(await atClient), sha(down));
    const [stats] = await p.closed;
    assert.deepEqual([stats.outcome, stats.aToB, stats.bToA, p.relay.mode], ['done', up.length + 18, down.length, 'splice']);
  } finally {
    await p.cleanup();
    spliceAfterBytes = 0;
  }
});

test('splice: 200 pairs at once, each exact both ways; the engine holds nothing afterwards', async () => {
  engine = splice;
  const pairs = await Promise.all(Array.from({ length: 200 }, () => pair()));
  try {
    await Promise.all(
      pairs.map(async (p, i) => {
        const up = randomBytes(20_000 + i * 997);
        const down = randomBytes(30_000 + i * 13);
        const atServer = collect(p.s);
        const atClient = collect(p.client);
        p.client.end(up);
        p.s.end(down);
        assert.equal(sha(await atServer), sha(up));
        assert.equal(sha(await atClient), sha(down));
        const [stats] = await p.closed;
        assert.deepEqual([stats.outcome, stats.aToB, stats.bToA, p.relay.mode], ['done', up.length, down.length, 'splice']);
      }),
    );
    assert.equal(splice.active, 0);
  } finally {
    await Promise.all(pairs.map((p) => p.cleanup()));
  }
});

test('splice: closing the engine aborts its pairs (both sides reset) and later relays use streams', async () => {
  const own = new LinuxSpliceEngine();
  engine = own;
  const p = await pair();
  try {
    p.client.write('hello');
    await once(p.s, 'data');
    assert.equal(p.relay.mode, 'splice');
    const errs = [once(p.client, 'error'), once(p.s, 'error')];
    await own.close();
    const [stats] = await p.closed;
    assert.equal(stats.outcome, 'aborted');
    await Promise.all(errs);
  } finally {
    await p.cleanup();
  }
  const q = await pair();
  try {
    const atServer = collect(q.s);
    q.client.end('after');
    assert.equal((await atServer).toString(), 'after');
    q.s.end();
    await q.closed;
    assert.equal(q.relay.mode, 'streams', 'a closed engine hands the pair to the stream relay');
  } finally {
    await q.cleanup();
    engine = undefined;
  }
});
