/**
 * Holds many converted connections open at once, inside a lab namespace: opens `count` MPTCP connections
 * from `localAddress` (all at once), each sending the signalling first thing after the handshake; a
 * connection is admitted when the whole echo (`head` bytes) came back, refused when it was reset or closed
 * before. Prints {"admitted": n, "refused": n, "subflows": [max subflows seen per admitted connection]} once
 * every connection settled, keeps the admitted ones open for `holdMs`, then sends `send` bytes on each, closes
 * them (FIN), and prints {"done": true} once all have closed.
 */
import net from 'node:net';
import { createLinuxPlatform } from '../../../src/platform/linux/index.js';

interface Args {
  host: string;
  port: number;
  signallingHex: string;
  head: number;
  count: number;
  localAddress?: string;
  holdMs: number;
  send?: number;
  /** Wait (at most 5 s) until every admitted connection has this many subflows before reporting (default 1). */
  subflows?: number;
}

const args = JSON.parse(process.argv[2] ?? '{}') as Args;
const platform = createLinuxPlatform();
const out = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');
const signalling = Buffer.from(args.signallingHex, 'hex');

async function one(): Promise<net.Socket | undefined> {
  let s: net.Socket;
  try {
    s = await platform.sockets.dial({
      family: net.isIP(args.host) === 6 ? 6 : 4,
      protocol: 'mptcp',
      host: args.host,
      port: args.port,
      ...(args.localAddress ? { localAddress: args.localAddress } : {}),
      timeoutMs: 20_000,
    });
  } catch {
    return undefined;
  }
  s.allowHalfOpen = true;
  s.on('error', () => {});
  s.write(signalling);
  let got = 0;
  return new Promise((resolve) => {
    const onData = (b: Buffer) => {
      got += b.length;
      if (got >= args.head) {
        s.off('data', onData);
        s.pause();
        resolve(s);
      }
    };
    s.on('data', onData);
    s.once('close', () => resolve(undefined));
  });
}

const all = await Promise.all(Array.from({ length: args.count }, () => one()));
const admitted = all.filter((s): s is net.Socket => s !== undefined);
const count = (s: net.Socket) => {
  try {
    return platform.sockets.subflows(s).length;
  } catch {
    return 0;
  }
};
// Joins complete a round trip or two after the handshake: polled, with a deadline.
const want = args.subflows ?? 1;
for (const deadline = Date.now() + 5_000; Date.now() < deadline && admitted.some((s) => count(s) < want); ) await new Promise((r) => setTimeout(r, 50));
out({ admitted: admitted.length, refused: args.count - admitted.length, subflows: admitted.map(count) });
await new Promise((r) => setTimeout(r, args.holdMs));
await Promise.all(
  admitted.map(
    (s) =>
      new Promise<void>((resolve) => {
        s.once('close', () => resolve());
        s.resume();
        s.end(Buffer.alloc(args.send ?? 0));
      }),
  ),
);
out({ done: true });
process.exit(0);
