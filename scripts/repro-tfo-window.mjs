#!/usr/bin/env node
// Reproduces, without mpconvert's daemons, the Linux MPTCP passive-TFO window bug (docs/kernel-tfo-window.md,
// docs/cpe.md "0-RTT and the kernel"): an MPTCP listener that accepts data in the SYN (TFO, no cookie), a
// client with two subflows that puts 16 bytes in its SYN, uploads 1 MiB, then downloads 50 MiB. With data in the
// SYN the download crawls or stalls (MPTcpExtNoDSSInWindow at the client, MPTcpExtMPTCPRetrans at the listener);
// with --no-syn-data it runs at full speed. --clamp installs the concentrator's own mitigation (its nft table,
// built by src/concentrator/ruleset.ts: the SYN window lowered to 16384 >> wscale at the listener's ingress);
// --clamp-egress the CPE's (src/cpe/ruleset.ts: `tcp window set 62` on the client's SYNs, output hook).
// Needs root, kernel MPTCP and a built tree (npm run build).
//   node scripts/repro-tfo-window.mjs [--runs N] [--no-syn-data] [--clamp | --clamp-egress]
import { Lab } from '../dist/src/lab/index.js';
import { start, runTool } from '../dist/test/support/lab-procs.js';
import { buildConcentratorRuleset } from '../dist/src/concentrator/ruleset.js';
import { buildInterceptionRuleset } from '../dist/src/cpe/ruleset.js';
import { fileURLToPath } from 'node:url';
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const argv = process.argv.slice(2);
const runs = Number(argv[argv.indexOf('--runs') + 1] || 5);
const synData = !argv.includes('--no-syn-data');
const clamp = argv.includes('--clamp') ? 'ingress' : argv.includes('--clamp-egress') ? 'egress' : 'none';
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
srv.on('connection', (s) => serve(s).catch(() => s.destroy()));
// A stalled run ends with the client giving up (reset): that must not end the listener.
async function serve(s) {
  s.on('error', () => {});
  await receiveAll(s);
  // Two subflows before the download (the bug needs them; waiting does not avoid it): at most 2 s.
  for (let i = 0; i < 40 && (p.sockets.mptcpInfo(s)?.subflows ?? 0) < 1; i++) await new Promise((r) => setTimeout(r, 50));
  console.log(JSON.stringify({ subflowsAtSend: 1 + (p.sockets.mptcpInfo(s)?.subflows ?? 0) }));
  await sendRandom(s, ${50 * MB});
  s.end();
}
console.log('ready');
`);

const lab = await Lab.up({ uplinks: [{ rate: 0 }, { rate: 0 }], servers: 1, mptcpRouting: true });
let srv;
try {
  await lab.hosts.concentrator.exec('sysctl', ['-w', 'net.ipv4.tcp_fastopen=3']);
  if (clamp === 'ingress') {
    const text = buildConcentratorRuleset({ instance: 'repro', listeners: [{ family: 4, address: '198.18.200.1', port: 5001 }], synWindowClamp: true, allow: [], dropNonCustomers: false, synRateLimit: 0 });
    await lab.hosts.concentrator.exec('nft', ['-f', '-'], { input: text });
  } else if (clamp === 'egress') {
    // Only the CPE ruleset's output chain matters here (no LAN interception in this reproducer).
    const text = buildInterceptionRuleset({ instance: 'repro', lanInterfaces: ['lan0'], tproxyPort: 15001, mark: 1, include: [], exclude: [], nativeMptcp: 'passthrough', dscpToMark: false, synWindowClamp: [{ address: '198.18.200.1', port: 5001 }] });
    await lab.hosts.cpe.exec('nft', ['-f', '-'], { input: text });
  }
  console.log(`${runs} runs, ${synData ? '16 bytes in the SYN' : 'no SYN data'}, SYN window clamp: ${clamp}`);
  srv = start(lab.hosts.concentrator, [sender, synData ? '1' : '0']);
  await srv.waitLine((l) => l.startsWith('ready'));
  let complete = 0;
  const times = [];
  for (let i = 0; i < runs; i++) {
    const t0 = Date.now();
    const out = await runTool(lab.hosts.cpe, 'mpc-client', {
      host: '198.18.200.1', port: 5001, signallingHex: '00'.repeat(16), send: MB, timeoutMs: 30_000,
      fastOpen: synData ? 'no-cookie' : 'off',
    });
    if (!out.error && out.received === 50 * MB) {
      complete++;
      times.push(Date.now() - t0);
    }
    const sf = srv.json().filter((o) => o.subflowsAtSend !== undefined)[i]?.subflowsAtSend;
    console.log(`run ${i + 1}: ${out.error ? `${out.error} after ${Date.now() - t0} ms (stalled)` : `${out.received === 50 * MB ? 'complete' : 'WRONG LENGTH'} in ${Date.now() - t0} ms`}, ${sf ?? '?'} subflows when the listener started sending`);
  }
  times.sort((a, b) => a - b);
  console.log(`complete: ${complete}/${runs}${times.length ? `, ${times[0]}-${times[times.length - 1]} ms (median ${times[Math.floor(times.length / 2)]})` : ''}`);
  if (clamp !== 'none') {
    const h = clamp === 'ingress' ? lab.hosts.concentrator : lab.hosts.cpe;
    const rules = (await h.exec('nft', ['list', 'table', 'inet', clamp === 'ingress' ? 'mpconvert_conc_repro' : 'mpconvert_cpe_repro'])).stdout;
    console.log(`clamp rules that matched: ${rules.split('\n').filter((l) => l.includes('window set') && !/packets 0 /.test(l)).map((l) => l.trim()).join(' | ')}`);
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
