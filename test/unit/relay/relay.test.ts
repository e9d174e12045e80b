import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { once } from 'node:events';
import { Relay, type RelayStats } from '../../../src/relay/index.js';

/**
 * Builds client <-> [relay: a | b] <-> server on loopback. `a` is the relay's accepted socket from the
 * client, `b` its connection to the server.
 */
async function pair(idleTimeoutMs = 10_000) {
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
  const relay = new Relay(a, b, { idleTimeoutMs });
  const closed = once(relay, 'close') as Promise<[RelayStats]>;
  const cleanup = () => {
    for (const x of [client, a, b, s]) x.destroy();
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
    cleanup();
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
    cleanup();
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
    cleanup();
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
    cleanup();
  }
});
