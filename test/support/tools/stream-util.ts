/** Helpers shared by the lab test tools: send N random bytes with backpressure, hash what arrives. */
import { createHash, randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';

export async function sendRandom(sock: Socket, total: number): Promise<string> {
  const h = createHash('sha256');
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
