#!/usr/bin/env node
// What the SYN window clamp (docs/kernel-tfo-window.md) costs against the round trip 0-RTT saves, in the lab.
// Part A, two plain programs (one subflow: the kernel bug needs two, so every case is correct): a client in the
// CPE namespace sends a 16-byte request (in the SYN with TFO) and reads a response of SIZE bytes that an MPTCP
// listener on the concentrator writes as soon as the request is read. Cases, interleaved: no TFO; TFO; TFO with
// the concentrator's ingress clamp (16384 >> wscale); TFO with the CPE's egress clamp (window 62). Times from the dial
// to the first and to the last response byte, medians.
// Part B, the whole chain (CPE + concentrator daemons, curl, the lab HTTP server): curl's time_starttransfer with
// zeroRtt on or off and the concentrator's synWindowClamp on or off (one uplink).
// The lab's links have no delay (no netem here): the round trip is the veth's, a fraction of a millisecond, so
// the figures are ratios to the saving, not absolute costs. Needs root, kernel MPTCP, a built tree.
//   node scripts/measure-clamp-cost.mjs [--runs N] [--skip-chain | --chain-only]
import { Lab } from '../dist/src/lab/index.js';
import { start, CLI, TOOL } from '../dist/test/support/lab-procs.js';
import { buildConcentratorRuleset } from '../dist/src/concentrator/ruleset.js';
import { buildInterceptionRuleset } from '../dist/src/cpe/ruleset.js';
import { fileURLToPath } from 'node:url';
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const argv = process.argv.slice(2);
const runs = Number(argv[argv.indexOf('--runs') + 1] || 30);
const chain = !argv.includes('--skip-chain');
const plain = !argv.includes('--chain-only');
const SIZES = [1024, 65536, 262144];
const dir = mkdtempSync(join(tmpdir(), 'mpc-clampcost-'));
const platform = fileURLToPath(new URL('../dist/src/platform/linux/index.js', import.meta.url));
const listener = join(dir, 'listener.mjs');
const client = join(dir, 'client.mjs');
writeFileSync(listener, `
import { createLinuxPlatform } from ${JSON.stringify(platform)};
const p = createLinuxPlatform();
const srv = await p.sockets.listen({ family: 4, protocol: 'mptcp', host: '198.18.200.1', port: 5002, reuseAddr: true, fastOpenQueue: 64, fastOpenNoCookie: true });
srv.on('connection', (s) => {
  s.on('error', () => {});
  s.once('data', (d) => { s.end(Buffer.alloc(Number(d.toString().trim()))); });
});
console.log('ready');
`);
// One line per run: {ttfb, ttlb} in microseconds.
writeFileSync(client, `
import { createLinuxPlatform } from ${JSON.stringify(platform)};
const p = createLinuxPlatform();
const [size, tfo, n] = [Number(process.argv[2]), process.argv[3] === '1', Number(process.argv[4])];
for (let i = 0; i < n; i++) {
  const t0 = process.hrtime.bigint();
  const s = await p.sockets.dial({ family: 4, protocol: 'mptcp', host: '198.18.200.1', port: 5002, fastOpen: tfo ? 'no-cookie' : 'off', data: Buffer.from(String(size).padStart(16)) });
  let got = 0;
  let ttfb;
  await new Promise((resolve, reject) => {
    s.on('data', (d) => { if (ttfb === undefined) ttfb = process.hrtime.bigint(); got += d.length; });
    s.on('end', resolve);
    s.on('error', reject);
  });
  const ttlb = process.hrtime.bigint();
  s.destroy();
  if (got !== size) throw new Error('short response ' + got);
  console.log(JSON.stringify({ ttfb: Number(ttfb - t0) / 1000, ttlb: Number(ttlb - t0) / 1000 }));
}
`);

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};
const ms = (us) => (us / 1000).toFixed(3);

const lab = await Lab.up({ uplinks: [{ rate: 0 }], servers: 1 });
const procs = [];
try {
  const conc = lab.hosts.concentrator;
  const cpe = lab.hosts.cpe;
  await conc.exec('sysctl', ['-qw', 'net.ipv4.tcp_fastopen=3']);
  const ingress = buildConcentratorRuleset({ instance: 'cost', listeners: [{ family: 4, address: '198.18.200.1', port: 5002 }], synWindowClamp: true, allow: [], dropNonCustomers: false, synRateLimit: 0 });
  const egress = buildInterceptionRuleset({ instance: 'cost', lanInterfaces: ['lan0'], tproxyPort: 15001, mark: 1, include: [], exclude: [], nativeMptcp: 'passthrough', dscpToMark: false, synWindowClamp: [{ address: '198.18.200.1', port: 5002 }] });
  const l = start(conc, [listener]);
  procs.push(l);
  await l.waitLine((x) => x.startsWith('ready'));
  if (plain) {
    const rtt = (await cpe.exec('ping', ['-c', '20', '-i', '0.05', '-q', '198.18.200.1'], { allowFailure: true })).stdout.match(/= [\d.]+\/([\d.]+)\//)?.[1];
    console.log(`Part A: plain programs, one subflow, ${runs} runs per case (ping RTT ${rtt ?? '?'} ms)`);
    const cases = [
      { name: 'no TFO', tfo: false, clamp: 'none' },
      { name: 'TFO', tfo: true, clamp: 'none' },
      { name: 'TFO + ingress clamp', tfo: true, clamp: 'ingress' },
      { name: 'TFO + egress clamp (62)', tfo: true, clamp: 'egress' },
    ];
    for (const size of SIZES) {
      const res = new Map(cases.map((c) => [c.name, { ttfb: [], ttlb: [] }]));
      // Interleaved in rounds of 5 so a slow moment of the machine does not land on one case.
      for (let round = 0; round < runs / 5; round++) {
        for (const c of cases) {
          await conc.exec('nft', ['delete', 'table', 'inet', 'mpconvert_conc_cost'], { allowFailure: true });
          await cpe.exec('nft', ['delete', 'table', 'inet', 'mpconvert_cpe_cost'], { allowFailure: true });
          if (c.clamp === 'ingress') await conc.exec('nft', ['-f', '-'], { input: ingress });
          if (c.clamp === 'egress') await cpe.exec('nft', ['-f', '-'], { input: egress });
          const p = start(cpe, [client, String(size), c.tfo ? '1' : '0', '5']);
          await p.exited;
          for (const o of p.json()) {
            res.get(c.name).ttfb.push(o.ttfb);
            res.get(c.name).ttlb.push(o.ttlb);
          }
        }
      }
      const m = new Map([...res].map(([k, v]) => [k, { ttfb: median(v.ttfb), ttlb: median(v.ttlb) }]));
      const saved = m.get('no TFO').ttfb - m.get('TFO').ttfb;
      console.log(`response ${size} B: median time to first byte / last byte (ms)`);
      for (const c of cases) {
        const x = m.get(c.name);
        const cost = x.ttfb - m.get('TFO').ttfb;
        console.log(`  ${c.name.padEnd(26)} ${ms(x.ttfb)} / ${ms(x.ttlb)}${c.clamp !== 'none' ? `   clamp cost (first byte) ${ms(cost)} ms = ${(cost / saved).toFixed(2)} of the ${ms(saved)} ms 0-RTT saves` : ''}`);
      }
    }
  }
  l.child.kill('SIGTERM');
  await l.exited;

  if (chain) {
    const http = start(lab.hosts.servers[0], [TOOL('http-server'), JSON.stringify({ host: '::', port: 8080 })]);
    procs.push(http);
    await http.waitLine((x) => x.includes('ready'));
    const url = (size, i) => `http://${lab.hosts.servers[0].v4}:8080/bytes/${size}?seed=c${i}`;
    const variants = [
      { name: 'zeroRtt off', zeroRtt: false, clamp: true },
      { name: 'zeroRtt on, no clamp', zeroRtt: true, clamp: false },
      { name: 'zeroRtt on, clamp (default)', zeroRtt: true, clamp: true },
    ];
    console.log(`Part B: the chain (LAN client curl -> CPE -> concentrator -> HTTP server), one uplink, ${runs} requests per case`);
    for (const size of [1024, 65536]) {
      console.log(`response ${size} B: median curl time_starttransfer / time_total (ms)`);
      const out = new Map();
      for (const v of variants) {
        writeFileSync(join(dir, 'c.yaml'), `listen: ["198.18.200.1:5000"]\nallow: ["198.18.0.0/15"]\nsynWindowClamp: ${v.clamp}\nshutdownDrainS: 0\n`);
        writeFileSync(join(dir, 'p.yaml'), `lan: [lan0]\nuplinks: [{interface: up1}]\nconcentrators:\n  - address: "198.18.200.1:5000"\n    zeroRtt: ${v.zeroRtt}\n`);
        const c = start(conc, [CLI, 'concentrator', '--config', join(dir, 'c.yaml')]);
        await c.waitLine((x) => x.startsWith('ready'));
        const p = start(cpe, [CLI, 'cpe', '--config', join(dir, 'p.yaml')]);
        await p.waitLine((x) => x.startsWith('ready'), 30_000);
        const st = [];
        const tt = [];
        for (let i = 0; i < runs; i++) {
          const r = await lab.hosts.client.exec('curl', ['-sS', '--fail', '-o', '/dev/null', '-w', '%{time_starttransfer} %{time_total}', url(size, i)]);
          const [a, b] = r.stdout.trim().split(' ').map(Number);
          st.push(a * 1e6);
          tt.push(b * 1e6);
        }
        await p.stop();
        await c.stop();
        out.set(v.name, { st: median(st), tt: median(tt) });
      }
      const saved = out.get('zeroRtt off').st - out.get('zeroRtt on, no clamp').st;
      for (const v of variants) {
        const x = out.get(v.name);
        const cost = x.st - out.get('zeroRtt on, no clamp').st;
        console.log(`  ${v.name.padEnd(28)} ${ms(x.st)} / ${ms(x.tt)}${v.name.includes('clamp (default)') ? `   clamp cost ${ms(cost)} ms = ${(cost / saved).toFixed(2)} of the ${ms(saved)} ms 0-RTT saves` : ''}`);
      }
    }
  }
} finally {
  for (const p of procs) await p.stop().catch(() => {});
  await lab.down();
  rmSync(dir, { recursive: true, force: true });
}
