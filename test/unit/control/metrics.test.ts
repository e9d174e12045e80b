import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createMetrics } from '../../../src/control/metrics.js';
import { IN_CI } from '../../support/capabilities.js';

/** Both roles' registries with every labelled family given one sample (an empty family shows only HELP/TYPE). */
async function populated(role: 'cpe' | 'concentrator'): Promise<{ text: string; names: string[] }> {
  const m = createMetrics(role, { perCpe: true });
  m.connections.inc({ outcome: 'done' });
  m.refused.inc({ reason: 'rate-limit' });
  m.relayed.inc({ engine: 'splice' });
  m.bytes.inc({ direction: 'up' }, 10);
  m.serverLeg.inc({ transport: 'mptcp' });
  m.setup.observe(0.01);
  m.capability.inc({ result: 'ok' });
  m.fallback.inc({ to: 'direct' });
  m.uplinkUp.set({ uplink: 'up1' }, 1);
  m.uplinkBackup.set({ uplink: 'up1' }, 0);
  m.uplinkBytes.inc({ uplink: 'up1', direction: 'rx' }, 100);
  m.uplinkSubflowBytes.inc({ uplink: 'up1', direction: 'down' }, 100);
  m.uplinkSubflows.set({ uplink: 'up1' }, 2);
  m.uplinkRtt.set({ uplink: 'up1' }, 0.012);
  m.uplinkRetransmits.inc({ uplink: 'up1' }, 3);
  m.uplinkShare.set({ uplink: 'up1' }, 1);
  m.uplinkQuotaUsed.set({ uplink: 'up1' }, 5);
  m.uplinkQuotaLimit.set({ uplink: 'up1' }, 10);
  m.activeCpes.set(1);
  m.portBlocks.set(2);
  m.cpeConnections.set({ cpe: '198.18.0.1' }, 1);
  m.cpeSubflows.set({ cpe: '198.18.0.1' }, 2);
  m.cpeBytes.inc({ cpe: '198.18.0.1', direction: 'up' }, 10);
  m.adminRequests.inc({ route: 'metrics', status: '200' });
  m.radiusRequests.inc({ kind: 'auth', server: '198.19.0.12', result: 'answer' });
  m.radiusAuthorizations.inc({ verdict: 'accept', source: 'answer' });
  m.radiusAccounting.inc({ status: 'start', result: 'answered' });
  m.radiusCached.set(1);
  m.radiusSessions.set(1);
  const json = await m.registry.getMetricsAsJSON();
  return { text: await m.registry.metrics(), names: json.map((f) => f.name) };
}

function promtool(): boolean {
  try {
    execFileSync('sh', ['-c', 'command -v promtool'], { stdio: 'ignore' });
    return true;
  } catch {
    if (IN_CI) throw new Error('promtool missing under CI=true (Debian package prometheus, scripts/install.sh)');
    return false;
  }
}

/** `promtool check metrics` on the exposition: exit 0 and no lint finding. */
function promtoolCheck(text: string): void {
  let out = '';
  let rc = 0;
  try {
    out = execFileSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { status: number; stdout: string; stderr: string };
    rc = e.status;
    out = e.stdout + e.stderr;
  }
  assert.equal(rc, 0, out);
  assert.equal(out.trim(), '', 'no lint finding');
}

for (const role of ['cpe', 'concentrator'] as const) {
  test(`${role}: the Prometheus text passes 'promtool check metrics' (every family, per-CPE on)`, { skip: !promtool() && 'promtool not installed' }, async () => {
    const { text } = await populated(role);
    promtoolCheck(text);
  });
}

test('every mpconvert_ family of both roles is documented in docs/operations.md; process and runtime metrics are there', async () => {
  const doc = readFileSync(new URL('../../../../docs/operations.md', import.meta.url), 'utf8');
  const cpe = await populated('cpe');
  const conc = await populated('concentrator');
  const ours = [...new Set([...cpe.names, ...conc.names])].filter((n) => n.startsWith('mpconvert_'));
  assert.ok(ours.length > 20, ours.join(' '));
  const undocumented = ours.filter((n) => !doc.includes(`\`${n}\``));
  assert.deepEqual(undocumented, [], 'families missing from the metrics table of docs/operations.md');
  assert.ok(cpe.names.includes('process_cpu_seconds_total') && cpe.names.includes('nodejs_heap_size_used_bytes'));
  // Role-specific families stay in their role.
  assert.ok(!conc.names.includes('mpconvert_uplink_up') && !cpe.names.includes('mpconvert_active_cpes'));
  const off = createMetrics('concentrator');
  assert.ok(!(await off.registry.getMetricsAsJSON()).some((f) => f.name.startsWith('mpconvert_cpe_')), 'per-CPE families only when switched on');
});

test("concentrator with workers: the primary's and a worker's registries aggregated (what /metrics serves) pass promtool, counters summed", { skip: !promtool() && 'promtool not installed' }, async () => {
  const { AggregatorRegistry } = await import('prom-client');
  const primary = createMetrics('concentrator');
  const worker = createMetrics('concentrator');
  primary.refused.inc({ reason: 'max-connections-per-cpe' }, 3);
  worker.refused.inc({ reason: 'max-connections-per-cpe' }, 4);
  primary.workers.set(1);
  primary.workerRestarts.inc();
  const text = await AggregatorRegistry.aggregate([await primary.registry.getMetricsAsJSON(), await worker.registry.getMetricsAsJSON()]).metrics();
  assert.match(text, /mpconvert_refused_total\{reason="max-connections-per-cpe",role="concentrator"\} 7/);
  assert.match(text, /^mpconvert_workers\{role="concentrator"\} 1$/m);
  assert.match(text, /^mpconvert_worker_restarts_total\{role="concentrator"\} 1$/m);
  promtoolCheck(text);
});

test('the concentrator figures are computed when scraped, once per scrape, and not without a scrape', async () => {
  const m = createMetrics('concentrator', { perCpe: true });
  let computed = 0;
  let connections = 3;
  m.onScrape.figures = () => {
    computed++;
    m.activeCpes.set(1);
    m.portBlocks.set(0);
    m.cpeConnections.reset();
    m.cpeConnections.set({ cpe: '198.18.0.1' }, connections);
  };
  assert.equal(computed, 0, 'nothing computed before a scrape');
  const text = await m.registry.metrics();
  assert.equal(computed, 1, 'one computation for the four gauges of one scrape');
  assert.match(text, /^mpconvert_active_cpes\{role="concentrator"\} 1$/m);
  assert.match(text, /^mpconvert_cpe_connections\{cpe="198\.18\.0\.1",role="concentrator"\} 3$/m);
  connections = 5;
  await new Promise((r) => setTimeout(r, 150));
  assert.match(await m.registry.metrics(), /^mpconvert_cpe_connections\{cpe="198\.18\.0\.1",role="concentrator"\} 5$/m, 'the next scrape reads the current figures');
  assert.equal(computed, 2);
});
