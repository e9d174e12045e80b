import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseServerIntervals, receiverRate } from '../../../bench/lib/measure.js';

// iperf3 3.12 server text as --get-server-output returns it (-i 0.25, -O 1): omitted intervals, then the
// measured ones from 0, a short tail, and the summary lines.
const TEXT = `Accepted connection from 198.18.0.2, port 34710
[  5] local 198.18.200.1 port 5201 connected to 198.18.0.2 port 34712
[ ID] Interval           Transfer     Bitrate
[  5]   0.00-0.25   sec  2.69 MBytes  90.1 Mbits/sec                  (omitted)
[  5]   0.25-0.50   sec  2.81 MBytes  94.2 Mbits/sec                  (omitted)
[  5]   0.00-0.25   sec  2.75 MBytes  92.0 Mbits/sec
[  5]   0.25-0.50   sec  2.81 MBytes  94.0 Mbits/sec
[  5]   0.50-0.75   sec  2.75 MBytes  93.0 Mbits/sec
[  5]   0.75-1.00   sec  2.81 MBytes  95.0 Mbits/sec
[  5]   1.00-1.02   sec   256 KBytes   105 Mbits/sec
- - - - - - - - - - - - - - - - - - - - - - - - -
[ ID] Interval           Transfer     Bitrate
[  5]   0.00-1.02   sec  11.4 MBytes  93.6 Mbits/sec                  receiver
`;

test('parseServerIntervals keeps the measured intervals, not the omitted ones nor the summary', () => {
  const iv = parseServerIntervals(TEXT);
  assert.deepEqual(
    iv.map((x) => [x.start, x.end, x.bits_per_second]),
    [
      [0, 0.25, 92.0e6],
      [0.25, 0.5, 94.0e6],
      [0.5, 0.75, 93.0e6],
      [0.75, 1, 95.0e6],
      [1, 1.02, 105e6],
    ],
  );
});

test('receiverRate averages the full intervals, weighted by length, without the short tail', () => {
  assert.equal(receiverRate(parseServerIntervals(TEXT)), 93.5);
  assert.equal(receiverRate([{ start: 0, end: 0.5, bits_per_second: 80e6 }, { start: 0.5, end: 1.5, bits_per_second: 20e6 }], 0.5), 40);
});

test('receiverRate gives up (null) with fewer than two full intervals or only omitted ones', () => {
  assert.equal(receiverRate(undefined), null);
  assert.equal(receiverRate(parseServerIntervals('[  5]   0.00-0.25   sec  2.69 MBytes  90.1 Mbits/sec')), null);
  assert.equal(receiverRate([{ start: 0, end: 0.25, bits_per_second: 1, omitted: true }, { start: 0.25, end: 0.5, bits_per_second: 1, omitted: true }]), null);
});
