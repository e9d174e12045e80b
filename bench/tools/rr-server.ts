/**
 * Request/response server of the bench (runs in a server namespace). The first byte of a connection's request
 * says what to do: 'R' = answer `respBytes` and close (setup test), 'I' = answer and hold the connection open
 * (memory test). Prints `{"ready":true}` once listening. Args: JSON {host, port, respBytes}.
 */
import net from 'node:net';

const args = JSON.parse(process.argv[2] ?? '{}') as { host: string; port: number; respBytes?: number };
const resp = Buffer.alloc(args.respBytes ?? 100, 0x79);
let held = 0;

const server = net.createServer({ noDelay: true }, (sock) => {
  sock.on('error', () => sock.destroy());
  sock.once('data', (d) => {
    if (d[0] === 0x49 /* I */) {
      held++;
      sock.write(resp);
      sock.on('close', () => held--);
    } else {
      sock.end(resp);
    }
  });
});
server.maxConnections = 1_000_000;
server.listen({ host: args.host, port: args.port, backlog: 4096 }, () => process.stdout.write(JSON.stringify({ ready: true }) + '\n'));
process.on('SIGTERM', () => {
  process.stderr.write(`rr-server: ${held} held connections at exit\n`);
  process.exit(0);
});
