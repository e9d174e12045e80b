import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeHeapSnapshot } from 'node:v8';
import { diffHeap, renderHeapDiff, summariseHeap } from '../../../bench/lib/heap.js';

class HeapProbe {
  constructor(readonly onEvent: () => number) {}
}

test('heap snapshots of this process, compared by constructor: 1,000 probes with a closure each show as 1 per unit', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mpc-heap-'));
  try {
    const read = (f: string) => summariseHeap(JSON.parse(readFileSync(f, 'utf8')));
    const before = read(writeHeapSnapshot(join(dir, 'a.heapsnapshot')));
    const held: HeapProbe[] = [];
    for (let i = 0; i < 1000; i++) held.push(new HeapProbe(function probeClosure() { return i; }));
    const after = read(writeHeapSnapshot(join(dir, 'b.heapsnapshot')));
    const rows = diffHeap(before, after, 1000);
    const probe = rows.find((r) => r.what === 'HeapProbe');
    assert.ok(probe, JSON.stringify(rows.slice(0, 10)));
    assert.equal(probe.count, 1);
    assert.ok(probe.bytes >= 16 && probe.bytes < 100, String(probe.bytes));
    assert.equal(rows.find((r) => r.what === 'closure probeClosure')?.count, 1);
    assert.ok(held.length === 1000);
    const md = renderHeapDiff(rows, 1000, rows.indexOf(probe) + 1);
    assert.match(md, /^\| HeapProbe \| 1\.00 \| \d+ \|$/m);
    assert.equal(renderHeapDiff(rows, 1000, 1).includes(`(${rows.length - 1} more)`), true);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('summariseHeap refuses what is not a heap snapshot', () => {
  assert.throws(() => summariseHeap({ snapshot: { meta: { node_fields: ['id'], node_types: [[]] } }, nodes: [], strings: [] }), /not a V8 heap snapshot/);
});
