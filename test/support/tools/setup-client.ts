/**
 * Connection setup times against one or more concentrators, run inside a namespace: `rounds` times, one
 * connection to each target in turn (so every target sees the same machine load), each an MPTCP dial with the
 * signalling sent first thing after the handshake; setup time = from the dial to the whole echo (`head` bytes)
 * received. Then FIN, and the next connection once this one has closed. Prints one JSON line:
 * { ms: number[][] (per target, in order), errors: number[] (per target) }.
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { createLinuxPlatform } from '../../../src/platform/linux/index.js';

interface Args {
  targets: Array<{ host: string; port: number }>;
  signallingHex: string;
  /** Bytes of the echo to wait for (the signalling's length). */
  head: number;
  rounds: number;
}

const args = JSON.parse(process.argv[2] ?? '{}') as Args;
const platform = createLinuxPlatform();
const signalling = Buffer.from(args.signallingHex, 'hex');

async function one(host: string, port: number): Promise<number | null> {
  const t0 = performance.now();
  let sock: net.Socket;
  try {
    sock = await platform.sockets.dial({ family: net.isIP(host) === 6 ? 6 : 4, protocol: 'mptcp', host, port, fastOpen: 'off', data: signalling, timeoutMs: 10_000 });
  } catch {
    return null;
  }
  sock.allowHalfOpen = true;
  return new Promise<number | null>((resolve) => {
    let got = 0;
    let setup: number | null = null;
    const timer = setTimeout(() => sock.destroy(), 30_000);
    sock.on('error', () => {});
    sock.on('data', (d: Buffer) => {
      got += d.length;
      if (setup === null && got >= args.head) {
        setup = performance.now() - t0;
        sock.end();
      }
    });
    sock.once('end', () => sock.end());
    sock.once('close', () => {
      clearTimeout(timer);
      resolve(setup);
    });
  });
}

const ms: number[][] = args.targets.map(() => []);
const errors: number[] = args.targets.map(() => 0);
for (let r = 0; r < args.rounds; r++) {
  for (const [i, t] of args.targets.entries()) {
    const x = await one(t.host, t.port);
    if (x === null) errors[i] = (errors[i] as number) + 1;
    else (ms[i] as number[]).push(x);
  }
}
process.stdout.write(JSON.stringify({ ms, errors }) + '\n');
process.exit(0);
