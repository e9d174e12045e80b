/**
 * The lab self-test: plain kernel MPTCP between the CPE and the concentrator over 2 uplinks of 50 Mbit/s
 * reaches at least 1.7x one uplink, with a real second subflow (MP_JOIN at the concentrator, bytes on both
 * uplinks). Proves the lab and the kernel before any proxy exists.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { listNamespaces } from '../../src/lab/index.js';
import { runSelfTest } from '../../src/lab/selftest.js';
import { statePath } from '../../src/lab/state.js';
import { requireLab, requireTool } from '../support/capabilities.js';

test('kernel MPTCP over 2 x 50mbit uplinks reaches >= 1.7x one uplink, over two subflows; nothing left behind', { timeout: 90_000 }, async (t) => {
  if (!requireLab(t) || !requireTool(t, 'iperf3') || !requireTool(t, 'mptcpize')) return;
  const r = await runSelfTest({ rate: '50mbit', seconds: 6, threshold: 1.7 });
  t.diagnostic(`one uplink ${r.singleMbps.toFixed(1)} Mbit/s, MPTCP ${r.mptcpMbps.toFixed(1)} Mbit/s = ${r.ratio.toFixed(2)}x; MP_JOIN SYN rx ${r.mpJoinSynRx}; uplink tx bytes ${r.uplinkTxBytes.join(', ')}`);
  // The single uplink is really shaped (tbf at 50 Mbit/s, not the raw veth's Gbit/s).
  assert.ok(r.singleMbps > 35 && r.singleMbps <= 51, `one uplink: ${r.singleMbps} Mbit/s`);
  assert.ok(r.mpCapableSynRx >= 1, 'the concentrator accepted an MPTCP connection');
  assert.ok(r.mpJoinSynRx >= 1, 'the concentrator saw an MP_JOIN: a second subflow');
  const total = r.uplinkTxBytes.reduce((a, b) => a + b, 0);
  for (const b of r.uplinkTxBytes) assert.ok(b > total * 0.25, `both uplinks carried data: ${r.uplinkTxBytes.join(', ')}`);
  assert.ok(r.ratio >= 1.7, `MPTCP ${r.mptcpMbps.toFixed(1)} Mbit/s is ${r.ratio.toFixed(2)}x one uplink (< 1.7x)`);
  assert.equal(r.passed, true, r.reason);
  assert.ok(!(await listNamespaces()).some((n) => n.startsWith(`${r.prefix}-`)), 'the self-test lab is gone');
  assert.ok(!existsSync(statePath(r.prefix)));
});
