/**
 * Original source to servers, end to end: LAN client (curl) -> CPE (source IE on) -> concentrator, which
 * starts the server leg with a PROXY protocol v2 header for the configured destination -> Debian's HAProxy
 * (`bind ... accept-proxy`, in front of the test HTTP server). HAProxy's own log names the LAN client's
 * address and port, over IPv4 and IPv6; without a source IE it names the CPE; a destination that is not
 * configured gets no header (the HTTP server behind it would answer 400 to one); with the setting reloaded
 * away HAProxy refuses the connection.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { Lab } from '../../src/lab/index.js';
import { labCapabilityMissing, IN_CI } from '../support/capabilities.js';
import { CLI, Proc, TOOL, start } from '../support/lab-procs.js';
import { deterministicSha256 } from '../support/tools/stream-util.js';

const labTest = (name: string, fn: () => Promise<void>) => test(name, { timeout: 120_000 }, fn);

const missing = labCapabilityMissing() ?? (haproxyMissing() ? 'haproxy not installed (apt-get install haproxy)' : null);
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

function haproxyMissing(): boolean {
  try {
    execFileSync('sh', ['-c', 'command -v haproxy'], { stdio: 'ignore' });
    return false;
  } catch {
    return true;
  }
}

const CONC4 = '198.18.200.1';
const CONC6 = '2001:db8:200::1';
const CLIENT4 = '198.18.0.2';
const CLIENT6 = '2001:db8::2';
/** HAProxy's port (PROXY header expected) and the HTTP server's (none expected). */
const PP_PORT = 8443;
const HTTP_PORT = 8080;

describe('PROXY protocol v2 to a real HAProxy (lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  let conc: Proc | undefined;
  let cpe: Proc | undefined;
  let http: Proc;
  let haproxy: Proc;
  let srv4: string;
  let srv6: string;
  const dir = mkdtempSync(join(tmpdir(), 'mpc-pp-'));
  const concFile = join(dir, 'concentrator.yaml');
  /** Every test's curl uses its own client port, so a log line names one connection. */
  let nextPort = 41_000;

  const proxyProtocolOn = () =>
    `server:\n  proxyProtocol:\n    - { prefix: "${srv4}/32", ports: [${PP_PORT}] }\n    - { prefix: "${srv6}/128", ports: [${PP_PORT}] }\n`;

  function writeConcentratorConfig(extra: string): void {
    writeFileSync(
      concFile,
      `listen: ["${CONC4}:5000", "[${CONC6}]:5000"]\nallow: ["198.18.0.0/15", "2001:db8::/32"]\nadmin: "127.0.0.1:9090"\nshutdownDrainS: 1\nsessionLogging:\n  destinations: true\n${extra}`,
    );
  }

  async function startCpe(sourceIe: boolean): Promise<void> {
    await cpe?.stop();
    const file = join(dir, `cpe-${Date.now()}.yaml`);
    writeFileSync(file, `lan: [lan0]\nuplinks: [{interface: up1}, {interface: up2}]\nadmin: "127.0.0.1:9091"\nconcentrators:\n  - address: "${CONC4}:5000"\n    sourceIe: ${sourceIe}\n`);
    cpe = start(lab.hosts.cpe, [CLI, 'cpe', '--config', file]);
    await cpe.waitLine((l) => l.startsWith('ready'), 30_000);
  }

  /** curl in the LAN client from a fixed local port: the body's sha256, or curl's error. */
  async function fetch(host: string, port: number, size: number, seed: string): Promise<{ localPort: number; sha256: string; ok: boolean; stderr: string }> {
    const localPort = nextPort++;
    const u = `http://${host.includes(':') ? `[${host}]` : host}:${port}/bytes/${size}?seed=${seed}`;
    const r = await lab.hosts.client.exec('bash', ['-o', 'pipefail', '-c', `curl -sS --fail --max-time 20 --local-port ${localPort} '${u}' | sha256sum`], {
      timeoutMs: 30_000,
      allowFailure: true,
    });
    const sha256 = r.stdout.split(' ')[0] ?? '';
    return { localPort, sha256, ok: sha256 === deterministicSha256(seed, size), stderr: r.stderr };
  }

  /** HAProxy's log line for the connection from this client port (the log format below). */
  const haproxyLine = (port: number) => haproxy.until(() => haproxy.output.split('\n').find((l) => l.startsWith('mpc-client ') && l.includes(`:${port} `)), 15_000, `HAProxy's log line for client port ${port}`);

  const logLines = () => haproxy.output.split('\n').filter((l) => l.startsWith('mpc-client '));
  /** The first log line after the first `n` (connections here are one at a time). */
  const nextLogLine = (n: number) => haproxy.until(() => logLines()[n], 15_000, `HAProxy's log line number ${n + 1}`);

  /** The concentrator's session log line opening the connection to `destination`, from the `n`-th on. */
  const sessionOpen = (destination: string, from: number) =>
    conc!.until(
      () =>
        conc!.stderr
          .split('\n')
          .slice(from)
          .filter((l) => l.includes('"event":"open"') && l.includes(`"destination":"${destination}"`))
          .map((l) => JSON.parse(l) as Record<string, unknown>)[0],
      15_000,
      `a session open line for ${destination}`,
    );
  const stderrLines = () => conc!.stderr.split('\n').length - 1;

  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: 0 }, { rate: 0 }], servers: 1 });
    const server = lab.hosts.servers[0]!;
    srv4 = server.v4;
    srv6 = server.v6;
    // The HTTP server on every address (HTTP_PORT, reached directly: no header expected) and HAProxy in front of
    // it on PP_PORT (header required). HAProxy logs each connection to stderr with the client it was told about.
    http = start(server, [TOOL('http-server'), JSON.stringify({ host: '::', port: HTTP_PORT })]);
    const cfg = join(dir, 'haproxy.cfg');
    writeFileSync(
      cfg,
      [
        'global',
        '  log stderr format raw local0 info',
        'defaults',
        '  mode tcp',
        '  log global',
        '  log-format "mpc-client %ci:%cp frontend %ft bytes_read %B"',
        '  timeout connect 5s',
        '  timeout client 30s',
        '  timeout server 30s',
        'frontend pp',
        `  bind ${srv4}:${PP_PORT} accept-proxy`,
        `  bind [${srv6}]:${PP_PORT} accept-proxy`,
        // Only the concentrator may speak for others (the rule sees the real peer: it runs before the header is read).
        "  tcp-request connection reject if !{ src 198.19.0.1 2001:db8:100::1 }",
        '  default_backend web',
        'backend web',
        `  server web 127.0.0.1:${HTTP_PORT}`,
        '',
      ].join('\n'),
    );
    haproxy = new Proc(server.spawn('haproxy', ['-db', '-f', cfg]));
    await http.waitLine((l) => l.includes('ready'));
    for (const deadline = Date.now() + 15_000; ; ) {
      const out = (await server.exec('ss', ['-Hltn', `( sport = :${PP_PORT} )`])).stdout;
      if (out.includes(`${srv4}:${PP_PORT}`) && out.includes(`[${srv6}]:${PP_PORT}`)) break;
      assert.ok(haproxy.running, `HAProxy exited: ${haproxy.output}`);
      assert.ok(Date.now() < deadline, `HAProxy is not listening on ${PP_PORT}: ${haproxy.output}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    writeConcentratorConfig(proxyProtocolOn());
    conc = start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', concFile]);
    await conc.waitLine((l) => l.startsWith('ready'), 30_000);
    await startCpe(true);
  });

  after(async () => {
    await cpe?.stop();
    await conc?.stop();
    await haproxy?.stop();
    await http?.stop();
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  labTest('IPv4: the body is exact and HAProxy logs the LAN client 198.18.0.2 and its port', async () => {
    const from = stderrLines();
    const r = await fetch(srv4, PP_PORT, 300_000, 'pp4');
    assert.ok(r.ok, `the body through HAProxy is exact (curl: ${r.stderr})`);
    const line = await haproxyLine(r.localPort);
    assert.match(line, new RegExp(`^mpc-client ${CLIENT4.replace(/\./g, '\\.')}:${r.localPort} `), 'HAProxy took the client from the PROXY header');
    const open = await sessionOpen(`${srv4}:${PP_PORT}`, from);
    assert.equal(open['proxyProtocol'], 'v2', 'the session log says a header was sent');
    assert.equal(open['source'], CLIENT4, 'from the source IE');
  });

  labTest('IPv6: HAProxy logs the LAN client 2001:db8::2 and its port', async () => {
    const r = await fetch(srv6, PP_PORT, 300_000, 'pp6');
    assert.ok(r.ok, `the body through HAProxy is exact (curl: ${r.stderr})`);
    const line = await haproxyLine(r.localPort);
    assert.match(line, new RegExp(`^mpc-client ${CLIENT6}:${r.localPort} `));
  });

  labTest('a destination that is not configured gets no header: the HTTP server on the same host answers', async () => {
    const from = stderrLines();
    const r = await fetch(srv4, HTTP_PORT, 100_000, 'plain');
    // A PROXY header in front of the request would make the HTTP server answer 400 (curl --fail: an error).
    assert.ok(r.ok, `the plain server got a plain request (curl: ${r.stderr})`);
    const open = await sessionOpen(`${srv4}:${HTTP_PORT}`, from);
    assert.equal(open['proxyProtocol'], undefined, 'no header');
    assert.equal(open['source'], CLIENT4, 'the connection went through the concentrator with the source IE');
  });

  labTest('without a source IE the header names the CPE (its uplink address; IPv4-mapped towards an IPv6 server)', async () => {
    await startCpe(false);
    try {
      const n4 = logLines().length;
      const r4 = await fetch(srv4, PP_PORT, 10_000, 'cpe4');
      assert.ok(r4.ok, `curl: ${r4.stderr}`);
      const line4 = await nextLogLine(n4);
      assert.match(line4, /^mpc-client 198\.18\.[12]\.2:\d+ /, 'the CPE address of the MPTCP connection');
      const n6 = logLines().length;
      const r6 = await fetch(srv6, PP_PORT, 10_000, 'cpe6');
      assert.ok(r6.ok, `curl: ${r6.stderr}`);
      // The CPE reached the concentrator over IPv4: a mixed pair, sent as AF_INET6 with the address mapped.
      const line6 = await nextLogLine(n6);
      assert.match(line6, /^mpc-client ::ffff:198\.18\.[12]\.2:\d+ /);
      for (const [line, port] of [[line4, r4.localPort], [line6, r6.localPort]] as const) assert.ok(!line.includes(`:${port} `), `the LAN client's port is not claimed: ${line}`);
    } finally {
      await startCpe(true);
    }
  });

  labTest('with the setting reloaded away, HAProxy refuses the connection: the header is what it needs', async () => {
    writeConcentratorConfig('');
    conc!.child.kill('SIGHUP');
    await conc!.until(() => (conc!.stderr.includes('configuration reloaded') ? true : undefined), 15_000, 'the reload');
    try {
      const from = stderrLines();
      const refusals = () => haproxy.output.split('does not look like a PROXY protocol header').length - 1;
      const refused = refusals();
      const r = await fetch(srv4, PP_PORT, 10_000, 'off');
      assert.equal(r.ok, false, 'HAProxy (accept-proxy) does not serve a connection without a header');
      await haproxy.until(() => (refusals() > refused ? true : undefined), 15_000, 'HAProxy saying the first bytes are not a PROXY header');
      const open = await sessionOpen(`${srv4}:${PP_PORT}`, from);
      assert.equal(open['proxyProtocol'], undefined, 'the concentrator converted it, without a header');
      assert.ok(!haproxy.output.includes(`mpc-client ${CLIENT4}:${r.localPort} `), 'HAProxy never saw the LAN client');
    } finally {
      writeConcentratorConfig(proxyProtocolOn());
      const reloads = conc!.stderr.split('configuration reloaded').length;
      conc!.child.kill('SIGHUP');
      await conc!.until(() => (conc!.stderr.split('configuration reloaded').length > reloads ? true : undefined), 15_000, 'the second reload');
    }
    const back = await fetch(srv4, PP_PORT, 10_000, 'back');
    assert.ok(back.ok, `reloaded back on: served again (curl: ${back.stderr})`);
    assert.match(await haproxyLine(back.localPort), new RegExp(`^mpc-client ${CLIENT4.replace(/\./g, '\\.')}:${back.localPort} `));
  });
});
