/**
 * UDP clients for lab tests, run inside a namespace; one JSON line on stdout at the end.
 * - mode "probe": one socket sends `pps` small datagrams a second for `durationMs` to an echo server
 *   (test/support/tools/udp-echo.ts), each carrying its sequence number; reports the round-trip times (p50, p95,
 *   max), how many came back, and the longest time between two answers (the gap of a failover).
 * - mode "flows": `flows` sockets bound round-robin to `localAddresses`, all at once, each sending `rounds`
 *   datagrams naming itself; reports how many answers reached the socket that asked (`own`) and any that
 *   reached another (`foreign`).
 */
import dgram from 'node:dgram';
import { isIP } from 'node:net';

interface Args {
  mode: 'probe' | 'flows';
  host: string;
  port: number;
  pps?: number;
  durationMs?: number;
  size?: number;
  localAddresses?: string[];
  flows?: number;
  rounds?: number;
  timeoutMs?: number;
}

const args = JSON.parse(process.argv[2] ?? '{}') as Args;
const out = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');
const type = isIP(args.host) === 6 ? 'udp6' : 'udp4';
const pct = (xs: number[], p: number) => (xs.length === 0 ? NaN : [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))]!);

async function probe(): Promise<void> {
  const sock = dgram.createSocket(type);
  const pps = args.pps ?? 20;
  const duration = args.durationMs ?? 5_000;
  const sentAt = new Map<number, number>();
  const rtts: number[] = [];
  let lastAnswer: number | undefined;
  let firstAnswer: number | undefined;
  let maxGap = 0;
  sock.on('message', (msg) => {
    const seq = msg.readUInt32BE(0);
    const t = sentAt.get(seq);
    if (t === undefined) return;
    sentAt.delete(seq);
    const now = performance.now();
    rtts.push(now - t);
    if (lastAnswer !== undefined) maxGap = Math.max(maxGap, now - lastAnswer);
    firstAnswer ??= now;
    lastAnswer = now;
  });
  await new Promise<void>((r) => sock.bind(0, r));
  const start = performance.now();
  let seq = 0;
  await new Promise<void>((resolve) => {
    const tick = () => {
      const now = performance.now();
      if (now - start >= duration) return resolve();
      const b = Buffer.alloc(args.size ?? 64);
      b.writeUInt32BE(seq, 0);
      sentAt.set(seq++, now);
      sock.send(b, args.port, args.host);
      setTimeout(tick, Math.max(0, start + (seq * 1000) / pps - performance.now()));
    };
    tick();
  });
  await new Promise((r) => setTimeout(r, 1_000));
  sock.close();
  out({ sent: seq, received: rtts.length, p50: pct(rtts, 0.5), p95: pct(rtts, 0.95), max: Math.max(...rtts), maxGapMs: maxGap, spanMs: (lastAnswer ?? 0) - (firstAnswer ?? 0) });
}

async function flows(): Promise<void> {
  const n = args.flows ?? 200;
  const rounds = args.rounds ?? 3;
  const locals = args.localAddresses ?? [];
  let own = 0;
  let foreign = 0;
  const socks = await Promise.all(
    Array.from({ length: n }, (_, i) => {
      const s = dgram.createSocket(type);
      s.on('message', (msg) => {
        if (msg.toString().startsWith(`flow-${i}-`)) own++;
        else foreign++;
      });
      const address = locals.length > 0 ? locals[i % locals.length] : undefined;
      return new Promise<dgram.Socket>((r) => s.bind({ port: 0, ...(address ? { address } : {}) }, () => r(s)));
    }),
  );
  const deadline = Date.now() + (args.timeoutMs ?? 10_000);
  for (let r = 0; r < rounds; r++) {
    socks.forEach((s, i) => s.send(Buffer.from(`flow-${i}-round-${r}`), args.port, args.host));
    // Poll for the answers of this round (bounded), before the next.
    while (own + foreign < n * (r + 1) && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
  }
  for (const s of socks) s.close();
  out({ flows: n, rounds, own, foreign, expected: n * rounds });
}

await (args.mode === 'flows' ? flows() : probe());
