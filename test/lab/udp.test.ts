/**
 * UDP over MPTCP, end to end with real applications: LAN client (dig, iperf3 -u, UDP probes) -> CPE (2 uplinks
 * of 50 Mbit/s, UDP channel) -> concentrator (RFC 4787 mappings) -> servers (dnsmasq, iperf3, a UDP echo).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync, readFileSync } from 'node:fs';
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab } from '../../src/lab/index.js';
import { labCapabilityMissing, requireTool, IN_CI } from '../support/capabilities.js';
import { CLI, Proc, TOOL, runTool, start } from '../support/lab-procs.js';
import { byLabel, delta, metric } from '../support/metrics.js';

/** A lab test that needs these tools (a skip here, a failure under CI=true, like a missing capability). */
const labTest = (name: string, tools: string[], fn: () => Promise<void>) =>
  test(name, { timeout: 150_000 }, async (t) => {
    for (const tool of tools) if (!requireTool(t, tool)) return;
    await fn();
  });
const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

const CONC4 = '198.18.200.1';

interface Probe {
  sent: number;
  received: number;
  p50: number;
  p95: number;
  max: number;
  maxGapMs: number;
}

describe('UDP over MPTCP (lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  let conc: Proc;
  let cpe: Proc;
  let dns: Proc;
  let echo: Proc;
  const dir = mkdtempSync(join(tmpdir(), 'mpc-udp-'));
  let srv4: string;

  const scrape = async (host: 'cpe' | 'concentrator') => (await lab.hosts[host].exec('curl', ['-s', `http://127.0.0.1:${host === 'cpe' ? 9091 : 9090}/metrics`])).stdout;
  const until = async (what: string, f: () => Promise<boolean>, ms = 20_000) => {
    for (const deadline = Date.now() + ms; Date.now() < deadline; ) {
      if (await f()) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.fail(`timed out waiting for ${what}`);
  };
  const channelUp = () => until('the CPE UDP channel', async () => metric(await scrape('cpe'), 'mpconvert_udp_channels') >= 1);
  const dig = async (name: string) =>
    (await lab.hosts.client.exec('dig', [`@${srv4}`, name, '+short', '+time=2', '+tries=1'], { timeoutMs: 10_000 })).stdout.trim();

  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: '50mbit' }, { rate: '50mbit' }], servers: 1 });
    srv4 = lab.hosts.servers[0]!.v4;
    const concFile = join(dir, 'conc.yaml');
    writeFileSync(
      concFile,
      `listen: ["${CONC4}:5000"]\nallow: ["198.18.0.0/15", "2001:db8::/32"]\nadmin: "127.0.0.1:9090"\ntransports: [tcp, udp]\nudp: {maxMappingsPerCpe: 300, maxDatagram: 1472}\n`,
    );
    conc = start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', concFile]);
    dns = new Proc(
      lab.hosts.servers[0]!.spawn('dnsmasq', ['-k', '--conf-file=/dev/null', '--no-resolv', '--no-hosts', '--pid-file=', '--user=root', `--listen-address=${srv4}`, '--bind-interfaces', '--log-queries', '--log-facility=-', '--host-record=www.example.test,198.18.77.7']),
    );
    echo = start(lab.hosts.servers[0]!, [TOOL('udp-echo'), JSON.stringify({ host: srv4, port: 7007 })]);
    await Promise.all([conc.waitLine((l) => l.startsWith('ready')), echo.waitLine((l) => l.includes('ready'))]);
    const cpeFile = join(dir, 'cpe.yaml');
    writeFileSync(cpeFile, `lan: [lan0]\nuplinks: [{interface: up1}, {interface: up2}]\nadmin: "127.0.0.1:9091"\ntransports: [tcp, udp]\nconcentrators:\n  - address: "${CONC4}:5000"\n`);
    cpe = start(lab.hosts.cpe, [CLI, 'cpe', '--config', cpeFile]);
    await cpe.waitLine((l) => l.startsWith('ready'), 30_000);
    await channelUp();
  });

  after(async () => {
    await cpe?.stop();
    await conc?.stop();
    await dns?.stop();
    await echo?.stop();
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  labTest('DNS: dig in the LAN gets its answer from dnsmasq through the UDP channel (the server sees the concentrator, not the client)', ['dig', 'dnsmasq'], async () => {
    const before = byLabel(await scrape('concentrator'), 'mpconvert_udp_datagrams_total', 'direction');
    assert.equal(await dig('www.example.test'), '198.18.77.7');
    const d = delta(before, byLabel(await scrape('concentrator'), 'mpconvert_udp_datagrams_total', 'direction'));
    assert.ok((d['up'] ?? 0) >= 1 && (d['down'] ?? 0) >= 1, `the query went through the concentrator: ${JSON.stringify(d)}`);
    await until('the dnsmasq log line', async () => dns.stderr.includes('query[A] www.example.test'));
    const from = /query\[A\] www\.example\.test from (\S+)/.exec(dns.stderr)?.[1];
    assert.notEqual(from, lab.hosts.client.v4, `dnsmasq saw the query from ${from}, the converted source`);
  });

  labTest('200 concurrent UDP flows from 4 LAN addresses: every answer reaches its own client', [], async () => {
    const extra = ['198.18.0.20', '198.18.0.21', '198.18.0.22'];
    for (const a of extra) await lab.hosts.client.exec('ip', ['addr', 'replace', `${a}/24`, 'dev', 'lan0']);
    const r = await runTool<{ own: number; foreign: number; expected: number }>(lab.hosts.client, 'udp-client', {
      mode: 'flows', host: srv4, port: 7007, flows: 200, rounds: 3, localAddresses: [lab.hosts.client.v4, ...extra], timeoutMs: 20_000,
    });
    assert.equal(r.foreign, 0, 'no answer reached another flow');
    assert.ok(r.own >= r.expected * 0.99, `answers to their own flow: ${r.own} of ${r.expected}`);
  });

  labTest('IPv6: a probe to the server\'s IPv6 address is answered through the channel (IPV6_RECVORIGDSTADDR, F bit)', [], async () => {
    const srv6 = lab.hosts.servers[0]!.v6;
    const echo6 = start(lab.hosts.servers[0]!, [TOOL('udp-echo'), JSON.stringify({ host: srv6, port: 7008 })]);
    try {
      await echo6.waitLine((l) => l.includes('ready'));
      const before = byLabel(await scrape('concentrator'), 'mpconvert_udp_datagrams_total', 'direction');
      const p = await runTool<Probe>(lab.hosts.client, 'udp-client', { mode: 'probe', host: srv6, port: 7008, pps: 50, durationMs: 1_000 });
      const d = delta(before, byLabel(await scrape('concentrator'), 'mpconvert_udp_datagrams_total', 'direction'));
      assert.ok(p.received >= p.sent - 1 && p.sent >= 45, `answers: ${p.received} of ${p.sent}`);
      assert.ok((d['up'] ?? 0) >= p.sent && (d['down'] ?? 0) >= p.received, `through the concentrator: ${JSON.stringify(d)}`);
    } finally {
      await echo6.stop();
    }
  });

  labTest('iperf3 -u at 80% of the two uplinks: aggregated (over one uplink), loss under 1%', ['iperf3'], async () => {
    const srv = new Proc(lab.hosts.servers[0]!.spawn('iperf3', ['-s', '-1', '--forceflush', '-B', srv4]));
    await srv.waitLine((l) => l.includes('Server listening'));
    const r = await lab.hosts.client.exec('iperf3', ['-c', srv4, '-u', '-b', '80M', '-l', '1200', '-w', '2M', '-t', '6', '-J'], { timeoutMs: 60_000 });
    await srv.stop();
    const j = JSON.parse(r.stdout) as { end: { sum: { bits_per_second: number; lost_percent: number } } };
    const received = (j.end.sum.bits_per_second * (100 - j.end.sum.lost_percent)) / 100 / 1e6;
    process.stdout.write(`# iperf3 -u 80M: received ${received.toFixed(1)} Mbit/s, loss ${j.end.sum.lost_percent.toFixed(2)}%\n`);
    assert.ok(j.end.sum.lost_percent < 1, `loss ${j.end.sum.lost_percent}%`);
    assert.ok(received >= 1.55 * 50, `received ${received.toFixed(1)} Mbit/s: more than one 50 Mbit/s uplink carries`);
  });

  labTest('iperf3 -u at 150%: a 20 pps probe sharing the channel keeps a bounded latency, drops are counted', ['iperf3'], async () => {
    const before = byLabel(await scrape('cpe'), 'mpconvert_udp_dropped_total', 'reason');
    const srv = new Proc(lab.hosts.servers[0]!.spawn('iperf3', ['-s', '-1', '--forceflush', '-B', srv4]));
    await srv.waitLine((l) => l.includes('Server listening'));
    const load = lab.hosts.client.exec('iperf3', ['-c', srv4, '-u', '-b', '150M', '-l', '1200', '-w', '2M', '-t', '7', '-J'], { timeoutMs: 60_000 });
    await new Promise((r) => setTimeout(r, 1_500));
    const p = await runTool<Probe>(lab.hosts.client, 'udp-client', { mode: 'probe', host: srv4, port: 7007, pps: 20, durationMs: 4_000 });
    await load;
    await srv.stop();
    const d = delta(before, byLabel(await scrape('cpe'), 'mpconvert_udp_dropped_total', 'reason'));
    process.stdout.write(`# probe under 150% load: p50 ${p.p50.toFixed(1)} ms, p95 ${p.p95.toFixed(1)} ms, max ${p.max.toFixed(1)} ms, ${p.received}/${p.sent}; drops ${JSON.stringify(d)}\n`);
    assert.ok(p.received >= p.sent * 0.95, `probe answers: ${p.received} of ${p.sent} (the bulk flow pays for its excess, not the probe)`);
    // Unloaded, the probe's round trip is about 1 ms: the bound is what the bulk flow may add (the channel's
    // application queue, udp.queueMs = 50 ms at most, and the subflows' send queues, bounded by udp.sendBuffer;
    // without sendBuffer the subflows queue a megabyte each: p95 about 350 ms).
    assert.ok(p.p95 < 100, `probe p95 ${p.p95.toFixed(1)} ms: a bulk flow adds only tens of milliseconds`);
    assert.ok((d['queue-full'] ?? 0) + (d['stale'] ?? 0) > 0, `drops counted: ${JSON.stringify(d)}`);
  });

  labTest('bad input: malformed, wrong-direction and oversized frames, refused destinations, a flood of new mappings: dropped or aborted and counted; the CPE is unaffected', ['dig'], async () => {
    const channelIe = 'faa8faa88005000111000000';
    const hdr = (flags: number, len: number, flow: number, port: number) => {
      const b = Buffer.alloc(12);
      b[0] = 0xd7;
      b[1] = flags;
      b.writeUInt16BE(len, 2);
      b.writeUInt32BE(flow, 4);
      b.writeUInt16BE(port, 8);
      return b;
    };
    const addr = Buffer.from(srv4.split('.').map(Number));
    const rogue = async (app: Buffer) =>
      runTool<{ error?: string; head?: string }>(lab.hosts.client, 'mpc-client', { host: CONC4, port: 5000, protocol: 'mptcp', signallingHex: channelIe, appHex: app.toString('hex'), head: 12, send: 0, timeoutMs: 10_000, holdMs: 300 });
    const aborts0 = byLabel(await scrape('concentrator'), 'mpconvert_udp_channel_aborts_total', 'reason');
    const drops0 = byLabel(await scrape('concentrator'), 'mpconvert_udp_dropped_total', 'reason');
    await rogue(Buffer.concat([hdr(0x11, 1, 1, 7007), addr, Buffer.from('x')]).fill(0x00, 0, 1)); // bad magic
    await rogue(Buffer.concat([hdr(0x10, 1, 1, 7007), addr, Buffer.from('x')])); // downstream frame from a CPE
    await rogue(Buffer.concat([hdr(0x01, 1, 1, 7007), addr, Buffer.from('x')])); // version 0
    // The TCP destination gate, per datagram: loopback and the concentrator's own address are never relayed.
    const x = Buffer.from('x');
    await rogue(Buffer.concat([hdr(0x11, 1, 1, 7007), Buffer.from([127, 0, 0, 1]), x, hdr(0x11, 1, 1, 5000), Buffer.from(CONC4.split('.').map(Number)), x]));
    const big = Buffer.alloc(4000, 1);
    const flood = Buffer.concat(Array.from({ length: 400 }, (_, i) => Buffer.concat([hdr(0x11, 1, i + 1, 7007), addr, Buffer.from('f')])));
    await rogue(Buffer.concat([hdr(0x11, big.length, 1, 7007), addr, big, flood]));
    const aborts = delta(aborts0, byLabel(await scrape('concentrator'), 'mpconvert_udp_channel_aborts_total', 'reason'));
    const drops = delta(drops0, byLabel(await scrape('concentrator'), 'mpconvert_udp_dropped_total', 'reason'));
    assert.deepEqual(aborts, { MPC_ERR_UDP_MAGIC: 1, MPC_ERR_UDP_DIRECTION: 1, MPC_ERR_UDP_VERSION: 1 });
    assert.equal(drops['oversized'], 1, JSON.stringify(drops));
    assert.equal(drops['destination'], 2, `loopback and the concentrator itself refused: ${JSON.stringify(drops)}`);
    assert.equal(drops['mappings-per-cpe'], 100, `the flood beyond udp.maxMappingsPerCpe (300) is dropped: ${JSON.stringify(drops)}`);
    assert.ok(conc.running, 'the concentrator is alive');
    assert.equal(await dig('www.example.test'), '198.18.77.7', 'the real CPE still gets its answers');
  });

  labTest('a wireguard-go tunnel from the LAN client to the server: a 50 MB TCP upload inside it, hash equal, aggregated', ['wireguard-go', 'wg', 'curl'], async () => {
    // Userspace WireGuard (the kernel here has TUN but no wireguard module), configured with wg(8). The UAPI
    // sockets live in /var/run/wireguard, shared by all namespaces: the names are this run's own.
    const names = { client: `wgc${process.pid}`.slice(0, 15), server: `wgs${process.pid}`.slice(0, 15) };
    const tunnel = { client: '198.19.250.2', server: '198.19.250.1' };
    const key = () => {
      const { privateKey, publicKey } = generateKeyPairSync('x25519');
      const b64 = (k: typeof privateKey, part: 'd' | 'x') => Buffer.from(k.export({ format: 'jwk' })[part] as string, 'base64url').toString('base64');
      return { priv: b64(privateKey, 'd'), pub: b64(publicKey, 'x') };
    };
    const kc = key();
    const ks = key();
    writeFileSync(join(dir, 'wgc.key'), kc.priv + '\n', { mode: 0o600 });
    writeFileSync(join(dir, 'wgs.key'), ks.priv + '\n', { mode: 0o600 });
    const client = lab.hosts.client;
    const server = lab.hosts.servers[0]!;
    const env = { ...process.env, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD: '1' };
    const wgs = new Proc(server.spawn('wireguard-go', ['-f', names.server], { env }));
    const wgc = new Proc(client.spawn('wireguard-go', ['-f', names.client], { env }));
    let http: Proc | undefined;
    try {
      await until('the wireguard-go interfaces', async () =>
        (await server.exec('ip', ['link', 'show', names.server], { allowFailure: true })).code === 0 &&
        (await client.exec('ip', ['link', 'show', names.client], { allowFailure: true })).code === 0 &&
        (await server.exec('wg', ['show', names.server], { allowFailure: true })).code === 0 &&
        (await client.exec('wg', ['show', names.client], { allowFailure: true })).code === 0);
      await server.exec('wg', ['set', names.server, 'listen-port', '51820', 'private-key', join(dir, 'wgs.key'), 'peer', kc.pub, 'allowed-ips', `${tunnel.client}/32`]);
      await client.exec('wg', ['set', names.client, 'private-key', join(dir, 'wgc.key'), 'peer', ks.pub, 'allowed-ips', `${tunnel.server}/32`, 'endpoint', `${srv4}:51820`]);
      for (const [h, dev, a] of [[server, names.server, tunnel.server], [client, names.client, tunnel.client]] as const) {
        await h.exec('ip', ['addr', 'add', `${a}/24`, 'dev', dev]);
        await h.exec('ip', ['link', 'set', dev, 'up']);
      }
      http = start(server, [TOOL('http-server'), JSON.stringify({ host: tunnel.server, port: 8080 })]);
      await http.waitLine((l) => l.includes('ready'));
      const file = join(dir, 'upload.bin');
      writeFileSync(file, randomBytes(50 * 1024 * 1024));
      const sha = createHash('sha256').update(readFileSync(file)).digest('hex');
      const up0 = byLabel(await scrape('concentrator'), 'mpconvert_udp_bytes_total', 'direction');
      const r = await client.exec('curl', ['-sS', '--max-time', '60', '--retry', '3', '--retry-connrefused', '-T', file, '-w', '\\n%{speed_upload}', `http://${tunnel.server}:8080/upload`], { timeoutMs: 90_000 });
      const [body = '', speed = '0'] = r.stdout.trim().split('\n');
      const got = JSON.parse(body) as { bytes: number; sha256: string };
      const mbit = (Number(speed) * 8) / 1e6;
      const up = delta(up0, byLabel(await scrape('concentrator'), 'mpconvert_udp_bytes_total', 'direction'));
      process.stdout.write(`# wireguard-go: 50 MiB upload inside the tunnel at ${mbit.toFixed(1)} Mbit/s; the channel carried ${((up['up'] ?? 0) / 2 ** 20).toFixed(1)} MiB up\n`);
      assert.equal(got.bytes, 50 * 1024 * 1024);
      assert.equal(got.sha256, sha, 'the server received the same bytes');
      assert.ok((up['up'] ?? 0) >= 50 * 1024 * 1024, 'the tunnel went through the UDP channel');
      assert.ok(mbit >= 1.6 * 50, `${mbit.toFixed(1)} Mbit/s inside the tunnel: more than one 50 Mbit/s uplink carries`);
    } finally {
      await http?.stop();
      await wgc.stop();
      await wgs.stop();
      rmSync(join(dir, 'upload.bin'), { force: true });
    }
  });

  labTest('an uplink is cut during an iperf3 -u run: the flows continue, gap under 1 s', ['iperf3'], async () => {
    const srv = new Proc(lab.hosts.servers[0]!.spawn('iperf3', ['-s', '-1', '--forceflush', '-B', srv4]));
    await srv.waitLine((l) => l.includes('Server listening'));
    const load = lab.hosts.client.exec('iperf3', ['-c', srv4, '-u', '-b', '30M', '-l', '1200', '-t', '8', '-J'], { timeoutMs: 60_000 });
    const probe = runTool<Probe>(lab.hosts.client, 'udp-client', { mode: 'probe', host: srv4, port: 7007, pps: 100, durationMs: 7_000 });
    await new Promise((r) => setTimeout(r, 2_500));
    await lab.uplinkDown(1);
    const p = await probe;
    const r = await load;
    await srv.stop();
    await lab.uplinkUp(1);
    process.stdout.write(`# uplink cut: longest gap ${p.maxGapMs.toFixed(0)} ms, ${p.received}/${p.sent} probes answered\n`);
    const j = JSON.parse(r.stdout) as { end: { sum: { lost_percent: number } } };
    assert.ok(j.end.sum.lost_percent < 50, `iperf3 -u went on: loss ${j.end.sum.lost_percent}%`);
    assert.ok(p.maxGapMs < 1_000, `longest gap ${p.maxGapMs.toFixed(0)} ms`);
    await channelUp();
  });

  labTest('a concentrator without udp in transports: the CPE sees UDP not offered, stops intercepting, and LAN UDP is forwarded untouched', ['dig'], async () => {
    const cpeAborts0 = byLabel(await scrape('cpe'), 'mpconvert_udp_channel_aborts_total', 'reason');
    await conc.stop();
    const tcpOnly = join(dir, 'conc-tcp.yaml');
    writeFileSync(tcpOnly, `listen: ["${CONC4}:5000"]\nallow: ["198.18.0.0/15", "2001:db8::/32"]\nadmin: "127.0.0.1:9090"\ntransports: [tcp]\n`);
    conc = start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', tcpOnly]);
    await conc.waitLine((l) => l.startsWith('ready'));
    await until('the CPE to count the refusal as not-offered', async () => (delta(cpeAborts0, byLabel(await scrape('cpe'), 'mpconvert_udp_channel_aborts_total', 'reason'))['not-offered'] ?? 0) >= 1);
    const status = async () => JSON.parse((await lab.hosts.cpe.exec('curl', ['-s', 'http://127.0.0.1:9091/status'])).stdout) as { udp?: { intercepting: boolean; channel: unknown } };
    await until('the CPE to stop intercepting UDP', async () => (await status()).udp?.intercepting === false);
    assert.equal((await status()).udp?.channel, null);
    const refused = byLabel(await scrape('concentrator'), 'mpconvert_refused_total', 'reason');
    assert.ok((refused['udp-not-offered'] ?? 0) >= 1, `the concentrator refused the channel: ${JSON.stringify(refused)}`);
    const seen = dns.stderr.length;
    assert.equal(await dig('untouched.example.test'), '', 'dnsmasq answers (no such name: empty)');
    await until('the dnsmasq log line', async () => dns.stderr.slice(seen).includes('query[A] untouched.example.test'));
    const from = /query\[A\] untouched\.example\.test from (\S+)/.exec(dns.stderr.slice(seen))?.[1];
    assert.equal(byLabel(await scrape('concentrator'), 'mpconvert_udp_datagrams_total', 'direction')['up'] ?? 0, 0, 'nothing went through a channel');
    assert.equal(from, lab.hosts.client.v4, 'dnsmasq saw the LAN client itself: forwarded untouched, not converted');
  });
});
