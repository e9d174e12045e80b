/**
 * DHCP provisioning of the CPE's concentrators (docs/operator.md, "DHCP provisioning"), in the field topology: the
 * ISP's real dnsmasq sends the concentrators option (code 224, draft-boucadair-mptcp-dhc) on the access network;
 * the CPE's real ISC dhclient declares and requests it with the lines `mpconvert cpe --dhcp-snippet dhclient`
 * prints, and Debian's dhclient-script runs the shipped exit hook (packaging/dhcp/dhclient-exit-hook), which
 * leaves the lease file the CPE follows. Three concentrators on the public segment: S (198.19.0.1, the static
 * list), A and B (198.19.0.2 and .3, only ever named by DHCP); which one carried a download is read from each
 * concentrator's own connection counter. DHCPv6 (dnsmasq and dhclient -6 on the access link, the only IPv6 of this
 * topology): the CPE lists the IPv6 concentrator the lease names.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FIELD, Lab } from '../../src/lab/index.js';
import { labCapabilityMissing, requireTool, IN_CI } from '../support/capabilities.js';
import { CLI, DIST, Proc, TOOL, start } from '../support/lab-procs.js';
import { deterministicSha256 } from '../support/tools/stream-util.js';

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

const MB = 1024 * 1024;
const HOOK = join(DIST, '..', 'packaging/dhcp/dhclient-exit-hook');
const DHCPCD_HOOK = join(DIST, '..', 'packaging/dhcp/dhcpcd-hook');
const SECRET = randomBytes(32);
/** The three concentrators: the static one, and two that only DHCP names. */
const CONCS = { S: { v4: FIELD.concentrator.v4, admin: 9090 }, A: { v4: '198.19.0.2', admin: 9092 }, B: { v4: '198.19.0.3', admin: 9093 } } as const;
type Name = keyof typeof CONCS;
const NAMES = Object.keys(CONCS) as Name[];
/** T1 of the leases: the client renews every RENEW_S seconds, so a changed option reaches it within that. */
const RENEW_S = 3;

interface CpeStatus {
  concentratorSource: string;
  concentrators: Array<{ address: string; sources: string[] }>;
  dhcp?: Array<{ uplink: string; v4: string[]; v6: string[] }>;
}

describe('DHCP provisioning: dnsmasq sends the concentrators option, dhclient and the shipped hook hand it to the CPE', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  const concs = new Map<Name, Proc>();
  let http: Proc | undefined;
  let cpe: Proc | undefined;
  const dir = mkdtempSync(join(tmpdir(), 'mpc-dhcp-'));
  const leaseDir = join(dir, 'leases');
  const srv = () => lab.hosts.servers[0]!;

  /** Connections each concentrator handled so far (every outcome). */
  const handled = async (n: Name): Promise<number> => {
    const text = (await lab.hosts.concentrator.exec('curl', ['-s', `http://127.0.0.1:${CONCS[n].admin}/metrics`])).stdout;
    return text.split('\n').filter((l) => l.startsWith('mpconvert_connections_total{')).reduce((a, l) => a + Number(l.split(' ').pop()), 0);
  };
  const cpeStatus = async () => JSON.parse((await lab.hosts.cpe.exec('curl', ['-s', 'http://127.0.0.1:9091/status'])).stdout) as CpeStatus;
  /** Polls the CPE's status until its concentrators are `want` (addresses in order). */
  async function concentratorsAre(want: string[], ms = 20_000): Promise<CpeStatus> {
    let s: CpeStatus | undefined;
    for (const deadline = Date.now() + ms; Date.now() < deadline; await new Promise((r) => setTimeout(r, 100))) {
      s = await cpeStatus().catch(() => undefined);
      if (s && JSON.stringify(s.concentrators.map((c) => c.address)) === JSON.stringify(want)) return s;
    }
    assert.fail(`the CPE's concentrators did not become ${want.join(', ')}: ${JSON.stringify(s)}\nlease file: ${leaseFile()}\n${cpe?.stderr.slice(-2000)}`);
  }
  const leaseFile = (family: 'v4' | 'v6' = 'v4') => (existsSync(join(leaseDir, `up1.${family}`)) ? readFileSync(join(leaseDir, `up1.${family}`), 'utf8') : '(none)');

  /** A download through the CPE: the hash, and which concentrator's counter moved (exactly one, by one). */
  async function downloadVia(seed: string): Promise<Name> {
    const before = new Map(await Promise.all(NAMES.map(async (n) => [n, await handled(n)] as const)));
    const r = await lab.hosts.client.exec('bash', ['-o', 'pipefail', '-c', `curl -sS --fail 'http://${srv().v4}:8080/bytes/${4 * MB}?seed=${seed}' | sha256sum`], { timeoutMs: 60_000 });
    assert.equal(r.stdout.split(' ')[0], deterministicSha256(seed, 4 * MB), 'every byte, in order');
    // The counter moves when the relayed connection ends, just after the download.
    let deltas: Array<[Name, number]> = [];
    for (const deadline = Date.now() + 10_000; Date.now() < deadline; await new Promise((res) => setTimeout(res, 100))) {
      deltas = await Promise.all(NAMES.map(async (n) => [n, (await handled(n)) - before.get(n)!] as [Name, number]));
      if (deltas.some(([, d]) => d > 0)) break;
    }
    const moved = deltas.filter(([, d]) => d !== 0);
    assert.equal(moved.length, 1, `one concentrator carried it: ${JSON.stringify(deltas)}`);
    assert.equal(moved[0]![1], 1, `one connection: ${JSON.stringify(deltas)}`);
    return moved[0]![0];
  }

  async function startCpe(): Promise<void> {
    const file = join(dir, 'cpe.yaml');
    writeFileSync(
      file,
      [
        'mode: router',
        'lan: [lan0]',
        'uplinks: [{interface: up1}]',
        'concentratorSource: dhcp-first',
        'concentrators:',
        `  - { address: "${CONCS.S.v4}:5000", keyId: cpe-dhcp, secretFile: ${join(dir, 'cpe.secret')} }`,
        'dhcp:',
        `  leaseDir: ${leaseDir}`,
        '  pollMs: 200',
        `  concentrator: { port: 5000, keyId: cpe-dhcp, secretFile: ${join(dir, 'cpe.secret')} }`,
        'admin: "127.0.0.1:9091"',
        'shutdownDrainS: 1',
        '',
      ].join('\n'),
    );
    cpe = start(lab.hosts.cpe, [CLI, 'cpe', '--config', file]);
    await cpe.waitLine((l) => l.startsWith('ready'), 30_000);
  }
  async function stopCpe(): Promise<void> {
    const p = cpe;
    cpe = undefined;
    if (p) assert.equal(await p.stop(), 0, `the CPE stopped cleanly:\n${p.stderr.slice(-3000)}`);
  }

  before(async () => {
    lab = await Lab.up({ topology: 'field', uplinks: [{ rate: 0 }], servers: 1, dhcpClients: false });
    for (const n of ['A', 'B'] as const) await lab.hosts.concentrator.exec('ip', ['addr', 'add', `${CONCS[n].v4}/24`, 'dev', FIELD.concentrator.dev]);
    writeFileSync(join(dir, 'keys.yaml'), `keys:\n  - { id: cpe-dhcp, secret: "hex:${SECRET.toString('hex')}" }\n`, { mode: 0o600 });
    writeFileSync(join(dir, 'cpe.secret'), `hex:${SECRET.toString('hex')}\n`, { mode: 0o600 });
    for (const n of NAMES) {
      const file = join(dir, `conc-${n}.yaml`);
      writeFileSync(
        file,
        `instance: dhcp${n.toLowerCase()}\nlisten: ["${CONCS[n].v4}:5000"]\nallow: ["0.0.0.0/0"]\nauth:\n  keysFile: ${join(dir, 'keys.yaml')}\nadmin: "127.0.0.1:${CONCS[n].admin}"\nshutdownDrainS: 1\n`,
      );
      concs.set(n, start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', file]));
    }
    http = start(srv(), [TOOL('http-server'), JSON.stringify({ host: srv().v4, port: 8080 })]);
    await Promise.all([...[...concs.values()].map((p) => p.waitLine((l) => l.startsWith('ready'))), http.waitLine((l) => l.includes('ready'))]);
  });

  after(async () => {
    await cpe?.stop();
    for (const p of concs.values()) await p.stop();
    await http?.stop();
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  test('the CPE, started before any lease, converts through the concentrator the lease names (A), not the static one', { timeout: 90_000 }, async () => {
    await startCpe();
    await concentratorsAre([`${CONCS.S.v4}:5000`]);
    await lab.dhcpServer(1, { mcpV4: [CONCS.A.v4], renewS: RENEW_S });
    // The router side as docs/operator.md says: the declaration the CPE prints, and the shipped exit hook.
    const snippet = execFileSync(process.execPath, [CLI, 'cpe', '--dhcp-snippet', 'dhclient'], { encoding: 'utf8' });
    assert.match(snippet, /^option mpconvert-mcp code 224 = array of ip-address;$/m);
    await lab.startDhcpClient(1, { conf: `${snippet}also request dhcp-renewal-time, dhcp-rebinding-time;\n`, exitHooks: [HOOK], env: { MPCONVERT_DHCP_DIR: leaseDir } });
    assert.match(leaseFile(), /^interface=up1\nfamily=4\nmcp=198\.19\.0\.2\nexpires=\d+$/m);
    const s = await concentratorsAre([`${CONCS.A.v4}:5000`, `${CONCS.S.v4}:5000`]);
    assert.deepEqual(s.concentrators.map((c) => c.sources), [['dhcp:up1'], ['static']]);
    assert.deepEqual(s.dhcp, [{ uplink: 'up1', v4: [CONCS.A.v4], v6: [] }]);
    assert.equal(await downloadVia('via-a'), 'A');
  });

  test('a renewed lease naming B moves new connections to B, without a restart', { timeout: 60_000 }, async () => {
    const pid = cpe!.pid;
    await lab.dhcpServer(1, { mcpV4: [CONCS.B.v4], renewS: RENEW_S });
    await concentratorsAre([`${CONCS.B.v4}:5000`, `${CONCS.S.v4}:5000`]);
    assert.match(leaseFile(), /^# written by the mpconvert dhclient hook \((RENEW|REBIND)\)$/m, 'a renewal, not a new lease');
    assert.equal(await downloadVia('via-b'), 'B');
    assert.equal(cpe!.pid, pid);
    assert.match(cpe!.stderr, /the leases name other concentrators/);
  });

  test('a lease without the option falls back to the static list (S)', { timeout: 60_000 }, async () => {
    await lab.dhcpServer(1, { renewS: RENEW_S });
    await concentratorsAre([`${CONCS.S.v4}:5000`]);
    assert.match(leaseFile(), /^mcp=$/m, 'the lease names none');
    assert.equal(await downloadVia('via-s'), 'S');
  });

  test('a lease that arrives while the CPE is down counts as soon as it starts', { timeout: 90_000 }, async () => {
    await stopCpe();
    await lab.dhcpServer(1, { mcpV4: [CONCS.A.v4, CONCS.B.v4], renewS: RENEW_S });
    for (const deadline = Date.now() + 15_000; !/^mcp=198\.19\.0\.2 198\.19\.0\.3$/m.test(leaseFile()); await new Promise((r) => setTimeout(r, 100))) {
      assert.ok(Date.now() < deadline, `the hook wrote the new lease: ${leaseFile()}`);
    }
    await startCpe();
    // The first status after ready already has them (read at start, no poll needed).
    const s = await cpeStatus();
    assert.deepEqual(s.concentrators.map((c) => c.address), [`${CONCS.A.v4}:5000`, `${CONCS.B.v4}:5000`, `${CONCS.S.v4}:5000`]);
    assert.equal(await downloadVia('after-start'), 'A');
  });

  test('DHCPv6: the concentrators option (65224) of a dhclient -6 lease is used as well, after the IPv4 ones; released, it goes', { timeout: 60_000 }, async () => {
    // Only the access link has IPv6 in this topology: the IPv6 concentrator is named and listed, not dialled.
    const v6 = '2001:db8:100::2';
    await lab.dhcpServer(1, { mcpV4: [CONCS.A.v4, CONCS.B.v4], renewS: RENEW_S, v6: { mcp: [v6] } });
    const snippet = execFileSync(process.execPath, [CLI, 'cpe', '--dhcp-snippet', 'dhclient6'], { encoding: 'utf8' });
    assert.match(snippet, /^option dhcp6\.mpconvert-mcp code 65224 = array of ip6-address;$/m);
    await lab.startDhcp6Client(1, { conf: snippet, exitHooks: [HOOK], env: { MPCONVERT_DHCP_DIR: leaseDir } });
    assert.match(leaseFile('v6'), /^# written by the mpconvert dhclient hook \(BOUND6\)\ninterface=up1\nfamily=6\nmcp=2001:db8:100::2\nexpires=\d+$/m);
    const s = await concentratorsAre([`${CONCS.A.v4}:5000`, `${CONCS.B.v4}:5000`, `[${v6}]:5000`, `${CONCS.S.v4}:5000`]);
    assert.deepEqual(s.dhcp, [{ uplink: 'up1', v4: [CONCS.A.v4, CONCS.B.v4], v6: [v6] }]);
    assert.deepEqual(s.concentrators[2]!.sources, ['dhcp:up1']);
    await lab.stopDhcp6Client(1, { release: true });
    assert.equal(leaseFile('v6'), '(none)');
    await concentratorsAre([`${CONCS.A.v4}:5000`, `${CONCS.B.v4}:5000`, `${CONCS.S.v4}:5000`]);
  });

  test('the lease released: the hook removes its file, the CPE is back on the static list', { timeout: 60_000 }, async () => {
    await lab.stopDhcpClient(1, { release: true });
    assert.equal(leaseFile(), '(none)');
    const s = await concentratorsAre([`${CONCS.S.v4}:5000`]);
    assert.deepEqual(s.dhcp, [{ uplink: 'up1', v4: [], v6: [] }]);
  });

  test('dhcpcd, the other client: with the lines --dhcp-snippet dhcpcd prints and the shipped hook, its lease moves the CPE to A; its release back to S', { timeout: 90_000 }, async (t) => {
    if (!requireTool(t, 'dhcpcd')) return;
    await lab.dhcpServer(1, { mcpV4: [CONCS.A.v4], renewS: RENEW_S });
    const conf = join(dir, 'dhcpcd.conf');
    writeFileSync(conf, execFileSync(process.execPath, [CLI, 'cpe', '--dhcp-snippet', 'dhcpcd'], { encoding: 'utf8' }));
    // dhcpcd-run-hooks sources every file of /usr/lib/dhcpcd/dhcpcd-hooks (resolv.conf, NTP: the host's); this
    // one sources only mpconvert's hook, the same way.
    const runHooks = join(dir, 'dhcpcd-run-hooks');
    writeFileSync(runHooks, `#!/bin/sh\nMPCONVERT_DHCP_DIR=${leaseDir}\n. ${DHCPCD_HOOK}\n`, { mode: 0o755 });
    const dhcpcd = new Proc(lab.hosts.cpe.spawn('dhcpcd', ['-4', '-B', '-t', '20', '-f', conf, '-c', runHooks, 'up1']));
    try {
      await concentratorsAre([`${CONCS.A.v4}:5000`, `${CONCS.S.v4}:5000`]);
      assert.match(leaseFile(), /^# written by the mpconvert dhcpcd hook \(BOUND\)\ninterface=up1\nfamily=4\nmcp=198\.19\.0\.2\nexpires=\d+$/m);
      assert.equal(await downloadVia('via-dhcpcd'), 'A');
    } finally {
      // Releases the lease (RELEASE, then dhcpcd exits and removes its pid and lease files).
      await lab.hosts.cpe.exec('dhcpcd', ['-4', '-k', 'up1'], { allowFailure: true, timeoutMs: 20_000 });
      // Its privilege-separation helpers with it.
      assert.equal(await dhcpcd.stop('SIGTERM', 10_000, true), 0, `dhcpcd exited after the release:\n${dhcpcd.output.slice(-2000)}`);
    }
    assert.equal(leaseFile(), '(none)');
    await concentratorsAre([`${CONCS.S.v4}:5000`]);
  });
});
