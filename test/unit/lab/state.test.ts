import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { listStates, ownerAlive, processStart, readState, removeState, statePath, writeState, type LabState } from '../../../src/lab/state.js';

const state = (prefix: string, owner: LabState['owner']): LabState => ({
  version: 1, prefix, uplinks: [{ rate: '50mbit' }, { rate: 0 }], servers: 1, mptcpRouting: false,
  namespaces: [`${prefix}-client`], owner, createdAt: '2025-01-01T00:00:00.000Z',
});

test('state files round-trip, list, and disappear', () => {
  const dir = mkdtempSync(join(tmpdir(), 'labstate-'));
  try {
    assert.deepEqual(listStates(dir), []);
    const a = state('mpcaaa', null);
    writeState(a, dir);
    writeState(state('mpcbbb', { pid: 1, start: '5' }), dir);
    writeFileSync(join(dir, 'lab-mpcbad.json'), '{not json');
    writeFileSync(join(dir, 'unrelated.json'), '{}');
    assert.equal(statePath('mpcaaa', dir), join(dir, 'lab-mpcaaa.json'));
    assert.deepEqual(readState('mpcaaa', dir), a);
    assert.deepEqual(listStates(dir).map((s) => s.prefix).sort(), ['mpcaaa', 'mpcbbb']);
    removeState('mpcaaa', dir);
    removeState('mpcaaa', dir);
    assert.equal(readState('mpcaaa', dir), null);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('owner liveness: this process is alive, a wrong start time or a missing pid is not, null never is', () => {
  const start = processStart(process.pid);
  assert.ok(start !== null && /^\d+$/.test(start));
  assert.equal(ownerAlive({ pid: process.pid, start }), true);
  assert.equal(ownerAlive({ pid: process.pid, start: String(Number(start) + 1) }), false);
  assert.equal(ownerAlive({ pid: 2 ** 22 + 7, start }), false);
  assert.equal(ownerAlive(null), false);
});
