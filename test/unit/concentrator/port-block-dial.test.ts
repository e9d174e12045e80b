/**
 * The server dialer under port blocks (fake platform): the source port is bound explicitly from the lease with
 * SO_REUSEADDR and without IP_BIND_ADDRESS_NO_PORT; a port the kernel refuses (EADDRINUSE at bind,
 * EADDRNOTAVAIL at connect) is replaced by the next one; with none left the dial fails with PortBlocksError
 * carrying the refusal; any other error is not retried.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { ServerDialer, PortBlocksError } from '../../../src/concentrator/server-dialer.js';
import { PortBlockAllocator, type PortLease } from '../../../src/concentrator/port-blocks.js';
import { PlatformError } from '../../../src/platform/errors.js';
import { silentLogger } from '../../../src/log.js';
import { fakeSockets } from '../../support/fake-platform.js';

async function setup(refuse: (port: number | undefined) => Error | undefined) {
  const upstream = net.createServer((s) => s.on('error', () => {}).end());
  upstream.listen(0, '127.0.0.1');
  await once(upstream, 'listening');
  const port = (upstream.address() as net.AddressInfo).port;
  const sockets = fakeSockets({ route: (spec) => refuse(spec.localPort) ?? { host: '127.0.0.1', port } });
  const dialer = new ServerDialer({ sockets, logger: silentLogger(), mptcp: false, connectTimeoutMs: 2_000, cacheTtlMs: 1_000, cacheSize: 10, slowFallbackMs: 900 });
  const allocator = new PortBlockAllocator({ size: 2, first: 5000, last: 5003, maxBlocksPerCpe: 2, releaseAfterMs: 60_000 }, { log: () => {}, random: () => 0 });
  const lease = allocator.lease({ identity: 'c', cpe: 'c' }, '198.19.0.128') as PortLease;
  const dial = () => dialer.dial({ host: '198.19.0.11', port: 80, family: 4, localAddress: '198.19.0.128', ports: lease });
  return { sockets, dial, lease, close: () => upstream.close() };
}

test('explicit bind from the lease; EADDRINUSE and EADDRNOTAVAIL move on to the next port of the blocks', async () => {
  const t = await setup((p) =>
    p === 5000 ? new PlatformError('bind(198.19.0.128:5000)', 'EADDRINUSE', 98) : p === 5001 ? new PlatformError('connect(198.19.0.11:80)', 'EADDRNOTAVAIL', 99) : undefined,
  );
  try {
    const { socket } = await t.dial();
    socket.destroy();
    assert.deepEqual(
      t.sockets.dials.map((d) => [d.localAddress, d.localPort, d.reuseAddr, d.bindAddressNoPort]),
      [
        ['198.19.0.128', 5000, true, false],
        ['198.19.0.128', 5001, true, false],
        ['198.19.0.128', 5002, true, false],
      ],
    );
    assert.equal(t.lease.port, 5002, 'the lease holds the port that was bound');
  } finally {
    t.close();
  }
});

test('no port left: PortBlocksError with the refusal; another error is not retried', async () => {
  const all = await setup(() => new PlatformError('bind', 'EADDRINUSE', 98));
  try {
    await assert.rejects(all.dial(), (err: unknown) => err instanceof PortBlocksError && err.refusal === 'port-blocks-exhausted' && err.code === 'MPC_ERR_PORT_BLOCKS');
    assert.equal(all.sockets.dials.length, 4, 'each port of the range once');
  } finally {
    all.close();
  }
  const other = await setup(() => new PlatformError('connect', 'ECONNREFUSED', 111));
  try {
    await assert.rejects(other.dial(), (err: unknown) => (err as { code?: string }).code === 'ECONNREFUSED');
    assert.equal(other.sockets.dials.length, 1);
  } finally {
    other.close();
  }
});
