import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SourcePool } from '../../../src/concentrator/source-pool.js';

test('paired pooling: a CPE keeps its address while it has connections', () => {
  const p = new SourcePool(['198.19.0.128', '198.19.0.129'], 'shared');
  const a1 = p.acquire('cpe-a', 4);
  const b1 = p.acquire('cpe-b', 4);
  assert.notEqual(a1, b1, 'two CPEs are spread over the two addresses');
  assert.equal(p.acquire('cpe-a', 4), a1);
  p.release('cpe-a', 4);
  assert.equal(p.assigned('cpe-a', 4), a1, 'still one connection open');
  p.release('cpe-a', 4);
  assert.equal(p.assigned('cpe-a', 4), undefined);
});

test('shared (N:1): more CPEs than addresses share them', () => {
  const p = new SourcePool(['198.19.0.128'], 'shared');
  assert.equal(p.acquire('a', 4), '198.19.0.128');
  assert.equal(p.acquire('b', 4), '198.19.0.128');
});

test('dedicated (1:1): an address per CPE, refused when exhausted, reusable after release', () => {
  const p = new SourcePool(['198.19.0.128', '2001:db8:100::8000'], 'dedicated');
  assert.equal(p.acquire('a', 4), '198.19.0.128');
  assert.equal(p.acquire('b', 4), null);
  assert.equal(p.acquire('b', 6), '2001:db8:100::8000', 'families have separate pools');
  p.release('a', 4);
  assert.equal(p.acquire('b', 4), '198.19.0.128');
});

test('no pool for a family: undefined (the kernel picks the source)', () => {
  const p = new SourcePool(['198.19.0.128']);
  assert.equal(p.acquire('a', 6), undefined);
});
