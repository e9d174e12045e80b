import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { addUsage, overQuota, periodStart, type QuotaSpec } from '../../../src/policy/quota.js';
import { QuotaBook } from '../../../src/cpe/quota.js';
import { silentLogger } from '../../../src/log.js';

const month: QuotaSpec = { bytes: 1000, period: 'month', resetDay: 15 };

test('quota periods: a day from 00:00 UTC; a month from its reset day (before it: the previous month\'s)', () => {
  assert.equal(periodStart(Date.UTC(2026, 11, 2, 18, 30), { period: 'day', resetDay: 1 }), Date.UTC(2026, 11, 2));
  assert.equal(periodStart(Date.UTC(2026, 11, 20), month), Date.UTC(2026, 11, 15));
  assert.equal(periodStart(Date.UTC(2026, 11, 2), month), Date.UTC(2026, 10, 15));
  assert.equal(periodStart(Date.UTC(2026, 0, 2), month), Date.UTC(2025, 11, 15), 'across the year');
});

test('quota usage: counted per period, over at the limit, reset by a new period', () => {
  const t = Date.UTC(2026, 11, 20);
  let u = addUsage(undefined, 600, t, month);
  assert.equal(overQuota(u, t, month), false);
  u = addUsage(u, 400, t + 1000, month);
  assert.equal(overQuota(u, t, month), true);
  const next = Date.UTC(2027, 0, 15, 0, 0, 1);
  assert.equal(overQuota(u, next, month), false, 'a new period');
  assert.deepEqual(addUsage(u, 5, next, month), { periodStart: Date.UTC(2027, 0, 15), bytes: 5 });
});

test('QuotaBook: kept in its file across instances (a restart)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mpc-quota-'));
  try {
    const file = join(dir, 'sub', 'quota.json');
    const specs = new Map([['lte0', month]]);
    const now = Date.UTC(2026, 11, 20);
    const a = new QuotaBook(file, specs, silentLogger());
    await a.load();
    a.add('lte0', 1200, now);
    a.add('eth0', 99, now); // no quota: not counted
    assert.equal(a.over('lte0', now), true);
    await a.save(now, true);
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), { uplinks: { lte0: { periodStart: Date.UTC(2026, 11, 15), bytes: 1200 } } });
    const b = new QuotaBook(file, specs, silentLogger());
    await b.load();
    assert.deepEqual(b.view('lte0', now), { limit: 1000, used: 1200, period: 'month', over: true });
    assert.equal(b.view('eth0', now), null);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
