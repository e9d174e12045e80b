import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { DatagramQueue, type DatagramDropReason } from '../../../src/relay/datagram-queue.js';

async function pair(): Promise<{ a: net.Socket; b: net.Socket; close: () => void }> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  const a = net.connect(port, '127.0.0.1');
  const [b] = (await once(server, 'connection')) as [net.Socket];
  await once(a, 'connect');
  return { a, b, close: () => (a.destroy(), b.destroy(), server.close()) };
}

test('datagram queue: everything arrives whole and in order when the reader keeps up', async () => {
  const { a, b, close } = await pair();
  const drops: DatagramDropReason[] = [];
  const q = new DatagramQueue(a, { maxBytes: 1 << 20, maxAgeMs: 10_000, onDrop: (r) => drops.push(r) });
  const frames = Array.from({ length: 200 }, (_, i) => Buffer.alloc(100, i & 0xff));
  const want = Buffer.concat(frames);
  const got: Buffer[] = [];
  let n = 0;
  const done = new Promise<void>((r) => b.on('data', (d: Buffer) => (got.push(d), (n += d.length) >= want.length && r())));
  for (const f of frames) q.push(f);
  await done;
  assert.ok(Buffer.concat(got).equals(want));
  assert.deepEqual(drops, []);
  close();
});

test('datagram queue: a reader that stops makes it drop the oldest frames beyond maxBytes, never a partial frame', async () => {
  const { a, b, close } = await pair();
  b.pause();
  let full = 0;
  const q = new DatagramQueue(a, { maxBytes: 10_000, maxAgeMs: 60_000, onDrop: (r, k) => r === 'queue-full' && (full += k) });
  for (let i = 0; i < 20_000; i++) q.push(Buffer.alloc(1_000, 7));
  assert.ok(q.queuedBytes <= 10_000, `queued ${q.queuedBytes}`);
  assert.ok(full > 0, 'drops counted');
  q.close();
  close();
});

test('datagram queue: a frame older than maxAgeMs when its turn comes is dropped as stale', async () => {
  const { a, b, close } = await pair();
  b.pause();
  let now = 0;
  let stale = 0;
  const q = new DatagramQueue(a, { maxBytes: 1 << 30, maxAgeMs: 50, now: () => now, onDrop: (r, k) => r === 'stale' && (stale += k) });
  // Fill the kernel and Node's buffer so later frames wait in the queue.
  for (let i = 0; i < 4_000; i++) q.push(Buffer.alloc(4_000, 1));
  const waiting = q.queuedFrames;
  assert.ok(waiting > 0);
  now = 1_000;
  b.resume();
  for (const deadline = Date.now() + 10_000; stale < waiting && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 10));
  assert.ok(stale >= waiting - 1, `stale ${stale} of ${waiting}`);
  q.close();
  close();
});

test('datagram queue: when full, a flow over its share loses its own frames; a small flow sharing the queue loses none', async () => {
  const { a, b, close } = await pair();
  let full = 0;
  const q = new DatagramQueue(a, { maxBytes: 20_000, maxAgeMs: 60_000, onDrop: (r, k) => r === 'queue-full' && (full += k) });
  const BULK = 1;
  const SMALL = 2;
  let got = 0;
  b.on('data', (d: Buffer) => {
    for (const x of d) if (x === SMALL) got++;
  });
  // Each turn of the event loop the bulk flow offers 100 kB, more than the socket drains in a turn; the
  // small flow offers one 100-byte frame. (Plain drop-oldest, frames pushed without their flow, loses most of
  // the small flow's frames here.)
  const turns = 300;
  for (let t = 0; t < turns; t++) {
    // The small frame waits behind a batch in flight, and the bulk flow overflows the queue behind it.
    for (let i = 0; i < 10; i++) q.push(Buffer.alloc(1_000, BULK), BULK);
    q.push(Buffer.alloc(100, SMALL), SMALL);
    for (let i = 0; i < 90; i++) q.push(Buffer.alloc(1_000, BULK), BULK);
    await new Promise((r) => setImmediate(r));
  }
  for (const deadline = Date.now() + 5_000; got < turns * 100 && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 10));
  assert.ok(full > 1_000, `the bulk flow's excess was dropped: ${full} frames`);
  assert.equal(got, turns * 100, 'every frame of the small flow arrived');
  q.close();
  close();
});
