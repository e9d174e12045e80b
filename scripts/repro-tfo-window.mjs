#!/usr/bin/env node
// Reproduces, without mpconvert's daemons, the Linux MPTCP bug that keeps the CPE's zeroRtt off by default
// (docs/cpe.md, "0-RTT and the kernel"): an MPTCP listener that accepts data in the SYN (TFO, no cookie), a
// client with two subflows that puts 16 bytes in its SYN, uploads 1 MiB, then downloads 50 MiB. With data in the
// SYN the download crawls or stalls (MPTcpExtNoDSSInWindow at the client, MPTcpExtMPTCPRetrans at the listener);
// with --no-syn-data it runs at full speed. Needs root, kernel MPTCP and a built tree (npm run build).
//   node scripts/repro-tfo-window.mjs [--runs N] [--no-syn-data]
import { Lab } from '../dist/src/lab/index.js';
import { start, runTool } from '../dist/test/support/lab-procs.js';
import { fileURLToPath } from 'node:url';
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const argv = process.argv.slice(2);
const runs = Number(argv[argv.indexOf('--runs') + 1] || 5);
const synData = !argv.includes('--no-syn-data');
const MB = 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'mpc-repro-'));
const sender = join(dir, 'sender.mjs');
const platform = fileURLToPath(new URL('../dist/src/platform/linux/index.js', import.meta.url));
const util = fileURLToPath(new URL('../dist/test/support/tools/stream-util.js', import.meta.url));
// The listener: read until the client's FIN, then send 50 MiB and FIN.
writeFileSync(sender, `
import { createLinuxPlatform } from ${JSON.stringify(platform)};
import { receiveAll, sendRandom } from ${JSON.stringify(util)};
const p = createLinuxPlatform();
const tfo = process.argv[2] === '1';
const srv = await p.sockets.listen({ family: 4, protocol: 'mptcp', host: '198.18.200.1', port: 5001, reuseAddr: true, ...(tfo ? { fastOpenQueue: 64, fastOpenNoCookie: true } : {}) });
srv.allowHalfOpen = true;
srv.on('connection', async (s) => { s.on('error', () => {}); await receiveAll(s); await sendRandom(s, ${50 * MB}); s.end(); });
console.log('ready');
`);

const lab = await Lab.up({ uplinks: [{ rate: 0 }, { rate: 0 }], servers: 1, mptcpRouting: true });
let srv;
try {
  await lab.hosts.concentrator.exec('sysctl', ['-w', 'net.ipv4.tcp_fastopen=3']);
  srv = start(lab.hosts.concentrator, [sender, synData ? '1' : '0']);
  await srv.waitLine((l) => l.startsWith('ready'));
  for (let i = 0; i < runs; i++) {
    const t0 = Date.now();
    const out = await runTool(lab.hosts.cpe, 'mpc-client', {
      host: '198.18.200.1', port: 5001, signallingHex: '00'.repeat(16), send: MB, timeoutMs: 30_000,
      fastOpen: synData ? 'no-cookie' : 'off',
    });
    console.log(`run ${i + 1}: ${out.error ? `not done after ${Date.now() - t0} ms (stalled)` : `${out.received === 50 * MB ? 'complete' : 'WRONG LENGTH'} in ${Date.now() - t0} ms`}${out.subflows !== undefined ? `, ${out.subflows} subflows` : ""}`);
  }
  for (const h of [lab.hosts.cpe, lab.hosts.concentrator]) {
    const nstat = (await h.exec('nstat', ['-az'])).stdout.split('\n').filter((l) => /NoDSSInWindow|MPTCPRetrans/.test(l)).map((l) => l.replace(/\s+/g, ' ').trim());
    console.log(`${h.name}: ${nstat.join('; ')}`);
  }
} finally {
  await srv?.stop();
  await lab.down();
  rmSync(dir, { recursive: true, force: true });
}
