/**
 * Runs inside a lab namespace (net.ipv4.tcp_fastopen=3) for sockets.test.ts: every scenario prints one JSON
 * line with what it observed, so the test asserts from the outside.
 */
import net from 'node:net';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createLinuxPlatform, fdOf } from '../../../src/platform/linux/index.js';
import { twoCallSubflows } from '../../../src/platform/linux/sockets.js';
import { peek } from '../../../src/platform/linux/ffi.js';
import type { PlatformError } from '../../../src/platform/errors.js';

const { sockets, kernel } = createLinuxPlatform();
const out = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify(o, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)) + '\n');
const scenario = process.argv[2];

async function tfo(protocol: 'mptcp' | 'tcp', family: 4 | 6): Promise<void> {
  const host = family === 4 ? '127.0.0.1' : '::1';
  const server = await sockets.listen({ family, protocol, host, port: 0, reuseAddr: true, fastOpenQueue: 16, fastOpenNoCookie: true, allowHalfOpen: true });
  const port = (server.address() as net.AddressInfo).port;
  const syn = Buffer.from(`signalling-in-the-syn-${protocol}-${family}`);
  const accepted = new Promise<{ atAccept: string; mptcp: boolean; subflows: number; tos: number; info: unknown; body: string }>((resolve) => {
    server.once('connection', (s: net.Socket) => {
      // What is queued at accept: with TFO, the SYN's payload (peeked, so the stream still reads it).
      const atAccept = peek(fdOf(s), 4096).toString('hex');
      const first: Buffer | null = null;
      const mptcp = sockets.isMptcp(s);
      const info = sockets.mptcpInfo(s);
      const subflows = sockets.subflows(s).length;
      const tos = sockets.getTos(s);
      const chunks: Buffer[] = first ? [first] : [];
      s.on('data', (d: Buffer) => chunks.push(d));
      s.on('end', () => {
        s.end('bye');
        resolve({ atAccept, mptcp, subflows, tos, info, body: Buffer.concat(chunks).toString() });
      });
    });
  });
  const sock = await sockets.dial({ family, protocol, host, port, fastOpen: 'no-cookie', data: syn, timeoutMs: 5000, tos: 0x28 });
  const clientMptcp = sockets.isMptcp(sock);
  const clientInfo = sockets.mptcpInfo(sock);
  const clientSubflows = sockets.subflows(sock);
  const tcpInfo = sockets.tcpInfo(sock);
  const clientTos = sockets.getTos(sock);
  sock.setEncoding('utf8');
  let reply = '';
  sock.on('data', (d: string) => (reply += d));
  sock.end('-and-more');
  const srv = await accepted;
  await new Promise((r) => sock.once('close', r));
  server.close();
  out({
    scenario: `tfo-${protocol}-${family}`,
    sentHex: syn.toString('hex'),
    serverAtAccept: srv.atAccept,
    serverBody: srv.body,
    serverMptcp: srv.mptcp,
    serverSubflows: srv.subflows,
    serverTos: srv.tos,
    clientMptcp,
    clientInfo,
    clientSubflows,
    tcpInfoOptions: tcpInfo?.options ?? null,
    tcpInfoState: tcpInfo?.state ?? null,
    clientTos,
    reply,
  });
}

/**
 * The SYN/ACK is dropped for the first 700 ms, so the client's handshake cannot complete before the SYN/ACK
 * retransmission (~1 s): a server that accepted the connection with its bytes before the dial resolved got
 * them in the SYN.
 */
async function synDataBeforeHandshake(protocol: 'mptcp' | 'tcp'): Promise<void> {
  const server = await sockets.listen({ family: 4, protocol, host: '127.0.0.1', port: 0, fastOpenQueue: 16, fastOpenNoCookie: true });
  const port = (server.address() as net.AddressInfo).port;
  await kernel.nft.applyTable('inet', 'mpcdrop', `chain out {\n type filter hook output priority 0;\n tcp sport ${port} tcp flags & (syn|ack) == syn|ack counter drop\n}`);
  const t0 = Date.now();
  const accepted = new Promise<{ atMs: number; bytes: string; socket: net.Socket }>((resolve) => {
    server.once('connection', (s: net.Socket) => {
      // Kept open until the client is through: closing it now would RST the half-open handshake.
      resolve({ atMs: Date.now() - t0, bytes: peek(fdOf(s), 4096).toString('hex'), socket: s });
    });
  });
  const lift = setTimeout(() => void kernel.nft.deleteTable('inet', 'mpcdrop'), 700);
  const data = Buffer.from('in-the-syn-before-any-ack');
  const sock = await sockets.dial({ family: 4, protocol, host: '127.0.0.1', port, fastOpen: 'no-cookie', data, timeoutMs: 5000 });
  const establishedMs = Date.now() - t0;
  const mptcp = sockets.isMptcp(sock);
  const acc = await accepted;
  clearTimeout(lift);
  await kernel.nft.deleteTable('inet', 'mpcdrop');
  acc.socket.destroy();
  sock.destroy();
  server.close();
  out({ scenario: `syn-data-${protocol}`, sentHex: data.toString('hex'), acceptedHex: acc.bytes, acceptedMs: acc.atMs, establishedMs, mptcp });
}

async function subflows(): Promise<void> {
  // The namespace has an MPTCP 'subflow' endpoint on 127.0.0.2: the client opens a second subflow from it.
  const server = await sockets.listen({ family: 4, protocol: 'mptcp', host: '127.0.0.1', port: 0 });
  const port = (server.address() as net.AddressInfo).port;
  server.on('connection', (s: net.Socket) => s.pipe(s));
  const sock = await sockets.dial({ family: 4, protocol: 'mptcp', host: '127.0.0.1', port });
  // The path manager adds subflows once the connection is fully established (data acknowledged both ways).
  sock.write('ping');
  await new Promise((r) => sock.once('data', r));
  let list = sockets.subflows(sock);
  for (let i = 0; i < 100 && list.length < 2; i++) {
    await new Promise((r) => setTimeout(r, 20));
    list = sockets.subflows(sock);
  }
  const info = sockets.mptcpInfo(sock);
  const twoCalls = twoCallSubflows(fdOf(sock)).map((sf) => ({ local: sf.local, remote: sf.remote, state: sf.tcp?.state }));
  const payload = Buffer.alloc(1024 * 1024, 0x5a);
  let got = 0;
  sock.on('data', (d: Buffer) => (got += d.length));
  const ended = new Promise((r) => sock.once('end', r));
  sock.end(payload);
  await ended;
  sock.destroy();
  server.close();
  out({ scenario: 'subflows', subflows: list, twoCalls, info, echoed: got });
}

async function errors(): Promise<void> {
  const codes: Record<string, string> = {};
  const attempt = async (name: string, spec: Parameters<typeof sockets.dial>[0]) => {
    const t0 = Date.now();
    try {
      const s = await sockets.dial(spec);
      s.destroy();
      codes[name] = 'connected';
    } catch (err) {
      codes[name] = (err as PlatformError).code;
      codes[`${name}Syscall`] = (err as PlatformError).syscall;
      codes[`${name}Ms`] = String(Date.now() - t0);
    }
  };
  // A port nobody listens on (the namespace is fresh).
  await attempt('refused', { family: 4, protocol: 'mptcp', host: '127.0.0.1', port: 9, timeoutMs: 3000 });
  await attempt('refusedTfo', { family: 4, protocol: 'mptcp', host: '127.0.0.1', port: 9, fastOpen: 'no-cookie', data: Buffer.from('x'), timeoutMs: 3000 });
  await attempt('unreachable', { family: 4, protocol: 'mptcp', host: '198.19.255.1', port: 80, timeoutMs: 3000 });
  // 198.18.0.99 is on a veth link whose peer has no address: nothing answers, so the connect times out.
  await attempt('timeout', { family: 4, protocol: 'mptcp', host: '198.18.0.99', port: 80, timeoutMs: 400 });
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 100);
  await attempt('aborted', { family: 4, protocol: 'tcp', host: '198.18.0.99', port: 80, timeoutMs: 3000, signal: ac.signal });
  const held = await sockets.listen({ family: 4, protocol: 'mptcp', host: '127.0.0.1', port: 7000 });
  try {
    await sockets.listen({ family: 4, protocol: 'mptcp', host: '127.0.0.1', port: 7000 });
    codes['inUse'] = 'listening';
  } catch (err) {
    codes['inUse'] = (err as PlatformError).code;
    codes['inUseMessage'] = (err as Error).message;
  }
  held.close();
  out({ scenario: 'errors', ...codes });
}

async function bulk(): Promise<void> {
  // Lots of data both ways through a dialled MPTCP socket: the sockets are ordinary Node streams.
  const server = await sockets.listen({ family: 4, protocol: 'mptcp', host: '127.0.0.1', port: 0, allowHalfOpen: true });
  const port = (server.address() as net.AddressInfo).port;
  server.on('connection', (s: net.Socket) => s.pipe(s));
  const sock = await sockets.dial({ family: 4, protocol: 'mptcp', host: '127.0.0.1', port });
  const payload = Buffer.alloc(8 * 1024 * 1024);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 7919) & 0xff;
  const h = createHash('sha256');
  let n = 0;
  sock.on('data', (d: Buffer) => {
    h.update(d);
    n += d.length;
  });
  const ended = new Promise((r) => sock.once('end', r));
  sock.end(payload);
  await ended;
  server.close();
  out({ scenario: 'bulk', sent: createHash('sha256').update(payload).digest('hex'), received: h.digest('hex'), bytes: n });
}

async function backlog(): Promise<void> {
  // Listeners asked for 4096 (MPTCP and TCP) and one with the default: `ss -ltn` reads their backlog (Send-Q).
  const mptcp = await sockets.listen({ family: 4, protocol: 'mptcp', host: '127.0.0.1', port: 0, backlog: 4096, fastOpenQueue: 16, fastOpenNoCookie: true });
  const tcp = await sockets.listen({ family: 4, protocol: 'tcp', host: '127.0.0.1', port: 0, backlog: 4096 });
  const dflt = await sockets.listen({ family: 4, protocol: 'tcp', host: '127.0.0.1', port: 0 });
  const port = (s: net.Server) => (s.address() as net.AddressInfo).port;
  // ss -ltn: for a listener, Send-Q is its backlog (sk_max_ack_backlog), Recv-Q its accept queue.
  const ss = execFileSync('ss', ['-Hltn'], { encoding: 'utf8' });
  const sendQ = (p: number) => {
    const line = ss.split('\n').find((l) => l.trim().split(/\s+/)[3] === `127.0.0.1:${p}`);
    return line === undefined ? null : Number(line.trim().split(/\s+/)[2]);
  };
  out({ scenario: 'backlog', mptcp: sendQ(port(mptcp)), tcp: sendQ(port(tcp)), dflt: sendQ(port(dflt)), somaxconn: Number((await kernel.sysctl.get('net.core.somaxconn')).trim()), ss });
  for (const s of [mptcp, tcp, dflt]) s.close();
}

switch (scenario) {
  case 'backlog':
    await backlog();
    break;
  case 'tfo':
    await tfo('mptcp', 4);
    await tfo('mptcp', 6);
    await tfo('tcp', 4);
    break;
  case 'syn-data':
    await synDataBeforeHandshake('mptcp');
    await synDataBeforeHandshake('tcp');
    break;
  case 'subflows':
    await subflows();
    break;
  case 'errors':
    await errors();
    break;
  case 'bulk':
    await bulk();
    break;
  default:
    throw new Error(`unknown scenario ${scenario}`);
}
