/**
 * A small real HTTP server for lab tests: GET /bytes/N?seed=S streams N deterministic bytes;
 * PUT or POST /upload answers {"bytes":N,"sha256":"..."} of the body. `{"host":..,"port":..}` on argv.
 * Every answer carries `x-peer`: the client address the server saw (IPv4-mapped folded), for source-address tests.
 */
import http from 'node:http';
import { createHash } from 'node:crypto';
import { deterministicChunks } from './stream-util.js';

const args = JSON.parse(process.argv[2] ?? '{}') as { host: string; port: number };
const server = http.createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://x');
  const peer = (req.socket.remoteAddress ?? '').replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/, '$1');
  res.setHeader('x-peer', peer);
  const m = /^\/bytes\/(\d+)$/.exec(url.pathname);
  if (req.method === 'GET' && m) {
    const total = Number(m[1]);
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(total) });
    const it = deterministicChunks(url.searchParams.get('seed') ?? 'seed', total);
    const pump = () => {
      for (;;) {
        const n = it.next();
        if (n.done) {
          res.end();
          return;
        }
        if (!res.write(n.value)) {
          res.once('drain', pump);
          return;
        }
      }
    };
    pump();
    return;
  }
  if ((req.method === 'PUT' || req.method === 'POST') && url.pathname === '/upload') {
    const h = createHash('sha256');
    let bytes = 0;
    req.on('data', (d: Buffer) => {
      h.update(d);
      bytes += d.length;
    });
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ bytes, sha256: h.digest('hex'), peer }));
    });
    return;
  }
  res.writeHead(404).end();
});
server.listen(args.port, args.host, () => process.stdout.write(JSON.stringify({ ready: true }) + '\n'));
process.on('SIGTERM', () => process.exit(0));
