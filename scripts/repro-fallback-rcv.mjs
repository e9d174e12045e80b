#!/usr/bin/env node
// Reproduces, without mpconvert's daemons, the slow receive side of an MPTCP socket in fallback
// (docs/performance.md, "The download relay and the server leg in MPTCP fallback"): in the lab's concentrator
// namespace a Python client connects to a plain TCP server that sends as fast as it can, and reads like a relay
// whose onward link is slower: at most --rate Mbit/s (in 1 ms slices), so its receive queue fills and stays full.
// Once with IPPROTO_MPTCP (the server does not speak MPTCP: the kernel falls back to TCP) and once with
// IPPROTO_TCP. A receiver that keeps up with the pacing reads --rate; the script prints the rate each read, the
// longest pause between two reads that returned data, and the receiver's and the sender's TCP counters.
// Needs root, kernel MPTCP and a built tree (npm run build).
//   node scripts/repro-fallback-rcv.mjs [--seconds 10] [--rate 2000] [--runs 2]
import { Lab } from '../dist/src/lab/index.js';
import { Proc } from '../dist/test/support/lab-procs.js';
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const argv = process.argv.slice(2);
const arg = (name, dflt) => (argv.includes(`--${name}`) ? Number(argv[argv.indexOf(`--${name}`) + 1]) : dflt);
const seconds = arg('seconds', 10);
const rateMbps = arg('rate', 2000);
const runs = arg('runs', 2);
const SERVER = '198.19.0.11';
const dir = mkdtempSync(join(tmpdir(), 'mpc-repro-'));
const sender = join(dir, 'sender.py');
const receiver = join(dir, 'receiver.py');
// The server: plain TCP, sends zeros as fast as the connection takes them, to every client, until it goes.
writeFileSync(sender, `
import socket, threading
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((${JSON.stringify(SERVER)}, 9000)); s.listen(16)
print('ready', flush=True)
buf = bytes(1 << 20)
def serve(c):
    try:
        while True: c.sendall(buf)
    except OSError: pass
    finally: c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
`);
// The receiver: reads at most rate/1000 bytes per millisecond slice (a relay whose onward link is slower).
writeFileSync(receiver, `
import socket, sys, time, json
proto = socket.IPPROTO_TCP if sys.argv[1] == 'tcp' else 262
seconds, rate = float(sys.argv[2]), float(sys.argv[3]) * 1e6 / 8
c = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
c.connect((${JSON.stringify(SERVER)}, 9000))
t0 = time.monotonic(); got = 0; last = t0; gap = 0.0; budget = 0.0; tick = t0
buf = bytearray(1 << 20); view = memoryview(buf)
while True:
    now = time.monotonic()
    if now - t0 >= seconds: break
    budget = min(budget + (now - tick) * rate, rate / 1000 * 4); tick = now
    if budget < min(65536, rate / 1000):
        time.sleep(0.001); continue
    n = c.recv_into(view[:int(min(budget, len(buf)))])
    if n == 0: break
    got += n; budget -= n
    now = time.monotonic(); gap = max(gap, now - last); last = now
fallback = None
if proto == 262:
    # MPTCP_INFO: this kernel answers EOPNOTSUPP on a connection that fell back to TCP
    try:
        c.getsockopt(284, 1, 200); fallback = False
    except OSError as e:
        fallback = e.errno == 95
c.close()
print(json.dumps({'proto': sys.argv[1], 'mbps': round(got * 8 / seconds / 1e6), 'longestPauseMs': round(gap * 1000), 'fallback': fallback}), flush=True)
`);

const COUNTERS = /TcpExtRcvPruned|TcpExtTCPRcvQDrop|TcpExtTCPRcvCollapsed|TcpExtTCPToZeroWindowAdv|TcpExtTCPBacklogDrop|MPTcpExtRcvPruned/;
const SENDER_COUNTERS = /TcpRetransSegs|TcpExtTCPTimeouts|TcpExtTCPLossProbes/;
const lab = await Lab.up({ uplinks: [{ rate: 0 }], servers: 1, mptcpRouting: true });
let srv;
try {
  const conc = lab.hosts.concentrator;
  const server = lab.hosts.servers[0];
  srv = new Proc(server.spawn('python3', ['-u', sender]));
  await srv.waitLine((l) => l.startsWith('ready'));
  const counters = async (h, re) =>
    Object.fromEntries((await h.exec('nstat', ['-az'])).stdout.split('\n').filter((l) => re.test(l)).map((l) => l.trim().split(/\s+/)).map(([k, v]) => [k, Number(v)]));
  const delta = (a, b) => Object.fromEntries(Object.keys(b).map((k) => [k, b[k] - (a[k] ?? 0)]).filter(([, v]) => v !== 0));
  console.log(`${runs} runs of ${seconds} s each, paced reads at ${rateMbps} Mbit/s in the concentrator namespace from a plain TCP server`);
  for (let i = 0; i < runs; i++) {
    for (const proto of ['mptcp', 'tcp']) {
      const [r0, s0] = [await counters(conc, COUNTERS), await counters(server, SENDER_COUNTERS)];
      const out = JSON.parse((await conc.exec('python3', [receiver, proto, String(seconds), String(rateMbps)])).stdout.trim().split('\n').pop());
      const [r1, s1] = [await counters(conc, COUNTERS), await counters(server, SENDER_COUNTERS)];
      console.log(`${proto === 'mptcp' ? `MPTCP socket${out.fallback ? ' (fallback)' : ''}` : 'TCP socket'}: ${out.mbps} Mbit/s of ${rateMbps}, longest pause ${out.longestPauseMs} ms; receiver ${JSON.stringify(delta(r0, r1))}; sender ${JSON.stringify(delta(s0, s1))}`);
    }
  }
} finally {
  await srv?.stop();
  await lab.down();
  rmSync(dir, { recursive: true, force: true });
}
