/**
 * The concentrator in the lab, with real kernel MPTCP: a hand-driven client in the CPE namespace sends the
 * signalling and data in its SYN over two uplinks; real TCP/MPTCP servers on the internet segment.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab } from '../../src/lab/index.js';
import { encodeMpConvert, encodeConvertMessage, SignallingDecoder, ProtocolError } from '../../src/protocol/index.js';
import { labCapabilityMissing, IN_CI } from '../support/capabilities.js';
import { CLI, Proc, TOOL, runTool, start, type ClientOut, type ServerOut, reloadConfig } from '../support/lab-procs.js';

/** Lab tests run real transfers: a generous per-test limit, so a regression fails one test, not the run. */
const labTest = (name: string, fn: () => Promise<void>) => test(name, { timeout: 150_000 }, fn);

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

const SRV1 = '198.19.0.11';
const SRV2 = '198.19.0.12';
const CONC = '198.18.200.1';
const MB = 1024 * 1024;
const ie = (address: string, port?: number) =>
  encodeMpConvert([{ type: 0, direction: 'destination', address, ...(port !== undefined ? { port } : {}) }]).toString('hex');

describe('concentrator (lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  let conc: Proc;
  let srv1: Proc;
  let srv2: Proc;
  const dir = mkdtempSync(join(tmpdir(), 'mpc-conc-'));
  const configFile = join(dir, 'concentrator.yaml');
  const baseConfig = (extra = '') =>
    `listen: ["${CONC}:5000", "[2001:db8:200::1]:5000"]\nallow: ["198.18.0.0/16", "2001:db8::/32"]\nadmin: "127.0.0.1:9090"\n` +
    `shutdownDrainS: 2\nsignalling:\n  timeoutMs: 1500\nserver:\n  connectTimeoutMs: 3000\n${extra}`;

  const metrics = async (): Promise<string> => (await lab.hosts.concentrator.exec('curl', ['-s', 'http://127.0.0.1:9090/metrics'])).stdout;
  const metric = async (name: string, labels = ''): Promise<number> => {
    const text = await metrics();
    const line = text.split('\n').find((l) => l.startsWith(name) && l.includes(labels));
    return line ? Number(line.split(' ').pop()) : 0;
  };
  /** The signalling goes first thing after the handshake unless a test asks for it in the SYN (fastOpen; the
   * CPE's default, zeroRtt on): both ways are served on the same port. */
  const client = (args: Record<string, unknown>) => runTool<ClientOut>(lab.hosts.cpe, 'mpc-client', { host: CONC, port: 5000, fastOpen: 'off', ...args });
  /** Rewrites the configuration (the base plus `extra`) and waits until the concentrator reloaded it. */
  const reload = (extra: string) => reloadConfig(conc, configFile, baseConfig(extra));

  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: 0 }, { rate: 0 }], servers: 2, mptcpRouting: true });
    srv1 = start(lab.hosts.servers[0]!, [TOOL('sink-server'), JSON.stringify({ host: SRV1, port: 8080, reply: 50 * MB })]);
    srv2 = start(lab.hosts.servers[1]!, [TOOL('sink-server'), JSON.stringify({ host: SRV2, port: 8080, reply: 1000, protocol: 'mptcp', mode: 'first' })]);
    writeFileSync(configFile, baseConfig());
    conc = start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', configFile]);
    await Promise.all([conc.waitLine((l) => l.startsWith('ready')), srv1.waitLine((l) => l.includes('ready')), srv2.waitLine((l) => l.includes('ready'))]);
  });

  after(async () => {
    await conc?.stop();
    await srv1?.stop();
    await srv2?.stop();
    await lab?.down();
  });

  labTest('MP_CONVERT: byte-exact echo, 50 MB each way with hashes, 2 subflows, client half-closes first', async () => {
    const app = randomBytes(100);
    const signalling = ie(SRV1, 8080);
    const before = srv1.json<ServerOut>().length;
    const out = await client({ signallingHex: signalling, appHex: app.toString('hex'), send: 50 * MB, head: signalling.length / 2 });
    assert.equal(out.error, undefined, JSON.stringify(out));
    assert.equal(out.head, signalling, 'the echo is the IEs, byte for byte');
    assert.equal(out.mptcp, true);
    assert.equal(out.subflows, 2, 'one subflow per uplink');
    await srv1.waitLine(() => srv1.json<ServerOut>().length > before);
    const s = srv1.json<ServerOut>()[before]!;
    assert.equal(s.received, 50 * MB + app.length, 'the server got the SYN data and the rest, nothing else');
    assert.equal(s.receivedSha256, out.sentSha256);
    assert.equal(out.received, 50 * MB);
    assert.equal(out.receivedSha256, s.sentSha256);
    // The session log's close line: the same byte counts, moved in the kernel (relayEngine: splice, the default).
    const upBytes = 50 * MB + app.length;
    await conc.waitFor(new RegExp(`"event":"close"[^\\n]*"bytesUp":${upBytes}`), 10_000);
    const close = conc.stderr.split('\n').filter((l) => l.includes('"event":"close"') && l.includes(`"bytesUp":${upBytes}`)).map((l) => JSON.parse(l) as Record<string, unknown>)[0]!;
    assert.deepEqual([close['bytesDown'], close['outcome'], close['relay']], [50 * MB, 'done', 'splice']);
  });

  labTest('0-RTT: the IEs and the first bytes in the SYN, byte-exact echo, exact bytes both ways, MPTCP with 2 subflows', async () => {
    const app = randomBytes(300);
    const signalling = ie(SRV2, 8080);
    const before = srv2.json<ServerOut>().length;
    const out = await client({ signallingHex: signalling, appHex: app.toString('hex'), fastOpen: 'no-cookie', send: 200_000, head: signalling.length / 2, holdMs: 500 });
    assert.equal(out.error, undefined, JSON.stringify(out));
    assert.equal(out.head, signalling, 'the echo is the IEs, byte for byte');
    assert.equal(out.mptcp, true, 'no fallback after data in the SYN');
    assert.equal(out.subflows, 2);
    await srv2.waitLine(() => srv2.json<ServerOut>().length > before);
    const s = srv2.json<ServerOut>()[before]!;
    assert.equal(s.received, 200_000 + app.length, 'the SYN data reached the server once, then the rest');
    assert.equal(s.receivedSha256, out.sentSha256);
    assert.equal(out.received, 1000);
    assert.equal(out.receivedSha256, s.sentSha256);
  });

  labTest('half-close the other way: the server closes first, the client keeps sending', async () => {
    // srv2 sends its 1000 bytes and FIN first; the client sends only after it saw that FIN.
    const signalling = ie(SRV2, 8080);
    const before = srv2.json<ServerOut>().length;
    const out = await client({ signallingHex: signalling, send: 2 * MB, head: signalling.length / 2, sendAfterFin: true });
    assert.equal(out.error, undefined, JSON.stringify(out));
    await srv2.waitLine(() => srv2.json<ServerOut>().length > before);
    const s = srv2.json<ServerOut>()[before]!;
    assert.equal(out.received, 1000);
    assert.equal(out.receivedSha256, s.sentSha256);
    assert.equal(s.received, 2 * MB);
    assert.equal(s.receivedSha256, out.sentSha256);
  });

  labTest('MPTCP-capable server gets MPTCP on the server leg', async () => {
    const before = srv2.json<ServerOut>().length;
    await client({ signallingHex: ie(SRV2, 8080), send: 10 });
    await srv2.waitLine(() => srv2.json<ServerOut>().length > before);
    assert.equal(srv2.json<ServerOut>()[before]!.mptcp, true);
    assert.ok((await metric('mpconvert_server_leg_total', 'transport="mptcp"')) >= 1);
  });

  labTest('destination IE without port: the port the connection was sent to (5000)', async () => {
    const extra = start(lab.hosts.servers[0]!, [TOOL('sink-server'), JSON.stringify({ host: SRV1, port: 5000, reply: 7 })]);
    try {
      await extra.waitLine((l) => l.includes('ready'));
      const signalling = ie(SRV1);
      const out = await client({ signallingHex: signalling, send: 1234, head: signalling.length / 2 });
      assert.equal(out.error, undefined, JSON.stringify(out));
      assert.equal(out.received, 7);
      await extra.waitLine((l) => l.includes('received'));
      assert.equal(extra.json<ServerOut>().find((o) => o.received !== undefined)!.received, 1234);
    } finally {
      await extra.stop();
    }
  });

  labTest('RFC 8803: Convert reply then data; Error TLV for an unreachable destination', async () => {
    const msg = encodeConvertMessage({ tlvs: [{ type: 'connect', address: SRV1, port: 8080, options: Buffer.alloc(0) }] });
    const before = srv1.json<ServerOut>().length;
    const out = await client({ signallingHex: msg.toString('hex'), send: MB, head: 4 });
    assert.equal(out.error, undefined, JSON.stringify(out));
    assert.equal(out.head, '01012263');
    await srv1.waitLine(() => srv1.json<ServerOut>().length > before);
    assert.equal(srv1.json<ServerOut>()[before]!.receivedSha256, out.sentSha256);

    const bad = encodeConvertMessage({ tlvs: [{ type: 'connect', address: '198.19.0.99', port: 8080, options: Buffer.alloc(0) }] });
    const err = await client({ signallingHex: bad.toString('hex'), send: 0, head: 8, timeoutMs: 30_000 });
    assert.equal(err.error, undefined, JSON.stringify(err));
    assert.equal(err.head, '010222631e016100', 'Error TLV, code 97 Destination Unreachable, then FIN');
  });

  labTest('refusals: special-purpose destinations are torn down silently, nothing dialled', async () => {
    for (const dst of ['127.0.0.1', '224.0.0.1', '255.255.255.255', '0.0.0.0', '169.254.1.1', CONC]) {
      const out = await client({ signallingHex: ie(dst, 8080), send: 0 });
      assert.equal(out.error, 'ECONNRESET', dst);
    }
    const v6 = await runTool<ClientOut>(lab.hosts.cpe, 'mpc-client', { host: '2001:db8:200::1', port: 5000, signallingHex: ie('::ffff:127.0.0.1', 80), send: 0 });
    assert.equal(v6.error, 'ECONNRESET');
    assert.ok((await metric('mpconvert_refused_total', 'reason="destination"')) >= 7);
  });

  labTest('SIGHUP reload: a disallowed customer prefix and the per-CPE limit are refused', async () => {
    writeFileSync(configFile, baseConfig('limits:\n  maxConnectionsPerCpe: 1\n').replace('"198.18.0.0/16", ', '"198.18.2.0/24", '));
    conc.child.kill('SIGHUP');
    await conc.waitLine(() => conc.stderr.includes('configuration reloaded'));
    // From uplink 1's address (198.18.1.2): no longer a customer prefix.
    const refused = await client({ signallingHex: ie(SRV1, 8080), send: 0, localAddress: '198.18.1.2' });
    assert.equal(refused.error, 'ECONNRESET');
    assert.ok((await metric('mpconvert_refused_total', 'reason="not-customer"')) >= 1);
    // From uplink 2: allowed, but only one connection at a time. Hold one open (server-first, client waits).
    const holder = start(lab.hosts.cpe, [TOOL('mpc-client'), JSON.stringify({ host: CONC, port: 5000, signallingHex: ie(SRV2, 8080), localAddress: '198.18.2.2', send: 0, head: 0, holdMs: 3000 })]);
    await new Promise((r) => setTimeout(r, 300));
    const over = await client({ signallingHex: ie(SRV2, 8080), send: 0, localAddress: '198.18.2.2' });
    assert.equal(over.error, 'ECONNRESET');
    assert.ok((await metric('mpconvert_refused_total', 'reason="max-connections-per-cpe"')) >= 1);
    await holder.stop('SIGKILL');
    writeFileSync(configFile, baseConfig());
    conc.child.kill('SIGHUP');
  });

  labTest('its nft table: a leftover of a killed instance is replaced at start, follows a SIGHUP listen change, is removed at stop', async () => {
    const h = lab.hosts.concentrator;
    const table = async () => (await h.exec('nft', ['list', 'table', 'inet', 'mpconvert_conc_second'], { allowFailure: true })).stdout;
    // What a killed instance might have left: an older clamp for a port no longer served.
    await h.exec('nft', ['-f', '-'], { input: 'table inet mpconvert_conc_second {\n  chain prerouting {\n    type filter hook prerouting priority mangle; policy accept;\n    tcp dport 5999 tcp window set 1 comment "left over"\n  }\n}\n' });
    const file = join(dir, 'second.yaml');
    const cfg = (listen: string[]) => `instance: second\nlisten: [${listen.map((l) => `"${l}"`).join(', ')}]\nallow: ["198.18.0.0/16"]\nshutdownDrainS: 0\n`;
    writeFileSync(file, cfg([`${CONC}:5100`]));
    const second = start(h, [CLI, 'concentrator', '--config', file]);
    try {
      await second.waitLine((l) => l.startsWith('ready'));
      let text = await table();
      assert.match(text, /ip daddr 198\.18\.200\.1 tcp dport 5100 goto listener_syn/, text);
      assert.match(text, /tcp option window count 10 tcp window > 16 tcp window set 16 counter packets \d+ bytes \d+ comment "mpconvert: SYN window clamp/, text);
      assert.doesNotMatch(text, /left over|5999/, 'the leftover is gone');
      assert.match((await h.exec('nft', ['list', 'table', 'inet', 'mpconvert_conc_default'])).stdout, /dport 5000 goto listener_syn/, "the other instance's table is untouched");
      // A 0-RTT connection through it: the clamp counts its SYN, the bytes arrive.
      const app = randomBytes(100);
      const out = await runTool<ClientOut>(lab.hosts.cpe, 'mpc-client', { host: CONC, port: 5100, fastOpen: 'no-cookie', signallingHex: ie(SRV2, 8080), appHex: app.toString('hex'), send: 1000, head: ie(SRV2, 8080).length / 2 });
      assert.equal(out.error, undefined, JSON.stringify(out));
      assert.equal(out.received, 1000);
      assert.match(await table(), /window count 10 tcp window > 16 tcp window set 16 counter packets [1-9]/, 'the client (window scale 10) was clamped');
      writeFileSync(file, cfg([`${CONC}:5100`, `${CONC}:5101`]));
      second.child.kill('SIGHUP');
      await second.waitFor(/configuration reloaded/, 10_000);
      text = await table();
      assert.match(text, /tcp dport 5101 goto listener_syn/, text);
    } finally {
      assert.equal(await second.stop(), 0, second.stderr.slice(-2000));
    }
    assert.equal(await table(), '', 'removed at stop');
  });

  labTest('fuzz: 10,000 malformed signalling payloads: no crash, nothing dialled, memory bounded', async () => {
    const payloads: string[] = [];
    const valid = Buffer.from(ie(SRV1, 8080), 'hex');
    const rnd = (n: number) => Math.floor(Math.random() * n);
    while (payloads.length < 10_000) {
      let p: Buffer;
      switch (payloads.length % 4) {
        case 0:
          p = randomBytes(1 + rnd(300));
          break;
        case 1: {
          p = Buffer.from(valid);
          for (let i = 0; i < 1 + rnd(3); i++) {
            const at = rnd(p.length);
            p[at] = (p[at] as number) ^ (1 << rnd(8));
          }
          break;
        }
        case 2:
          p = valid.subarray(0, rnd(valid.length));
          break;
        default:
          p = Buffer.concat([Buffer.from('faa8faa8', 'hex'), randomBytes(rnd(400))]);
      }
      // Only payloads that can never make a dial: errors, or incomplete signalling followed by FIN.
      try {
        const r = new SignallingDecoder().push(p);
        if (r.status === 'done') continue;
      } catch (err) {
        if (!(err instanceof ProtocolError)) throw err;
      }
      if (p.length > 0) payloads.push(p.toString('hex'));
    }
    const file = join(dir, 'fuzz.json');
    writeFileSync(file, JSON.stringify(payloads));
    const rssBefore = await rss(lab, conc);
    const dialsBefore = await metric('mpconvert_server_leg_total');
    const out = await runTool<{ done: number; echoed: number; errorReplies: number }>(lab.hosts.cpe, 'fuzz-client', { host: CONC, port: 5000, file, concurrency: 64 }, 300_000);
    process.stdout.write(`# fuzz: ${JSON.stringify(out)}\n`);
    assert.equal(out.done, payloads.length);
    assert.equal(out.echoed, 0, `no malformed payload was confirmed: ${JSON.stringify(out)}`);
    assert.equal(conc.child.exitCode, null, 'the concentrator is still running');
    assert.equal(await metric('mpconvert_server_leg_total'), dialsBefore, 'nothing was dialled');
    const rssAfter = await rss(lab, conc);
    assert.ok(rssAfter - rssBefore < 64 * MB, `RSS grew by ${(rssAfter - rssBefore) / MB} MiB`);
    // Still serving.
    const ok = await client({ signallingHex: ie(SRV2, 8080), send: 10, head: 16 });
    assert.equal(ok.head, ie(SRV2, 8080));
  });

  labTest('server.tcpServersTtlS: a server that answered MPTCP with TCP gets a TCP SYN next time; an MPTCP server keeps MPTCP', async () => {
    // Counted by the server's kernel: SYNs to port 8080, and those that carry MP_CAPABLE.
    const srv = lab.hosts.servers[0]!;
    await srv.exec('nft', ['-f', '-'], {
      input: 'table inet mpconvert_test_syns {\n chain input {\n  type filter hook input priority 0;\n' +
        '  tcp dport 8080 tcp flags syn tcp option mptcp exists counter name mptcp_syns\n  tcp dport 8080 tcp flags syn counter name syns\n }\n' +
        ' counter mptcp_syns {}\n counter syns {}\n}\n',
    });
    const packets = async (name: string) => Number(/packets (\d+)/.exec((await srv.exec('nft', ['list', 'counter', 'inet', 'mpconvert_test_syns', name])).stdout)?.[1]);
    try {
      await reload('  tcpServersTtlS: 60\n');
      const learnedBefore = await metric('mpconvert_server_leg_total', 'transport="tcp-learned"');
      for (let i = 0; i < 3; i++) assert.equal((await client({ signallingHex: ie(SRV1, 8080), send: 10 })).error, undefined);
      assert.deepEqual([await packets('syns'), await packets('mptcp_syns')], [3, 1], 'one MPTCP SYN, then TCP SYNs');
      assert.equal((await metric('mpconvert_server_leg_total', 'transport="tcp-learned"')) - learnedBefore, 2);
      const status = JSON.parse((await lab.hosts.concentrator.exec('curl', ['-s', 'http://127.0.0.1:9090/status'])).stdout) as { tcpServersLearned: number };
      assert.equal(status.tcpServersLearned, 1);
      const before = srv2.json<ServerOut>().length;
      await client({ signallingHex: ie(SRV2, 8080), send: 10 });
      await client({ signallingHex: ie(SRV2, 8080), send: 10 });
      await srv2.waitLine(() => srv2.json<ServerOut>().length >= before + 2);
      assert.deepEqual(srv2.json<ServerOut>().slice(before).map((o) => o.mptcp), [true, true], 'the MPTCP server is not learned');
      await reload('');
      assert.equal((await client({ signallingHex: ie(SRV1, 8080), send: 10 })).error, undefined);
      assert.equal(await packets('mptcp_syns'), 2, 'with the default (0) the server gets MP_CAPABLE again');
    } finally {
      await reload('');
      await srv.exec('nft', ['delete', 'table', 'inet', 'mpconvert_test_syns'], { allowFailure: true });
    }
  });

  labTest('a server whose MPTCP SYNs are dropped is cached; the next connection uses TCP at once', async () => {
    await lab.hosts.servers[0]!.exec('nft', ['-f', '-'], {
      input: 'table inet mpconvert_test_drop {\n chain input {\n  type filter hook input priority 0;\n  tcp flags syn tcp option mptcp exists drop\n }\n}\n',
    });
    try {
      const t0 = Date.now();
      const first = await client({ signallingHex: ie(SRV1, 8080), send: 10, timeoutMs: 60_000 });
      const slow = Date.now() - t0;
      assert.equal(first.error, undefined, JSON.stringify(first));
      const status = JSON.parse((await lab.hosts.concentrator.exec('curl', ['-s', 'http://127.0.0.1:9090/status'])).stdout) as { fallbackCache: string[] };
      assert.deepEqual(status.fallbackCache, [SRV1]);
      const t1 = Date.now();
      const second = await client({ signallingHex: ie(SRV1, 8080), send: 10 });
      const fast = Date.now() - t1;
      assert.equal(second.error, undefined);
      assert.ok(fast < slow / 2, `cached connection took ${fast} ms, the first ${slow} ms`);
      assert.ok((await metric('mpconvert_server_leg_total', 'transport="tcp-cached"')) >= 1);
    } finally {
      await lab.hosts.servers[0]!.exec('nft', ['delete', 'table', 'inet', 'mpconvert_test_drop'], { allowFailure: true });
    }
  });

  labTest('source pool: paired (a CPE keeps its address while it has connections), 1:1 distinct or exhausted, N:1 shared', async () => {
    const [p1, p2] = (await lab.addPoolAddresses(2)).map((a) => a.v4) as [string, string];
    // A plain TCP server that reports the address each connection came from (the external address).
    const sink = start(lab.hosts.servers[1]!, [TOOL('sink-server'), JSON.stringify({ host: SRV2, port: 8081, reply: 10 })]);
    await sink.waitLine((l) => l.includes('ready'));
    const A = '198.18.1.2'; // two CPEs: the concentrator sees a CPE by the source of its MPTCP connection
    const B = '198.18.2.2';
    /** Runs the connections (one held open while the others run) and returns the external address each got. */
    const externals = async (conns: Array<{ from: string; bytes: number }>, hold: { from: string; bytes: number }) => {
      const before = sink.json<ServerOut>().length;
      const holder = start(lab.hosts.cpe, [TOOL('mpc-client'), JSON.stringify({ host: CONC, port: 5000, fastOpen: 'off', signallingHex: ie(SRV2, 8081), localAddress: hold.from, send: hold.bytes, holdMs: 1500 })]);
      await new Promise((r) => setTimeout(r, 400));
      const outs: ClientOut[] = [];
      for (const c of conns) outs.push(await client({ signallingHex: ie(SRV2, 8081), localAddress: c.from, send: c.bytes }));
      await holder.exited;
      const want = conns.filter((_, i) => outs[i]!.error === undefined).length + 1;
      await sink.waitLine(() => sink.json<ServerOut>().length >= before + want);
      const got = sink.json<ServerOut>().slice(before);
      const ext = (bytes: number) => got.find((o) => o.received === bytes)?.remote?.replace('::ffff:', '');
      return { got, hold: ext(hold.bytes), conns: conns.map((c, i) => (outs[i]!.error ? `refused:${outs[i]!.error}` : ext(c.bytes))) };
    };
    try {
      await reload(`sourcePool:\n  addresses: ["${p1}", "${p2}"]\n  mode: dedicated\n`);
      const d = await externals([{ from: A, bytes: 222 }, { from: B, bytes: 333 }], { from: A, bytes: 111 });
      assert.ok([p1, p2].includes(d.hold!), `A's address ${d.hold} is from the pool: ${JSON.stringify(d)}`);
      assert.equal(d.conns[0], d.hold, 'A keeps its address while it has a connection');
      assert.ok([p1, p2].includes(d.conns[1]!) && d.conns[1] !== d.hold, `1:1: B gets the other address (${d.conns[1]})`);

      await reload(`sourcePool:\n  addresses: ["${p1}"]\n  mode: dedicated\n`);
      const x = await externals([{ from: B, bytes: 444 }], { from: A, bytes: 555 });
      assert.equal(x.hold, p1);
      assert.equal(x.conns[0], 'refused:ECONNRESET', '1:1 with the only address taken: B is refused');
      assert.ok((await metric('mpconvert_refused_total', 'reason="pool-exhausted"')) >= 1);

      await reload(`sourcePool:\n  addresses: ["${p1}"]\n  mode: shared\n`);
      const sh = await externals([{ from: B, bytes: 666 }], { from: A, bytes: 777 });
      assert.deepEqual([sh.hold, sh.conns[0]], [p1, p1], 'N:1: both CPEs share the address');
    } finally {
      await reload('');
      await sink.stop();
    }
  });

  labTest('SIGTERM: graceful stop, exit code 0', async () => {
    const code = await conc.stop('SIGTERM');
    assert.equal(code, 0);
  });
});

async function rss(lab: Lab, p: Proc): Promise<number> {
  // The concentrator runs under `ip netns exec`, which execs node: same pid.
  const status = (await lab.hosts.concentrator.exec('cat', [`/proc/${p.child.pid}/status`])).stdout;
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  return kb * 1024;
}
