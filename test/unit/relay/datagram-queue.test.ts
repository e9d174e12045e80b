import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import fc from 'fast-check';
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

test('datagram queue (property): whatever the flows, sizes and stalls, frames arrive whole, in order, each at most once, and every frame is either delivered or counted as dropped', { timeout: 120_000 }, async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.record({ flow: fc.option(fc.integer({ min: 1, max: 5 }), { nil: undefined }), size: fc.integer({ min: 6, max: 3_000 }), stall: fc.boolean() }), { minLength: 1, maxLength: 400 }),
      fc.integer({ min: 3_000, max: 20_000 }),
      async (ops, maxBytes) => {
        const { a, b, close } = await pair();
        let dropped = 0;
        const q = new DatagramQueue(a, { maxBytes, maxAgeMs: 60_000, onDrop: (_, k) => (dropped += k) });
        const parts: Buffer[] = [];
        b.on('data', (d: Buffer) => parts.push(d));
        b.pause();
        let seq = 0;
        for (const op of ops) {
          // A frame: [u32 seq][u16 length][filler = seq & 0xff]: self-describing, so the stream can be checked.
          const f = Buffer.alloc(op.size, seq & 0xff);
          f.writeUInt32BE(seq, 0);
          f.writeUInt16BE(op.size, 4);
          q.push(f, op.flow);
          seq++;
          assert.ok(q.queuedBytes <= maxBytes);
          if (op.stall) b.pause();
          else b.resume();
        }
        b.resume();
        // Until the queue is empty and nothing more arrives (a queue that miscounts gives up after 2 s).
        for (const deadline = Date.now() + 2_000; Date.now() < deadline; ) {
          const got = parts.reduce((n, p) => n + p.length, 0);
          await new Promise((r) => setTimeout(r, 10));
          if (q.queuedFrames === 0 && got === parts.reduce((n, p) => n + p.length, 0)) break;
        }
        const stream = Buffer.concat(parts);
        let off = 0;
        let last = -1;
        let delivered = 0;
        while (off < stream.length) {
          assert.ok(off + 6 <= stream.length, 'a whole header');
          const s = stream.readUInt32BE(off);
          const len = stream.readUInt16BE(off + 4);
          assert.ok(s > last, `in order, once: ${s} after ${last}`);
          assert.equal(len, ops[s]!.size, 'the frame of that sequence number');
          assert.ok(off + len <= stream.length, 'a whole frame');
          assert.ok(stream.subarray(off + 6, off + len).every((x) => x === (s & 0xff)), 'its own bytes');
          last = s;
          off += len;
          delivered++;
        }
        assert.equal(delivered + dropped, ops.length, 'every frame delivered or counted');
        q.close();
        close();
      },
    ),
    { numRuns: 40 },
  );
});
