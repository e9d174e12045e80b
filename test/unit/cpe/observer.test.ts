import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { UplinkObserver, type ConnectionRecord } from '../../../src/cpe/observer.js';
import type { UplinkState } from '../../../src/cpe/uplinks.js';
import type { LinkCounters, SubflowInfo, TcpInfo } from '../../../src/platform/types.js';
import { createMetrics } from '../../../src/control/metrics.js';
import { silentLogger } from '../../../src/log.js';
import { metric } from '../../support/metrics.js';
import { parseProcNetDev } from '../../../src/platform/linux/kernel.js';

const uplink = (name: string, v4: string, up = true): UplinkState => ({
  interface: name, mode: 'subflow', up, table: 200, rulePriority: 10000, changedAt: 0,
  ipv4: { address: v4, gateway: null, endpointId: 1, routed: true }, ipv6: null,
});
const tcp = (rttUs: number, acked: number, received: number, retrans: number): TcpInfo =>
  ({ state: 1, rttUs, bytesAcked: acked, bytesReceived: received, totalRetrans: retrans } as unknown as TcpInfo);
const sf = (id: number, local: string, t: TcpInfo): SubflowInfo => ({ id, local: { family: 4, address: local, port: 40000 + id }, remote: { family: 4, address: '198.18.200.1', port: 5000 }, tcp: t });

test('per uplink: interface throughput each way from the counters, subflows put on the uplink of their local address, byte and retransmission deltas, share', () => {
  let now = 1_000_000;
  let counters: LinkCounters[] = [
    { ifname: 'up1', rxBytes: 1000, rxPackets: 1, txBytes: 500, txPackets: 1 },
    { ifname: 'up2', rxBytes: 0, rxPackets: 0, txBytes: 0, txPackets: 0 },
  ];
  let subflows: SubflowInfo[] = [sf(1, '198.18.1.2', tcp(10_000, 100, 1000, 0)), sf(2, '198.18.2.2', tcp(30_000, 0, 3000, 1))];
  const upstream = { destroyed: false } as Socket;
  const conn = { id: 1, upstream, relay: { closed: false } } as unknown as ConnectionRecord;
  const metrics = createMetrics('cpe', { runtime: false });
  const uplinks = [uplink('up1', '198.18.1.2'), uplink('up2', '198.18.2.2')];
  const o = new UplinkObserver({
    kernel: { linkCounters: () => counters },
    sockets: { subflows: () => subflows },
    metrics,
    logger: silentLogger(),
    uplinks: () => uplinks,
    connections: () => [conn],
    now: () => now,
  });
  o.sample();
  now += 500;
  counters = [
    { ifname: 'up1', rxBytes: 1000 + 50_000, rxPackets: 9, txBytes: 500 + 5_000, txPackets: 9 },
    { ifname: 'up2', rxBytes: 25_000, rxPackets: 9, txBytes: 0, txPackets: 0 },
  ];
  subflows = [sf(1, '198.18.1.2', tcp(10_000, 300, 6000, 2)), sf(2, '198.18.2.2', tcp(30_000, 0, 5000, 1))];
  const s = o.sample();
  assert.deepEqual(s, { t: now, rx: [100_000, 50_000], tx: [10_000, 0], bytes: [55_000, 25_000] }, 'bytes/s over the 0.5 s interval, bytes both ways');
  const [v1, v2] = o.view();
  assert.equal(v1!.subflows, 1);
  assert.equal(v1!.rttMs, 10);
  assert.equal(v2!.rttMs, 30);
  assert.equal(v1!.convertedBytesReceived, 6000, 'first sample counts from 0, then the delta');
  assert.equal(v1!.convertedBytesSent, 300);
  assert.equal(v1!.retransmits, 2);
  assert.equal(v2!.convertedBytesReceived, 5000);
  assert.equal(v1!.share, Math.round((6300 / 11300) * 1000) / 1000);
  assert.equal(o.history().length, 2);
  return metrics.registry.metrics().then((text) => {
    assert.equal(metric(text, 'mpconvert_uplink_interface_bytes_total', 'uplink="up1",direction="rx"'), 50_000);
    assert.equal(metric(text, 'mpconvert_uplink_subflow_bytes_total', 'uplink="up2",direction="down"'), 5000);
    assert.equal(metric(text, 'mpconvert_uplink_subflow_retransmits_total', 'uplink="up1"'), 2);
    assert.equal(metric(text, 'mpconvert_uplink_subflows', 'uplink="up2"'), 1);
    assert.equal(metric(text, 'mpconvert_uplink_up', 'uplink="up1"'), 1);
  });
});

test('/proc/net/dev: receive and transmit bytes and packets per interface; header and odd lines skipped', () => {
  const text = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1234      10    0    0    0     0          0         0     1234      10    0    0    0     0       0          0
   up1: 987654321  654321    0    0    0     0          0         0 123456789   54321    0    0    0     0       0          0
garbage
`;
  assert.deepEqual(parseProcNetDev(text), [
    { ifname: 'lo', rxBytes: 1234, rxPackets: 10, txBytes: 1234, txPackets: 10 },
    { ifname: 'up1', rxBytes: 987654321, rxPackets: 654321, txBytes: 123456789, txPackets: 54321 },
  ]);
});
