/**
 * Struct decoders on hand-built buffers laid out as include/uapi/linux/{mptcp,tcp}.h say, plus the pure
 * helpers of the kernel adapters (nft replace script, ip mptcp parsers) and the errno naming.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  MPTCP_INFO_SIZE,
  SUBFLOW_ADDRS_SIZE,
  SUBFLOW_INFO_SIZE,
  TCP_INFO_SIZE,
  StructError,
  decodeFullInfo,
  decodeMptcpInfo,
  decodeSockaddr,
  decodeSubflowData,
  decodeTcpInfo,
  encodeSockaddr,
  formatIpv6,
  fullInfoRequest,
  pairSubflows,
  parseIpv6,
  setFullInfoPointers,
  subflowDataRequest,
} from '../../../src/platform/structs.js';
import { nftReplaceScript, parseEndpoints, parseMptcpLimits } from '../../../src/platform/linux/kernel.js';
import { PlatformError, errnoName } from '../../../src/platform/errors.js';
import { versionAtLeast, formatDoctor } from '../../../src/control/doctor.js';

function mptcpInfoBuf(): Buffer {
  const b = Buffer.alloc(MPTCP_INFO_SIZE);
  b.set([1, 2, 3, 8, 5, 6], 0);
  b.writeUInt32LE(0x2, 8); // REMOTE_KEY_RECEIVED
  b.writeUInt32LE(0xdeadbeef, 12);
  b.writeBigUInt64LE(0x1122334455667788n, 16);
  b.writeBigUInt64LE(0x1122334455667700n, 24);
  b.writeBigUInt64LE(0xffffffffffffffffn, 32);
  b.set([2, 4, 1], 40);
  b.writeUInt32LE(9, 44);
  b.writeBigUInt64LE(10n, 48);
  b.writeBigUInt64LE(1000n, 56);
  b.writeBigUInt64LE(2000n, 64);
  b.writeBigUInt64LE(900n, 72);
  b[80] = 2;
  b.writeUInt32LE(11, 84);
  b.writeUInt32LE(12, 88);
  b.writeUInt32LE(13, 92);
  return b;
}

function tcpInfoBuf(state: number, rtt: number): Buffer {
  const b = Buffer.alloc(TCP_INFO_SIZE);
  b[0] = state;
  b[5] = 0x27;
  b[6] = 0xa7; // snd_wscale 7, rcv_wscale 10
  b.writeUInt32LE(204000, 8);
  b.writeUInt32LE(1448, 16);
  b.writeUInt32LE(536, 20);
  b.writeUInt32LE(1500, 60);
  b.writeUInt32LE(rtt, 68);
  b.writeUInt32LE(rtt / 2, 72);
  b.writeUInt32LE(10, 80);
  b.writeUInt32LE(3, 100);
  b.writeBigUInt64LE(5000n, 120);
  b.writeBigUInt64LE(6000n, 128);
  b.writeUInt32LE(99, 148);
  b.writeBigUInt64LE(7000n, 200);
  b.writeBigUInt64LE(70n, 208);
  return b;
}

function sockaddr4(addr: string, port: number): Buffer {
  const b = Buffer.alloc(128);
  encodeSockaddr(4, addr, port).copy(b);
  return b;
}
function sockaddr6(addr: string, port: number): Buffer {
  const b = Buffer.alloc(128);
  encodeSockaddr(6, addr, port).copy(b);
  return b;
}

describe('struct mptcp_info', () => {
  it('decodes every field of the 96-byte struct', () => {
    const i = decodeMptcpInfo(mptcpInfoBuf());
    assert.equal(i.subflows, 1);
    assert.equal(i.addAddrSignal, 2);
    assert.equal(i.addAddrAccepted, 3);
    assert.equal(i.subflowsMax, 8);
    assert.equal(i.addAddrSignalMax, 5);
    assert.equal(i.addAddrAcceptedMax, 6);
    assert.equal(i.fallback, false);
    assert.equal(i.remoteKeyReceived, true);
    assert.equal(i.token, 0xdeadbeef);
    assert.equal(i.writeSeq, 0x1122334455667788n);
    assert.equal(i.sndUna, 0x1122334455667700n);
    assert.equal(i.rcvNxt, 0xffffffffffffffffn);
    assert.equal(i.localAddrUsed, 2);
    assert.equal(i.localAddrMax, 4);
    assert.equal(i.csumEnabled, true);
    assert.equal(i.retransmits, 9);
    assert.deepEqual([i.bytesRetrans, i.bytesSent, i.bytesReceived, i.bytesAcked], [10, 1000, 2000, 900]);
    assert.equal(i.subflowsTotal, 2);
    assert.deepEqual([i.lastDataSentMs, i.lastDataRecvMs, i.lastAckRecvMs], [11, 12, 13]);
  });

  it('reads the fallback flag and the short struct of older kernels (40 bytes)', () => {
    const b = mptcpInfoBuf();
    b.writeUInt32LE(0x1, 8);
    const i = decodeMptcpInfo(b, 40);
    assert.equal(i.fallback, true);
    assert.equal(i.remoteKeyReceived, false);
    assert.equal(i.localAddrUsed, undefined);
    assert.equal(i.bytesSent, undefined);
    assert.equal(i.subflowsTotal, undefined);
  });

  it('rejects a length that cannot hold the base struct or exceeds the buffer', () => {
    assert.throws(() => decodeMptcpInfo(Buffer.alloc(39)), StructError);
    assert.throws(() => decodeMptcpInfo(Buffer.alloc(40), 41), /exceeds buffer/);
  });
});

describe('struct tcp_info', () => {
  it('decodes the basics', () => {
    const t = decodeTcpInfo(tcpInfoBuf(1, 1200));
    assert.equal(t.state, 1);
    assert.equal(t.options, 0x27);
    assert.equal(t.sndWscale, 7);
    assert.equal(t.rcvWscale, 10);
    assert.equal(t.rtoUs, 204000);
    assert.equal(t.sndMss, 1448);
    assert.equal(t.rcvMss, 536);
    assert.equal(t.pmtu, 1500);
    assert.equal(t.rttUs, 1200);
    assert.equal(t.rttVarUs, 600);
    assert.equal(t.sndCwnd, 10);
    assert.equal(t.totalRetrans, 3);
    assert.deepEqual([t.bytesAcked, t.bytesReceived, t.minRttUs, t.bytesSent, t.bytesRetrans], [5000, 6000, 99, 7000, 70]);
  });

  it('leaves out fields beyond a short struct, and rejects a truncated one', () => {
    const t = decodeTcpInfo(tcpInfoBuf(1, 10), 104);
    assert.equal(t.bytesAcked, undefined);
    assert.equal(t.totalRetrans, 3);
    assert.throws(() => decodeTcpInfo(Buffer.alloc(103)), StructError);
  });
});

describe('sockaddr', () => {
  it('round-trips IPv4 and IPv6 addresses with ports', () => {
    assert.deepEqual(decodeSockaddr(encodeSockaddr(4, '198.18.0.1', 443)), { family: 4, address: '198.18.0.1', port: 443 });
    assert.deepEqual(decodeSockaddr(encodeSockaddr(6, '2001:db8::1', 8080)), { family: 6, address: '2001:db8::1', port: 8080 });
    assert.deepEqual(decodeSockaddr(encodeSockaddr(6, '::ffff:198.18.0.7', 1)), { family: 6, address: '::ffff:198.18.0.7', port: 1 });
    // Network byte order for the port, host order for the family.
    assert.equal(encodeSockaddr(4, '1.2.3.4', 0x1234).subarray(0, 8).toString('hex'), '0200123401020304');
  });

  it('formats IPv6 per RFC 5952 and parses what it formats', () => {
    assert.equal(formatIpv6(parseIpv6('2001:0db8:0:0:1:0:0:1')), '2001:db8::1:0:0:1');
    assert.equal(formatIpv6(parseIpv6('::')), '::');
    assert.equal(formatIpv6(parseIpv6('::1')), '::1');
    assert.equal(formatIpv6(parseIpv6('2001:db8:1:2:3:4:5:6')), '2001:db8:1:2:3:4:5:6');
    assert.equal(parseIpv6('64:ff9b::198.18.0.1').toString('hex'), '0064ff9b0000000000000000c6120001');
    assert.equal(parseIpv6('::198.18.0.1').toString('hex'), '000000000000000000000000c6120001');
    assert.equal(parseIpv6('1:2:3:4:5:6:198.18.0.1').toString('hex'), '000100020003000400050006c6120001');
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), (bytes) => {
        assert.deepEqual(parseIpv6(formatIpv6(bytes)), Buffer.from(bytes));
      }),
    );
  });

  it('rejects bad addresses, ports and families', () => {
    assert.throws(() => encodeSockaddr(4, '1.2.3', 1), StructError);
    assert.throws(() => encodeSockaddr(4, '1.2.3.256', 1), StructError);
    assert.throws(() => encodeSockaddr(4, '1.2.3.4', 65536), StructError);
    assert.throws(() => encodeSockaddr(6, '1::2::3', 1), StructError);
    assert.throws(() => encodeSockaddr(6, '1:2:3:4:5:6:7:8:9', 1), StructError);
    assert.throws(() => decodeSockaddr(Buffer.from([1, 0, 0, 0])), /unsupported family 1/);
    assert.throws(() => decodeSockaddr(Buffer.from([10, 0, 0, 0])), /truncated/);
  });
});

describe('MPTCP_SUBFLOW_ADDRS / MPTCP_TCPINFO / MPTCP_FULL_INFO', () => {
  function subflowData(elementSize: number, elements: Buffer[], kernelCount = elements.length): Buffer {
    const b = subflowDataRequest(elementSize, elements.length);
    b.writeUInt32LE(kernelCount, 4);
    b.writeUInt32LE(elementSize, 8);
    elements.forEach((e, i) => e.copy(b, 16 + i * elementSize));
    return b;
  }

  it('pairs addresses and tcp_info per subflow', () => {
    const addrs = subflowData(SUBFLOW_ADDRS_SIZE, [
      Buffer.concat([sockaddr4('198.18.0.2', 40000), sockaddr4('198.18.9.1', 443)]),
      Buffer.concat([sockaddr4('198.18.1.2', 40001), sockaddr4('198.18.9.1', 443)]),
    ]);
    const tcp = subflowData(TCP_INFO_SIZE, [tcpInfoBuf(1, 100), tcpInfoBuf(1, 200)]);
    const list = pairSubflows(decodeSubflowData(addrs), decodeSubflowData(tcp));
    assert.deepEqual(list.map((s) => [s.local.address, s.local.port, s.remote.address, s.remote.port, s.tcp?.rttUs]), [
      ['198.18.0.2', 40000, '198.18.9.1', 443, 100],
      ['198.18.1.2', 40001, '198.18.9.1', 443, 200],
    ]);
  });

  it('keeps addresses but drops tcp_info when the two calls saw different subflow counts', () => {
    const addrs = subflowData(SUBFLOW_ADDRS_SIZE, [Buffer.concat([sockaddr6('2001:db8::2', 1), sockaddr6('2001:db8::9', 2)])]);
    const tcp = subflowData(TCP_INFO_SIZE, [tcpInfoBuf(1, 1), tcpInfoBuf(1, 2)]);
    const list = pairSubflows(decodeSubflowData(addrs), decodeSubflowData(tcp));
    assert.equal(list.length, 1);
    assert.equal(list[0]!.remote.address, '2001:db8::9');
    assert.equal(list[0]!.tcp, null);
  });

  it('decodes only the elements that fit when the kernel has more subflows than room', () => {
    const b = subflowData(SUBFLOW_ADDRS_SIZE, [Buffer.concat([sockaddr4('198.18.0.2', 1), sockaddr4('198.18.0.3', 2)])], 5);
    const d = decodeSubflowData(b);
    assert.equal(d.numSubflows, 5);
    assert.equal(d.elements.length, 1);
    assert.throws(() => decodeSubflowData(Buffer.alloc(15)), StructError);
    const bad = Buffer.from(b);
    bad.writeUInt32LE(24, 0);
    assert.throws(() => decodeSubflowData(bad), /header size 24/);
  });

  it('decodes MPTCP_FULL_INFO with subflow ids', () => {
    const req = fullInfoRequest(2);
    setFullInfoPointers(req, 0x1000n, 0x2000n);
    assert.equal(req.readBigUInt64LE(24), 0x1000n);
    req.writeUInt32LE(TCP_INFO_SIZE, 0);
    req.writeUInt32LE(SUBFLOW_INFO_SIZE, 8);
    req.writeUInt32LE(2, 16);
    mptcpInfoBuf().copy(req, 40);
    const sf = Buffer.alloc(2 * SUBFLOW_INFO_SIZE);
    sf.writeUInt32LE(1, 0);
    Buffer.concat([sockaddr4('198.18.0.2', 5), sockaddr4('198.18.9.1', 443)]).copy(sf, 8);
    sf.writeUInt32LE(2, SUBFLOW_INFO_SIZE);
    Buffer.concat([sockaddr4('198.18.1.2', 6), sockaddr4('198.18.9.1', 443)]).copy(sf, SUBFLOW_INFO_SIZE + 8);
    const tcp = Buffer.concat([tcpInfoBuf(1, 10), tcpInfoBuf(2, 20)]);
    const full = decodeFullInfo(req, req.length, sf, tcp);
    assert.equal(full.mptcp.token, 0xdeadbeef);
    assert.equal(full.numSubflows, 2);
    assert.deepEqual(full.subflows.map((s) => [s.id, s.local.address, s.tcp?.state, s.tcp?.rttUs]), [
      [1, '198.18.0.2', 1, 10],
      [2, '198.18.1.2', 2, 20],
    ]);
    assert.throws(() => decodeFullInfo(req, req.length, sf.subarray(0, 10), tcp), /arrays shorter/);
  });
});

describe('kernel adapter helpers', () => {
  it('wraps a table body into one atomic replace transaction', () => {
    assert.equal(
      nftReplaceScript('inet', 'mpconvert_cpe', 'chain c {\n}\n'),
      'table inet mpconvert_cpe\ndelete table inet mpconvert_cpe\ntable inet mpconvert_cpe {\nchain c {\n}\n}\n',
    );
    const whole = 'table inet mpconvert_cpe {\n chain c {\n }\n}';
    assert.equal(nftReplaceScript('inet', 'mpconvert_cpe', whole), `table inet mpconvert_cpe\ndelete table inet mpconvert_cpe\n${whole}\n`);
    assert.throws(() => nftReplaceScript('inet', 'mpconvert_cpe', 'table ip mpconvert_cpe {\n}'), /another table/);
  });

  it('parses ip mptcp limits in text and JSON forms, and endpoints', () => {
    assert.deepEqual(parseMptcpLimits('add_addr_accepted 0 subflows 2 \n'), { subflows: 2, addAddrAccepted: 0 });
    assert.deepEqual(parseMptcpLimits('{"add_addr_accepted":3,"subflows":8}'), { subflows: 8, addAddrAccepted: 3 });
    assert.throws(() => parseMptcpLimits('garbage'), (e: PlatformError) => e.code === 'EPROTO');
    assert.deepEqual(parseEndpoints([{ address: '198.18.0.2', id: 5, subflow: true, backup: true, dev: 'up0' }, { address: '2001:db8::2', id: 6, signal: true, port: 9 }]), [
      { address: '198.18.0.2', id: 5, flags: ['subflow', 'backup'], dev: 'up0' },
      { address: '2001:db8::2', id: 6, flags: ['signal'], port: 9 },
    ]);
  });

  it('names errnos the socket way and builds messages naming the call', () => {
    assert.equal(errnoName(98), 'EADDRINUSE');
    assert.equal(errnoName(95), 'EOPNOTSUPP');
    assert.equal(errnoName(11), 'EAGAIN');
    assert.equal(errnoName(99999), 'ERRNO_99999');
    const e = PlatformError.fromErrno('bind(198.18.0.1:443)', 98);
    assert.equal(e.code, 'EADDRINUSE');
    assert.equal(e.errno, 98);
    assert.equal(e.message, 'bind(198.18.0.1:443): EADDRINUSE (address already in use)');
    const n = PlatformError.fromNode('connect(x)', Object.assign(new Error('x'), { code: 'ECONNREFUSED', errno: -111 }));
    assert.deepEqual([n.code, n.errno, n.syscall], ['ECONNREFUSED', 111, 'connect(x)']);
  });

  it('compares tool versions and formats the doctor table', () => {
    assert.equal(versionAtLeast('1.0.6', [0, 9, 6]), true);
    assert.equal(versionAtLeast('0.9.5', [0, 9, 6]), false);
    assert.equal(versionAtLeast('6.1.0', [5, 15]), true);
    const text = formatDoctor([
      { name: 'mptcp', ok: false, detail: 'net.mptcp.enabled = 0', fix: "sysctl -w net.mptcp.enabled=1" },
      { name: 'nft', ok: true, detail: 'nftables 1.0.6' },
    ]);
    assert.equal(text, "FAIL  mptcp  net.mptcp.enabled = 0\n             fix: sysctl -w net.mptcp.enabled=1\n ok   nft    nftables 1.0.6\n1 of 2 checks failed");
  });
});
