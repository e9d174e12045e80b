/**
 * A test server for lab tests, run inside a namespace: `node sink-server.js '{"host":..., "port":..., ...}'`.
 * For each connection it reports (one JSON line on stdout) what it received (bytes, sha256) and what it sent.
 * modes: "after-fin" = read until the client's FIN, then send `reply` bytes and FIN (client half-closed first);
 * "first" = send `reply` bytes and FIN at once, then read until the client's FIN (server half-closed first).
 */
import net from 'node:net';
import { createLinuxPlatform } from '../../../src/platform/linux/index.js';
import { receiveAll, sendRandom } from './stream-util.js';

interface Args {
  host: string;
  port: number;
  protocol?: 'tcp' | 'mptcp';
  reply?: number;
  mode?: 'after-fin' | 'first';
}

const args = JSON.parse(process.argv[2] ?? '{}') as Args;
const platform = createLinuxPlatform();
const family = net.isIP(args.host) === 6 ? 6 : 4;
const server =
  args.protocol === 'mptcp'
    ? await platform.sockets.listen({ family, protocol: 'mptcp', host: args.host, port: args.port, reuseAddr: true })
    : net.createServer();
(server as net.Server & { allowHalfOpen: boolean }).allowHalfOpen = true;
server.on('connection', (sock: net.Socket) => {
  sock.on('error', () => {});
  const mptcp = platform.sockets.isMptcp(sock);
  // Taken now: once the peer has closed, Node no longer knows the addresses.
  const { remoteAddress: remote, localAddress: local } = sock;
  const report = (r: { bytes: number; sha256: string }, sentSha: string) =>
    process.stdout.write(JSON.stringify({ remote, local, received: r.bytes, receivedSha256: r.sha256, sentSha256: sentSha, mptcp }) + '\n');
  void (async () => {
    try {
      if (args.mode === 'first') {
        const recv = receiveAll(sock);
        recv.catch(() => undefined); // awaited below; a reset while sending must not end the whole server
        const sent = await sendRandom(sock, args.reply ?? 0);
        sock.end();
        report(await recv, sent);
      } else {
        const r = await receiveAll(sock);
        const sent = await sendRandom(sock, args.reply ?? 0);
        sock.end();
        report(r, sent);
      }
    } catch (err) {
      process.stdout.write(JSON.stringify({ error: (err as Error).message }) + '\n');
    }
  })();
});
if (args.protocol !== 'mptcp') server.listen(args.port, args.host);
const ready = () => process.stdout.write(JSON.stringify({ ready: true }) + '\n');
if (server.listening) ready();
else server.once('listening', ready);
process.on('SIGTERM', () => process.exit(0));
