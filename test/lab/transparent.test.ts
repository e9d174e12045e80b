/**
 * Transparent and NPTv6 source addresses, end to end with the real daemons: LAN client (curl) -> CPE (2
 * unshaped uplinks, source IE on, no direct fallback) -> concentrator -> HTTP server, which reports the
 * client address it saw (`x-peer`). Per mode and family: the server sees the expected source, a 50 MB
 * download arrives intact (every byte came back over the return path), the connection went through the
 * concentrator, and a hand-driven client claiming a source outside the CPE's prefixes is refused and counted.
 *
 * In the lab the concentrator namespace is also the access router and the servers' default gateway, so the
 * routes an ISP router would inject for the customer and NPTv6 prefixes are already there (docs/lab.md).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab } from '../../src/lab/index.js';
import { encodeMpConvert } from '../../src/protocol/index.js';
import { nptv6Mapping, translate } from '../../src/policy/nptv6.js';
import { RETURN_PATH_TABLE_NAME } from '../../src/concentrator/return-path.js';
import { labCapabilityMissing, IN_CI } from '../support/capabilities.js';
import { CLI, Proc, TOOL, runTool, start } from '../support/lab-procs.js';
import { deterministicSha256 } from '../support/tools/stream-util.js';

const labTest = (name: string, fn: () => Promise<void>) => test(name, { timeout: 150_000 }, fn);

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

const MB = 1024 * 1024;
const CONC4 = '198.18.200.1';
const CONC6 = '2001:db8:200::1';
const CPE_WAN = ['198.18.1.2', '198.18.2.2'];
const CLIENT4 = '198.18.0.2';
const CLIENT6 = '2001:db8::2';
const NPT_EXTERNAL = '2001:db8:300::/64';
const CUSTOMERS = `  customers:\n    - cpe: "198.18.0.0/20"\n      prefixes: ["198.18.0.0/24", "2001:db8::/64"]\n`;

describe('transparent and NPTv6 source addresses (lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  let conc: Proc | undefined;
  let http: Proc;
  let cpe: Proc | undefined;
  const dir = mkdtempSync(join(tmpdir(), 'mpc-transparent-'));
  let srv4: string;
  let srv6: string;

  async function metrics(): Promise<string> {
    return (await lab.hosts.concentrator.exec('curl', ['-s', 'http://127.0.0.1:9090/metrics'])).stdout;
  }
  const counter = (text: string, re: RegExp) => Number(re.exec(text)?.[1] ?? 0);
  const spoofed = (t: string) => counter(t, /mpconvert_refused_total\{reason="source-spoofed"[^}]*\} (\d+)/);
  const relayed = (t: string) => [...t.matchAll(/mpconvert_connections_total\{[^}]*\} (\d+)/g)].reduce((a, m) => a + Number(m[1]), 0);

  async function startConcentrator(sourceAddress: string): Promise<void> {
    await stopConcentrator();
    const file = join(dir, `conc-${Date.now()}.yaml`);
    writeFileSync(
      file,
      `listen: ["${CONC4}:5000", "[${CONC6}]:5000"]\nallow: ["198.18.0.0/15", "2001:db8::/32"]\nadmin: "127.0.0.1:9090"\nsourceAddress:\n${sourceAddress}`,
    );
    conc = start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', file]);
    await conc.waitLine((l) => l.startsWith('ready'), 30_000);
  }

  /** Stops the concentrator and checks that it removed its return path. */
  async function stopConcentrator(): Promise<void> {
    const stopped = conc;
    conc = undefined;
    if (!stopped) return;
    assert.equal(await stopped.stop(), 0, `the concentrator stopped cleanly; its log:\n${stopped.stderr.slice(-3000)}`);
    const nft = await lab.hosts.concentrator.exec('nft', ['list', 'table', 'inet', RETURN_PATH_TABLE_NAME], { allowFailure: true });
    assert.notEqual(nft.code, 0, 'the return-path nft table is gone after stop');
    for (const f of ['-4', '-6']) {
      const rules = (await lab.hosts.concentrator.exec('ip', [f, 'rule', 'show'])).stdout;
      assert.doesNotMatch(rules, /lookup 4242/, `no return-path rule left (${f})`);
    }
  }

  /** curl in the LAN client: the body's sha256 and the x-peer header (the source the server saw). */
  async function download(host: string, size: number, seed: string): Promise<{ sha256: string; peer: string }> {
    const headers = join(dir, `h-${seed}`);
    const u = `http://${host.includes(':') ? `[${host}]` : host}:8080/bytes/${size}?seed=${seed}`;
    const r = await lab.hosts.client.exec('bash', ['-o', 'pipefail', '-c', `curl -sS --fail -D '${headers}' '${u}' | sha256sum`], { timeoutMs: 100_000 });
    const peer = /^x-peer: *(\S+)/im.exec(readFileSync(headers, 'utf8'))?.[1] ?? '';
    return { sha256: r.stdout.split(' ')[0] ?? '', peer };
  }

  /** A 50 MB download: intact, relayed by the concentrator, and the server saw `expected`. */
  async function check(host: string, expected: string | string[], seed: string): Promise<void> {
    const before = relayed(await metrics());
    const r = await download(host, 50 * MB, seed);
    assert.equal(r.sha256, deterministicSha256(seed, 50 * MB), '50 MB intact');
    const want = Array.isArray(expected) ? expected : [expected];
    assert.ok(want.includes(r.peer), `the server saw ${r.peer}, expected ${want.join(' or ')}`);
    // Counted when the relay closes, a moment after curl has its last byte.
    let after = before;
    for (let i = 0; i < 50 && after <= before; i++) {
      if (i > 0) await new Promise((res) => setTimeout(res, 100));
      after = relayed(await metrics());
    }
    assert.ok(after > before, 'the download went through the concentrator');
  }

  /** A hand-driven CPE connection whose source IE claims `source`: refused, counted, never reaches the server. */
  async function spoof(destination: string, source: string): Promise<void> {
    const before = spoofed(await metrics());
    const signalling = encodeMpConvert([
      { type: 0, direction: 'destination', address: destination, port: 8080 },
      { type: 0, direction: 'source', address: source, port: 40_000 },
    ]).toString('hex');
    const out = await runTool<{ error?: string; received?: number }>(lab.hosts.cpe, 'mpc-client', {
      host: CONC4,
      port: 5000,
      localAddress: CPE_WAN[0],
      signallingHex: signalling,
      appHex: Buffer.from('GET /bytes/10 HTTP/1.1\r\nHost: x\r\n\r\n').toString('hex'),
      head: signalling.length / 2,
    });
    assert.ok(out.error !== undefined || out.received === 0, `the spoofed connection got nothing back: ${JSON.stringify(out)}`);
    let after = before;
    for (let i = 0; i < 50 && after <= before; i++) {
      if (i > 0) await new Promise((res) => setTimeout(res, 100));
      after = spoofed(await metrics());
    }
    assert.equal(after, before + 1, 'refused{reason="source-spoofed"} counted once');
  }

  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: 0 }, { rate: 0 }], servers: 1 });
    srv4 = lab.hosts.servers[0]!.v4;
    srv6 = lab.hosts.servers[0]!.v6;
    http = start(lab.hosts.servers[0]!, [TOOL('http-server'), JSON.stringify({ host: '::', port: 8080 })]);
    await http.waitLine((l) => l.includes('ready'));
    // The CPE needs a concentrator to start against; each test restarts it in its mode.
    await startConcentrator(`  mode: kernel\n`);
    await startCpe(`${CONC4}:5000`);
  });

  async function startCpe(concentrator: string): Promise<void> {
    if (cpe) assert.equal(await cpe.stop(), 0, 'the CPE stopped cleanly');
    const file = join(dir, `cpe-${Date.now()}.yaml`);
    // fallback: refuse, so a failed conversion can never reach the server directly (with the client's address).
    writeFileSync(
      file,
      `lan: [lan0]\nuplinks: [{interface: up1}, {interface: up2}]\nadmin: "127.0.0.1:9091"\nfallback: refuse\nconcentrators:\n  - address: "${concentrator}"\n    sourceIe: true\n`,
    );
    cpe = start(lab.hosts.cpe, [CLI, 'cpe', '--config', file]);
    await cpe.waitLine((l) => l.startsWith('ready'), 30_000);
  }

  after(async () => {
    await cpe?.stop();
    await stopConcentrator().catch(() => {});
    await http?.stop();
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  labTest('transparent, IPv4 CPE address preservation: the server sees the CPE WAN address; spoofed source refused', async () => {
    await startConcentrator(`  mode: transparent\n  ipv4: cpe\n${CUSTOMERS}`);
    const status = JSON.parse((await lab.hosts.concentrator.exec('curl', ['-s', 'http://127.0.0.1:9090/status'])).stdout) as { sourceAddress?: string; returnPath?: boolean };
    assert.equal(status.sourceAddress, 'transparent');
    assert.equal(status.returnPath, true);
    await check(srv4, CPE_WAN, 'tcpe4');
    await spoof(srv4, '198.18.7.7');
    // The return path takes only the packets of the concentrator's own transparent sockets: the CPE's own
    // connection from the same WAN address is still forwarded to it (the concentrator relays nothing for it).
    const relayedBefore = relayed(await metrics());
    const direct = await lab.hosts.cpe.exec('bash', ['-o', 'pipefail', '-c', `curl -sS --fail --interface ${CPE_WAN[0]} 'http://${srv4}:8080/bytes/${MB}?seed=direct' | sha256sum`], { timeoutMs: 60_000 });
    assert.equal(direct.stdout.split(' ')[0], deterministicSha256('direct', MB), 'a forwarded connection to a customer address still works');
    assert.equal(relayed(await metrics()), relayedBefore, 'and was not relayed by the concentrator');
  });

  labTest('transparent, host address preservation: the server sees the LAN host (IPv4 and IPv6); spoofed sources refused', async () => {
    await startConcentrator(`  mode: transparent\n  ipv4: host\n  ipv6: host\n${CUSTOMERS}`);
    await check(srv4, CLIENT4, 'thost4');
    await check(srv6, CLIENT6, 'thost6');
    await spoof(srv4, '198.18.7.7');
    await spoof(srv6, '2001:db8:77::7');
  });

  labTest('transparent, IPv6 prefix preservation: the server sees prefixHost in the LAN prefix; spoofed source refused', async () => {
    await startConcentrator(`  mode: transparent\n  ipv6: prefix\n  prefixHost: "::100:0:0:1"\n${CUSTOMERS}`);
    await check(srv6, '2001:db8::100:0:0:1', 'tprefix6');
    await spoof(srv6, '2001:db8:77::7');
  });

  labTest('transparent, CPE address preservation over IPv6: IPv6 sees the CPE\'s IPv6 WAN address, IPv4 its configured /32', async () => {
    await startConcentrator(
      `  mode: transparent\n  ipv4: cpe\n  ipv6: cpe\n  customers:\n    - cpe: "2001:db8::/46"\n      prefixes: ["198.18.0.0/24", "2001:db8::/64", "${CPE_WAN[0]}/32"]\n`,
    );
    await startCpe(`[${CONC6}]:5000`);
    try {
      await check(srv6, ['2001:db8:1::2', '2001:db8:2::2'], 'tcpe6');
      await check(srv4, CPE_WAN[0]!, 'tcpe6to4');
    } finally {
      await startCpe(`${CONC4}:5000`);
    }
  });

  labTest('nptv6: the server sees the LAN host translated into the external prefix (RFC 6296); IPv4 keeps the kernel source', async () => {
    await startConcentrator(`  mode: nptv6\n  nptv6:\n    prefixes: ["${NPT_EXTERNAL}"]\n${CUSTOMERS}`);
    const mapped = translate(nptv6Mapping('2001:db8::/64', NPT_EXTERNAL), CLIENT6);
    assert.ok(mapped !== null);
    await check(srv6, mapped, 'npt6');
    await check(srv4, '198.19.0.1', 'npt4');
    await spoof(srv6, '2001:db8:77::7');
  });
});
