import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveCpeConfig } from '../../../src/cpe/config.js';
import { resolveConcentratorConfig } from '../../../src/concentrator/config.js';
import { STOP_CLEANUP_S } from '../../../src/control/daemon.js';
import { capabilities, execLine, readUnit, value } from '../../support/systemd-unit.js';

const repo = new URL('../../../..', import.meta.url).pathname;
const version = (JSON.parse(readFileSync(join(repo, 'package.json'), 'utf8')) as { version: string }).version;
const UNITS = ['mpconvert-cpe.service', 'mpconvert-concentrator.service'] as const;

/** Built once for the file: the .deb and the npm tarball, in a temporary directory. */
const work = mkdtempSync(join(tmpdir(), 'mpc-pkg-'));
let built: { deb: string; tgz: string } | undefined;
function build(): { deb: string; tgz: string } {
  if (built) return built;
  const out = execFileSync('bash', [join(repo, 'scripts/build-deb.sh')], { cwd: repo, env: { ...process.env, OUT: join(work, 'out') }, encoding: 'utf8' });
  const [deb, tgz] = out.trim().split('\n');
  assert.ok(deb && tgz, out);
  built = { deb, tgz };
  return built;
}
test.after(() => rmSync(work, { recursive: true, force: true }));

test('the .deb: name, control fields, and Depends on Node.js >= 20 and the tools the daemons run', { timeout: 300_000 }, () => {
  const { deb } = build();
  const arch = execFileSync('dpkg-deb', ['-f', deb, 'Architecture'], { encoding: 'utf8' }).trim();
  assert.equal(deb, join(work, 'out', `mpconvert_${version}_${arch}.deb`));
  assert.equal(execFileSync('dpkg-deb', ['-f', deb, 'Package'], { encoding: 'utf8' }).trim(), 'mpconvert');
  assert.equal(execFileSync('dpkg-deb', ['-f', deb, 'Version'], { encoding: 'utf8' }).trim(), version);
  const depends = execFileSync('dpkg-deb', ['-f', deb, 'Depends'], { encoding: 'utf8' }).trim().split(/,\s*/);
  for (const d of ['nodejs (>= 20)', 'nftables', 'iproute2', 'procps', 'adduser']) assert.ok(depends.includes(d), `Depends has ${d}: ${depends.join(', ')}`);
  const conffiles = execFileSync('sh', ['-c', `dpkg-deb --ctrl-tarfile '${deb}' | tar -xOf - ./conffiles`], { encoding: 'utf8' });
  assert.deepEqual(conffiles.trim().split('\n').sort(), ['/etc/dhcp/dhclient-exit-hooks.d/mpconvert', '/etc/mpconvert/concentrator.yaml', '/etc/mpconvert/cpe.yaml']);
});

test('the .deb installed into a clean tree: application, wrapper, units, commented configs, docs; the command runs from it', () => {
  const { deb } = build();
  const root = join(work, 'root');
  mkdirSync(root);
  execFileSync('dpkg', ['-x', deb, root]);
  const listing = execFileSync('dpkg-deb', ['-c', deb], { encoding: 'utf8' });
  for (const line of listing.trim().split('\n')) assert.match(line, /^\S+ root\/root /, `owned by root: ${line}`);
  for (const f of [
    'usr/bin/mpconvert',
    'usr/lib/mpconvert/package.json',
    'usr/lib/mpconvert/dist/src/cli/entry.js',
    'usr/lib/mpconvert/dist/src/cli/main.js',
    'usr/lib/mpconvert/node_modules/koffi/package.json',
    'usr/lib/mpconvert/node_modules/pino/package.json',
    'lib/systemd/system/mpconvert-cpe.service',
    'lib/systemd/system/mpconvert-concentrator.service',
    'etc/mpconvert/cpe.yaml',
    'etc/mpconvert/concentrator.yaml',
    'usr/share/doc/mpconvert/service.md',
    'usr/share/doc/mpconvert/copyright',
    // DHCP provisioning of the concentrators (docs/operator.md): both clients' hooks and the option declarations.
    'etc/dhcp/dhclient-exit-hooks.d/mpconvert',
    'usr/lib/dhcpcd/dhcpcd-hooks/60-mpconvert',
    'usr/share/doc/mpconvert/examples/dhclient-mpconvert.conf',
    'usr/share/doc/mpconvert/examples/dhclient6-mpconvert.conf',
    'usr/share/doc/mpconvert/examples/dhcpcd-mpconvert.conf',
  ]) {
    assert.ok(existsSync(join(root, f)), `${f} is in the package`);
  }
  accessSync(join(root, 'usr/bin/mpconvert'), constants.X_OK);
  assert.equal(statSync(join(root, 'etc/mpconvert/cpe.yaml')).mode & 0o777, 0o640);
  // No tests, benchmarks, development dependencies or source maps.
  assert.ok(!existsSync(join(root, 'usr/lib/mpconvert/dist/test')) && !existsSync(join(root, 'usr/lib/mpconvert/dist/bench')));
  for (const dev of ['typescript', 'eslint', 'fast-check', '@types']) assert.ok(!existsSync(join(root, 'usr/lib/mpconvert/node_modules', dev)), `no ${dev}`);
  assert.ok(!listing.includes('.js.map'));

  const run = (...args: string[]) => spawnSync(join(root, 'usr/bin/mpconvert'), args, { encoding: 'utf8' });
  const v = run('--version');
  assert.equal(v.status, 0, v.stderr);
  assert.equal(v.stdout.trim(), version);
  const help = run('--help');
  assert.equal(help.status, 0, help.stderr);
  for (const cmd of ['cpe', 'concentrator', 'doctor', 'status']) assert.match(help.stdout, new RegExp(`^  ${cmd}\\b`, 'm'));
  assert.match(run('cpe', '--help').stdout, /--prepare/);

  // The maintainer scripts are POSIX sh.
  const ctrl = join(work, 'ctrl');
  execFileSync('dpkg-deb', ['-e', deb, ctrl]);
  for (const s of ['postinst', 'prerm', 'postrm']) execFileSync('sh', ['-n', join(ctrl, s)]);
  for (const h of ['etc/dhcp/dhclient-exit-hooks.d/mpconvert', 'usr/lib/dhcpcd/dhcpcd-hooks/60-mpconvert']) execFileSync('sh', ['-n', join(root, h)]);
  assert.match(readFileSync(join(ctrl, 'postinst'), 'utf8'), /adduser --system .* mpconvert/s);
});

test('the sample configurations are valid, and each unit stops within its daemon drain time plus the cleanup', async () => {
  const root = join(work, 'root');
  const cpe = await resolveCpeConfig({ config: join(root, 'etc/mpconvert/cpe.yaml') });
  const conc = await resolveConcentratorConfig({ config: join(root, 'etc/mpconvert/concentrator.yaml') });
  for (const [unit, drain] of [['mpconvert-cpe.service', cpe.shutdownDrainS], ['mpconvert-concentrator.service', conc.shutdownDrainS]] as const) {
    const u = readUnit(join(root, 'lib/systemd/system', unit));
    assert.ok(Number(value(u, 'Service', 'TimeoutStopSec')) >= drain + STOP_CLEANUP_S, `${unit}: TimeoutStopSec >= ${drain} + ${STOP_CLEANUP_S}`);
  }
  // Every line of the samples that is not a setting explains something.
  for (const f of ['cpe.yaml', 'concentrator.yaml']) assert.ok((readFileSync(join(root, 'etc/mpconvert', f), 'utf8').match(/^#/gm) ?? []).length >= 8, `${f} is commented`);
});

test('the units: notify, unprivileged user, network capabilities only, privileged --prepare, SIGHUP reload; systemd-analyze verify passes', () => {
  const root = join(work, 'root');
  for (const name of UNITS) {
    const role = name === 'mpconvert-cpe.service' ? 'cpe' : 'concentrator';
    const u = readUnit(join(root, 'lib/systemd/system', name));
    assert.equal(value(u, 'Service', 'Type'), 'notify');
    assert.equal(value(u, 'Service', 'User'), 'mpconvert');
    assert.equal(value(u, 'Service', 'NoNewPrivileges'), 'yes');
    const ambient = capabilities(u, 'AmbientCapabilities');
    const bounding = capabilities(u, 'CapabilityBoundingSet');
    assert.deepEqual(ambient, bounding, `${name}: the process keeps what it is given, nothing more`);
    assert.ok(ambient.includes('CAP_NET_ADMIN'));
    for (const c of ambient) assert.ok(['CAP_NET_ADMIN', 'CAP_NET_RAW', 'CAP_NET_BIND_SERVICE'].includes(c), `${name}: ${c}`);
    const pre = execLine(value(u, 'Service', 'ExecStartPre')!);
    assert.equal(pre.prefix, '+', 'the pre-start step runs privileged');
    assert.deepEqual(pre.argv, ['/usr/bin/mpconvert', role, '--config', `/etc/mpconvert/${role}.yaml`, '--prepare']);
    assert.deepEqual(execLine(value(u, 'Service', 'ExecStart')!).argv, ['/usr/bin/mpconvert', role, '--config', `/etc/mpconvert/${role}.yaml`]);
    assert.equal(value(u, 'Service', 'ExecReload'), '/bin/kill -HUP $MAINPID');
    assert.equal(value(u, 'Install', 'WantedBy'), 'multi-user.target');
  }

  // systemd-analyze verify checks that the commands exist: the copies point at the extracted tree.
  const dir = join(work, 'units');
  mkdirSync(dir);
  for (const name of UNITS) {
    const text = readFileSync(join(root, 'lib/systemd/system', name), 'utf8').replaceAll('/usr/bin/mpconvert', join(root, 'usr/bin/mpconvert'));
    writeFileSync(join(dir, name), text);
  }
  const r = spawnSync('systemd-analyze', ['verify', '--man=no', ...UNITS.map((n) => join(dir, n))], { encoding: 'utf8' });
  const ours = (r.stderr + r.stdout).split('\n').filter((l) => l.includes('mpconvert'));
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(ours, [], 'no warning about our units');
});

test('npm pack: the tarball installs with npm install -g (no registry) into a prefix and gives a working mpconvert command', { timeout: 300_000 }, () => {
  const { tgz } = build();
  assert.equal(tgz, join(work, 'out', `mpconvert-${version}.tgz`));
  const files = execFileSync('tar', ['-tzf', tgz], { encoding: 'utf8', maxBuffer: 64 << 20 }).split('\n');
  assert.ok(files.includes('package/dist/src/cli/entry.js'));
  assert.ok(files.includes('package/packaging/systemd/mpconvert-cpe.service'));
  assert.ok(!files.some((f) => f.startsWith('package/dist/test/') || f.endsWith('.map')));
  const prefix = join(work, 'prefix');
  const cache = join(work, 'npm-cache');
  // --offline with an empty cache: everything comes from the tarball (its dependencies are bundled).
  const inst = spawnSync('npm', ['install', '-g', '--prefix', prefix, '--offline', '--cache', cache, '--no-audit', '--no-fund', '--loglevel', 'error', tgz], { encoding: 'utf8' });
  assert.equal(inst.status, 0, inst.stderr);
  const bin = join(prefix, 'bin', 'mpconvert');
  const help = spawnSync(bin, ['--help'], { encoding: 'utf8' });
  assert.equal(help.status, 0, help.stderr);
  assert.match(help.stdout, /^Usage: mpconvert /);
  assert.match(help.stdout, /^ {2}concentrator\b/m);
  assert.equal(spawnSync(bin, ['--version'], { encoding: 'utf8' }).stdout.trim(), version);
  assert.ok(readdirSync(join(prefix, 'lib/node_modules/mpconvert/node_modules')).includes('koffi'));
});
