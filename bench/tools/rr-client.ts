/**
 * Load generator of the bench (runs in the LAN client namespace, or the CPE's for the kernel ceiling).
 *
 * mode "rr": `concurrency` workers open a connection, send a request of `reqBytes` ('R...'), read the response
 * until the server closes, and start over, for `durationMs` (at most `maxConnections`). Prints one JSON line:
 * completed connections, errors, connections per second and time to first byte (connect() call to the first
 * response byte) percentiles in ms.
 *
 * mode "idle": opens `count` connections (`concurrency` at a time), each sends 'I' and waits for the response,
 * so that every relay on the way has both legs up; prints {"held":n,...}, then holds them until SIGTERM.
 */
import net from 'node:net';

interface Args {
  mode: 'rr' | 'idle';
  host: string;
  port: number;
  concurrency?: number;
  durationMs?: number;
  maxConnections?: number;
  count?: number;
  reqBytes?: number;
  respBytes?: number;
  timeoutMs?: number;
  /**
   * rr: print {"armed":true}, then start at the first line on stdin: a barrier, so that clients in many namespaces
   * (started one by one on a loaded machine) begin together. Adds startedAt/endedAt (ms since the epoch).
   */
  barrier?: boolean;
  /** rr: also print every time to first byte (`ttfbs`, ms), for percentiles across several clients. */
  samples?: boolean;
}

const a = JSON.parse(process.argv[2] ?? '{}') as Args;
const reqBytes = a.reqBytes ?? 100;
const respBytes = a.respBytes ?? 100;
const timeoutMs = a.timeoutMs ?? 10_000;

function percentile(sorted: number[], p: number): number | null {
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

/** One exchange. Resolves with the ttfb in ms, or rejects. `hold`: keep the socket and resolve after the response. */
function exchange(kind: 'R' | 'I', held?: net.Socket[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    let ttfb = -1;
    let got = 0;
    const sock = net.connect({ host: a.host, port: a.port, noDelay: true });
    const timer = setTimeout(() => finish(new Error('timeout')), timeoutMs);
    const finish = (err?: Error) => {
      clearTimeout(timer);
      if (err) {
        sock.destroy();
        reject(err);
      } else resolve(ttfb);
    };
    sock.on('connect', () => {
      const req = Buffer.alloc(reqBytes, 0x78);
      req[0] = kind.charCodeAt(0);
      sock.write(req);
    });
    sock.on('data', (d) => {
      if (ttfb < 0) ttfb = Number(process.hrtime.bigint() - t0) / 1e6;
      got += d.length;
      if (kind === 'I' && got >= respBytes) {
        held!.push(sock);
        sock.removeAllListeners('data');
        finish();
      }
    });
    sock.on('end', () => {
      if (kind === 'R') {
        sock.end();
        if (got >= respBytes) finish();
        else finish(new Error(`short response: ${got} bytes`));
      } else finish(new Error('closed while held'));
    });
    sock.on('error', (e) => finish(e));
  });
}

async function runRr(): Promise<void> {
  const concurrency = a.concurrency ?? 16;
  if (a.barrier) {
    process.stdout.write(JSON.stringify({ armed: true }) + '\n');
    await new Promise<void>((resolve) => process.stdin.once('data', () => resolve()));
    process.stdin.destroy();
  }
  const startedAt = Date.now();
  const deadline = startedAt + (a.durationMs ?? 3_000);
  const max = a.maxConnections ?? Number.MAX_SAFE_INTEGER;
  const ttfbs: number[] = [];
  const errors: Record<string, number> = {};
  let started = 0;
  const t0 = process.hrtime.bigint();
  const worker = async () => {
    while (Date.now() < deadline && started < max) {
      started++;
      try {
        ttfbs.push(await exchange('R'));
      } catch (e) {
        const k = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
        errors[k] = (errors[k] ?? 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  ttfbs.sort((x, y) => x - y);
  const nerr = Object.values(errors).reduce((s, n) => s + n, 0);
  process.stdout.write(
    JSON.stringify({
      completed: ttfbs.length, errors: nerr, errorKinds: errors, seconds, cps: ttfbs.length / seconds, ttfbP50: percentile(ttfbs, 50), ttfbP99: percentile(ttfbs, 99),
      ...(a.barrier ? { startedAt, endedAt: Date.now() } : {}),
      ...(a.samples ? { ttfbs: ttfbs.map((x) => Math.round(x * 1000) / 1000) } : {}),
    }) + '\n',
  );
}

async function runIdle(): Promise<void> {
  const count = a.count ?? 1000;
  const concurrency = a.concurrency ?? 100;
  const held: net.Socket[] = [];
  let next = 0;
  let errors = 0;
  // What failed, by error code (the bench prints it next to the count).
  const errorKinds: Record<string, number> = {};
  const worker = async () => {
    while (next < count) {
      next++;
      try {
        await exchange('I', held);
      } catch (err) {
        errors++;
        const kind = (err as { code?: string }).code ?? (err as Error).message;
        errorKinds[kind] = (errorKinds[kind] ?? 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  process.stdout.write(JSON.stringify({ held: held.length, errors, errorKinds }) + '\n');
  let closed = 0;
  for (const s of held) s.on('close', () => closed++);
  process.on('SIGTERM', () => {
    process.stdout.write(JSON.stringify({ closedWhileHeld: closed }) + '\n');
    for (const s of held) s.destroy();
    process.exit(0);
  });
  setInterval(() => {}, 60_000);
}

if (a.mode === 'idle') await runIdle();
else await runRr();
