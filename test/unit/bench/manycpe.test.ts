import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fairness, iperfReceivedMbps, jainIndex, mergeRr, nftCounterBytes, percentile, type RrClientOut } from '../../../bench/lib/manycpe-stats.js';

test("Jain's index: 1 for equal shares, 1/n when one gets everything, the textbook value in between", () => {
  assert.equal(jainIndex([10, 10, 10, 10]), 1);
  assert.equal(jainIndex([40, 0, 0, 0]), 0.25);
  // (1+2+3)^2 / (3 * (1+4+9)) = 36 / 42
  assert.ok(Math.abs(jainIndex([1, 2, 3])! - 36 / 42) < 1e-12);
  // Scale-free: the same shares in other units give the same index.
  assert.ok(Math.abs(jainIndex([1e6, 2e6, 3e6])! - 36 / 42) < 1e-12);
  assert.equal(jainIndex([]), null);
  assert.equal(jainIndex([0, 0]), null);
  assert.throws(() => jainIndex([1, -1]), RangeError);
  assert.throws(() => jainIndex([1, Number.NaN]), RangeError);
});

test('percentile: nearest rank', () => {
  const xs = Array.from({ length: 100 }, (_, i) => i + 1);
  assert.equal(percentile(xs, 50), 50);
  assert.equal(percentile(xs, 99), 99);
  assert.equal(percentile(xs, 100), 100);
  assert.equal(percentile([7], 99), 7);
  assert.equal(percentile([], 50), null);
});

const client = (o: Partial<RrClientOut>): RrClientOut => ({ completed: 0, errors: 0, cps: 0, startedAt: 0, endedAt: 0, ttfbs: [], ...o });

test('mergeRr: total rate over the span of all clients, percentiles over every sample, a silent client is an error and a zero', () => {
  const m = mergeRr([
    client({ completed: 300, cps: 100, startedAt: 1_000, endedAt: 4_000, ttfbs: Array.from({ length: 300 }, () => 1) }),
    client({ completed: 100, errors: 2, cps: 50, startedAt: 1_010, endedAt: 3_000, ttfbs: Array.from({ length: 100 }, () => 9), errorKinds: { ECONNRESET: 2 } }),
    null,
  ]);
  assert.equal(m.completed, 400);
  assert.equal(m.seconds, 3);
  assert.ok(Math.abs(m.cps - 400 / 3) < 1e-9);
  assert.equal(m.startSpreadMs, 10);
  assert.equal(m.ttfbP50, 1);
  assert.equal(m.ttfbP99, 9);
  assert.equal(m.errors, 3);
  assert.deepEqual(m.errorKinds, { ECONNRESET: 2, 'no-output': 1 });
  assert.deepEqual(m.perCpeCps, [100, 50, 0]);
  assert.ok(Math.abs(m.cpsJain! - (150 * 150) / (3 * (100 * 100 + 50 * 50))) < 1e-12);
});

test('iperfReceivedMbps reads end.sum_received and rejects errors and non-JSON', () => {
  assert.equal(iperfReceivedMbps(JSON.stringify({ end: { sum_received: { bits_per_second: 9_500_000, bytes: 1 } } })), 9.5);
  assert.throws(() => iperfReceivedMbps(JSON.stringify({ error: 'the server is busy running a test. try again later' })), /iperf3: the server is busy/);
  assert.throws(() => iperfReceivedMbps('iperf3: error - unable to connect'), /Cannot parse iperf3 output: not JSON/);
  assert.throws(() => iperfReceivedMbps('{"end":{}}'), /no end.sum_received/);
  assert.throws(() => iperfReceivedMbps('null'), /not an object/);
});

test('fairness: a failed CPE counts 0 and pulls the index down', () => {
  const f = fairness([10, 10, new Error('iperf3: unable to connect'), 10]);
  assert.deepEqual(f.perCpeMbps, [10, 10, 0, 10]);
  assert.equal(f.sumMbps, 30);
  assert.equal(f.minMbps, 0);
  assert.equal(f.maxMbps, 10);
  assert.equal(f.failed, 1);
  assert.equal(f.jain, 0.75);
  assert.deepEqual(f.errors, ['iperf3: unable to connect']);
});

test('nftCounterBytes reads the named counters of `nft -j list counters`', () => {
  const json = JSON.stringify({ nftables: [
    { metainfo: { version: '1.0.6', json_schema_version: 1 } },
    { counter: { family: 'inet', name: 'cpe1', table: 't', handle: 1, packets: 10, bytes: 15000 } },
    { counter: { family: 'inet', name: 'cpe2', table: 't', handle: 2, packets: 0, bytes: 0 } },
  ] });
  assert.deepEqual([...nftCounterBytes(json)], [['cpe1', 15000], ['cpe2', 0]]);
  assert.throws(() => nftCounterBytes('Error: No such file or directory'), /Cannot parse nft counters/);
});
