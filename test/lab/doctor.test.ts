/**
 * `mpconvert doctor --role cpe --config FILE` run inside the lab's CPE namespace, as on a router: everything
 * passes on the lab's CPE; forwarding off, strict rp_filter on an uplink and an uplink without a default route
 * are each named (a failure, an advisory, a failure) with what to do; text and JSON carry the same checks.
 * `--check` names a kernel feature a configuration needs and the namespace lacks (the doctor's probes):
 * the CPE's TFO client bit for zeroRtt, a concentrator's server bit with manageSysctls: false.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab, type LabHost } from '../../src/lab/index.js';
import { labCapabilityMissing, IN_CI } from '../support/capabilities.js';
import { CLI } from '../support/lab-procs.js';
import { assertAgree } from '../support/doctor-report.js';
import type { DoctorCheck } from '../../src/control/doctor-checks.js';

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

describe('doctor and --check (lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  const dir = mkdtempSync(join(tmpdir(), 'mpc-doctor-'));
  const cpeFile = join(dir, 'cpe.yaml');
  writeFileSync(cpeFile, 'lan: [lan0]\nuplinks: [{interface: up1}, {interface: up2}]\nconcentrators:\n  - address: "198.18.200.1:5000"\n');

  const mpconvert = (host: LabHost, args: string[]) => host.exec(process.execPath, [CLI, ...args], { allowFailure: true, timeoutMs: 60_000 });
  async function doctor(): Promise<{ code: number; checks: Map<string, DoctorCheck>; text: string }> {
    const args = ['doctor', '--role', 'cpe', '--config', cpeFile];
    const [text, json] = await Promise.all([mpconvert(lab.hosts.cpe, args), mpconvert(lab.hosts.cpe, [...args, '--json'])]);
    assert.equal(text.code, json.code, `${text.stdout}\n${json.stdout}`);
    const report = JSON.parse(json.stdout) as { checks: DoctorCheck[] };
    assertAgree(text.stdout, report);
    return { code: text.code, checks: new Map(report.checks.map((c) => [c.name, c])), text: text.stdout };
  }

  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: 0 }, { rate: 0 }] });
  });
  after(async () => {
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  test('doctor: all pass on the lab CPE; forwarding off, strict rp_filter, an uplink without a default route are named; text = JSON', { timeout: 120_000 }, async () => {
    const good = await doctor();
    assert.equal(good.code, 0, good.text);
    for (const name of ['privileges', 'mptcp', 'mptcp-socket', 'tproxy', 'ip-transparent', 'forwarding', 'rp_filter', 'route:up1', 'route:up2', 'config']) assert.equal(good.checks.get(name)?.ok, true, `${name}: ${good.text}`);
    assert.match(good.checks.get('route:up2')!.detail, /198\.18\.2\.2 via 198\.18\.2\.1 \(main table\)/);

    const cpe = lab.hosts.cpe;
    const gw = (await cpe.exec('ip', ['-4', 'route', 'show', 'default', 'dev', 'up2'])).stdout.trim();
    await cpe.exec('sysctl', ['-qw', 'net.ipv4.ip_forward=0', 'net.ipv4.conf.up2.rp_filter=1']);
    await cpe.exec('ip', ['-4', 'route', 'del', 'default', 'dev', 'up2']);
    try {
      const bad = await doctor();
      assert.equal(bad.code, 1, bad.text);
      const failed = [...bad.checks.values()].filter((c) => !c.ok).map((c) => c.name);
      assert.deepEqual(failed, ['forwarding', 'route:up2'], bad.text);
      assert.match(bad.checks.get('forwarding')!.fix!, /sysctl -w net\.ipv4\.ip_forward=1/);
      assert.match(bad.checks.get('route:up2')!.detail, /198\.18\.2\.2 without a gateway/);
      const rp = bad.checks.get('rp_filter')!;
      assert.match(rp.detail, /up2 = 1 \(strict\)/);
      assert.match(rp.fix!, /net\.ipv4\.conf\.up2\.rp_filter=2/);
      assert.match(bad.text, /\n2 of \d+ checks failed\n$/);
    } finally {
      await cpe.exec('sysctl', ['-qw', 'net.ipv4.ip_forward=1', 'net.ipv4.conf.up2.rp_filter=0']);
      // `ip route show default dev up2` prints "default via GW metric M" (the device is the filter).
      if (gw) await cpe.exec('ip', ['-4', 'route', 'replace', ...gw.split(/\s+/), 'dev', 'up2']);
    }
    const wrongRole = await mpconvert(lab.hosts.cpe, ['doctor', '--config', cpeFile, '--json']);
    assert.equal(wrongRole.code, 1);
    assert.match((JSON.parse(wrongRole.stdout) as { checks: DoctorCheck[] }).checks.find((c) => c.name === 'config')!.fix!, /--role cpe or --role concentrator/);
  });

  test('--check names a kernel feature the configuration needs and the host lacks (the doctor\'s probes), exit 2; nothing left behind', { timeout: 120_000 }, async () => {
    const cpe = lab.hosts.cpe;
    const ok = await mpconvert(cpe, ['cpe', '--config', cpeFile, '--check']);
    assert.equal(ok.code, 0, ok.stderr);
    await cpe.exec('sysctl', ['-qw', 'net.ipv4.tcp_fastopen=0']);
    try {
      const bad = await mpconvert(cpe, ['cpe', '--config', cpeFile, '--check']);
      assert.equal(bad.code, 2, bad.stdout + bad.stderr);
      assert.match(bad.stderr, /^mpconvert cpe: kernel: zeroRtt \(the signalling in the SYN; .*\) cannot work here: net\.ipv4\.tcp_fastopen = 0: client bit 0x1 missing; Set the client bit: 'sysctl -w net\.ipv4\.tcp_fastopen=1'$/m);
    } finally {
      await cpe.exec('sysctl', ['-qw', 'net.ipv4.tcp_fastopen=1']);
    }
    assert.doesNotMatch((await cpe.exec('nft', ['list', 'tables'])).stdout, /mpconvert/, 'the probes removed their scratch table');

    const conc = lab.hosts.concentrator;
    const concFile = (manage: boolean) => {
      const f = join(dir, `conc-${manage}.yaml`);
      writeFileSync(f, `listen: ["198.18.200.1:5000"]\nallow: ["198.18.0.0/15"]\nmanageSysctls: ${manage}\n`);
      return f;
    };
    const before = (await conc.exec('sysctl', ['-n', 'net.ipv4.tcp_fastopen'])).stdout.trim();
    await conc.exec('sysctl', ['-qw', 'net.ipv4.tcp_fastopen=1']);
    try {
      const manual = await mpconvert(conc, ['concentrator', '--config', concFile(false), '--check']);
      assert.equal(manual.code, 2, manual.stdout + manual.stderr);
      assert.match(manual.stderr, /^mpconvert concentrator: kernel: accepting the signalling in the SYN with manageSysctls: false cannot work here: server bit 0x2 missing/m);
      const managed = await mpconvert(conc, ['concentrator', '--config', concFile(true), '--check']);
      assert.equal(managed.code, 0, managed.stderr);
    } finally {
      await conc.exec('sysctl', ['-qw', `net.ipv4.tcp_fastopen=${before}`]);
    }
  });
});
