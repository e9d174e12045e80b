/**
 * A raw TCP client for lab tests, run inside a namespace: `node read-client.js '{"host":..., "port":...}'`.
 * Connects with plain TCP (from the LAN client: intercepted by the CPE), reads until the server's FIN or an
 * error, and prints one JSON line: `outcome` = 'end' (a clean FIN) or the socket error's code ('ECONNRESET'),
 * the bytes received and their sha256. With `progressAt`, it also prints `{"progress": n}` once n bytes have
 * arrived, so a test can act in the middle of the transfer without sleeping. A protocol without framing of
 * its own is exactly this: only the FIN/RST distinction tells a complete transfer from a cut one.
 */
import net from 'node:net';
import { createHash } from 'node:crypto';
import { createLinuxPlatform } from '../../../src/platform/linux/index.js';

interface Args {
  host: string;
  port: number;
  progressAt?: number;
  timeoutMs?: number;
}

const args = JSON.parse(process.argv[2] ?? '{}') as Args;
const out = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');
const h = createHash('sha256');
let received = 0;
let progressed = false;
const sock = net.connect({ host: args.host, port: args.port, allowHalfOpen: true });
const timer = setTimeout(() => {
  out({ outcome: 'timeout', received });
  process.exit(3);
}, args.timeoutMs ?? 120_000);
const finish = (outcome: string) => {
  clearTimeout(timer);
  out({ outcome, received, sha256: h.digest('hex') });
  sock.destroy();
  process.exit(0);
};
sock.on('data', (d: Buffer) => {
  h.update(d);
  received += d.length;
  if (!progressed && args.progressAt !== undefined && received >= args.progressAt) {
    progressed = true;
    out({ progress: received });
  }
});
// libuv reports EOF for a reset that arrived behind queued bytes (as the relay knows, src/relay/relay.ts):
// the socket's pending error tells them apart, as a read(2) loop would see it.
const sockets = createLinuxPlatform().sockets;
sock.once('end', () => finish(sockets.takeError(sock) ?? 'end'));
sock.once('error', (err: NodeJS.ErrnoException) => finish(err.code ?? err.message));
