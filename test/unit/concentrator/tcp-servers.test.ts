/**
 * Learned TCP servers (`server.tcpServersTtlS`): with a lifetime, a server (address and port) whose MPTCP dial
 * came up as plain TCP is dialled with TCP until the entry expires, then with MPTCP again; a server that speaks
 * MPTCP, another port of the same address and a lifetime of 0 (the default) keep MPTCP. A reload changes the
 * lifetime; 0 forgets what was learned.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { ServerDialer, type ServerTransport } from '../../../src/concentrator/server-dialer.js';
import { silentLogger } from '../../../src/log.js';
import { fakeSockets } from '../../support/fake-platform.js';

async function setup(ttlMs: number) {
  const upstream = net.createServer((s) => s.on('error', () => {}).end());
  upstream.listen(0, '127.0.0.1');
  await once(upstream, 'listening');
  const port = (upstream.address() as net.AddressInfo).port;
  let clock = 1_000_000;
  // Port 443 of the server "speaks MPTCP"; every other port answers with plain TCP.
  const speaksMptcp = new WeakSet<net.Socket>();
  const sockets = fakeSockets({ route: () => ({ host: '127.0.0.1', port }), mptcp: (s) => speaksMptcp.has(s) });
  const dialSocket = sockets.dial.bind(sockets);
  sockets.dial = async (spec) => {
    const s = await dialSocket(spec);
    if (spec.port === 443 && spec.protocol === 'mptcp') speaksMptcp.add(s);
    return s;
  };
  const dialer = new ServerDialer({
    sockets, logger: silentLogger(), mptcp: true, connectTimeoutMs: 2_000, cacheTtlMs: 86_400_000, cacheSize: 10, slowFallbackMs: 900,
    tcpServersTtlMs: ttlMs, now: () => clock,
  });
  const dial = async (serverPort: number): Promise<[ServerTransport, string]> => {
    const { socket, transport } = await dialer.dial({ host: '198.19.0.11', port: serverPort, family: 4 });
    socket.destroy();
    return [transport, sockets.dials.at(-1)!.protocol];
  };
  return { dialer, dial, advance: (ms: number) => (clock += ms), close: () => upstream.close() };
}

test('a server that answered MPTCP with TCP is dialled with TCP for the lifetime, then with MPTCP again', async () => {
  const t = await setup(60_000);
  try {
    assert.deepEqual(await t.dial(80), ['tcp-fallback', 'mptcp'], 'the first dial tries MPTCP');
    assert.deepEqual(await t.dial(80), ['tcp-learned', 'tcp'], 'then TCP at once');
    assert.deepEqual(t.dialer.tcpServers, ['198.19.0.11 80']);
    assert.deepEqual(await t.dial(8080), ['tcp-fallback', 'mptcp'], 'another port of the same address is another server');
    assert.deepEqual(await t.dial(443), ['mptcp', 'mptcp'], 'a server that speaks MPTCP keeps it');
    assert.deepEqual(await t.dial(443), ['mptcp', 'mptcp']);
    t.advance(60_001);
    assert.deepEqual(await t.dial(80), ['tcp-fallback', 'mptcp'], 'after the lifetime MPTCP is tried again');
    assert.equal(t.dialer.brokenMptcp.size, 0, 'a quick fallback is not a broken path');
  } finally {
    t.close();
  }
});

test('lifetime 0 (the default) always dials MPTCP; a reload to 0 forgets what was learned', async () => {
  const off = await setup(0);
  try {
    assert.deepEqual(await off.dial(80), ['tcp-fallback', 'mptcp']);
    assert.deepEqual(await off.dial(80), ['tcp-fallback', 'mptcp']);
    assert.deepEqual(off.dialer.tcpServers, []);
  } finally {
    off.close();
  }
  const t = await setup(60_000);
  try {
    await t.dial(80);
    t.dialer.setTcpServersTtl(60_000);
    assert.deepEqual(await t.dial(80), ['tcp-learned', 'tcp'], 'the same lifetime keeps the entries');
    t.dialer.setTcpServersTtl(0);
    assert.deepEqual(await t.dial(80), ['tcp-fallback', 'mptcp']);
    assert.deepEqual(t.dialer.tcpServers, []);
  } finally {
    t.close();
  }
});
