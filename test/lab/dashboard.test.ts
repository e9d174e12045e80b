/**
 * The CPE's live dashboard in a real browser (Debian's chromium driven by playwright-core), with real traffic:
 * a LAN client downloads through the CPE (two uplinks, kernel MPTCP) while the page is open; the page loads
 * without console errors, each uplink's chart shows its share of the download, a cut uplink shows as down
 * within 2 s. Also, on the same live CPE: /metrics passes `promtool check metrics`, the per-uplink families
 * count the download on both uplinks, /connections?subflows=1 lists a subflow per uplink, the token is
 * required, and an uplink's mode can be set through the API.
 *
 * Chromium runs inside the CPE's namespace (the admin endpoint is on its loopback): playwright starts it
 * through a wrapper that is `ip netns exec NS chromium`, and talks to it over the inherited pipe.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { Lab, uplinkAddressing } from '../../src/lab/index.js';
import { labCapabilityMissing, IN_CI } from '../support/capabilities.js';
import { CLI, Proc, TOOL, start } from '../support/lab-procs.js';
import { deterministicSha256 } from '../support/tools/stream-util.js';
import { metric } from '../support/metrics.js';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync',
];

function toolMissing(): string | null {
  if (!existsSync(CHROMIUM)) return `${CHROMIUM} not installed (Debian package chromium)`;
  try {
    execFileSync('sh', ['-c', 'command -v promtool && command -v curl'], { stdio: 'ignore' });
  } catch {
    return 'promtool or curl not installed (Debian packages prometheus, curl)';
  }
  return null;
}

const missing = labCapabilityMissing() ?? toolMissing();
if (missing && IN_CI) throw new Error(`capability missing under CI=true: ${missing}`);

const MB = 1024 * 1024;
const CONC4 = '198.18.200.1';
const TOKEN = 'dashboard-lab-token-0123456789abcdef';

const poll = async <T>(what: string, f: () => Promise<T | undefined | null | false>, timeoutMs: number, everyMs = 100): Promise<T> => {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
};

describe('the CPE dashboard in a real browser (lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab;
  let conc: Proc;
  let http: Proc;
  let cpe: Proc;
  let browser: BrowserContext | undefined;
  const dir = mkdtempSync(join(tmpdir(), 'mpc-dash-'));

  /** curl inside the CPE's namespace against its admin endpoint. */
  const admin = async (path: string, opts: { token?: string | null; method?: string; body?: string; concentrator?: boolean } = {}) => {
    const token = opts.token === undefined ? TOKEN : opts.token;
    const args = ['-sS', '-o', '-', '-w', '\n%{http_code}', '-X', opts.method ?? 'GET'];
    if (token) args.push('-H', `authorization: Bearer ${token}`);
    if (opts.body) args.push('-H', 'content-type: application/json', '--data', opts.body);
    const host = opts.concentrator ? lab.hosts.concentrator : lab.hosts.cpe;
    const r = await host.exec('curl', [...args, `http://127.0.0.1:${opts.concentrator ? 9090 : 9091}${path}`]);
    const i = r.stdout.lastIndexOf('\n');
    return { status: Number(r.stdout.slice(i + 1)), body: r.stdout.slice(0, i) };
  };

  before(async () => {
    lab = await Lab.up({ uplinks: [{ rate: '20mbit' }, { rate: '20mbit' }], servers: 1 });
    http = start(lab.hosts.servers[0]!, [TOOL('http-server'), JSON.stringify({ host: '::', port: 8080 })]);
    conc = start(lab.hosts.concentrator, [CLI, 'concentrator', '--listen', `${CONC4}:5000`, '--allow', '198.18.0.0/15', '--allow', '2001:db8::/32', '--admin', '127.0.0.1:9090']);
    const tokenFile = join(dir, 'admin.token');
    writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
    const cfg = join(dir, 'cpe.yaml');
    writeFileSync(cfg, `lan: [lan0]\nuplinks: [{interface: up1}, {interface: up2}]\nadmin: "127.0.0.1:9091"\nadminTokenFile: "${tokenFile}"\nconcentrators:\n  - address: "${CONC4}:5000"\n`);
    await Promise.all([http.waitLine((l) => l.includes('ready')), conc.waitLine((l) => l.startsWith('ready'))]);
    cpe = start(lab.hosts.cpe, [CLI, 'cpe', '--config', cfg]);
    await cpe.waitLine((l) => l.startsWith('ready'), 30_000);
  });

  after(async () => {
    await browser?.close().catch(() => {});
    await cpe?.stop();
    await conc?.stop();
    await http?.stop();
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  test('live charts per uplink during a download, a cut uplink shown as down within 2 s; metrics, subflows, token, uplink mode', { timeout: 240_000 }, async () => {
    // The token is required (but not for /healthz).
    assert.equal((await admin('/status', { token: null })).status, 401);
    assert.equal((await admin('/healthz', { token: null })).status, 200);

    const size = 48 * MB;
    const dl = lab.hosts.client.exec('bash', ['-o', 'pipefail', '-c', `curl -sS --fail 'http://${lab.hosts.servers[0]!.v4}:8080/bytes/${size}?seed=dash' | sha256sum`], { timeoutMs: 180_000 });
    dl.catch(() => {}); // awaited below; a failure before that must not be an unhandled rejection

    // Chromium in the CPE's namespace, a fresh profile, the flags a router's CI can run.
    const wrapper = join(dir, 'chromium-in-netns');
    writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${lab.hosts.cpe.name} ${CHROMIUM} "$@"\n`);
    chmodSync(wrapper, 0o755);
    browser = await chromium.launchPersistentContext(join(dir, 'profile'), { executablePath: wrapper, headless: true, args: CHROMIUM_FLAGS, viewport: { width: 1000, height: 900 } });
    const page: Page = browser.pages()[0] ?? (await browser.newPage());
    const consoleErrors: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error') consoleErrors.push(m.text());
    });
    page.on('pageerror', (e) => consoleErrors.push(e.message));
    await page.goto(`http://127.0.0.1:9091/?access_token=${TOKEN}`);

    // Both uplinks' charts show the download (received on the uplink: rx), a few Mbit/s each at least.
    type Peak = { up1: number; up2: number; events: number; charts: number; uPlot: string; summary: string };
    const peaks = (): Promise<Peak> =>
      page.evaluate(() => {
        const s = (globalThis as unknown as { __mpc: { series: Record<string, number[][]>; events: number; charts: Record<string, unknown> } }).__mpc;
        const peak = (n: string) => Math.max(0, ...(s.series[n]?.[1] ?? []));
        const g = globalThis as unknown as { uPlot?: unknown; document: { querySelector(q: string): { textContent: string | null } | null } };
        return { up1: peak('up1'), up2: peak('up2'), events: s.events, charts: Object.keys(s.charts).length, uPlot: typeof g.uPlot, summary: g.document.querySelector('#summary')?.textContent ?? '' };
      });
    // The history event (the charts' past) fills the series before the first live event draws the cards, so a
    // download that began before the page loaded can be in the series with no chart yet: wait for a live event.
    const seen = await poll('both uplinks charted above 3 Mbit/s', async () => {
      const p = await peaks();
      return p.up1 > 3 && p.up2 > 3 && p.events > 0 ? p : undefined;
    }, 60_000, 250);
    assert.equal(seen.charts, 2, `one uPlot chart per uplink: ${JSON.stringify({ seen, consoleErrors })}`);
    // The charts are drawn (uPlot's canvas is there and has a size).
    assert.equal(await page.locator('[data-uplink] canvas').count(), 2);

    // While the download runs: subflows on both uplinks, with RTT.
    const conns = JSON.parse((await admin('/connections?subflows=1')).body) as { connections: Array<{ via: string; subflows: Array<{ uplink: string | null; rttMs: number | null }> }> };
    const converted = conns.connections.find((c) => c.via.startsWith('concentrator'));
    assert.ok(converted, JSON.stringify(conns));
    assert.deepEqual(new Set(converted.subflows.map((s) => s.uplink)), new Set(['up1', 'up2']), JSON.stringify(converted.subflows));
    assert.ok(converted.subflows.every((s) => s.rttMs !== null && s.rttMs > 0), JSON.stringify(converted.subflows));
    // The concentrator sees the CPE with its connection and both subflows, and its metrics pass promtool too.
    const cs = JSON.parse((await admin('/status', { token: null, concentrator: true })).body) as { activeCpes: number; topCpes: Array<{ cpe: string; connections: number; subflows: number; bytesDown: number }> };
    assert.equal(cs.activeCpes, 1, JSON.stringify(cs));
    assert.equal(cs.topCpes[0]!.subflows, 2, JSON.stringify(cs.topCpes));
    const cm = await admin('/metrics', { token: null, concentrator: true });
    const ccheck = execFileSync('sh', ['-c', 'promtool check metrics 2>&1; echo "rc=$?"'], { input: cm.body, encoding: 'utf8' });
    assert.match(ccheck, /^rc=0$/m, ccheck);
    assert.equal(metric(cm.body, 'mpconvert_active_cpes'), 1);

    // Before the cut, both uplinks' subflows have carried part of the download (the per-uplink byte families,
    // sampled once a second; checked again on the final scrape below).
    await poll('both uplinks past 2 MiB of subflow bytes', async () => {
      const body = (await admin('/metrics')).body;
      return ['up1', 'up2'].every((u) => metric(body, 'mpconvert_uplink_subflow_bytes_total', `uplink="${u}",direction="down"`) > 2 * MB);
    }, 20_000, 250);

    // Cut uplink 2: the page shows it down within 2 s.
    const state = () => page.locator('[data-uplink="up2"] .state').textContent();
    assert.equal(await state(), 'up');
    const t0 = Date.now();
    await lab.uplinkDown(2);
    await poll('up2 shown as down', async () => (await state()) === 'down', 5_000, 50);
    const shownMs = Date.now() - t0;
    process.stdout.write(`# a cut uplink shown as down after ${shownMs} ms\n`);
    assert.ok(shownMs < 2_000, `${shownMs} ms`);
    // The screenshot in docs/operations.md: ten seconds of the download charted, uplink 2 just cut.
    await poll('ten samples charted', () => page.evaluate(() => ((globalThis as unknown as { __mpc: { series: Record<string, number[][]> } }).__mpc.series['up1']?.[0]?.length ?? 0) >= 10), 20_000, 200);
    await page.screenshot({ path: process.env['MPC_DASHBOARD_SCREENSHOT'] ?? join(dir, 'dashboard.png'), fullPage: true });

    const r = await dl;
    assert.equal(r.stdout.split(' ')[0], deterministicSha256('dash', size), 'the download arrived whole');
    await lab.uplinkUp(2);
    assert.deepEqual(consoleErrors, [], 'no console errors');

    // Prometheus text from the live CPE passes promtool, and the per-uplink families saw the download on both.
    const m = await admin('/metrics');
    assert.equal(m.status, 200);
    const check = execFileSync('sh', ['-c', 'promtool check metrics 2>&1; echo "rc=$?"'], { input: m.body, encoding: 'utf8' });
    assert.match(check, /^rc=0$/m, check);
    for (const u of ['up1', 'up2']) {
      assert.ok(metric(m.body, 'mpconvert_uplink_subflow_bytes_total', `uplink="${u}",direction="down"`) > 2 * MB, `${u}: ${m.body.split('\n').filter((l) => l.includes('uplink_subflow_bytes')).join('\n')}`);
      assert.ok(metric(m.body, 'mpconvert_uplink_interface_bytes_total', `uplink="${u}",direction="rx"`) > 2 * MB);
    }
    assert.equal(metric(m.body, 'mpconvert_build_info'), 1);
    assert.ok(metric(m.body, 'process_resident_memory_bytes') > 0);

    // An uplink's mode through the API: its endpoint becomes backup in the kernel.
    const set = await admin('/uplinks/up1/mode', { method: 'POST', body: '{"mode":"backup"}' });
    assert.equal(set.status, 200, set.body);
    // `ip mptcp endpoint show`: "198.18.1.2 id 1 backup dev up1" (subflow is replaced by backup).
    const eps = (await lab.hosts.cpe.exec('ip', ['mptcp', 'endpoint', 'show'])).stdout;
    const a1 = uplinkAddressing(1);
    const up1 = eps.split('\n').filter((l) => l.startsWith(`${a1.cpeV4} `) || l.startsWith(`${a1.cpeV6} `));
    assert.ok(up1.length > 0 && up1.every((l) => / backup /.test(l)), eps);
    assert.equal((await admin('/uplinks/nope/mode', { method: 'POST', body: '{"mode":"backup"}' })).status, 404);
    // Every request was logged with its outcome.
    await poll('the request log line', async () => cpe.stderr.includes('"route":"uplink-mode"') && cpe.stderr.includes('"status":401'), 5_000);
  });
});
