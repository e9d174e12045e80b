/**
 * Adversarial: a spoofed-source SYN flood on the concentrator's listener while LAN clients connect through a CPE
 * with 0-RTT (the default). The flood comes from the internet segment (hping3 in a server namespace, one process
 * per spoofed source, every source a lab address on the concentrator's inet0 link so its SYN/ACKs have a route:
 * the kernel then queues a request for each), bounded in packets and time. The listener's SYN queue fills and the
 * kernel answers with SYN cookies, which do not take SYN data.
 *
 * - sources inside the customer prefixes: the CPE's 0-RTT dials come up without their SYN data taken and are
 *   retried at once without data in the SYN, which SYN cookies serve;
 * - sources outside them, with synFlood.dropNonCustomers: the concentrator's nft table drops the flood before the
 *   SYN queue, no SYN cookie is sent, 0-RTT keeps landing.
 * Each prints the served share and the median time per connection (`#` lines), for docs/concentrator.md.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab } from '../../../src/lab/index.js';
import { labCapabilityMissing, IN_CI, requireTool } from '../../support/capabilities.js';
import { CLI, Proc, TOOL, start } from '../../support/lab-procs.js';
import { deterministicSha256 } from '../../support/tools/stream-util.js';

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

const CONC4 = '198.18.200.1';
/** Spoofed sources: unused addresses of the concentrator's inet0 link (198.19.0.0/24; servers .11+, pool .128+). */
const SPOOFED = Array.from({ length: 4 }, (_, i) => `198.19.0.${100 + i}`);
/** Per hping3 process: one SYN every 500 us (2000/s), at most this many. */
const FLOOD_PACKETS = 120_000;
const CLIENTS = 40;
const SIZE = 100_000;

describe('SYN flood on the concentrator (lab, adversarial)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  let http: Proc;
  let conc: Proc | undefined;
  let cpe: Proc | undefined;
  const floods: Proc[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'mpc-flood-'));

  async function nstat(host: Lab['hosts']['concentrator'], name: string): Promise<number> {
    const out = (await host.exec('nstat', ['-az', name])).stdout;
    return Number(new RegExp(`${name}\\s+(\\d+)`).exec(out)?.[1] ?? 0);
  }

  async function startConcentrator(yaml: string): Promise<void> {
    await conc?.stop();
    const file = join(dir, `conc-${Date.now()}.yaml`);
    writeFileSync(file, `listen: ["${CONC4}:5000"]\nadmin: "127.0.0.1:9090"\nshutdownDrainS: 0\n${yaml}`);
    conc = start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', file]);
    await conc.waitLine((l) => l.startsWith('ready'));
  }

  async function startFlood(): Promise<void> {
    for (const src of SPOOFED) {
      floods.push(new Proc(lab.hosts.servers[0]!.spawn('timeout', ['120', 'hping3', '-q', '-S', '-p', '5000', '-a', src, '-i', 'u500', '-c', String(FLOOD_PACKETS), CONC4])));
    }
  }

  async function stopFlood(): Promise<void> {
    for (const f of floods.splice(0)) await f.stop('SIGINT');
  }

  /** CLIENTS sequential downloads through the CPE; served = complete with the right hash. */
  async function clients(seed: string): Promise<{ served: number; medianMs: number }> {
    let served = 0;
    const times: number[] = [];
    for (let i = 0; i < CLIENTS; i++) {
      const t0 = Date.now();
      const r = await lab.hosts.client.exec(
        'bash',
        ['-o', 'pipefail', '-c', `curl -sS --fail --max-time 8 'http://${lab.hosts.servers[0]!.v4}:8080/bytes/${SIZE}?seed=${seed}${i}' | sha256sum`],
        { allowFailure: true, timeoutMs: 20_000 },
      );
      if (r.stdout.split(' ')[0] === deterministicSha256(`${seed}${i}`, SIZE)) {
        served++;
        times.push(Date.now() - t0);
      }
    }
    times.sort((a, b) => a - b);
    return { served, medianMs: times[Math.floor(times.length / 2)] ?? NaN };
  }

  const cpeMetric = async (re: RegExp) => Number(re.exec((await lab.hosts.cpe.exec('curl', ['-s', 'http://127.0.0.1:9091/metrics'])).stdout)?.[1] ?? 0);

  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: 0 }, { rate: 0 }], servers: 1 });
    http = start(lab.hosts.servers[0]!, [TOOL('http-server'), JSON.stringify({ host: '::', port: 8080 })]);
    await http.waitLine((l) => l.includes('ready'));
    // The kernel's defaults, stated: SYN cookies when the queue overflows.
    await lab.hosts.concentrator.exec('sysctl', ['-qw', 'net.ipv4.tcp_syncookies=1']);
    await startConcentrator('allow: ["198.18.0.0/15"]\n');
    const file = join(dir, 'cpe.yaml');
    // Defaults (zeroRtt on), but no direct fallback: a client served around the concentrator would hide a refusal.
    writeFileSync(file, `lan: [lan0]\nuplinks: [{interface: up1}, {interface: up2}]\nadmin: "127.0.0.1:9091"\nfallback: refuse\nconcentrators:\n  - address: "${CONC4}:5000"\n`);
    cpe = start(lab.hosts.cpe, [CLI, 'cpe', '--config', file]);
    await cpe.waitLine((l) => l.startsWith('ready'), 30_000);
  });

  after(async () => {
    await stopFlood();
    await cpe?.stop();
    await conc?.stop();
    await http?.stop();
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Floods until the listener answers with SYN cookies (or 20 s), runs the clients, stops the flood. */
  async function underFlood(seed: string, expectCookies: boolean) {
    const cookies0 = await nstat(lab.hosts.concentrator, 'TcpExtSyncookiesSent');
    const retries0 = await cpeMetric(/result="zero-rtt-retry"[^}]*\} (\d+)/);
    const ok0 = await cpeMetric(/capability_total\{result="ok"[^}]*\} (\d+)/);
    const tfo0 = await nstat(lab.hosts.concentrator, 'TcpExtTCPFastOpenPassive');
    await startFlood();
    try {
      if (expectCookies) {
        for (const deadline = Date.now() + 20_000; Date.now() < deadline && (await nstat(lab.hosts.concentrator, 'TcpExtSyncookiesSent')) === cookies0; ) {
          await new Promise((r) => setTimeout(r, 200));
        }
      } else {
        // As long as the cookie case takes to start (the queue holds 4096 requests: about 2 s at this rate), and more.
        await new Promise((r) => setTimeout(r, 4_000));
      }
      const floodingAtStart = floods.every((f) => f.running);
      const r = await clients(seed);
      const floodingAtEnd = floods.every((f) => f.running);
      return {
        ...r,
        floodingAtStart,
        floodingAtEnd,
        cookies: (await nstat(lab.hosts.concentrator, 'TcpExtSyncookiesSent')) - cookies0,
        retries: (await cpeMetric(/result="zero-rtt-retry"[^}]*\} (\d+)/)) - retries0,
        converted: (await cpeMetric(/capability_total\{result="ok"[^}]*\} (\d+)/)) - ok0,
        tfo: (await nstat(lab.hosts.concentrator, 'TcpExtTCPFastOpenPassive')) - tfo0,
      };
    } finally {
      await stopFlood();
    }
  }

  test('spoofed sources inside the customer prefixes: SYN cookies; the CPE retries without SYN data and the clients are served', { timeout: 300_000 }, async (t) => {
    if (!requireTool(t, 'hping3')) return;
    const base = await clients('calm');
    assert.equal(base.served, CLIENTS, 'without a flood every client is served');
    const r = await underFlood('flood', true);
    process.stdout.write(`# inside the customer prefixes: served ${r.served}/${CLIENTS}, median ${r.medianMs} ms (calm: ${base.medianMs} ms), SYN cookies sent ${r.cookies}, 0-RTT retries ${r.retries}, SYN data taken ${r.tfo}, converted ${r.converted}\n`);
    assert.ok(r.floodingAtStart && r.floodingAtEnd, 'the flood lasted while the clients connected');
    assert.ok(r.cookies > 0, 'the flood made the listener answer with SYN cookies');
    assert.ok(r.retries > 0, `the CPE retried without SYN data; the CPE's log:\n${cpe!.stderr.slice(-2500)}`);
    assert.ok(r.served >= CLIENTS * 0.9, `most clients served: ${r.served}/${CLIENTS}; the CPE's log:\n${cpe!.stderr.slice(-3000)}`);
    assert.equal(r.converted, r.served, 'every served client went through the concentrator');
    assert.equal(conc!.running, true, 'the concentrator is alive');
    const health = await lab.hosts.concentrator.exec('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', 'http://127.0.0.1:9090/healthz']);
    assert.equal(health.stdout, '200');
  });

  test('spoofed sources outside the customer prefixes, synFlood.dropNonCustomers on: the flood never reaches the SYN queue, 0-RTT keeps landing', { timeout: 300_000 }, async (t) => {
    if (!requireTool(t, 'hping3')) return;
    // The CPE's uplinks are the customers; the flood's sources (198.19.0.100-103) are not.
    await startConcentrator('allow: ["198.18.0.0/16"]\nsynFlood:\n  dropNonCustomers: true\n');
    const dropped0 = Number(/counter packets (\d+) bytes \d+ drop comment "mpconvert: SYN from a non-customer/.exec((await lab.hosts.concentrator.exec('nft', ['list', 'table', 'inet', 'mpconvert_conc_default'])).stdout)?.[1] ?? NaN);
    const r = await underFlood('guarded', false);
    const dropped = Number(/counter packets (\d+) bytes \d+ drop comment "mpconvert: SYN from a non-customer/.exec((await lab.hosts.concentrator.exec('nft', ['list', 'table', 'inet', 'mpconvert_conc_default'])).stdout)?.[1] ?? NaN) - dropped0;
    process.stdout.write(`# outside the customer prefixes, dropNonCustomers: served ${r.served}/${CLIENTS}, median ${r.medianMs} ms, flood SYNs dropped by nft ${dropped}, SYN cookies sent ${r.cookies}, 0-RTT retries ${r.retries}, SYN data taken ${r.tfo}\n`);
    assert.ok(r.floodingAtStart && r.floodingAtEnd, 'the flood lasted while the clients connected');
    assert.ok(dropped > 10_000, `the nft table dropped the flood (${dropped})`);
    assert.equal(r.cookies, 0, 'no SYN cookie: the queue never overflowed');
    assert.equal(r.served, CLIENTS, cpe!.stderr.slice(-3000));
    assert.equal(r.converted, CLIENTS, 'every client went through the concentrator');
    assert.ok(r.tfo >= CLIENTS, `0-RTT landed (${r.tfo} SYN data taken)`);
    assert.equal(conc!.running, true);
  });
});
