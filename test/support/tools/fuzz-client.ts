/**
 * Fuzz driver for the live concentrator, run in the CPE namespace: each payload from `file` goes in the SYN
 * of a new MPTCP connection, followed by FIN. Prints how many were done and how many got any byte back.
 */
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { createLinuxPlatform } from '../../../src/platform/linux/index.js';

const args = JSON.parse(process.argv[2] ?? '{}') as { host: string; port: number; file: string; concurrency?: number };
const payloads = JSON.parse(readFileSync(args.file, 'utf8')) as string[];
const platform = createLinuxPlatform();
let next = 0;
let done = 0;
let echoed = 0;
let failedDial = 0;

async function one(hex: string): Promise<void> {
  let sock: net.Socket;
  try {
    sock = await platform.sockets.dial({
      family: net.isIP(args.host) === 6 ? 6 : 4,
      protocol: 'mptcp',
      host: args.host,
      port: args.port,
      fastOpen: 'no-cookie',
      data: Buffer.from(hex, 'hex'),
      timeoutMs: 10_000,
    });
  } catch {
    failedDial++;
    return;
  }
  await new Promise<void>((resolve) => {
    let got = false;
    sock.on('data', () => {
      got = true;
    });
    sock.on('error', () => {});
    sock.once('close', () => {
      if (got) echoed++;
      resolve();
    });
    sock.end();
    setTimeout(() => sock.destroy(), 10_000).unref();
  });
}

async function worker(): Promise<void> {
  while (next < payloads.length) {
    const p = payloads[next++] as string;
    await one(p);
    done++;
  }
}

await Promise.all(Array.from({ length: args.concurrency ?? 32 }, worker));
process.stdout.write(JSON.stringify({ done, echoed, failedDial }) + '\n');
