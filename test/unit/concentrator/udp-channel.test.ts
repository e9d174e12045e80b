/**
 * The concentrator's UDP channels (src/concentrator/udp-channel.ts) over real loopback sockets: a TCP pair
 * stands for the CPE's MPTCP channel, real UDP servers on 127.0.0.1 / 127.0.0.2 for the internet. Checks the
 * NAT behaviour RFC 4787 asks for (endpoint-independent mapping, the three filtering behaviours, a lifetime
 * refreshed by outbound traffic only), the limits per CPE and in total with their counters, and the
 * destination gate applied per datagram.
 */
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import net from 'node:net';
import { once } from 'node:events';
import fc from 'fast-check';
import { createMetrics } from '../../../src/control/metrics.js';
import { silentLogger } from '../../../src/log.js';
import { refuse } from '../../../src/policy/refusals.js';
import { PoolSourceAddress, kernelSourceAddress, type SourceAddressStrategy } from '../../../src/concentrator/source-address.js';
import { UdpChannelService, type UdpSettings } from '../../../src/concentrator/udp-channel.js';
import type { ConnectionContext } from '../../../src/concentrator/context.js';
import type { Sockets } from '../../../src/platform/types.js';
import { UdpFrameDecoder, encodeUdpFrame, type UdpFrame } from '../../../src/protocol/udp-frame.js';
import { byLabel } from '../../support/metrics.js';

const ECHO = Buffer.from('faa8faa88005000111000000', 'hex');
const DENIED = '127.0.0.9';

const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

interface Cpe {
  frames: UdpFrame[];
  send(flow: number, port: number, payload: string, address?: string): void;
  raw(bytes: Buffer): void;
  closed(): boolean;
}

function setup(over: Partial<UdpSettings> = {}, source: SourceAddressStrategy = kernelSourceAddress) {
  const settings: UdpSettings = {
    mappingLifetimeS: 300,
    filtering: 'address-dependent',
    maxMappingsPerCpe: 1024,
    maxMappings: 65_536,
    maxDatagram: 65_507,
    queueBytes: 262_144,
    queueMs: 1_000,
    notsentLowat: 32_768,
    sendBuffer: 0,
    ...over,
  };
  let clock = 1_000_000;
  const metrics = createMetrics('concentrator');
  const service = new UdpChannelService({
    sockets: { setNotSentLowat: () => {}, setSendBuffer: () => {} } as unknown as Sockets,
    metrics,
    logger: silentLogger(),
    now: () => clock,
    settings: () => settings,
    // The gate itself is unit-tested in test/unit/policy/destination.test.ts; here: that each datagram meets it.
    destination: (a) => (a === DENIED ? refuse('destination') : undefined),
    source: () => source,
    sessionLog: () => {},
    established: async () => true,
    stopping: () => false,
  });
  service.start();
  cleanups.push(() => service.stop());
  const server = net.createServer();
  cleanups.push(() => server.close());
  let id = 0;

  /** A channel of CPE `identity`: its frames as they arrive, and a way to send upstream frames. */
  const channel = async (identity: string): Promise<Cpe> => {
    if (!server.listening) {
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
    }
    const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    const [socket] = (await once(server, 'connection')) as [net.Socket];
    // A channel the service aborts (framing error) is reset.
    client.on('error', () => {});
    cleanups.push(() => (client.destroy(), socket.destroy()));
    const ctx = {
      id: ++id,
      socket,
      cpe: '127.0.0.1',
      identity,
      listener: { host: '127.0.0.1', port: 0, family: 4 },
      started: clock,
      signalling: { format: 'mp-convert', protocol: 17, raw: ECHO, rest: Buffer.alloc(0) },
      own: () => {},
    } as unknown as ConnectionContext;
    assert.equal(await service.conversion.convert(ctx), undefined);
    const frames: UdpFrame[] = [];
    let echo = Buffer.alloc(0);
    const decoder = new UdpFrameDecoder({ expect: 'downstream' });
    client.on('data', (d: Buffer) => {
      if (echo.length < ECHO.length) {
        const need = ECHO.length - echo.length;
        echo = Buffer.concat([echo, d.subarray(0, need)]);
        d = d.subarray(need);
        if (echo.length === ECHO.length) assert.ok(echo.equals(ECHO), 'the channel signalling is echoed');
      }
      frames.push(...decoder.push(d));
    });
    return {
      frames,
      send: (flow, port, payload, address = '127.0.0.1') => client.write(encodeUdpFrame({ direction: 'upstream', flow, address, port, payload: Buffer.from(payload) })),
      raw: (bytes: Buffer) => client.write(bytes),
      closed: () => client.destroyed || client.readableEnded,
    };
  };

  return {
    service,
    settings,
    channel,
    metrics,
    advance: (ms: number) => (clock += ms),
    drops: async () => byLabel(await metrics.registry.metrics(), 'mpconvert_udp_dropped_total', 'reason'),
  };
}

/** A UDP server on `address` that records who sent what. */
async function udpServer(address = '127.0.0.1') {
  const s = dgram.createSocket('udp4');
  cleanups.push(() => s.close());
  const got: Array<{ from: string; payload: string }> = [];
  s.on('message', (m, r) => got.push({ from: `${r.address}:${r.port}`, payload: m.toString() }));
  s.bind(0, address);
  await once(s, 'listening');
  return { socket: s, port: s.address().port, got, sendTo: (to: string, payload: string) => s.send(payload, Number(to.split(':')[1]), to.split(':')[0]) };
}

async function until(what: string, f: () => boolean | Promise<boolean>, ms = 3_000): Promise<void> {
  for (const deadline = Date.now() + ms; Date.now() < deadline; ) {
    if (await f()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.fail(`timed out waiting for ${what}`);
}

test('endpoint-independent mapping (RFC 4787 REQ-1): one flow keeps its external address and port for every destination; another flow has its own', async () => {
  const { channel, service } = setup();
  const cpe = await channel('cpe-a');
  const a = await udpServer();
  const b = await udpServer();
  cpe.send(1, a.port, 'one-to-a');
  cpe.send(1, b.port, 'one-to-b');
  cpe.send(2, a.port, 'two-to-a');
  await until('three datagrams', () => a.got.length === 2 && b.got.length === 1);
  const fromA = Object.fromEntries(a.got.map((g) => [g.payload, g.from]));
  assert.equal(fromA['one-to-a'], b.got[0]!.from, 'flow 1 reached both servers from the same external endpoint');
  assert.notEqual(fromA['two-to-a'], fromA['one-to-a'], 'flow 2 has a mapping of its own');
  assert.equal(service.mappings, 2);
  // The answers come back framed with the flow's id and the server's endpoint as the source.
  a.sendTo(fromA['one-to-a']!, 'answer-1');
  a.sendTo(fromA['two-to-a']!, 'answer-2');
  await until('two answers', () => cpe.frames.length === 2);
  const byFlow = Object.fromEntries(cpe.frames.map((f) => [f.flow, f]));
  assert.equal(byFlow[1]?.payload.toString(), 'answer-1');
  assert.equal(byFlow[2]?.payload.toString(), 'answer-2');
  assert.equal(byFlow[1]?.port, a.port);
  assert.equal(byFlow[1]?.address, '127.0.0.1');
});

for (const [filtering, expectAdmitted] of [
  ['endpoint-independent', ['same-port', 'other-port', 'other-address']],
  ['address-dependent', ['same-port', 'other-port']],
  ['address-and-port-dependent', ['same-port']],
] as const) {
  test(`filtering ${filtering} (RFC 4787 section 5): which inbound datagrams a mapping lets through, the rest counted as filtered`, async () => {
    const { channel, drops } = setup({ filtering });
    const cpe = await channel('cpe-a');
    const server = await udpServer('127.0.0.1');
    const otherPort = await udpServer('127.0.0.1');
    const otherAddress = await udpServer('127.0.0.2');
    cpe.send(7, server.port, 'hello');
    await until('the datagram', () => server.got.length === 1);
    const external = server.got[0]!.from;
    const d0 = await drops();
    server.sendTo(external, 'same-port');
    otherPort.sendTo(external, 'other-port');
    otherAddress.sendTo(external, 'other-address');
    const filtered = 3 - expectAdmitted.length;
    await until('every inbound datagram handled', async () => cpe.frames.length + ((await drops())['filtered'] ?? 0) - (d0['filtered'] ?? 0) === 3);
    assert.deepEqual(cpe.frames.map((f) => f.payload.toString()).sort(), [...expectAdmitted].sort());
    assert.equal(((await drops())['filtered'] ?? 0) - (d0['filtered'] ?? 0), filtered);
  });
}

test('mapping lifetime (RFC 4787 REQ-5, REQ-6): refreshed by outbound datagrams only; past it the mapping closes', async () => {
  const { channel, service, advance } = setup({ mappingLifetimeS: 120, filtering: 'endpoint-independent' });
  const cpe = await channel('cpe-a');
  const server = await udpServer();
  cpe.send(1, server.port, 'first');
  await until('first', () => server.got.length === 1);
  advance(100_000);
  cpe.send(1, server.port, 'refresh');
  await until('refresh', () => server.got.length === 2);
  assert.equal(server.got[1]!.from, server.got[0]!.from, 'the same mapping');
  advance(100_000);
  service.sweep();
  assert.equal(service.mappings, 1, '200 s after the first datagram, 100 s after the last outbound one: alive');
  // Inbound traffic does not keep it alive.
  server.sendTo(server.got[0]!.from, 'inbound');
  await until('the inbound datagram', () => cpe.frames.length === 1);
  advance(21_000);
  service.sweep();
  assert.equal(service.mappings, 0, '121 s after the last outbound datagram: closed, inbound traffic notwithstanding');
});

test('limits: mappings per CPE and in total are refused per datagram and counted; another CPE keeps its own allowance', async () => {
  const { channel, service, drops } = setup({ maxMappingsPerCpe: 2, maxMappings: 3 });
  const a = await channel('cpe-a');
  const b = await channel('cpe-b');
  const server = await udpServer();
  for (const f of [1, 2, 3, 4]) a.send(f, server.port, `a-${f}`);
  await until('cpe-a at its limit', async () => server.got.length === 2 && (await drops())['mappings-per-cpe'] === 2);
  b.send(1, server.port, 'b-1');
  b.send(2, server.port, 'b-2');
  await until('cpe-b at the total limit', async () => server.got.length === 3 && (await drops())['mappings-total'] === 1);
  assert.deepEqual(server.got.map((g) => g.payload).sort(), ['a-1', 'a-2', 'b-1']);
  assert.equal(service.mappings, 3);
  // An existing mapping keeps working at the limit.
  a.send(1, server.port, 'a-1-again');
  await until('a-1 again', () => server.got.length === 4);
});

test('the destination gate meets every datagram: a refused destination is dropped and counted, the channel lives on', async () => {
  const { channel, drops, service } = setup();
  const cpe = await channel('cpe-a');
  const server = await udpServer();
  cpe.send(1, 53, 'to-the-denied-address', DENIED);
  cpe.send(1, server.port, 'allowed');
  await until('the allowed datagram', () => server.got.length === 1);
  assert.equal((await drops())['destination'], 1);
  assert.equal(server.got[0]!.payload, 'allowed');
  assert.equal(service.channels, 1);
});

test('oversized datagrams are dropped and counted, not relayed', async () => {
  const { channel, drops } = setup({ maxDatagram: 100 });
  const cpe = await channel('cpe-a');
  const server = await udpServer();
  cpe.send(1, server.port, 'x'.repeat(101));
  cpe.send(1, server.port, 'small');
  await until('the small datagram', () => server.got.length === 1);
  assert.equal(server.got[0]!.payload, 'small');
  assert.equal((await drops())['oversized'], 1);
});

test('fuzz (time-boxed): valid frames and garbage mixed on channels: the valid ones before the garbage go out, nothing reaches a refused destination, the service keeps serving new channels', async () => {
  const { channel, service } = setup();
  const allowed = await udpServer('127.0.0.1');
  const denied = await udpServer(DENIED);
  let cpe = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.array(
        fc.oneof(
          fc.record({ flow: fc.integer({ min: 1, max: 20 }), to: fc.constantFrom('allowed', 'denied'), payload: fc.uint8Array({ maxLength: 64 }) }),
          fc.uint8Array({ minLength: 1, maxLength: 40 }),
        ),
        { minLength: 1, maxLength: 30 },
      ),
      async (items) => {
        const before = allowed.got.length;
        const c = await channel(`fuzz-${++cpe}`);
        let valid = 0;
        let clean = true;
        const prefix: Buffer[] = [];
        const rest: Buffer[] = [];
        for (const it of items) {
          if (it instanceof Uint8Array) clean = false;
          const b = it instanceof Uint8Array
            ? Buffer.from(it)
            : encodeUdpFrame({ direction: 'upstream', flow: it.flow, address: it.to === 'allowed' ? '127.0.0.1' : DENIED, port: it.to === 'allowed' ? allowed.port : denied.port, payload: Buffer.from(it.payload) });
          if (clean && !(it instanceof Uint8Array) && it.to === 'allowed') valid++;
          (clean ? prefix : rest).push(b);
        }
        // The frames before the first garbage, then the rest (a framing error drops what arrived with it).
        c.raw(Buffer.concat(prefix));
        for (const deadline = Date.now() + 1_000; allowed.got.length - before < valid && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 5));
        assert.ok(allowed.got.length - before >= valid, `the ${valid} valid datagrams before any garbage arrived`);
        if (rest.length > 0) c.raw(Buffer.concat(rest));
        await new Promise((r) => setTimeout(r, 5));
        assert.equal(denied.got.length, 0, 'nothing reached the refused destination');
      },
    ),
    { numRuns: 60, interruptAfterTimeLimit: 8_000 },
  );
  // Alive: a new CPE's datagram still goes through.
  const fresh = await channel('after-the-fuzz');
  const n = allowed.got.length;
  fresh.send(1, allowed.port, 'still-here');
  await until('the datagram after the fuzz', () => allowed.got.slice(n).some((g) => g.payload === 'still-here'));
  assert.ok(service.channels >= 1);
  assert.equal(denied.got.length, 0, 'nothing reached the refused destination, late ones included');
});

test('source pool: a CPE\'s UDP mappings leave from its paired pool address, the one its TCP connections get', async () => {
  const pool = new PoolSourceAddress(['127.0.0.5', '127.0.0.6'], 'shared');
  const { channel } = setup({}, pool);
  const a = await channel('cpe-a');
  const b = await channel('cpe-b');
  const server = await udpServer();
  a.send(1, server.port, 'a-1');
  a.send(2, server.port, 'a-2');
  b.send(1, server.port, 'b-1');
  await until('three datagrams', () => server.got.length === 3);
  const from = Object.fromEntries(server.got.map((g) => [g.payload, g.from.split(':')[0]]));
  assert.ok(['127.0.0.5', '127.0.0.6'].includes(from['a-1']!), `from the pool: ${from['a-1']}`);
  assert.equal(from['a-2'], from['a-1'], 'every mapping of a CPE from the same address');
  // A TCP connection of the same CPE is paired with the same address.
  const ctx = { identity: 'cpe-a', destination: { address: '127.0.0.1', port: 1, family: 4 }, own: () => {} } as unknown as ConnectionContext;
  assert.equal(pool.acquire(ctx), undefined);
  assert.equal(ctx.external, from['a-1']);
  assert.ok(['127.0.0.5', '127.0.0.6'].includes(from['b-1']!));
});
