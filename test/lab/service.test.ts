/**
 * Both daemons run from the built .deb exactly as their systemd units run them, inside the lab: the unit files
 * are parsed, ExecStartPre (`+`: privileged) runs as root, ExecStart runs through setpriv as an unprivileged
 * user with the unit's ambient and bounding capabilities and no_new_privs, /proc/sys read-only (the units'
 * ProtectKernelTunables=), and $NOTIFY_SOCKET pointing at a datagram socket this test binds (socat): the
 * test waits for READY=1 as systemd would. Then traffic through both, a reload of each (ExecReload: SIGHUP),
 * and a stop (SIGTERM, as KillMode=mixed sends it) within the unit's TimeoutStopSec that leaves nothing behind.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab, type LabHost } from '../../src/lab/index.js';
import { labCapabilityMissing, IN_CI } from '../support/capabilities.js';
import { Proc, TOOL, start } from '../support/lab-procs.js';
import { deterministicSha256 } from '../support/tools/stream-util.js';
import { metric } from '../support/metrics.js';
import { capabilities, execLine, readUnit, value, type Unit } from '../support/systemd-unit.js';

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

const repo = new URL('../../..', import.meta.url).pathname;
const CONC4 = '198.18.200.1';
const MB = 1024 * 1024;

/** Linux capability numbers (include/uapi/linux/capability.h) of the names the units may use. */
const CAP_BITS: Record<string, number> = { CAP_NET_BIND_SERVICE: 10, CAP_NET_ADMIN: 12, CAP_NET_RAW: 13 };
const capMask = (names: readonly string[]) => names.reduce((m, n) => m | (1n << BigInt(CAP_BITS[n]!)), 0n);

/** The unit's User=: that user when it exists here, else a free uid/gid (the tests add no user to the host). */
function serviceIds(user: string): { uid: number; gid: number; label: string } {
  try {
    const [uid, gid] = execFileSync('id', ['-u', user], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim().split('\n').concat(execFileSync('id', ['-g', user], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
    return { uid: Number(uid), gid: Number(gid), label: user };
  } catch {
    const used = (file: string) => new Set(readFileSync(file, 'utf8').split('\n').map((l) => Number(l.split(':')[2])));
    const uids = used('/etc/passwd');
    const gids = used('/etc/group');
    let id = 61_000;
    while (uids.has(id) || gids.has(id)) id++;
    return { uid: id, gid: id, label: `${user} (uid ${id}: no such user here)` };
  }
}

/** systemd's notification socket, played by socat: every datagram the daemon sends, as text. */
class NotifySocket {
  readonly proc: ChildProcess;
  text = '';
  constructor(readonly path: string) {
    this.proc = spawn('socat', ['-u', `UNIX-RECV:${path},perm=0666`, 'STDOUT'], { stdio: ['ignore', 'pipe', 'inherit'] });
    this.proc.stdout!.on('data', (d: Buffer) => (this.text += d.toString('utf8')));
  }
  count(re: RegExp): number {
    return this.text.match(new RegExp(re.source, 'g'))?.length ?? 0;
  }
  async waitFor(what: string, cond: () => boolean, daemon: Proc, timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      if (!daemon.running) throw new Error(`the daemon ended (${daemon.ending}) before ${what}; notifications: ${JSON.stringify(this.text)}\nits log:\n${daemon.stderr.slice(-4000)}`);
      if (Date.now() > deadline) throw new Error(`no ${what} within ${timeoutMs} ms; notifications: ${JSON.stringify(this.text)}\nthe daemon's log:\n${daemon.stderr.slice(-4000)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** /proc/PID/status: the ids, capability sets and no_new_privs of a running process. */
function credentials(pid: number) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => (new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(status)?.[1] ?? '').trim();
  const hex = (name: string) => BigInt(`0x${field(name)}`);
  return { uids: field('Uid').split(/\s+/).map(Number), gids: field('Gid').split(/\s+/).map(Number), eff: hex('CapEff'), prm: hex('CapPrm'), amb: hex('CapAmb'), bnd: hex('CapBnd'), noNewPrivs: field('NoNewPrivs') };
}

describe('the daemons as systemd services (lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  let http: Proc;
  const work = mkdtempSync(join(tmpdir(), 'mpc-svc-'));
  const root = join(work, 'root');
  const running: Proc[] = [];
  const sockets: NotifySocket[] = [];

  /** A path of the unit (/usr/bin/mpconvert, /etc/mpconvert/...) in the extracted package. */
  const inRoot = (p: string) => (p.startsWith('/usr/') || p.startsWith('/etc/') ? join(root, p) : p);

  /**
   * Starts `unit` the way systemd does: ExecStartPre as root (its + prefix), then ExecStart as User= with the
   * unit's capabilities; resolves once READY=1 arrived on the notification socket.
   */
  async function startService(host: LabHost, name: string): Promise<{ daemon: Proc; notify: NotifySocket; unit: Unit; pre: string }> {
    const unit = readUnit(join(root, 'lib/systemd/system', name));
    const pre = execLine(value(unit, 'Service', 'ExecStartPre')!);
    assert.equal(pre.prefix, '+');
    const [preCmd, ...preArgs] = pre.argv.map(inRoot);
    const prepared = await host.exec(preCmd!, preArgs);

    const ids = serviceIds(value(unit, 'Service', 'User')!);
    const ambient = capabilities(unit, 'AmbientCapabilities');
    const bounding = capabilities(unit, 'CapabilityBoundingSet');
    const caps = (list: string[]) => ['-all', ...list.map((c) => `+${c.slice(4).toLowerCase()}`)].join(',');
    const setpriv = [
      'setpriv', `--reuid=${ids.uid}`, `--regid=${ids.gid}`, '--clear-groups',
      `--inh-caps=${caps(ambient)}`, `--ambient-caps=${caps(ambient)}`, `--bounding-set=${caps(bounding)}`,
      ...(value(unit, 'Service', 'NoNewPrivileges') === 'yes' ? ['--no-new-privs'] : []),
      '--', ...execLine(value(unit, 'Service', 'ExecStart')!).argv.map(inRoot),
    ];
    // ProtectKernelTunables=yes: /proc/sys and /sys read-only for the daemon (a mount namespace of its own).
    const tunablesRo = value(unit, 'Service', 'ProtectKernelTunables') === 'yes';
    const quoted = setpriv.map((a) => `'${a}'`).join(' ');
    const script = tunablesRo ? `mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && mount -o remount,ro /sys 2>/dev/null; exec ${quoted}` : `exec ${quoted}`;
    const notify = new NotifySocket(join(work, `${name}.notify`));
    sockets.push(notify);
    const deadline = Date.now() + 10_000;
    while (!existsSync(notify.path) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    const child = host.spawn('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NOTIFY_SOCKET: notify.path, INVOCATION_ID: 'lab' } });
    const daemon = new Proc(child);
    running.push(daemon);
    await notify.waitFor('READY=1', () => notify.count(/READY=1/) >= 1, daemon);
    return { daemon, notify, unit, pre: prepared.stdout };
  }

  /** Stops it as systemd does (SIGTERM to the main process) and asserts: STOPPING=1, exit 0 within TimeoutStopSec. */
  async function stopService(s: { daemon: Proc; notify: NotifySocket; unit: Unit }): Promise<void> {
    const t0 = Date.now();
    s.daemon.child.kill('SIGTERM');
    const code = await s.daemon.exited;
    const ms = Date.now() - t0;
    assert.equal(code, 0, `clean exit; its log:\n${s.daemon.stderr.slice(-3000)}`);
    assert.ok(ms < Number(value(s.unit, 'Service', 'TimeoutStopSec')) * 1000, `stopped in ${ms} ms`);
    assert.match(s.notify.text, /STOPPING=1\nSTATUS=stopping: draining connections\nEXTEND_TIMEOUT_USEC=\d+\n/);
  }

  /** The daemon's main process id (MAINPID= of its READY=1) is the process the unit started: no fork in between. */
  const mainPid = (n: NotifySocket) => Number(/MAINPID=(\d+)/.exec(n.text)?.[1]);

  async function download(size: number, seed: string): Promise<string> {
    const u = `http://${lab.hosts.servers[0]!.v4}:8080/bytes/${size}?seed=${seed}`;
    const r = await lab.hosts.client.exec('bash', ['-o', 'pipefail', '-c', `curl -sS --fail '${u}' | sha256sum`], { timeoutMs: 100_000 });
    return r.stdout.split(' ')[0] ?? '';
  }

  const scrape = async (host: LabHost, port: number) => (await host.exec('curl', ['-sS', `http://127.0.0.1:${port}/metrics`])).stdout;

  before(async () => {
    // The package, extracted: the daemons run from its files, as installed.
    const out = execFileSync('bash', [join(repo, 'scripts/build-deb.sh')], { cwd: repo, env: { ...process.env, OUT: join(work, 'out'), SKIP_NPM_PACK: '1' }, encoding: 'utf8' });
    mkdirSync(root);
    execFileSync('dpkg', ['-x', out.trim(), root]);
    // The unprivileged user must reach the files (mkdtemp makes 0700 directories); the configs are the
    // package's: root:mpconvert 0640 (what postinst sets).
    chmodSync(work, 0o755);
    lab = await Lab.up({ uplinks: [{ rate: 0 }, { rate: 0 }] });
    http = start(lab.hosts.servers[0]!, [TOOL('http-server'), JSON.stringify({ host: '::', port: 8080 })]);
    await http.waitLine((l) => l.includes('ready'));
  });

  after(async () => {
    for (const p of running) if (p.running) await p.stop();
    for (const s of sockets) s.proc.kill();
    await http?.stop();
    await lab?.down();
    rmSync(work, { recursive: true, force: true });
  });

  test('concentrator and CPE started as their units start them: unprivileged, network capabilities only, READY=1; traffic; reload; stop', { timeout: 400_000 }, async () => {
    const ids = serviceIds('mpconvert');
    const cfgDir = join(root, 'etc/mpconvert');
    const stateDir = join(work, 'run-mpconvert');
    mkdirSync(stateDir, { mode: 0o750 });
    chownSync(stateDir, ids.uid, ids.gid); // RuntimeDirectory=mpconvert, owned by User=
    const writeConfig = (file: string, text: string) => {
      writeFileSync(join(cfgDir, file), text);
      chownSync(join(cfgDir, file), 0, ids.gid);
      chmodSync(join(cfgDir, file), 0o640);
    };
    chownSync(cfgDir, 0, ids.gid);
    chmodSync(cfgDir, 0o750);
    // Port 443: a port below 1024 needs CAP_NET_BIND_SERVICE.
    const concYaml = (listen: string[]) => `listen: [${listen.map((l) => `"${l}"`).join(', ')}]\nallow: ["198.18.0.0/15", "2001:db8::/32"]\nadmin: "127.0.0.1:9090"\nshutdownDrainS: 2\n`;
    writeConfig('concentrator.yaml', concYaml([`${CONC4}:443`, `${CONC4}:5000`]));
    const cpeYaml = (port: number, uplinks = ['up1', 'up2']) => `lan: [lan0]\nuplinks: [${uplinks.map((u) => `{interface: ${u}}`).join(', ')}]\nconcentrators: [{address: "${CONC4}:${port}"}]\nadmin: "127.0.0.1:9091"\nstateDir: ${stateDir}\nshutdownDrainS: 2\n`;
    writeConfig('cpe.yaml', cpeYaml(443));

    // What only the privileged pre-start step can do: without it the daemons' sysctls are not there.
    await lab.hosts.concentrator.exec('sysctl', ['-q', '-w', 'net.ipv4.tcp_fastopen=1']);
    await lab.hosts.cpe.exec('sysctl', ['-q', '-w', 'net.ipv4.tcp_fwmark_accept=0']);

    const conc = await startService(lab.hosts.concentrator, 'mpconvert-concentrator.service');
    assert.match(conc.pre, /net\.ipv4\.tcp_fastopen = 3 \(was 1\)/);
    const cpe = await startService(lab.hosts.cpe, 'mpconvert-cpe.service');
    assert.match(cpe.pre, /net\.ipv4\.tcp_fwmark_accept = 1 \(was 0\)/);
    assert.equal((await lab.hosts.cpe.exec('sysctl', ['-n', 'net.ipv4.tcp_fwmark_accept'])).stdout.trim(), '1');

    for (const [s, unit] of [[conc, 'mpconvert-concentrator.service'], [cpe, 'mpconvert-cpe.service']] as const) {
      const pid = s.daemon.child.pid!;
      assert.equal(mainPid(s.notify), pid, `${unit}: READY=1 comes from the process the unit started`);
      assert.match(s.notify.text, /^READY=1\nSTATUS=running \{.*\}\nMAINPID=\d+\n/);
      // The process systemd would supervise: node itself (the wrapper exec'd it).
      assert.match(readFileSync(`/proc/${pid}/cmdline`, 'utf8'), /node\0.*entry\.js\0/);
      const c = credentials(pid);
      const want = capMask(capabilities(s.unit, 'AmbientCapabilities'));
      assert.deepEqual(c.uids, [ids.uid, ids.uid, ids.uid, ids.uid], `${unit}: not uid 0 (${ids.label})`);
      assert.deepEqual(c.gids, [ids.gid, ids.gid, ids.gid, ids.gid]);
      assert.equal(c.eff, want, `${unit}: effective capabilities are the unit's`);
      assert.equal(c.amb, want);
      assert.equal(c.bnd, capMask(capabilities(s.unit, 'CapabilityBoundingSet')));
      assert.equal(c.noNewPrivs, '1');
    }
    assert.equal(capMask(capabilities(cpe.unit, 'AmbientCapabilities')), capMask(['CAP_NET_ADMIN']));
    // The unprivileged CPE installed its kernel state through the capabilities it was given.
    assert.notEqual((await lab.hosts.cpe.exec('ip', ['-j', 'mptcp', 'endpoint', 'show'])).stdout.trim(), '[]');
    assert.match((await lab.hosts.cpe.exec('nft', ['list', 'tables'])).stdout, /mpconvert_cpe_default/);

    // Traffic: LAN client -> CPE -> concentrator (port 443) -> server; bytes first, then the counters.
    const before = await scrape(lab.hosts.concentrator, 9090);
    assert.equal(await download(8 * MB, 'svc1'), deterministicSha256('svc1', 8 * MB));
    const afterFirst = await scrape(lab.hosts.concentrator, 9090);
    assert.equal(metric(afterFirst, 'mpconvert_connections_total') - metric(before, 'mpconvert_connections_total'), 1, 'the download went through the concentrator');

    // Reload the concentrator (ExecReload: kill -HUP $MAINPID): a new listener on port 5001.
    const reload = async (s: typeof conc, outcome = 'configuration reloaded') => {
      const readies = s.notify.count(/READY=1/);
      const from = s.notify.text.length;
      const [kill, ...args] = execLine(value(s.unit, 'Service', 'ExecReload')!).argv;
      execFileSync(kill!, args.map((a) => (a === '$MAINPID' ? String(mainPid(s.notify)) : a)));
      await s.notify.waitFor('RELOADING=1 then READY=1', () => s.notify.count(/READY=1/) > readies, s.daemon);
      const told = s.notify.text.slice(from);
      assert.ok(told.startsWith('RELOADING=1\nMONOTONIC_USEC='), told);
      assert.ok(told.includes(`STATUS=reloading the configuration\nREADY=1\nSTATUS=running; ${outcome}`), told);
    };
    writeConfig('concentrator.yaml', concYaml([`${CONC4}:443`, `${CONC4}:5000`, `${CONC4}:5001`]));
    await reload(conc);
    assert.match((await lab.hosts.concentrator.exec('ss', ['-Hltn', 'sport = :5001'])).stdout, /LISTEN/);

    // Reload the CPE: its concentrator moves to the new port; the next connection goes there.
    writeConfig('cpe.yaml', cpeYaml(5001));
    await reload(cpe);
    const status = JSON.parse((await lab.hosts.cpe.exec('curl', ['-sS', 'http://127.0.0.1:9091/status'])).stdout) as { concentrators: Array<{ address: string }> };
    assert.deepEqual(status.concentrators.map((c) => c.address), [`${CONC4}:5001`]);
    // Only the new listener is left on the concentrator: a connection still sent to 443 would not be counted
    // there (the CPE would fall back to direct), so the counter below says the CPE used port 5001.
    writeConfig('concentrator.yaml', concYaml([`${CONC4}:5001`]));
    await reload(conc);
    assert.equal((await lab.hosts.concentrator.exec('ss', ['-Hltn', '( sport = :443 or sport = :5000 )'])).stdout.trim(), '');
    assert.equal(await download(16 * MB, 'svc2'), deterministicSha256('svc2', 16 * MB));
    const afterSecond = await scrape(lab.hosts.concentrator, 9090);
    assert.equal(metric(afterSecond, 'mpconvert_connections_total') - metric(afterFirst, 'mpconvert_connections_total'), 1);

    // Reload the CPE with one uplink fewer: its endpoints, tables and the interception follow.
    const endpointDevs = async () => ((JSON.parse((await lab.hosts.cpe.exec('ip', ['-j', 'mptcp', 'endpoint', 'show'])).stdout || '[]') as Array<{ dev?: string }>).map((e) => e.dev)).sort();
    assert.deepEqual([...new Set(await endpointDevs())], ['up1', 'up2']);
    const table = async () => (await lab.hosts.cpe.exec('nft', ['list', 'table', 'inet', 'mpconvert_cpe_default'])).stdout;
    assert.doesNotMatch(await table(), /198\.19\.77\.0\/24/);
    writeConfig('cpe.yaml', `${cpeYaml(5001, ['up1'])}policy:\n  exclude: [{prefix: 198.19.77.0/24}]\n`);
    await reload(cpe);
    assert.deepEqual([...new Set(await endpointDevs())], ['up1']);
    assert.match(await table(), /198\.19\.77\.0\/24/, 'the reloaded policy is in the interception ruleset');
    assert.equal(await download(8 * MB, 'svc3'), deterministicSha256('svc3', 8 * MB));
    const afterThird = await scrape(lab.hosts.concentrator, 9090);
    assert.equal(metric(afterThird, 'mpconvert_connections_total') - metric(afterSecond, 'mpconvert_connections_total'), 1, 'converted after the uplink change');

    // A file that does not load: the reload is refused, READY=1 says why, the running configuration serves on.
    writeConfig('cpe.yaml', 'lan: [lan0]\nuplinks: [{interface: wan9}]\nconcentrators: [{address: "198.18.200.1:5001"}]\n');
    await reload(cpe, 'reload failed, the previous configuration stays: uplinks: interface wan9 does not exist on this host');
    assert.match(cpe.daemon.stderr, /"level":50.*SIGHUP: reload failed, keeping the running configuration: uplinks: interface wan9 does not exist/);
    assert.doesNotMatch(cpe.daemon.stderr, /"stack"/, 'a configuration mistake is logged without a stack trace');
    assert.equal(await download(2 * MB, 'svc4'), deterministicSha256('svc4', 2 * MB));
    assert.deepEqual([...new Set(await endpointDevs())], ['up1']);

    // Stop both; nothing of theirs stays in the kernel.
    await stopService(cpe);
    await stopService(conc);
    assert.equal((await lab.hosts.cpe.exec('ip', ['-j', 'mptcp', 'endpoint', 'show'])).stdout.trim() || '[]', '[]');
    for (const h of [lab.hosts.cpe, lab.hosts.concentrator]) assert.doesNotMatch((await h.exec('nft', ['list', 'tables'])).stdout, /mpconvert_/);
  });
  test('postinst creates the system user mpconvert and the permissions of /etc/mpconvert (in a private copy of /etc)', { timeout: 120_000 }, () => {
    // The real maintainer script, run as dpkg runs it (configure, first install), in a mount namespace whose
    // /etc is a copy: the host's users are not touched. /etc/mpconvert comes from the extracted package (its
    // check of /usr/bin/mpconvert's Node.js only warns where the host has none).
    const ctrl = join(work, 'ctrl');
    execFileSync('dpkg-deb', ['-e', join(work, 'out', readdirSync(join(work, 'out')).find((f) => f.endsWith('.deb'))!), ctrl]);
    const etc = join(work, 'etc-copy');
    execFileSync('cp', ['-a', '/etc', etc]);
    rmSync(join(etc, 'mpconvert'), { recursive: true, force: true });
    execFileSync('cp', ['-a', join(root, 'etc/mpconvert'), join(etc, 'mpconvert')]);
    const script = [
      `mount --bind '${etc}' /etc`,
      `'${join(ctrl, 'postinst')}' configure`,
      'getent passwd mpconvert',
      'getent group mpconvert',
      "stat -c '%U:%G %a' /etc/mpconvert /etc/mpconvert/cpe.yaml",
    ].join(' && ');
    const out = execFileSync('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script], { encoding: 'utf8' });
    const [passwd, group, dirMode, fileMode] = out.trim().split('\n').slice(-4);
    const [, , uid, gid, , home, shell] = passwd!.split(':');
    assert.ok(Number(uid) > 0 && Number(uid) < 1000, `a system uid: ${passwd}`);
    assert.equal(group!.split(':')[2], gid);
    assert.equal(home, '/nonexistent');
    assert.equal(shell, '/usr/sbin/nologin');
    assert.equal(dirMode, 'root:mpconvert 750');
    assert.equal(fileMode, 'root:mpconvert 640');
    assert.throws(() => execFileSync('getent', ['passwd', 'mpconvert'], { stdio: 'ignore' }), 'the host has no user mpconvert afterwards');
  });
});
