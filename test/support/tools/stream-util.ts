/** Helpers shared by the lab test tools: send N random bytes with backpressure, hash what arrives. */
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';

/** Sends `total` random bytes; the returned hash covers `alreadySent` (sent earlier, e.g. in the SYN) first. */
export async function sendRandom(sock: Socket, total: number, alreadySent: Buffer = Buffer.alloc(0)): Promise<string> {
  const h = createHash('sha256');
  h.update(alreadySent);
  let sent = 0;
  while (sent < total) {
    const chunk = randomBytes(Math.min(256 * 1024, total - sent));
    h.update(chunk);
    sent += chunk.length;
    if (!sock.write(chunk)) await new Promise<void>((r, j) => {
      const onDrain = () => { sock.off('close', onClose); r(); };
      const onClose = () => { sock.off('drain', onDrain); j(new Error('closed while sending')); };
      sock.once('drain', onDrain);
      sock.once('close', onClose);
    });
  }
  return h.digest('hex');
}

export interface Received {
  bytes: number;
  sha256: string;
  head: Buffer;
}

/** Keeps the first `keepHead` bytes apart (the echo), hashes and counts the rest until FIN. Rejects on reset. */
export function receiveAll(sock: Socket, keepHead = 0): Promise<Received> {
  const h = createHash('sha256');
  let bytes = 0;
  const head: Buffer[] = [];
  let headLen = 0;
  return new Promise((resolve, reject) => {
    sock.on('data', (d: Buffer) => {
      if (headLen < keepHead) {
        const take = d.subarray(0, keepHead - headLen);
        head.push(take);
        headLen += take.length;
        d = d.subarray(take.length);
      }
      h.update(d);
      bytes += d.length;
    });
    sock.once('end', () => resolve({ bytes, sha256: h.digest('hex'), head: Buffer.concat(head) }));
    sock.once('error', reject);
  });
}

/** A deterministic byte stream (AES-128-CTR over zeros, keyed by `seed`): server and test agree on its hash. */
export function* deterministicChunks(seed: string, total: number, chunkSize = 256 * 1024): Generator<Buffer> {
  const key = createHash('sha256').update(seed).digest().subarray(0, 16);
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  const zeros = Buffer.alloc(chunkSize);
  let left = total;
  while (left > 0) {
    const n = Math.min(chunkSize, left);
    yield cipher.update(n === chunkSize ? zeros : zeros.subarray(0, n));
    left -= n;
  }
}

export function deterministicSha256(seed: string, total: number): string {
  const h = createHash('sha256');
  for (const c of deterministicChunks(seed, total)) h.update(c);
  return h.digest('hex');
}
