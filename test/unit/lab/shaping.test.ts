import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MpconvertError } from '../../../src/errors.js';
import { MIN_BURST_BYTES, parseRate, tbfArgs, tbfParams } from '../../../src/lab/shaping.js';

test('parseRate follows tc units: bit suffixes are bits, bps suffixes are bytes, bare numbers are bits', () => {
  assert.equal(parseRate('50mbit'), 50e6);
  assert.equal(parseRate('800kbit'), 800e3);
  assert.equal(parseRate('1Gbit'), 1e9);
  assert.equal(parseRate('1.5mbit'), 1.5e6);
  assert.equal(parseRate('1mibit'), 1024 * 1024);
  assert.equal(parseRate('2mbps'), 16e6);
  assert.equal(parseRate('1000000'), 1e6);
});

test('parseRate refuses what tc would not take, with a typed error', () => {
  for (const bad of ['', 'fast', '50 mbit', '-1mbit', '0mbit', '50mb', 'mbit', '1e6bit']) {
    assert.throws(() => parseRate(bad), (e: unknown) => e instanceof MpconvertError && e.code === 'MPC_ERR_LAB_SPEC', bad);
  }
});

test('tbf: burst is 4 ms of the rate but never below two full frames; 50 ms queue', () => {
  assert.deepEqual(tbfParams('50mbit'), { rateBitsPerSecond: 50e6, burstBytes: 25_000, latencyMs: 50 });
  assert.equal(tbfParams('1mbit').burstBytes, MIN_BURST_BYTES);
  assert.equal(tbfParams('1gbit').burstBytes, 500_000);
  assert.deepEqual(tbfArgs('up1', '20mbit'), ['qdisc', 'replace', 'dev', 'up1', 'root', 'tbf', 'rate', '20000000bit', 'burst', '10000', 'latency', '50ms']);
});
