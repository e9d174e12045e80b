/**
 * The many-CPE topology (src/lab/many.ts, docs/lab.md "The many-CPE topology"), small: 3 CPEs with 2 uplinks each,
 * one concentrator, one server behind a shared 100 Mbit/s link. up() builds it; a download from CPE 2's LAN client
 * goes through a real `mpconvert cpe` in cpe2 and `mpconvert concentrator` (bytes by hash, the server sees the
 * concentrator's address, one connection more in the concentrator's counters); down() leaves nothing behind.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab, listNamespaces, manyCpeAddressing } from '../../src/lab/index.js';
import { LAB_NAMESPACE_RE } from '../../src/lab/addressing.js';
import { statePath } from '../../src/lab/state.js';
import { labCapabilityMissing, IN_CI } from '../support/capabilities.js';
import { CLI, Proc, TOOL, start } from '../support/lab-procs.js';
import { deterministicSha256 } from '../support/tools/stream-util.js';
import { byLabel, delta } from '../support/metrics.js';

const missing = labCapabilityMissing();
if (missing && IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);

const CONC = '198.18.200.1';
const CONC_SERVER_SIDE = '198.19.0.1';

describe('many-CPE lab topology (lab)', { skip: missing ?? false, concurrency: false }, () => {
  let lab: Lab | undefined;
  const procs: Proc[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'mpc-many-'));

  after(async () => {
    for (const p of procs.reverse()) await p.stop();
    await lab?.down();
    rmSync(dir, { recursive: true, force: true });
  });

  test('3 CPEs: up builds it, a connection passes through CPE 2 and the concentrator, down leaves nothing', { timeout: 180_000 }, async () => {
    lab = await Lab.up({ topology: 'many', cpes: 3, uplinks: [{ rate: 0 }, { rate: 0 }], serverRate: '100mbit' });
    const prefix = lab.prefix;
    const made = (await listNamespaces()).filter((n) => n.startsWith(`${prefix}-`)).sort();
    assert.deepEqual(made, [`${prefix}-cli1`, `${prefix}-cli2`, `${prefix}-cli3`, `${prefix}-conc`, `${prefix}-cpe1`, `${prefix}-cpe2`, `${prefix}-cpe3`, `${prefix}-srv1`]);
    for (const n of made) assert.match(n, LAB_NAMESPACE_RE, 'a leftover sweep recognises every namespace');
    // The shared link is shaped at both ends.
    const qd = await lab.hosts.concentrator.exec('tc', ['qdisc', 'show', 'dev', 'inet0']);
    assert.match(qd.stdout, /tbf .*rate 100Mbit/);
    const qs = await lab.hosts.servers[0]!.exec('tc', ['qdisc', 'show', 'dev', 'eth0']);
    assert.match(qs.stdout, /tbf .*rate 100Mbit/);

    const server = lab.hosts.servers[0]!;
    const http = new Proc(server.spawn(process.execPath, [TOOL('http-server'), JSON.stringify({ host: server.v4, port: 8080 })]));
    procs.push(http);
    await http.waitLine((l) => l.includes('ready'));
    const concYaml = join(dir, 'conc.yaml');
    writeFileSync(concYaml, `listen: ["${CONC}:5000"]\nallow: ["198.18.0.0/15"]\nadmin: "127.0.0.1:9090"\n`);
    const conc = start(lab.hosts.concentrator, [CLI, 'concentrator', '--config', concYaml]);
    procs.push(conc);
    await conc.waitLine((l) => l.startsWith('ready'), 30_000);
    const cpe2 = lab.host('cpe2');
    const cpe = start(cpe2, [CLI, 'cpe', '--lan', 'lan0', '--uplink', 'up1', '--uplink', 'up2', '--concentrator', `${CONC}:5000`, '--fallback', 'refuse']);
    procs.push(cpe);
    await cpe.waitLine((l) => l.startsWith('ready'), 30_000);

    const scrape = async () => byLabel((await lab!.hosts.concentrator.exec('curl', ['-s', 'http://127.0.0.1:9090/metrics'])).stdout, 'mpconvert_connections_total', 'outcome');
    const before = await scrape();
    const client = lab.host('cli2');
    assert.equal(client.v4, manyCpeAddressing(2).clientV4);
    const size = 3 * 1024 * 1024;
    const headers = join(dir, 'headers');
    const r = await client.exec('bash', ['-o', 'pipefail', '-c', `curl -sS --fail -D '${headers}' 'http://${server.v4}:8080/bytes/${size}?seed=many' | sha256sum`], { timeoutMs: 60_000 });
    assert.equal(r.stdout.split(' ')[0], deterministicSha256('many', size), 'the bytes arrived intact');
    assert.equal(/^x-peer: *(\S+)/im.exec(readFileSync(headers, 'utf8'))?.[1], CONC_SERVER_SIDE, 'the server saw the concentrator: the connection was converted');
    // Counted at close: poll for it.
    let d: Record<string, number> = {};
    for (const deadline = Date.now() + 10_000; Date.now() < deadline; await new Promise((res) => setTimeout(res, 100))) {
      d = delta(before, await scrape());
      if (Object.keys(d).length > 0) break;
    }
    assert.deepEqual(d, { done: 1 }, 'the concentrator relayed exactly one connection');

    for (const p of procs.splice(0).reverse()) await p.stop();
    await lab.down();
    assert.deepEqual((await listNamespaces()).filter((n) => n.startsWith(`${prefix}-`)), [], 'no namespace left');
    assert.ok(!existsSync(statePath(prefix)), 'no state file left');
    assert.ok(!existsSync(`/etc/netns/${prefix}-cpe1`), 'no /etc/netns directory left');
  });
});
