/**
 * Holds many connections open without sending a byte (a slowloris CPE), inside a lab namespace. Opens
 * `count` connections (`concurrency` at a time) from `localAddress`, prints {"holding": open, "reset": n,
 * "failed": n} once every attempt settled, keeps the open ones for `holdMs`, then closes them all (FIN) and
 * prints {"done": true, "reset": n}: how many the server reset in all.
 */
import net from 'node:net';
import { createLinuxPlatform } from '../../../src/platform/linux/index.js';

interface Args {
  host: string;
  port: number;
  localAddress?: string;
  count: number;
  concurrency?: number;
  holdMs: number;
  protocol?: 'tcp' | 'mptcp';
}

const args = JSON.parse(process.argv[2] ?? '{}') as Args;
const platform = createLinuxPlatform();
const out = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');
const open = new Set<net.Socket>();
let reset = 0;
let failed = 0;

async function one(): Promise<void> {
  try {
    const s = await platform.sockets.dial({
      family: net.isIP(args.host) === 6 ? 6 : 4,
      protocol: args.protocol ?? 'mptcp',
      host: args.host,
      port: args.port,
      fastOpen: 'off',
      ...(args.localAddress ? { localAddress: args.localAddress } : {}),
      timeoutMs: 10_000,
    });
    open.add(s);
    s.on('error', () => {
      reset++;
      open.delete(s);
    });
    s.on('end', () => open.delete(s));
    s.resume();
  } catch (err) {
    if ((err as { code?: string }).code === 'ECONNRESET') reset++;
    else failed++;
  }
}

let next = 0;
await Promise.all(
  Array.from({ length: Math.min(args.concurrency ?? 50, args.count) }, async () => {
    while (next < args.count) {
      next++;
      await one();
    }
  }),
);
// Resets that come right after the handshake need a moment to arrive.
await new Promise((r) => setTimeout(r, 300));
out({ holding: open.size, reset, failed });
await new Promise((r) => setTimeout(r, args.holdMs));
for (const s of open) s.end();
await new Promise((r) => setTimeout(r, 200));
for (const s of open) s.destroy();
out({ done: true, reset, failed });
process.exit(0);
