/** Loopback clients for unit tests: one exchange (send, FIN, read to the end) and how it ended. */
import net from 'node:net';
import { once } from 'node:events';

export interface Exchange {
  how: 'end' | 'reset';
  received: Buffer;
}

/** Connects to 127.0.0.1:port (from `localAddress`), sends `request` and FIN, reads until the peer ends or resets. */
export async function exchange(port: number, request: Buffer, localAddress?: string): Promise<Exchange> {
  const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true, ...(localAddress ? { localAddress } : {}) });
  await once(s, 'connect');
  const parts: Buffer[] = [];
  s.on('data', (d: Buffer) => parts.push(d));
  const how = new Promise<'end' | 'reset'>((r) => {
    s.once('end', () => r('end'));
    s.once('error', () => r('reset'));
    s.once('close', () => r('reset'));
  });
  s.end(request);
  const result = { how: await how, received: Buffer.concat(parts) };
  s.destroy();
  return result;
}
