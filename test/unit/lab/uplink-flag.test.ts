import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseUplinkFlag } from '../../../src/lab/cli.js';
import { Lab } from '../../../src/lab/index.js';

test('lab --uplink RATE[@RTT]: rate and optional round-trip time', () => {
  assert.deepEqual(parseUplinkFlag('50mbit'), { rate: '50mbit' });
  assert.deepEqual(parseUplinkFlag('0'), { rate: 0 });
  assert.deepEqual(parseUplinkFlag('50mbit@40ms'), { rate: '50mbit', rttMs: 40 });
  assert.deepEqual(parseUplinkFlag('0@2.5ms'), { rate: 0, rttMs: 2.5 });
  assert.throws(() => parseUplinkFlag('50mbit@40'), /written like 40ms/);
});

test('a lab spec with an impossible round-trip time is refused before anything is built', async () => {
  await assert.rejects(Lab.up({ uplinks: [{ rate: '50mbit', rttMs: -1 }] }), /rttMs -1: expected 0\.\.2000/);
  await assert.rejects(Lab.up({ uplinks: [{ rate: '50mbit', rttMs: 5000 }] }), /rttMs 5000/);
});

test('field-topology uplink flags: ,cgn and ,mtu=N after the rate', () => {
  assert.deepEqual(parseUplinkFlag('50mbit,mtu=1492'), { rate: '50mbit', mtu: 1492 });
  assert.deepEqual(parseUplinkFlag('50mbit,cgn'), { rate: '50mbit', cgn: true });
  assert.deepEqual(parseUplinkFlag('0,cgn,mtu=1400'), { rate: 0, cgn: true, mtu: 1400 });
  assert.throws(() => parseUplinkFlag('50mbit,nat'), /neither cgn nor mtu/);
});

test('field-topology settings are refused outside it, and impossible ones in it, before anything is built', async () => {
  await assert.rejects(Lab.up({ uplinks: [{ rate: '50mbit', cgn: true }] }), /cgn and mtu are uplink settings of the field topology/);
  await assert.rejects(Lab.up({ topology: 'field', uplinks: [{ rate: '50mbit', rttMs: 20 }] }), /no delay lines/);
  await assert.rejects(Lab.up({ topology: 'field', uplinks: [{ rate: '50mbit', mtu: 100 }] }), /mtu 100/);
  await assert.rejects(Lab.up({ topology: 'field', mptcpRouting: true, uplinks: [{ rate: '50mbit' }] }), /mptcpRouting is for the classic topology/);
});
