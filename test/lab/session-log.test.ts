/**
 * Logging for address sharing (RFC 6888 section 4) end to end: LAN client (curl) -> CPE (source IE on, key id
 * and secret) -> concentrator with a pool address, port blocks and the session log in a file of its own ->
 * the test HTTP server. Seen on the server side (tcpdump in its namespace):
 * - 40 concurrent connections (uploads held open) of one CPE come from its pool address and only from ports inside the blocks
 *   its session log names, never from a port another socket holds (every even port of the range is taken by
 *   listeners on the concentrator: the kernel refuses them, the next port is bound);
 * - no CPE address, LAN host address, key id or signalling byte reaches the server (draft-nam-mptcp-deployment-
 *   considerations section 7.1).
 * The log has one line per block allocation and release, and no per-connection line; a CPE at its block
 * limit is refused and counted; rotation: move the file, SIGHUP, the next lines go to a new file; with
 * per-connection lines on, they name the CPE, its key id and the external address and port, never the
 * server (RFC 6888 REQ-12).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab, poolAddress, uplinkAddressing } from '../../src/lab/index.js';
import { readTcpSegments } from '../../src/lab/pcap.js';
import { ipv4ToBytes, ipv6ToBytes } from '../../src/protocol/address.js';
import { labCapabilityMissing, IN_CI } from '../support/capabilities.js';
import { CLI, Proc, TOOL, start } from '../support/lab-procs.js';

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

const CONC4 = '198.18.200.1';
const CLIENT4 = '198.18.0.2';
const CLIENT6 = '2001:db8::2';
const KEY_ID = 'cpe-lab-0042';
const SECRET = randomBytes(32);
const FIRST = 20_000;
const LAST = 20_255;
const POOL = poolAddress(0);

interface Line {
  time?: string;
  event?: string;
  cpe?: string;
  identity?: string;
  keyId?: string;
  external?: string;
  ports?: string;
  reason?: string;
  [k: string]: unknown;
}

describe('logging for address sharing: port blocks and the session log (lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  let conc: Proc | undefined;
  let cpe: Proc | undefined;
  let http: Proc;
  let occupier: Proc;
  let srv4: string;
  const dir = mkdtempSync(join(tmpdir(), 'mpc-sesslog-'));
  const concFile = join(dir, 'concentrator.yaml');
  const logFile = join(dir, 'log', 'sessions.log');

  const lines = (file = logFile): Line[] =>
    existsSync(file)
      ? readFileSync(file, 'utf8')
          .split('\n')
          .filter((l) => l.length > 0)
          .map((l) => JSON.parse(l) as Line)
      : [];
  const blockRange = (l: Line) => (l.ports ?? '').split('-').map(Number) as [number, number];
  const metric = async (name: string, labels = ''): Promise<number> => {
    const text = (await lab.hosts.concentrator.exec('curl', ['-s', 'http://127.0.0.1:9090/metrics'])).stdout;
    // Summed over the family's series that carry the labels (server legs: by transport).
    return text
      .split('\n')
      .filter((l) => l.startsWith(name) && l.includes(labels))
      .reduce((n, l) => n + Number(l.split(' ').pop()), 0);
  };
  const poll = async <T>(what: string, f: () => T | undefined | Promise<T | undefined>, timeoutMs = 20_000): Promise<T> => {
    for (const deadline = Date.now() + timeoutMs; ; ) {
      const v = await f();
      if (v !== undefined && v !== false) return v;
      assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  function writeConcentratorConfig(portBlocks: string, sessionLogging = ''): void {
    writeFileSync(
      concFile,
      [
        `listen: ["${CONC4}:5000"]`,
        'allow: ["198.18.0.0/15", "2001:db8::/32"]',
        'admin: "127.0.0.1:9090"',
        'shutdownDrainS: 1',
        `auth:\n  keysFile: ${join(dir, 'keys.yaml')}`,
        `sourcePool:\n  addresses: ["${POOL.v4}", "${POOL.v6}"]`,
        `portBlocks:\n${portBlocks}`,
        `sessionLogging:\n  sink: file\n  file: ${logFile}\n${sessionLogging}`,
        '',
      ].join('\n'),
    );
  }

  async function startConcentrator(): Promise<void> {
    conc = start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', concFile]);
    await conc.waitLine((l) => l.startsWith('ready'), 30_000);
  }

  /**
   * n concurrent uploads from the LAN client, each `size` bytes of its own text, then open for `holdS` more
   * seconds before its end (so they overlap for certain): how many the server received exactly.
   */
  async function transfers(n: number, tag: string, holdS = 0, size = 20_000, host = srv4): Promise<{ ok: number; failed: number }> {
    const out = join(dir, tag);
    const script = Array.from(
      { length: n },
      (_, i) => `((yes ${tag}${i} | head -c ${size}; sleep ${holdS}) | curl -sS --fail --max-time 60 -T - 'http://${host.includes(':') ? `[${host}]` : host}:8080/upload' > ${out}.${i}) 2>/dev/null &`,
    ).join('\n');
    await lab.hosts.client.exec('bash', ['-c', `${script}\nwait`], { timeoutMs: 90_000, allowFailure: true });
    let ok = 0;
    for (let i = 0; i < n; i++) {
      const line = `${tag}${i}\n`;
      const expected = createHash('sha256').update(Buffer.from(line.repeat(Math.ceil(size / line.length))).subarray(0, size)).digest('hex');
      try {
        const r = JSON.parse(readFileSync(`${out}.${i}`, 'utf8')) as { bytes?: number; sha256?: string };
        if (r.bytes === size && r.sha256 === expected) ok++;
      } catch {
        /* no answer: refused */
      }
    }
    return { ok, failed: n - ok };
  }

  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: 0 }, { rate: 0 }], servers: 1 });
    await lab.addPoolAddresses(1);
    srv4 = lab.hosts.servers[0]!.v4;
    http = start(lab.hosts.servers[0]!, [TOOL('http-server'), JSON.stringify({ host: '::', port: 8080 })]);
    // Every even port of the block range on the pool address is held by another socket: the kernel refuses them.
    const occupy = `const net=require('net');let n=0;for(let p=${FIRST};p<=${LAST};p+=2){net.createServer().listen({host:'${POOL.v4}',port:p},()=>{if(++n===${Math.floor((LAST - FIRST) / 2) + 1})console.log('ready')})}`;
    occupier = new Proc(lab.hosts.concentrator.spawn(process.execPath, ['-e', occupy]));
    writeFileSync(join(dir, 'keys.yaml'), `keys:\n  - { id: ${KEY_ID}, secret: "hex:${SECRET.toString('hex')}" }\n`, { mode: 0o600 });
    writeFileSync(join(dir, 'cpe.secret'), `hex:${SECRET.toString('hex')}\n`, { mode: 0o600 });
    writeConcentratorConfig('  size: 16\n  maxBlocksPerCpe: 8\n  first: 20000\n  last: 20255\n  releaseAfterS: 3\n');
    await Promise.all([http.waitLine((l) => l.includes('ready')), occupier.waitLine((l) => l.includes('ready'))]);
    await startConcentrator();
    const cpeFile = join(dir, 'cpe.yaml');
    writeFileSync(
      cpeFile,
      `lan: [lan0]\nuplinks: [{interface: up1}, {interface: up2}]\nadmin: "127.0.0.1:9091"\nconcentrators:\n  - address: "${CONC4}:5000"\n    sourceIe: true\n    keyId: ${KEY_ID}\n    secretFile: ${join(dir, 'cpe.secret')}\n`,
    );
    cpe = start(lab.hosts.cpe, [CLI, 'cpe', '--config', cpeFile]);
    await cpe.waitLine((l) => l.startsWith('ready'), 30_000);
  });

  after(async () => {
    await cpe?.stop();
    await conc?.stop();
    await occupier?.stop();
    await http?.stop();
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Waits until every block allocated so far was released (releaseAfterS), so a test's lines are its own. */
  const allReleased = () =>
    poll('every block released', () => {
      const l = lines();
      return l.filter((x) => x.event === 'block-allocate').length === l.filter((x) => x.event === 'block-release').length ? true : undefined;
    });

  test('privacy: nothing that names the CPE or the LAN host, nor any signalling byte, reaches the server', { timeout: 120_000 }, async () => {
    const pcap = join(dir, 'privacy.pcap');
    // Everything the server receives (its port 8080): the headers and every payload byte sent towards it.
    const td = new Proc(lab.hosts.servers[0]!.spawn('tcpdump', ['-i', 'any', '--immediate-mode', '-U', '-n', '-s', '0', '-w', pcap, 'tcp dst port 8080']));
    await td.until(() => (td.stderr.includes('listening') ? true : undefined), 10_000, 'tcpdump listening');
    const r = await transfers(5, 'priv');
    // Complete once every captured connection's last segment towards the server is in: its FIN, or its RST
    // when the server had already closed and the concentrator's end met a reset (both are the end of it).
    const ended = () => {
      const segs = readTcpSegments(pcap);
      const opened = new Set(segs.filter((x) => x.flags.syn).map((x) => x.sport));
      const done = new Set(segs.filter((x) => x.flags.fin || x.flags.rst).map((x) => x.sport));
      return opened.size >= 5 && [...opened].every((p) => done.has(p)) ? { opened: opened.size, resets: segs.filter((x) => x.flags.rst).length } : undefined;
    };
    const end = await poll('the last segments captured', ended);
    process.stdout.write(`# privacy capture: ${end.opened} connections, ${end.resets} ended by a reset towards the server\n`);
    await td.stop('SIGINT');
    const upstream = readTcpSegments(pcap);
    assert.ok(upstream.filter((x) => x.flags.syn).length >= 5, 'the capture holds the connections');
    for (const s of upstream) assert.equal(s.src, POOL.v4, 'every segment towards the server comes from the pool address');
    const payload = Buffer.concat(upstream.map((s) => s.payload));
    const secrets: Array<[string, Buffer]> = [
      ['key id', Buffer.from(KEY_ID)],
      ['MP_CONVERT magic', Buffer.from('faa8faa8', 'hex')],
      ['LAN host (text)', Buffer.from(CLIENT4)],
      ['LAN host (bytes)', ipv4ToBytes(CLIENT4)],
      ['LAN host IPv6 (bytes)', ipv6ToBytes(CLIENT6)],
      ['secret', SECRET.subarray(0, 8)],
    ];
    for (const i of [1, 2]) {
      const u = uplinkAddressing(i);
      secrets.push([`CPE uplink ${i} (text)`, Buffer.from(u.cpeV4)], [`CPE uplink ${i} (bytes)`, ipv4ToBytes(u.cpeV4)], [`CPE uplink ${i} IPv6 (bytes)`, ipv6ToBytes(u.cpeV6)]);
    }
    for (const [what, bytes] of secrets) assert.equal(payload.indexOf(bytes), -1, `the ${what} never reaches the server`);
    // Checked after the leaks, so that a leak shows as a leak even when it also breaks the transfer.
    assert.ok(payload.includes(Buffer.from('PUT /upload HTTP/1.1')), 'the capture holds the requests (payloads are captured)');
    assert.equal(r.ok, 5, 'every body exact');
    assert.ok(payload.includes(Buffer.from('priv4\npriv4\n')), 'and their bodies');
  });

  test('40 concurrent connections of one CPE: server-side ports only from its logged blocks, one line per block', { timeout: 150_000 }, async () => {
    await allReleased();
    const from = lines().length;
    const pcap = join(dir, 'server.pcap');
    // The SYNs the server receives.
    const td = new Proc(lab.hosts.servers[0]!.spawn('tcpdump', ['-i', 'any', '--immediate-mode', '-U', '-B', '8192', '-n', '-w', pcap, 'tcp dst port 8080 and tcp[13] & 2 != 0']));
    await td.until(() => (td.stderr.includes('listening') ? true : undefined), 10_000, 'tcpdump listening');
    const legsBefore = await metric('mpconvert_server_leg_total');
    const r = await transfers(40, 'pb', 5);
    assert.equal(r.ok, 40, 'every body exact');
    assert.equal((await metric('mpconvert_server_leg_total')) - legsBefore, 40, 'forty server legs');
    // Every block goes back releaseAfterS after its last connection: the log then has both lines of each.
    const log = await poll('a release line for every allocation', () => {
      const l = lines().slice(from);
      const alloc = l.filter((x) => x.event === 'block-allocate').length;
      return alloc > 0 && l.filter((x) => x.event === 'block-release').length === alloc ? l : undefined;
    });
    await td.stop('SIGINT');

    const allocations = log.filter((x) => x.event === 'block-allocate');
    assert.deepEqual([...new Set(log.map((x) => x.event))].sort(), ['block-allocate', 'block-release'], 'no per-connection line with port blocks');
    for (const a of allocations) {
      assert.equal(a.external, POOL.v4);
      assert.equal(a.keyId, KEY_ID, 'the CPE is named by its key id');
      assert.match(a.cpe ?? '', /^198\.18\.[12]\.2$/, 'and the address it connected from');
      assert.match(a.time ?? '', /^\d{4}-\d\d-\d\dT/);
      const [lo, hi] = blockRange(a);
      assert.equal(hi - lo + 1, 16);
    }
    // Half of each block is held by the occupier: 40 connections need at least 5 blocks.
    assert.ok(allocations.length >= 5, `${allocations.length} blocks for 40 connections with half of each port taken`);
    assert.equal(new Set(allocations.map((a) => a.ports)).size, allocations.length, 'no block allocated twice in this run');

    const upstream = readTcpSegments(pcap);
    const syns = upstream.filter((s) => s.flags.syn && !s.flags.ack);
    const connections = new Set(syns.map((s) => `${s.sport}/${s.seq}`));
    assert.equal(connections.size, 40, `forty connections seen by the server (${connections.size})`);
    for (const s of syns) {
      assert.equal(s.src, POOL.v4, 'from the pool address');
      assert.ok(allocations.some((a) => s.sport >= blockRange(a)[0] && s.sport <= blockRange(a)[1]), `port ${s.sport} inside a logged block`);
      assert.equal(s.sport % 2, 1, `port ${s.sport} is not one the kernel refused (the even ones are held)`);
    }
    // One allocation line and one release line per block.
    const releases = log.filter((x) => x.event === 'block-release');
    assert.deepEqual(releases.map((x) => x.ports).sort(), allocations.map((x) => x.ports).sort(), 'each block released once');

  });

  test('a CPE at its block limit: the next connection is refused (port-block-limit, counted), the others are exact', { timeout: 120_000 }, async () => {
    writeConcentratorConfig('  size: 8\n  maxBlocksPerCpe: 1\n  first: 20000\n  last: 20255\n  releaseAfterS: 3\n');
    const reloads = conc!.stderr.split('configuration reloaded').length;
    conc!.child.kill('SIGHUP');
    await conc!.until(() => (conc!.stderr.split('configuration reloaded').length > reloads ? true : undefined), 15_000, 'the reload');
    const refusedBefore = await metric('mpconvert_refused_total', 'reason="port-block-limit"');
    const from = lines().length;
    // One block of 8 with 4 usable ports: four uploads held open take them, then two more are refused.
    const held = transfers(4, 'held', 8);
    await poll('four relayed connections', async () => ((await metric('mpconvert_active_connections')) === 4 ? true : undefined));
    await poll('the gauge of blocks held at 1', async () => ((await metric('mpconvert_port_blocks')) === 1 ? true : undefined));
    const extra = await transfers(2, 'over');
    const first = await held;
    assert.equal(first.ok, 4, 'the four within the block are exact');
    assert.equal(extra.ok, 0, 'the two beyond it are refused');
    // Each refused upload is refused once or twice: a CPE whose 0-RTT dial is reset retries it at once
    // without SYN data (docs/architecture.md, step 2), which is refused the same way.
    const counted = (await metric('mpconvert_refused_total', 'reason="port-block-limit"')) - refusedBefore;
    assert.ok(counted >= 2 && counted <= 4, `two uploads refused, counted ${counted} times`);
    const refused = lines().slice(from).filter((x) => x.event === 'refused');
    assert.deepEqual(refused.map((x) => x.reason), Array(counted).fill('port-block-limit'), 'each refusal in the session log, with its reason');
    assert.equal(lines().slice(from).filter((x) => x.event === 'block-allocate').length, 1, 'one block');
  });

  test('rotation: the file moved away, SIGHUP, the next lines go to a new file', { timeout: 120_000 }, async () => {
    // The blocks of the previous test go back first (releaseAfterS), so this test's lines are its own.
    await allReleased();
    const rotated = `${logFile}.1`;
    renameSync(logFile, rotated);
    const reopened = conc!.stderr.split('session log file reopened').length;
    conc!.child.kill('SIGHUP');
    await conc!.until(() => (conc!.stderr.split('session log file reopened').length > reopened ? true : undefined), 15_000, 'the reopen');
    const old = lines(rotated).length;
    const r = await transfers(1, 'rot');
    assert.equal(r.ok, 1);
    const fresh = await poll('the allocation and release lines in the new file', () => {
      const l = lines();
      return l.some((x) => x.event === 'block-release') ? l : undefined;
    });
    assert.deepEqual(fresh.map((x) => x.event), ['block-allocate', 'block-release']);
    assert.equal(lines(rotated).length, old, 'the rotated file got nothing more');
  });

  test('per-connection lines (connections: true) name the CPE, its key id and the external address and port, not the server (REQ-12)', { timeout: 120_000 }, async () => {
    await conc!.stop();
    writeConcentratorConfig('  size: 16\n  maxBlocksPerCpe: 8\n  first: 20000\n  last: 20255\n  releaseAfterS: 3\n', '  connections: true\n');
    await startConcentrator();
    const from = lines().length;
    const r = await transfers(3, 'conn');
    assert.equal(r.ok, 3);
    const l = await poll('three open and three close lines', () => {
      const x = lines().slice(from);
      return x.filter((y) => y.event === 'close').length === 3 ? x : undefined;
    });
    const opens = l.filter((x) => x.event === 'open');
    assert.equal(opens.length, 3);
    for (const o of opens) {
      assert.equal(o.keyId, KEY_ID);
      assert.match(o.cpe ?? '', /^198\.18\.[12]\.2$/);
      assert.match(o.external ?? '', new RegExp(`^${POOL.v4.replace(/\./g, '\\.')}:2\\d{4}$`), 'the external address and port');
      assert.equal(o['source'], CLIENT4, 'the LAN host from the source IE');
      assert.ok(Number(o['sourcePort']) > 0, 'and its port');
      assert.ok(Number(o['cpePort']) > 0, "the CPE's port of the MPTCP connection");
      assert.equal(o['destination'], undefined, 'no destination by default');
    }
    const text = readFileSync(logFile, 'utf8');
    assert.ok(!text.includes(srv4) && !text.includes(':8080'), 'the server address appears nowhere in the session log');
  });

  test('IPv6 server: the server leg leaves from the pool\'s IPv6 address, from a port of a block logged for that address', { timeout: 120_000 }, async () => {
    const srv6 = lab.hosts.servers[0]!.v6;
    const pcap = join(dir, 'v6.pcap');
    const td = new Proc(lab.hosts.servers[0]!.spawn('tcpdump', ['-i', 'any', '--immediate-mode', '-U', '-n', '-w', pcap, 'ip6 and tcp dst port 8080']));
    await td.until(() => (td.stderr.includes('listening') ? true : undefined), 10_000, 'tcpdump listening');
    const from = lines().length;
    const r = await transfers(3, 'six', 0, 20_000, srv6);
    assert.equal(r.ok, 3, 'every body exact');
    const l = await poll('three close lines', () => {
      const x = lines().slice(from);
      return x.filter((y) => y.event === 'close').length === 3 ? x : undefined;
    });
    await poll('the SYNs captured', () => (readTcpSegments(pcap).filter((x) => x.flags.syn).length >= 3 ? true : undefined));
    await td.stop('SIGINT');
    const blocks = l.filter((x) => x.event === 'block-allocate' && x.external === POOL.v6).map(blockRange);
    assert.ok(blocks.length >= 1, 'a block on the IPv6 pool address');
    const syns = readTcpSegments(pcap).filter((x) => x.flags.syn && !x.flags.ack);
    assert.equal(new Set(syns.map((x) => `${x.sport}/${x.seq}`)).size, 3);
    for (const x of syns) {
      assert.equal(x.src, ipv6ToBytes(POOL.v6).toString('hex').match(/.{4}/g)!.join(':'), 'from the pool IPv6 address');
      assert.ok(blocks.some(([lo, hi]) => x.sport >= lo && x.sport <= hi), `port ${x.sport} inside the IPv6 address's block`);
    }
    for (const o of l.filter((x) => x.event === 'open')) assert.match(o.external ?? '', /^\[2001:db8:100::8000\]:2\d{4}$/);
  });
});
