/**
 * A UDP echo server for lab tests, run inside a namespace: `node udp-echo.js '{"host":..., "port":...}'`.
 * Answers every datagram with its payload, from the address and port it was sent to. Prints "ready", then
 * on SIGTERM one JSON line: datagrams answered and the distinct peers (address:port) seen.
 */
import dgram from 'node:dgram';
import { isIP } from 'node:net';

const args = JSON.parse(process.argv[2] ?? '{}') as { host: string; port: number };
const sock = dgram.createSocket({ type: isIP(args.host) === 6 ? 'udp6' : 'udp4', recvBufferSize: 4 << 20 });
let answered = 0;
const peers = new Set<string>();
sock.on('message', (msg, rinfo) => {
  answered++;
  peers.add(`${rinfo.address}:${rinfo.port}`);
  sock.send(msg, rinfo.port, rinfo.address);
});
sock.bind(args.port, args.host, () => process.stdout.write('ready\n'));
process.on('SIGTERM', () => {
  process.stdout.write(JSON.stringify({ answered, peers: [...peers] }) + '\n');
  process.exit(0);
});
