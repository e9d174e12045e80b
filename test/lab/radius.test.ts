/**
 * RADIUS authorization and accounting against a real FreeRADIUS (Debian package freeradius), started by the
 * test in the lab's second server namespace (198.19.0.12) with a configuration directory the test writes:
 * the concentrator as client, one accepted CPE address (Session-Timeout, Class), one rejected, accounting to a
 * detail file. The CPE namespace has three uplinks, so three CPE source addresses (three identities):
 * - 198.18.1.2 is accepted: its connection converts (bytes exact), and the Stop record in the detail file
 *   carries byte counts equal to what the server received and sent (Interim-Updates, while it is held
 *   open, the live counts);
 * - 198.18.2.2 is rejected: refused before any dial (the server sees nothing), counted as radius-reject;
 * - with FreeRADIUS stopped, 198.18.3.2 (never asked before) is refused (failMode closed) once
 *   radius.maxWaitMs has passed, while the admin endpoint keeps answering at once (the event loop is not
 *   blocked); 198.18.1.2 still converts from the cache.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab } from '../../src/lab/index.js';
import { signallingFor } from '../../src/cpe/session.js';
import { labCapabilityMissing, IN_CI } from '../support/capabilities.js';
import { CLI, Proc, TOOL, runTool, start, type ClientOut, type ServerOut } from '../support/lab-procs.js';

const missing = labCapabilityMissing() ?? (existsSync('/usr/sbin/freeradius') ? null : 'freeradius not installed (Debian package freeradius)');
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

const SRV = '198.19.0.11';
const RADIUS = '198.19.0.12';
const CONC = '198.18.200.1';
const ACCEPTED = '198.18.1.2';
const REJECTED = '198.18.2.2';
const UNKNOWN = '198.18.3.2';
const SECRET = randomBytes(12).toString('hex');
const MAX_WAIT_MS = 1_500;
const REPLY = 100_000;

function radiusConfig(dir: string): string {
  return `prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
logdir = ${dir}/log
raddbdir = ${dir}
radacctdir = ${dir}/radacct
name = freeradius
confdir = \${raddbdir}
modconfdir = \${confdir}
run_dir = ${dir}/run
db_dir = \${raddbdir}
libdir = /usr/lib/freeradius
pidfile = \${run_dir}/\${name}.pid
max_request_time = 30
cleanup_delay = 5
max_requests = 1024
hostname_lookups = no
log {
  destination = stdout
  auth = yes
}
security {
  allow_core_dumps = no
  max_attributes = 200
  reject_delay = 0
  status_server = no
}
thread pool {
  start_servers = 2
  max_servers = 4
  min_spare_servers = 1
  max_spare_servers = 4
  max_requests_per_server = 0
}
client concentrator {
  ipaddr = 198.19.0.0/24
  secret = ${SECRET}
  require_message_authenticator = yes
}
modules {
  files {
    filename = \${confdir}/users
  }
  pap {
  }
  always ok {
    rcode = ok
  }
  detail {
    filename = \${radacctdir}/detail
    escape_filenames = no
    permissions = 0600
    header = "%t"
  }
}
server default {
  listen {
    type = auth
    ipaddr = ${RADIUS}
    port = 1812
  }
  listen {
    type = acct
    ipaddr = ${RADIUS}
    port = 1813
  }
  authorize {
    files
    pap
  }
  authenticate {
    pap
  }
  preacct {
  }
  accounting {
    detail
    ok
  }
  post-auth {
  }
}
`;
}

/** The detail file's records: blank-line separated blocks of `Attribute = value`. */
function detailRecords(file: string): Array<Record<string, string>> {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split(/\n\s*\n/)
    .filter((b) => b.trim() !== '')
    .map((block) => {
      const r: Record<string, string> = {};
      for (const line of block.split('\n')) {
        const m = /^\s+([A-Za-z0-9-]+) = "?([^"]*)"?$/.exec(line);
        if (m) r[m[1]!] = m[2]!;
      }
      return r;
    });
}

describe('RADIUS authorization and accounting with FreeRADIUS (lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  let conc: Proc;
  let srv: Proc;
  let radiusd: Proc;
  const dir = mkdtempSync(join(tmpdir(), 'mpc-radius-lab-'));
  const raddb = join(dir, 'raddb');
  const detail = join(raddb, 'radacct', 'detail');

  const metrics = async (): Promise<string> => (await lab.hosts.concentrator.exec('curl', ['-s', 'http://127.0.0.1:9090/metrics'])).stdout;
  const metric = async (name: string, labels: string): Promise<number> => {
    const line = (await metrics()).split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(labels));
    return line ? Number(line.split(' ').pop()) : 0;
  };
  const signalling = () => signallingFor({ format: 'mp-convert', sourceIe: false }, { address: SRV, port: 8080 }, undefined);
  const client = (localAddress: string, app: Buffer, send = 200_000, holdMs = 0) => {
    const sig = signalling();
    return runTool<ClientOut>(lab.hosts.cpe, 'mpc-client', {
      host: CONC,
      port: 5000,
      localAddress,
      fastOpen: 'no-cookie',
      signallingHex: sig.toString('hex'),
      appHex: app.toString('hex'),
      send,
      head: sig.length,
      holdMs,
      timeoutMs: 30_000,
    });
  };

  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: 0 }, { rate: 0 }, { rate: 0 }], servers: 2, mptcpRouting: true });
    for (const d of ['log', 'run', 'radacct']) mkdirSync(join(raddb, d), { recursive: true });
    writeFileSync(join(raddb, 'radiusd.conf'), radiusConfig(raddb));
    writeFileSync(
      join(raddb, 'users'),
      `${ACCEPTED} Cleartext-Password := "mpconvert"\n\tSession-Timeout = 600,\n\tClass = "lab-class"\n${REJECTED} Auth-Type := Reject\n`,
    );
    const secretFile = join(dir, 'radius.secret');
    writeFileSync(secretFile, `${SECRET}\n`, { mode: 0o600 });
    const configFile = join(dir, 'concentrator.yaml');
    writeFileSync(
      configFile,
      [
        `listen: ["${CONC}:5000"]`,
        `allow: ["198.18.0.0/16"]`,
        `admin: "127.0.0.1:9090"`,
        `shutdownDrainS: 1`,
        `radius:`,
        `  servers: [{ host: "${RADIUS}", secretFile: "${secretFile}" }]`,
        `  timeoutMs: 800`,
        `  retries: 1`,
        `  maxWaitMs: ${MAX_WAIT_MS}`,
        `  failMode: closed`,
        `  accounting: { interimS: 1, stopAfterIdleS: 1 }`,
        '',
      ].join('\n'),
    );
    // start() runs node; FreeRADIUS is its own binary, spawned in the namespace directly.
    radiusd = new Proc(lab.hosts.servers[1]!.spawn('/usr/sbin/freeradius', ['-f', '-X', '-d', raddb]));
    srv = start(lab.hosts.servers[0]!, [TOOL('sink-server'), JSON.stringify({ host: SRV, port: 8080, reply: REPLY })]);
    conc = start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', configFile]);
    await Promise.all([
      conc.waitLine((l) => l.startsWith('ready')),
      srv.waitLine((l) => l.includes('ready')),
      radiusd.waitFor(/Ready to process requests/),
    ]);
  });

  after(async () => {
    await conc?.stop();
    await srv?.stop();
    await radiusd?.stop();
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  test('an accepted CPE converts and its accounting Stop carries the bytes of the transfer; a rejected one is refused before any dial', { timeout: 120_000 }, async () => {
    const app = randomBytes(300);
    const before = srv.json<ServerOut>().length;
    // Held open 2.5 s before the transfer: Interim-Updates (interimS 1) report the live counts meanwhile.
    const out = await client(ACCEPTED, app, 200_000, 2_500);
    assert.equal(out.error, undefined, JSON.stringify(out) + radiusd.output.slice(-2000));
    assert.equal(out.mptcp, true);
    await srv.waitLine(() => srv.json<ServerOut>().length > before);
    const s = srv.json<ServerOut>()[before]!;
    assert.equal(s.received, 200_000 + app.length);
    assert.equal(s.receivedSha256, out.sentSha256);
    assert.equal(out.receivedSha256, s.sentSha256);
    assert.equal(out.received, REPLY);

    // Accounting: Start, then Stop once the CPE has had no connection for stopAfterIdleS (1 s).
    const records = await radiusd.until(() => {
      const r = detailRecords(detail);
      return r.some((x) => x['Acct-Status-Type'] === 'Stop') ? r : undefined;
    }, 20_000, 'an accounting Stop in the detail file');
    const startRec = records.find((x) => x['Acct-Status-Type'] === 'Start');
    const stopRec = records.find((x) => x['Acct-Status-Type'] === 'Stop')!;
    assert.ok(startRec, JSON.stringify(records));
    assert.equal(startRec['Acct-Session-Id'], stopRec['Acct-Session-Id']);
    assert.equal(stopRec['User-Name'], ACCEPTED);
    assert.equal(stopRec['Calling-Station-Id'], ACCEPTED);
    assert.equal(stopRec['Class'], '0x6c61622d636c617373', 'the Class of the Access-Accept ("lab-class") is echoed');
    assert.equal(Number(stopRec['Acct-Input-Octets']), s.received, 'bytes from the CPE = what the server received');
    assert.equal(Number(stopRec['Acct-Output-Octets']), REPLY, 'bytes to the CPE = what the server sent');
    assert.equal(stopRec['Acct-Link-Count'], '1', 'one connection');
    assert.equal(stopRec['Acct-Terminate-Cause'], 'Idle-Timeout');
    assert.ok(Number(stopRec['Acct-Session-Time']) >= 2, `session time ${stopRec['Acct-Session-Time']}`);
    const interims = records.filter((x) => x['Acct-Status-Type'] === 'Interim-Update' && x['Acct-Session-Id'] === stopRec['Acct-Session-Id']);
    assert.ok(interims.length >= 1, `Interim-Updates while the connection was open: ${JSON.stringify(records)}`);
    assert.equal(Number(interims[0]!['Acct-Input-Octets']), app.length, 'while held: the client bytes that came with the signalling, live');
    assert.equal(Number(interims[0]!['Acct-Output-Octets']), 0, 'and nothing from the server yet (the echo is not server bytes)');

    const rejectedBefore = await metric('mpconvert_refused_total', 'reason="radius-reject"');
    const seen = srv.json<ServerOut>().length;
    const bad = await client(REJECTED, app, 0);
    assert.match(bad.error ?? '', /ECONNRESET|EPIPE/, `the rejected CPE is reset: ${JSON.stringify(bad)}`);
    assert.ok(!bad.head, 'and gets no echo');
    assert.equal(await metric('mpconvert_refused_total', 'reason="radius-reject"'), rejectedBefore + 1);
    assert.equal(srv.json<ServerOut>().length, seen, 'the server saw no connection of the rejected CPE');
    assert.equal(await metric('mpconvert_radius_requests_total', 'result="invalid'), 0, 'every FreeRADIUS answer verified');
  });

  test('FreeRADIUS stopped: a new CPE is refused after radius.maxWaitMs (fail closed) without blocking the event loop; a cached CPE still converts', { timeout: 120_000 }, async () => {
    await radiusd.stop();
    const refusedBefore = await metric('mpconvert_refused_total', 'reason="radius-unavailable:timeout"');
    const app = randomBytes(100);
    const t0 = Date.now();
    const pending = client(UNKNOWN, app, 0);
    // While the connection waits for RADIUS, the admin endpoint (same event loop) answers at once.
    const latencies: number[] = [];
    while (Date.now() - t0 < MAX_WAIT_MS - 300) {
      const r = await lab.hosts.concentrator.exec('curl', ['-s', '-o', '/dev/null', '-w', '%{time_total}', 'http://127.0.0.1:9090/healthz']);
      latencies.push(Number(r.stdout) * 1000);
    }
    const out = await pending;
    const waited = Date.now() - t0;
    assert.match(out.error ?? '', /ECONNRESET|EPIPE/, `refused: ${JSON.stringify(out)}`);
    assert.ok(waited >= MAX_WAIT_MS - 100, `refused after the wait bound, not before (${waited} ms)`);
    assert.ok(waited < MAX_WAIT_MS + 3_000, `and not long after it (${waited} ms)`);
    assert.ok(latencies.length >= 2, `admin polled during the wait: ${latencies.join()}`);
    assert.ok(Math.max(...latencies) < 500, `admin answered during the wait: ${latencies.map((l) => l.toFixed(0)).join(', ')} ms`);
    assert.equal(await metric('mpconvert_refused_total', 'reason="radius-unavailable:timeout"'), refusedBefore + 1);

    const before = srv.json<ServerOut>().length;
    const ok = await client(ACCEPTED, app, 50_000);
    assert.equal(ok.error, undefined, JSON.stringify(ok));
    await srv.waitLine(() => srv.json<ServerOut>().length > before);
    assert.equal(srv.json<ServerOut>()[before]!.receivedSha256, ok.sentSha256, 'the cached Access-Accept still holds');
    assert.ok((await metric('mpconvert_radius_authorizations_total', 'verdict="accept",source="cache"')) >= 1);
  });
});
