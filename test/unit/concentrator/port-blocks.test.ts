/**
 * The port-block allocator: ports come only from the CPE's blocks, one log line per block allocation and
 * release (not per port), a second block when the first is full, the per-CPE limit and an exhausted address
 * as refusals, blocks that never overlap (between CPEs, across a change of size), refused ports cooled down,
 * and the release after `releaseAfterMs` (mock timers) or at close.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PortBlockAllocator, type BlockEvent, type PortBlockOptions, type PortLease } from '../../../src/concentrator/port-blocks.js';

const A = '198.19.0.128';
const cpe1 = { identity: '198.18.1.2', cpe: '198.18.1.2' };
const cpe2 = { identity: 'key:cpe2', cpe: '198.18.2.2', keyId: 'k2' };

function make(o: Partial<PortBlockOptions> = {}, random?: (n: number) => number) {
  const log: BlockEvent[] = [];
  let now = 1_000_000;
  const a = new PortBlockAllocator({ size: 4, first: 2000, last: 2015, maxBlocksPerCpe: 2, releaseAfterMs: 0, ...o }, { log: (e) => log.push(e), now: () => now, ...(random ? { random } : {}) });
  return { a, log, tick: (ms: number) => (now += ms) };
}

const lease = (a: PortBlockAllocator, who = cpe1): PortLease => {
  const l = a.lease(who, A);
  assert.equal(typeof l, 'object', `a lease, not ${String(l)}`);
  return l as PortLease;
};
const range = (e: BlockEvent) => e.ports.split('-').map(Number) as [number, number];

test('a CPE gets one block (one log line) for many connections, ports inside it, all different', () => {
  const { a, log } = make();
  const leases = [lease(a), lease(a), lease(a), lease(a)];
  assert.equal(log.length, 1, 'one allocation line for four connections');
  assert.deepEqual(a.summary(), { blocks: 1, cpes: 1, portsInUse: 4 });
  const [lo, hi] = range(log[0]!);
  assert.equal(hi - lo + 1, 4);
  assert.equal((lo - 2000) % 4, 0, 'blocks are aligned on first');
  const ports = leases.map((l) => l.port);
  assert.equal(new Set(ports).size, 4, 'no port twice');
  for (const p of ports) assert.ok(p >= lo && p <= hi, `${p} in ${lo}-${hi}`);
  assert.deepEqual({ ...log[0], ports: undefined }, { event: 'block-allocate', cpe: '198.18.1.2', external: A, ports: undefined, blocks: 1 });
});

test('a full block brings a second one; at maxBlocksPerCpe the next connection is refused; other CPEs get other blocks', () => {
  const { a, log } = make({ maxBlocksPerCpe: 2 });
  const mine = Array.from({ length: 8 }, () => lease(a));
  assert.equal(log.length, 2, 'two blocks for eight connections');
  assert.equal(a.lease(cpe1, A), 'port-block-limit');
  const theirs = Array.from({ length: 8 }, () => lease(a, cpe2));
  assert.equal(a.lease(cpe2, A), 'port-block-limit');
  assert.equal(log.length, 4);
  const blocks = log.map(range);
  for (let i = 0; i < blocks.length; i++) for (let j = i + 1; j < blocks.length; j++) assert.ok(blocks[i]![1] < blocks[j]![0] || blocks[j]![1] < blocks[i]![0], 'blocks never overlap');
  assert.equal(new Set([...mine, ...theirs].map((l) => l.port)).size, 16, 'sixteen distinct ports');
  assert.equal(log[2]!.identity, 'key:cpe2', 'the identity and key id are logged when they differ from the address');
  assert.equal(log[2]!.keyId, 'k2');
  // The address (16 ports = 4 blocks) is full: a third CPE has no block.
  assert.equal(a.lease({ identity: 'c3', cpe: 'c3' }, A), 'port-blocks-exhausted');
  // Another address is independent.
  assert.equal(typeof a.lease({ identity: 'c3', cpe: 'c3' }, '198.19.0.129'), 'object');
});

test('released ports are reused; the last release of a block gives it back (releaseAfterMs 0) with one line', () => {
  const { a, log } = make();
  const l1 = lease(a);
  const l2 = lease(a);
  l1.release();
  l1.release(); // idempotent
  assert.equal(log.length, 1, 'still held: a port is in use');
  l2.release();
  assert.equal(log.length, 2);
  assert.equal(log[1]!.event, 'block-release');
  assert.equal(log[1]!.ports, log[0]!.ports);
  assert.equal(log[1]!.reason, 'idle');
  assert.equal(log[1]!.blocks, 0);
  assert.deepEqual(a.blocks(), []);
});

test('a block stays releaseAfterMs after its last connection, a new connection in time keeps it', (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const { a, log } = make({ releaseAfterMs: 60_000 });
  lease(a).release();
  t.mock.timers.tick(59_000);
  const again = lease(a);
  assert.equal(log.length, 1, 'the same block, no new line');
  again.release();
  t.mock.timers.tick(59_999);
  assert.equal(log.length, 1);
  t.mock.timers.tick(1);
  assert.equal(log.length, 2);
  assert.equal(log[1]!.event, 'block-release');
});

test('a port the kernel refused is cooled down: next() gives another one of the blocks, then new blocks, until the address has none', () => {
  const { a, log } = make({ maxBlocksPerCpe: 2, releaseAfterMs: 60_000 });
  const l = lease(a);
  const tried = [l.port];
  for (let p = l.next(); p !== undefined; p = l.next()) {
    assert.ok(!tried.includes(p), `never a refused port again (${p})`);
    tried.push(p);
  }
  assert.equal(tried.length, 16, 'every port of the range was tried once');
  assert.equal(l.refusal, 'port-blocks-exhausted');
  const events = log.map((e) => `${e.event}:${e.reason ?? ''}`);
  assert.equal(events.filter((e) => e === 'block-allocate:').length, 4, 'a new block each time the held ones had no usable port');
  assert.equal(events.filter((e) => e === 'block-release:unusable').length, 4, 'each fully refused block went back at once');
  l.release(); // nothing held: no throw
});

test('with releaseAfterMs 0, refusing the only port of a block does not hand the same block and port back', () => {
  const { a, log } = make({ size: 1, first: 3000, last: 3001, maxBlocksPerCpe: 1 }, () => 0);
  const l = lease(a);
  assert.equal(l.port, 3000);
  assert.equal(l.next(), undefined, 'no second block allowed');
  assert.equal(l.refusal, 'port-block-limit');
  assert.equal(log.length, 2, 'the block went back once its only port was refused');
  // The other position is offered to the next connection; the refused port's position is skipped while it cools.
  const again = lease(a);
  assert.equal(again.port, 3001);
  assert.equal(a.lease({ identity: 'c3', cpe: 'c3' }, A), 'port-blocks-exhausted', 'no block is handed out whose every port is cooling');
});

test('a held block whose every port the kernel refused goes back at once (reason unusable), before releaseAfterMs', () => {
  const { a, log } = make({ size: 2, first: 4000, last: 4003, maxBlocksPerCpe: 2, releaseAfterMs: 60_000 }, () => 0);
  const l = lease(a);
  assert.equal(l.port, 4000);
  assert.equal(l.next(), 4001);
  assert.equal(l.next(), 4002, 'the second block');
  assert.deepEqual(
    log.map((e) => [e.event, e.ports, e.reason]),
    [
      ['block-allocate', '4000-4001', undefined],
      ['block-allocate', '4002-4003', undefined],
      ['block-release', '4000-4001', 'unusable'],
    ],
  );
});

test('a change of size keeps the blocks held and never overlaps them; close() releases what is unused', () => {
  const { a, log } = make({ size: 4, maxBlocksPerCpe: 4 }, () => 0);
  const old = lease(a);
  assert.equal(log[0]!.ports, '2000-2003');
  a.reconfigure({ size: 8, first: 2000, last: 2015, maxBlocksPerCpe: 4, releaseAfterMs: 0 });
  const other = lease(a, cpe2);
  assert.equal(log[1]!.ports, '2008-2015', 'the 8-port block at 2000 would overlap the held 2000-2003');
  assert.equal(a.lease({ identity: 'c3', cpe: 'c3' }, A), 'port-blocks-exhausted');
  other.release();
  a.close('stop');
  assert.equal(log.length, 3, 'the unused block was already released');
  assert.equal(a.blocks().length, 1, 'a block in use stays until its connection ends');
  old.release();
  assert.equal(log.at(-1)!.event, 'block-release');
  assert.equal(log.at(-1)!.reason, 'stop');
  assert.deepEqual(a.blocks(), []);
});

test('options are checked', () => {
  assert.throws(() => make({ first: 10, last: 5 }), /port range/);
  assert.throws(() => make({ size: 17 }), /blocks of 17/);
});

test('a reload keeps the allocator (held blocks, no overlap); turning port blocks off releases the blocks as their connections end', async () => {
  const { concentratorConfigSchema } = await import('../../../src/concentrator/config.js');
  const { PortBlockSourceAddress, sourceAddressStrategy } = await import('../../../src/concentrator/source-address.js');
  const log: BlockEvent[] = [];
  const cfg = (portBlocks?: Record<string, number>) =>
    concentratorConfigSchema.parse({ listen: ['127.0.0.1:0'], allow: ['127.0.0.0/8'], sourcePool: { addresses: [A] }, ...(portBlocks ? { portBlocks } : {}) });
  const first = sourceAddressStrategy(cfg({ size: 4, first: 2000, last: 2015 }), { blockLog: (e) => log.push(e) });
  assert.ok(first instanceof PortBlockSourceAddress);
  const ctx = (identity: string) => {
    const releases: Array<() => void> = [];
    const c = { identity, cpe: identity, destination: { address: '198.19.0.11', port: 80, family: 4 as const }, own: (r: () => void) => releases.push(r) } as unknown as Parameters<typeof first.acquire>[0];
    return { c, end: () => releases.reverse().forEach((r) => r()) };
  };
  const one = ctx('198.18.1.2');
  assert.equal(first.acquire(one.c), undefined);
  assert.equal(one.c.external, A);
  assert.ok(one.c.ports && one.c.ports.port >= 2000 && one.c.ports.port <= 2015);
  const second = sourceAddressStrategy(cfg({ size: 8, first: 2000, last: 2015 }), { blockLog: (e) => log.push(e), previous: first });
  assert.ok(second instanceof PortBlockSourceAddress && second.allocator === first.allocator, 'the same allocator');
  const two = ctx('198.18.2.2');
  assert.equal(second.acquire(two.c), undefined);
  const [lo1, hi1] = range(log[0]!);
  const [lo2, hi2] = range(log[1]!);
  assert.equal(hi2 - lo2 + 1, 8, 'the new size');
  assert.ok(hi1 < lo2 || hi2 < lo1, 'no overlap with the block held from before the reload');
  const off = sourceAddressStrategy(cfg(), { blockLog: (e) => log.push(e), previous: second });
  assert.equal(off instanceof PortBlockSourceAddress, false);
  assert.equal(log.length, 2, 'blocks in use stay until their connections end');
  one.end();
  two.end();
  assert.deepEqual(log.slice(2).map((e) => [e.event, e.reason]), [['block-release', 'reload'], ['block-release', 'reload']]);
});
