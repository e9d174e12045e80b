/**
 * Small probes run inside lab namespaces with this Node binary (the machine has no ping): a TCP reachability
 * check (connect, read back the address the server saw) and a UDP loss meter (N numbered datagrams, then an
 * END handshake retried until the receiver's count comes back, so no fixed waits).
 */
import type { ChildProcess } from 'node:child_process';
import { MpconvertError } from '../errors.js';
import type { LabHost } from './index.js';

const TCP_SERVER = `
const net = require('node:net');
const [host, port] = process.argv.slice(1);
const srv = net.createServer((s) => { s.on('error', () => {}); s.end(JSON.stringify({ peer: s.remoteAddress, local: s.localAddress }) + '\\n'); });
srv.listen(Number(port), host, () => process.stdout.write('ready ' + srv.address().port + '\\n'));
`;

const TCP_CLIENT = `
const net = require('node:net');
const [host, port, localAddress, timeout] = process.argv.slice(1);
const s = net.connect({ host, port: Number(port), ...(localAddress ? { localAddress } : {}) });
let buf = '';
const t = setTimeout(() => { console.log(JSON.stringify({ ok: false, error: 'timeout' })); process.exit(0); }, Number(timeout));
s.on('data', (d) => (buf += d));
s.on('end', () => { clearTimeout(t); const r = JSON.parse(buf); console.log(JSON.stringify({ ok: true, ...r })); process.exit(0); });
s.on('error', (e) => { clearTimeout(t); console.log(JSON.stringify({ ok: false, error: e.code || e.message })); process.exit(0); });
`;

const UDP_SINK = `
const dgram = require('node:dgram');
const [host, port] = process.argv.slice(1);
const sock = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
const seen = new Set();
sock.on('message', (m, r) => {
  const text = m.toString();
  if (text === 'END') sock.send(JSON.stringify({ received: seen.size, from: r.address }), r.port, r.address);
  else seen.add(text);
});
sock.bind(Number(port), host, () => process.stdout.write('ready ' + sock.address().port + '\\n'));
`;

const UDP_SOURCE = `
const dgram = require('node:dgram');
const [host, port, count, localAddress] = process.argv.slice(1);
const sock = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
const n = Number(count);
sock.bind(0, localAddress || undefined, async () => {
  // Paced (10 per ms) so no socket or qdisc queue drops what the test means the loss rule to drop.
  for (let i = 0; i < n; i++) {
    sock.send('seq' + i, Number(port), host);
    if (i % 10 === 9) await new Promise((r) => setTimeout(r, 1));
  }
  let tries = 0;
  sock.on('message', (m) => { console.log(JSON.stringify({ sent: n, ...JSON.parse(m.toString()) })); process.exit(0); });
  const end = () => {
    if (++tries > 200) { console.log(JSON.stringify({ sent: n, error: 'no answer to END' })); process.exit(0); }
    sock.send('END', Number(port), host);
    setTimeout(end, 25);
  };
  end();
});
`;

/** Waits for the "ready PORT" line of a probe server. */
function ready(child: ChildProcess, what: string, timeoutMs = 10_000): Promise<number> {
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const onOut = (d: Buffer) => {
      out += d.toString();
      const m = /^ready (\d+)$/m.exec(out);
      if (m) finish(undefined, Number(m[1]));
    };
    const onErr = (d: Buffer) => (err += d.toString());
    const onExit = (code: number | null) => finish(new MpconvertError('MPC_ERR_LAB_PROBE', `${what} exited (${code}) before it was ready: ${err.trim()}`));
    const t = setTimeout(() => finish(new MpconvertError('MPC_ERR_LAB_PROBE', `${what} not ready within ${timeoutMs} ms: ${err.trim()}`)), timeoutMs);
    function finish(e?: Error, port?: number) {
      clearTimeout(t);
      child.stdout?.off('data', onOut);
      child.stderr?.off('data', onErr);
      child.off('exit', onExit);
      if (e) reject(e);
      else resolve(port!);
    }
    child.stdout?.on('data', onOut);
    child.stderr?.on('data', onErr);
    child.once('exit', onExit);
  });
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGKILL');
  await gone;
}

export interface TcpReachResult {
  ok: boolean;
  /** The client address the server saw (IPv4 as ::ffff:a.b.c.d when the server listens on ::). */
  peer?: string;
  local?: string;
  error?: string;
}

/** Can `from` open a TCP connection to `address` (a local address of `to`)? */
export async function tcpReach(from: LabHost, to: LabHost, address: string, opts: { localAddress?: string; timeoutMs?: number } = {}): Promise<TcpReachResult> {
  const server = to.spawn(process.execPath, ['-e', TCP_SERVER, address, '0']);
  try {
    const port = await ready(server, `TCP probe server on ${address} in ${to.name}`);
    const r = await from.exec(process.execPath, ['-e', TCP_CLIENT, address, String(port), opts.localAddress ?? '', String(opts.timeoutMs ?? 2000)]);
    return JSON.parse(r.stdout) as TcpReachResult;
  } finally {
    await stop(server);
  }
}

export interface UdpLossResult {
  sent: number;
  received: number;
  /** The source address the sink saw (after any NAT on the way). */
  from?: string;
  error?: string;
}

/** Sends `count` UDP datagrams from `from` to `address` (on `to`) and returns how many arrived. */
export async function udpLoss(from: LabHost, to: LabHost, address: string, opts: { count?: number; localAddress?: string } = {}): Promise<UdpLossResult> {
  const sink = to.spawn(process.execPath, ['-e', UDP_SINK, address, '0']);
  try {
    const port = await ready(sink, `UDP probe sink on ${address} in ${to.name}`);
    const r = await from.exec(process.execPath, ['-e', UDP_SOURCE, address, String(port), String(opts.count ?? 1000), opts.localAddress ?? ''], { timeoutMs: 60_000 });
    const out = JSON.parse(r.stdout) as Partial<UdpLossResult>;
    if (out.error !== undefined || out.received === undefined) throw new MpconvertError('MPC_ERR_LAB_PROBE', `UDP probe ${from.name} -> ${address}: ${out.error ?? 'no count'}`);
    return { sent: out.sent ?? 0, received: out.received, ...(out.from !== undefined ? { from: out.from } : {}) };
  } finally {
    await stop(sink);
  }
}
