/**
 * Fuzz driver for the live concentrator, run in the CPE namespace: each payload from `file` goes in the SYN
 * of a new MPTCP connection, followed by FIN. Prints how many were done, how many got an RFC 8803 Convert
 * message carrying an Error TLV back (a correct answer to a malformed RFC 8803 message), and how many got any
 * other byte back (`echoed`: a confirmation, which no malformed payload may get).
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
let errorReplies = 0;
/** The first few payloads that got a reply other than an error, with that reply: what to look at if any does. */
const confirmed: Array<{ payload: string; reply: string }> = [];

/** RFC 8803 Convert message (version 1, magic 0x2263) whose first TLV is an Error TLV (type 30). */
function isConvertError(b: Buffer): boolean {
  return b.length >= 5 && b[0] === 1 && b.readUInt16BE(2) === 0x2263 && b[4] === 30;
}
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
    const got: Buffer[] = [];
    sock.on('data', (d: Buffer) => got.push(d));
    sock.on('error', () => {});
    sock.once('close', () => {
      const reply = Buffer.concat(got);
      if (isConvertError(reply)) errorReplies++;
      else if (reply.length > 0) {
        echoed++;
        if (confirmed.length < 5) confirmed.push({ payload: hex, reply: reply.subarray(0, 64).toString('hex') });
      }
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
process.stdout.write(JSON.stringify({ done, echoed, errorReplies, failedDial, confirmed }) + '\n');
