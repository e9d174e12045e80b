/**
 * Lab tests of the Linux sockets: TFO data in the SYN (MPTCP and TCP, IPv4 and IPv6) read by the server at
 * accept, typed errors, MPTCP_INFO / subflows on live connections, bulk integrity, and no leaked descriptors.
 * Scenarios that need sysctls run in a child node process inside a fresh namespace; the fd count runs here on
 * loopback.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { labCapabilityMissing, requireLab } from '../../support/capabilities.js';
import { createNetns, type Netns } from './netns.js';
import { createLinuxPlatform } from '../../../src/platform/linux/index.js';
import { PlatformError } from '../../../src/platform/errors.js';
import { TCPI_OPT } from '../../../src/platform/structs.js';

const child = fileURLToPath(new URL('./sockets-child.js', import.meta.url));

describe('platform sockets in a namespace', () => {
  let ns: Netns | undefined;
  before(() => {
    if (labCapabilityMissing() !== null) return;
    ns = createNetns({ 'net.ipv4.tcp_fastopen': '3' });
    ns.exec('ip', ['link', 'add', 'vetha', 'type', 'veth', 'peer', 'name', 'vethb']);
    ns.exec('ip', ['addr', 'add', '198.18.0.1/24', 'dev', 'vetha']);
    ns.exec('ip', ['link', 'set', 'vetha', 'up']);
    ns.exec('ip', ['link', 'set', 'vethb', 'up']);
    ns.exec('ip', ['mptcp', 'endpoint', 'add', '127.0.0.2', 'dev', 'lo', 'subflow']);
    ns.exec('ip', ['mptcp', 'limits', 'set', 'subflows', '2']);
  });
  after(() => ns?.remove());

  it('carries TFO data in the SYN: the server holds the exact bytes at accept, before the handshake completes', async (t) => {
    if (!requireLab(t) || !ns) return;
    const lines = await ns.node(child, ['syn-data']);
    assert.equal(lines.length, 2);
    for (const l of lines) {
      assert.equal(l['acceptedHex'], l['sentHex'], `${String(l['scenario'])}: bytes at accept`);
      // The SYN/ACK was dropped for 700 ms: the client could only be ESTABLISHED after its retransmission.
      assert.ok(Number(l['establishedMs']) >= 700, `${String(l['scenario'])}: established at ${String(l['establishedMs'])} ms`);
      assert.ok(Number(l['acceptedMs']) < 500, `${String(l['scenario'])}: accepted at ${String(l['acceptedMs'])} ms`);
    }
    assert.equal(lines[0]!['mptcp'], true, 'a lost SYN/ACK does not make a TFO MPTCP connection fall back');
    const counters = ns.exec('nstat', ['-az', 'TcpExtTCPFastOpenPassive', 'TcpExtTCPFastOpenActive']);
    assert.match(counters, /TcpExtTCPFastOpenPassive\s+[1-9]/);
  });

  it('dials and accepts MPTCP with TFO over IPv4 and IPv6, and plain TCP, with DSCP and tcp_info', async (t) => {
    if (!requireLab(t) || !ns) return;
    const lines = await ns.node(child, ['tfo']);
    const by = new Map(lines.map((l) => [l['scenario'], l]));
    for (const name of ['tfo-mptcp-4', 'tfo-mptcp-6', 'tfo-tcp-4']) {
      const l = by.get(name);
      assert.ok(l, name);
      const sent = Buffer.from(String(l['sentHex']), 'hex').toString();
      assert.ok(String(l['serverAtAccept']).startsWith(String(l['sentHex'])), `${name}: SYN bytes queued at accept`);
      assert.equal(l['serverBody'], `${sent}-and-more`, `${name}: the whole stream, in order`);
      assert.equal(l['reply'], 'bye', `${name}: half-close, then the server's reply`);
      assert.equal(l['tcpInfoState'], 1, `${name}: ESTABLISHED when dial resolved`);
      assert.ok((Number(l['tcpInfoOptions']) & TCPI_OPT.SYN_DATA) !== 0, `${name}: the SYN's data was acknowledged`);
      const mptcp = name.includes('mptcp');
      assert.equal(l['clientMptcp'], mptcp, `${name}: client isMptcp`);
      assert.equal(l['serverMptcp'], mptcp, `${name}: server isMptcp`);
      if (mptcp) {
        const info = l['clientInfo'] as Record<string, unknown>;
        assert.equal(info['fallback'], false);
        assert.equal(info['remoteKeyReceived'], true);
        assert.ok(Number(info['token']) > 0);
        const sf = l['clientSubflows'] as Array<{ remote: { address: string }; tcp: { state: number } }>;
        assert.equal(sf.length, 1);
        assert.equal(sf[0]!.remote.address, name.endsWith('6') ? '::1' : '127.0.0.1');
        assert.equal(sf[0]!.tcp.state, 1);
      } else {
        assert.equal(l['clientInfo'], null);
        assert.deepEqual(l['clientSubflows'], []);
      }
    }
    // IP_TOS set at dial is read back (IPv6 MPTCP sockets have no IPV6_TCLASS in this kernel: best effort).
    assert.equal(by.get('tfo-mptcp-4')!['clientTos'], 0x28);
    assert.equal(by.get('tfo-tcp-4')!['clientTos'], 0x28);
  });

  it('reports every subflow of a live connection (MPTCP_FULL_INFO and the two-call path agree)', async (t) => {
    if (!requireLab(t) || !ns) return;
    const [l] = await ns.node(child, ['subflows']);
    assert.ok(l);
    assert.equal(l['echoed'], 1024 * 1024, 'all bytes echoed while two subflows exist');
    const list = l['subflows'] as Array<{ id: number; local: { address: string }; remote: { address: string; port: number }; tcp: { state: number } }>;
    assert.equal(list.length, 2, 'initial subflow + the one from the 127.0.0.2 endpoint');
    assert.deepEqual(list.map((s) => s.local.address).sort(), ['127.0.0.1', '127.0.0.2']);
    assert.ok(list.every((s) => s.remote.address === '127.0.0.1' && s.tcp.state === 1));
    assert.deepEqual(new Set(list.map((s) => s.id)).size, 2, 'distinct subflow ids');
    const two = l['twoCalls'] as Array<{ local: unknown; remote: unknown }>;
    assert.deepEqual(two.map((s) => [s.local, s.remote]), list.map((s) => [s.local, s.remote]));
    const info = l['info'] as Record<string, unknown>;
    assert.equal(info['subflows'], 1, 'one additional subflow');
    assert.equal(info['subflowsTotal'], 2);
    assert.equal(info['localAddrUsed'], 1);
  });

  it('gives a listener the backlog it was asked for (4096), MPTCP and TCP, read back with ss -ltn', async (t) => {
    if (!requireLab(t) || !ns) return;
    const [l] = await ns.node(child, ['backlog']);
    assert.ok(l);
    // The kernel caps a backlog at net.core.somaxconn (per namespace; 4096 by default since 5.4).
    assert.ok(Number(l['somaxconn']) >= 4096, `somaxconn ${String(l['somaxconn'])} in the namespace`);
    assert.equal(l['mptcp'], 4096, `MPTCP listener's backlog; ss:\n${String(l['ss'])}`);
    assert.equal(l['tcp'], 4096, `TCP listener's backlog; ss:\n${String(l['ss'])}`);
    assert.equal(l['dflt'], 511, 'the default stays 511');
  });

  it('turns failures into typed errors naming the call and errno', async (t) => {
    if (!requireLab(t) || !ns) return;
    const [l] = await ns.node(child, ['errors']);
    assert.ok(l);
    assert.equal(l['refused'], 'ECONNREFUSED');
    assert.equal(l['refusedSyscall'], 'connect(127.0.0.1:9)');
    assert.equal(l['refusedTfo'], 'ECONNREFUSED');
    assert.equal(l['unreachable'], 'ENETUNREACH');
    assert.equal(l['timeout'], 'ETIMEDOUT');
    assert.ok(Number(l['timeoutMs']) >= 390 && Number(l['timeoutMs']) < 2000);
    assert.equal(l['aborted'], 'ABORT_ERR');
    assert.equal(l['inUse'], 'EADDRINUSE');
    assert.match(String(l['inUseMessage']), /^bind\(127\.0\.0\.1:7000\): EADDRINUSE/);
  });

  it('moves 8 MiB through a dialled MPTCP socket intact (Node streams, backpressure, FIN)', async (t) => {
    if (!requireLab(t) || !ns) return;
    const [l] = await ns.node(child, ['bulk'], 60_000);
    assert.ok(l);
    assert.equal(l['bytes'], 8 * 1024 * 1024);
    assert.equal(l['received'], l['sent']);
  });
});

describe('platform sockets on loopback (root namespace)', () => {
  it('opens and closes 500 sockets (listen, dial, accept, refused dials) without leaking a descriptor', async (t) => {
    if (!requireLab(t)) return;
    const { sockets } = createLinuxPlatform();
    const countFds = () => readdirSync('/proc/self/fd').length;
    // Warm up: libuv, koffi and the first server allocate their own long-lived descriptors once.
    const warm = await sockets.listen({ family: 4, protocol: 'mptcp', host: '127.0.0.1', port: 0 });
    warm.close();
    const before = countFds();
    const server = await sockets.listen({ family: 4, protocol: 'mptcp', host: '127.0.0.1', port: 0, reuseAddr: true });
    const port = (server.address() as net.AddressInfo).port;
    const accepted: net.Socket[] = [];
    server.on('connection', (s: net.Socket) => {
      accepted.push(s);
      s.on('error', () => {});
      s.resume();
    });
    let refused = 0;
    for (let i = 0; i < 500; i++) {
      if (i % 5 === 4) {
        // A closed port: the descriptor of a failed dial must be released too.
        await sockets.dial({ family: 4, protocol: 'mptcp', host: '127.0.0.1', port: 9, timeoutMs: 2000 }).then(
          (s) => s.destroy(),
          (err: unknown) => {
            assert.ok(err instanceof PlatformError);
            assert.equal(err.code, 'ECONNREFUSED');
            refused++;
          },
        );
        continue;
      }
      const s = await sockets.dial({
        family: 4,
        protocol: i % 2 === 0 ? 'mptcp' : 'tcp',
        host: '127.0.0.1',
        port,
        // TFO dials too (no server TFO in the root namespace: the data goes after the handshake; an MPTCP
        // connection whose SYN data is not accepted falls back to TCP, so only TCP ones here).
        ...(i % 3 === 0 && i % 2 === 1 ? { fastOpen: 'no-cookie' as const, data: Buffer.from('x') } : {}),
        timeoutMs: 2000,
      });
      if (i % 2 === 0) assert.equal(sockets.isMptcp(s), true);
      s.destroy();
    }
    assert.equal(refused, 100);
    for (const s of accepted) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(countFds(), before, 'descriptors before and after');
  });
});
