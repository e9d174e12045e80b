import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readTcpSegments } from '../../../src/lab/pcap.js';
import { countRoundTrips } from '../../../bench/lib/roundtrips.js';

const FAR = '198.18.200.1';
const NEAR = '198.18.1.2';

/** One IPv4/TCP packet behind a Linux cooked v2 header, `payload` bytes long on the wire, `snap` bytes kept. */
function packet(from: 'near' | 'far', flags: number, payload: number, snap = 65_535): Buffer {
  const [src, dst, sport, dport] = from === 'near' ? [NEAR, FAR, 40_000, 5000] : [FAR, NEAR, 5000, 40_000];
  const ip = Buffer.alloc(20);
  ip[0] = 0x45;
  ip.writeUInt16BE(20 + 20 + payload, 2);
  ip[8] = 64;
  ip[9] = 6;
  Buffer.from(src.split('.').map(Number)).copy(ip, 12);
  Buffer.from(dst.split('.').map(Number)).copy(ip, 16);
  const tcp = Buffer.alloc(20);
  tcp.writeUInt16BE(sport, 0);
  tcp.writeUInt16BE(dport, 2);
  tcp.writeUInt32BE(1000, 4);
  tcp[12] = 5 << 4;
  tcp[13] = flags;
  const sll2 = Buffer.alloc(20);
  sll2.writeUInt16BE(0x0800, 0);
  return Buffer.concat([sll2, ip, tcp, Buffer.alloc(payload, 0x61)]).subarray(0, 20 + snap);
}

function pcap(packets: Buffer[]): string {
  const head = Buffer.alloc(24);
  head.writeUInt32LE(0xa1b2c3d4, 0);
  head.writeUInt16LE(2, 4);
  head.writeUInt16LE(4, 6);
  head.writeUInt32LE(262_144, 16);
  head.writeUInt32LE(276, 20);
  const records = packets.map((p) => {
    const r = Buffer.alloc(16);
    r.writeUInt32LE(p.length, 8);
    r.writeUInt32LE(p.length, 12);
    return Buffer.concat([r, p]);
  });
  const dir = mkdtempSync(join(tmpdir(), 'mpc-pcap-'));
  const file = join(dir, 'x.pcap');
  writeFileSync(file, Buffer.concat([head, ...records]));
  return file;
}

const SYN = 0x02;
const ACK = 0x10;

test('pcap reader: cooked v2 IPv4/TCP, flags, captured payload and its length on the wire', () => {
  const file = pcap([packet('near', SYN, 16), packet('far', SYN | ACK, 0), packet('near', ACK, 1000, 60)]);
  try {
    const segs = readTcpSegments(file);
    assert.equal(segs.length, 3);
    assert.deepEqual([segs[0]!.src, segs[0]!.dst, segs[0]!.sport, segs[0]!.dport], [NEAR, FAR, 40_000, 5000]);
    assert.equal(segs[0]!.flags.syn && !segs[0]!.flags.ack, true);
    assert.equal(segs[0]!.payload.toString(), 'a'.repeat(16));
    assert.equal(segs[1]!.flags.syn && segs[1]!.flags.ack, true);
    assert.equal(segs[2]!.length, 1000, 'the length comes from the IP header');
    assert.ok(segs[2]!.payload.length < 1000, 'the captured payload is cut at the snap length');
  } finally {
    rmSync(join(file, '..'), { recursive: true, force: true });
  }
});

test('round trips to the first byte: 2 with the request after the handshake, 1 with it in the SYN', () => {
  const after = pcap([packet('near', SYN, 0), packet('far', SYN | ACK, 0), packet('near', ACK, 100), packet('far', ACK, 0), packet('far', ACK, 50)]);
  const inSyn = pcap([packet('near', SYN, 116), packet('far', SYN | ACK, 0), packet('far', ACK, 50)]);
  try {
    assert.equal(countRoundTrips(readTcpSegments(after), FAR), 2);
    assert.equal(countRoundTrips(readTcpSegments(inSyn), FAR), 1);
    assert.equal(countRoundTrips(readTcpSegments(inSyn).slice(0, 2), FAR), null, 'no answer with payload: no figure');
  } finally {
    rmSync(join(after, '..'), { recursive: true, force: true });
    rmSync(join(inSyn, '..'), { recursive: true, force: true });
  }
});
