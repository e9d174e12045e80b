/**
 * The CPE's UDP channel client (src/cpe/udp-channels.ts) against a small concentrator on loopback that echoes
 * the channel signalling and then reads upstream frames (or refuses channels, as one without `udp` does). The
 * transparent UDP sockets are a fake: the test plays the LAN clients and sees what reaches them.
 */
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { createMetrics } from '../../../src/control/metrics.js';
import { silentLogger } from '../../../src/log.js';
import { cpeConfigSchema, type ConcentratorTarget } from '../../../src/cpe/config.js';
import { UdpChannelClient, channelSignalling } from '../../../src/cpe/udp-channels.js';
import type { InterceptedDatagram, Sockets, TransparentUdp, TransparentUdpFactory, UdpEndpoint } from '../../../src/platform/types.js';
import { UdpFrameDecoder, encodeUdpFrame, type UdpFrame } from '../../../src/protocol/udp-frame.js';
import { byLabel } from '../../support/metrics.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function until(what: string, f: () => boolean, ms = 3_000): Promise<void> {
  for (const deadline = Date.now() + ms; Date.now() < deadline; ) {
    if (f()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.fail(`timed out waiting for ${what}`);
}

/** A concentrator: `offer` = echo the signalling and collect upstream frames; else reset every channel. */
async function concentrator(offer: boolean) {
  const channels: Array<{ socket: net.Socket; frames: UdpFrame[] }> = [];
  const expected = channelSignalling(undefined, 0);
  const server = net.createServer((socket) => {
    socket.on('error', () => {});
    if (!offer) {
      socket.once('data', () => socket.resetAndDestroy());
      return;
    }
    const ch = { socket, frames: [] as UdpFrame[] };
    channels.push(ch);
    const decoder = new UdpFrameDecoder({ expect: 'upstream' });
    let head = Buffer.alloc(0);
    socket.on('data', (d: Buffer) => {
      if (head.length < expected.length) {
        const need = expected.length - head.length;
        head = Buffer.concat([head, d.subarray(0, need)]);
        d = d.subarray(need);
        if (head.length === expected.length) socket.write(head);
      }
      if (d.length > 0) ch.frames.push(...decoder.push(d));
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanups.push(() => {
    for (const c of channels) c.socket.destroy();
    server.close();
  });
  return { port: (server.address() as net.AddressInfo).port, channels };
}

function fakeTransparentUdp() {
  const state = {
    open: 0,
    closed: 0,
    sent: [] as Array<{ from: UdpEndpoint; to: UdpEndpoint; payload: string }>,
    deliver: (_: InterceptedDatagram[]) => {},
  };
  const factory: TransparentUdpFactory = {
    open: async () => {
      state.open++;
      const t: TransparentUdp = {
        onDatagrams: (h) => {
          state.deliver = (batch) => h(batch, Date.now());
        },
        onDropped: () => {},
        send: (from, to, payload) => state.sent.push({ from, to, payload: payload.toString() }),
        close: async () => {
          state.closed++;
        },
      };
      return t;
    },
  };
  return { factory, state };
}

function client(port: number) {
  const metrics = createMetrics('cpe');
  const { factory, state } = fakeTransparentUdp();
  const config = cpeConfigSchema.parse({ lan: ['lan0'], uplinks: [{ interface: 'up1' }], concentrators: [{ address: `127.0.0.1:${port}` }], transports: ['tcp', 'udp'] });
  const target = config.concentrators[0] as ConcentratorTarget;
  const sockets = {
    dial: async (spec: { host: string; port: number; data?: Buffer }) => {
      const s = net.connect(spec.port, spec.host);
      await once(s, 'connect');
      if (spec.data) s.write(spec.data);
      return s;
    },
    isMptcp: () => true,
    setNotSentLowat: () => {},
    setSendBuffer: () => {},
  } as unknown as Sockets;
  const selector = { candidates: () => [target], markUnreachable: () => {}, markWorking: () => {} };
  const c = new UdpChannelClient({
    sockets,
    logger: silentLogger(),
    metrics,
    transparentUdp: factory,
    selector: selector as never,
    config: () => config,
    credentials: () => undefined,
  });
  cleanups.push(() => c.stop());
  const lan = (client: UdpEndpoint, payload: string, to: UdpEndpoint = { address: '198.19.0.11', port: 53 }) =>
    state.deliver([{ source: client, destination: to, payload: Buffer.from(payload) }]);
  return { c, state, lan, metrics };
}

const A = { address: '198.18.0.2', port: 40000 };
const B = { address: '198.18.0.3', port: 40000 };

test('a channel opens at start; each LAN flow has its own flow id, kept for its next datagrams; answers reach their own client from the server', async () => {
  const conc = await concentrator(true);
  const { c, state, lan } = client(conc.port);
  c.start();
  await until('the channel', () => c.status().channel !== null && state.open === 1);
  lan(A, 'a1');
  lan(B, 'b1', { address: '198.19.0.12', port: 123 });
  lan(A, 'a2', { address: '198.19.0.13', port: 443 });
  await until('three frames', () => (conc.channels[0]?.frames.length ?? 0) === 3);
  const [a1, b1, a2] = conc.channels[0]!.frames;
  assert.equal(a1!.direction, 'upstream');
  assert.equal(a1!.flow, a2!.flow, 'one flow id per LAN client address and port, for every destination');
  assert.notEqual(a1!.flow, b1!.flow);
  assert.deepEqual([b1!.address, b1!.port, b1!.payload.toString()], ['198.19.0.12', 123, 'b1']);
  assert.equal(c.status().flows, 2);
  conc.channels[0]!.socket.write(Buffer.concat([
    encodeUdpFrame({ direction: 'downstream', flow: b1!.flow, address: '198.19.0.12', port: 123, payload: Buffer.from('to-b') }),
    encodeUdpFrame({ direction: 'downstream', flow: a1!.flow, address: '198.19.0.11', port: 53, payload: Buffer.from('to-a') }),
  ]));
  await until('two answers', () => state.sent.length === 2);
  assert.deepEqual(state.sent, [
    { from: { address: '198.19.0.12', port: 123 }, to: B, payload: 'to-b' },
    { from: { address: '198.19.0.11', port: 53 }, to: A, payload: 'to-a' },
  ]);
});

test('refresh (an uplink or address changed): a new channel takes over and the flows keep their ids', async () => {
  const conc = await concentrator(true);
  const { c, lan } = client(conc.port);
  c.start();
  await until('the channel', () => c.status().channel !== null);
  lan(A, 'before');
  await until('the first frame', () => (conc.channels[0]?.frames.length ?? 0) === 1);
  c.refresh();
  await until('a second channel', () => conc.channels.length === 2);
  await new Promise((r) => setTimeout(r, 50));
  lan(A, 'after');
  await until('the frame on the new channel', () => (conc.channels[1]?.frames.length ?? 0) === 1);
  assert.equal(conc.channels[1]!.frames[0]!.flow, conc.channels[0]!.frames[0]!.flow);
  assert.equal(conc.channels[0]!.frames.length, 1, 'nothing more on the old channel');
});

test('a downstream frame that is not downstream aborts the channel, counted; the client re-opens one', async () => {
  const conc = await concentrator(true);
  const { c, metrics } = client(conc.port);
  c.start();
  await until('the channel', () => conc.channels.length === 1 && c.status().channel !== null);
  conc.channels[0]!.socket.write(encodeUdpFrame({ direction: 'upstream', flow: 1, address: '198.19.0.11', port: 53, payload: Buffer.from('x') }));
  await until('a new channel', () => conc.channels.length === 2);
  const aborts = byLabel(await metrics.registry.metrics(), 'mpconvert_udp_channel_aborts_total', 'reason');
  assert.equal(aborts['MPC_ERR_UDP_DIRECTION'], 1);
});

test('a concentrator that does not offer UDP: counted as not-offered, the transparent sockets are never opened (LAN UDP untouched)', async () => {
  const conc = await concentrator(false);
  const { c, state, lan, metrics } = client(conc.port);
  c.start();
  await until('the refusal', () => c.status().channel === null && state.open === 0);
  for (const deadline = Date.now() + 2_000; Date.now() < deadline; ) {
    const aborts = byLabel(await metrics.registry.metrics(), 'mpconvert_udp_channel_aborts_total', 'reason');
    if ((aborts['not-offered'] ?? 0) >= 1) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  const aborts = byLabel(await metrics.registry.metrics(), 'mpconvert_udp_channel_aborts_total', 'reason');
  assert.equal(aborts['not-offered'], 1, 'asked once, not again before notOfferedRetryS');
  assert.equal(state.open, 0);
  assert.equal(c.status().intercepting, false);
  lan(A, 'nobody takes it');
});
