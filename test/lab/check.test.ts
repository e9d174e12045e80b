/**
 * `mpconvert cpe --check` in a real namespace: a missing uplink interface is named and exits 2 without
 * touching the host; the daemon refuses to start on it with one log line; a good configuration passes.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab } from '../../src/lab/index.js';
import { labCapabilityMissing, IN_CI } from '../support/capabilities.js';
import { CLI, start } from '../support/lab-procs.js';

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

describe('--check (lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  const dir = mkdtempSync(join(tmpdir(), 'mpc-check-'));
  const config = (uplinks: string[]) => {
    const f = join(dir, `cpe-${uplinks.join('-')}.yaml`);
    writeFileSync(f, `lan: [lan0]\nuplinks: [${uplinks.map((u) => `{interface: ${u}}`).join(', ')}]\nconcentrators:\n  - address: "198.18.200.1:5000"\n`);
    return f;
  };
  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: 0 }, { rate: 0 }] });
  });
  after(async () => {
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  test('a good configuration passes; a missing uplink is named, exit 2, nothing changed; the daemon refuses it in one line', async () => {
    const ok = start(lab.hosts.cpe, [CLI, 'cpe', '--config', config(['up1', 'up2']), '--check']);
    assert.equal(await ok.exited, 0, ok.output);
    assert.match(ok.output, /configuration and host OK/);
    const bad = start(lab.hosts.cpe, [CLI, 'cpe', '--config', config(['up1', 'wwan0']), '--check']);
    assert.equal(await bad.exited, 2, bad.output);
    assert.match(bad.stderr, /^mpconvert cpe: uplinks: interface wwan0 does not exist on this host$/m);
    const tables = (await lab.hosts.cpe.exec('nft', ['list', 'tables'])).stdout;
    assert.doesNotMatch(tables, /mpconvert/, 'the check changed nothing');
    const daemon = start(lab.hosts.cpe, [CLI, 'cpe', '--config', config(['up1', 'wwan0'])]);
    assert.equal(await daemon.exited, 1, daemon.output);
    const fatal = daemon.stderr.split('\n').filter((l) => l.includes('"level":60'));
    assert.equal(fatal.length, 1, daemon.stderr);
    assert.match(fatal[0]!, /uplinks: interface wwan0 does not exist on this host/);
    assert.doesNotMatch(daemon.stderr, /\n\s+at /, 'no stack trace');
    const endpoints = (await lab.hosts.cpe.exec('ip', ['-j', 'mptcp', 'endpoint', 'show'])).stdout.trim();
    assert.ok(endpoints === '' || endpoints === '[]', `nothing was set up: ${endpoints}`);
  });
});
