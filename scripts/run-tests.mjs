#!/usr/bin/env node
// Runs the compiled test suite: unit tests (no root) in parallel, then lab tests (root, kernel MPTCP) one
// file at a time, since they share the machine's two cores and its tbf-shaped links. At the end it asserts
// that no lab namespace and no mpconvert nft table was left behind.
import { spawnSync, execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

const args = new Set(process.argv.slice(2));
const root = new URL('..', import.meta.url).pathname;

function files(dir) {
  if (!existsSync(dir)) return [];
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) return files(p);
    return name.endsWith('.test.js') ? [p] : [];
  }).sort();
}

/** `timeoutMs` per test: a test that fails before its cleanup (a listener left open) ends there, not at the runner's end. */
function run(list, concurrency, timeoutMs) {
  if (list.length === 0) return 0;
  const r = spawnSync(process.execPath, ['--test', `--test-concurrency=${concurrency}`, '--test-reporter=spec', `--test-timeout=${timeoutMs}`, ...list], {
    stdio: 'inherit',
    cwd: root,
  });
  return r.status ?? 1;
}

function leftovers() {
  const found = [];
  try {
    const ns = execFileSync('ip', ['-j', 'netns', 'list'], { encoding: 'utf8' });
    for (const n of JSON.parse(ns || '[]')) if (String(n.name).startsWith('mpc')) found.push(`netns ${n.name}`);
  } catch { /* no iproute2: nothing to check */ }
  try {
    const t = execFileSync('nft', ['-j', 'list', 'tables'], { encoding: 'utf8' });
    for (const e of JSON.parse(t).nftables ?? []) if (e.table && String(e.table.name).startsWith('mpconvert')) found.push(`nft table ${e.table.family} ${e.table.name}`);
  } catch { /* no nft: nothing to check */ }
  return found;
}

let status = run(files(join(root, 'dist/test/unit')), 2, 120_000);
if (!args.has('--unit')) {
  status = run(files(join(root, 'dist/test/lab')), 1, 1_200_000) || status;
  const left = leftovers();
  if (left.length > 0) {
    console.error(`# leak check failed: left behind after the suite: ${left.join(', ')}`);
    status = status || 1;
  } else {
    console.log('# leak check: no lab namespace and no mpconvert nft table left behind');
  }
}
process.exit(status);
