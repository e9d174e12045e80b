/**
 * A hand-driven MPTCP client for lab tests, run inside a namespace: dials with signalling + app bytes in the SYN (TFO),
 * then sends `send` random bytes and FIN, reads until FIN, and prints one JSON line: the first `head` bytes
 * received (the echo), the sha256 of what was sent and of what followed the head, the subflow count.
 */
import net from 'node:net';
import { createLinuxPlatform } from '../../../src/platform/linux/index.js';
import { receiveAll, sendRandom } from './stream-util.js';

interface Args {
  host: string;
  port: number;
  /** Signalling bytes, sent first in the SYN. */
  signallingHex: string;
  /** Application bytes sent in the SYN right after the signalling. */
  appHex?: string;
  localAddress?: string;
  send?: number;
  head?: number;
  protocol?: 'tcp' | 'mptcp';
  /** Wait for the server's FIN before sending (server half-closes first). */
  sendAfterFin?: boolean;
  timeoutMs?: number;
  /** Keep the connection open this long before sending and closing. */
  holdMs?: number;
  /** TFO mode of the dial (default no-cookie: the bytes go in the SYN). */
  fastOpen?: 'no-cookie' | 'cookie' | 'off';
}

const args = JSON.parse(process.argv[2] ?? '{}') as Args;
const platform = createLinuxPlatform();
const out = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');
const timer = setTimeout(() => {
  out({ error: 'timeout' });
  process.exit(3);
}, args.timeoutMs ?? 60_000);

const app = Buffer.from(args.appHex ?? '', 'hex');
let sock: net.Socket;
try {
  sock = await platform.sockets.dial({
    family: net.isIP(args.host) === 6 ? 6 : 4,
    protocol: args.protocol ?? 'mptcp',
    host: args.host,
    port: args.port,
    fastOpen: args.fastOpen ?? 'no-cookie',
    data: Buffer.concat([Buffer.from(args.signallingHex, 'hex'), app]),
    ...(args.localAddress ? { localAddress: args.localAddress } : {}),
    timeoutMs: 10_000,
  });
} catch (err) {
  out({ error: (err as { code?: string }).code ?? (err as Error).message });
  process.exit(2);
}
sock.allowHalfOpen = true;
// A reset can surface more than once (a write after it, then the read side): the outcome is reported below.
let sockError: { code?: string } | undefined;
sock.on('error', (err) => {
  sockError ??= err as { code?: string };
});
let maxSubflows = 0;
const poll = setInterval(() => {
  try {
    maxSubflows = Math.max(maxSubflows, platform.sockets.subflows(sock).length);
  } catch {
    /* closed */
  }
}, 100);
try {
  const headLen = args.head ?? 0;
  const recv = receiveAll(sock, headLen);
  recv.catch(() => undefined); // awaited below; a reset while sending must not be an unhandled rejection
  if (args.holdMs) await new Promise((r) => setTimeout(r, args.holdMs));
  if (args.sendAfterFin) {
    await new Promise((r) => sock.once('end', r));
  }
  const sentSha = await sendRandom(sock, args.send ?? 0, app);
  const mptcp = platform.sockets.isMptcp(sock);
  sock.end();
  const all = await recv;
  clearInterval(poll);
  clearTimeout(timer);
  out({
    head: all.head.toString('hex'),
    received: all.bytes,
    receivedSha256: all.sha256,
    sentSha256: sentSha,
    mptcp,
    subflows: maxSubflows,
  });
  process.exit(0);
} catch (err) {
  clearInterval(poll);
  // The socket's own error (ECONNRESET...) says more than "closed while sending".
  out({ error: sockError?.code ?? (err as { code?: string }).code ?? (err as Error).message });
  process.exit(1);
}
