/**
 * The lab's delay line (this kernel has no sch_netem): a program run inside a namespace between two
 * interfaces, `a` and `b`, that moves every Ethernet frame from one to the other after `delayMs`, in both
 * directions, in order. Frames wait in a FIFO per direction, bounded (`maxQueued` frames; beyond it the
 * newest is dropped and counted, as a full router queue would). Rate limiting stays with tbf at the ends:
 * the delay line only delays. Frames keep their checksum and GSO offload state (PACKET_VNET_HDR), so a
 * super-frame is moved as one and the kernel segments it on the far side.
 *
 * Usage: node delay-line.js '{"a":"c","b":"a","delayMs":20}'. Prints `ready` on stdout, and a JSON line of
 * counters on stderr on SIGTERM/SIGINT before it exits.
 */
import { VNET_HDR_LEN, closeFd, openPacketSocket, pollReadable, recvFrame, sendFrame } from '../platform/linux/ffi.js';

interface Args {
  a: string;
  b: string;
  delayMs: number;
  maxQueued?: number;
}

interface Direction {
  from: number;
  to: number;
  /** FIFO of frames (each with its virtio_net_hdr) and their due times (ns, monotonic). */
  frames: Buffer[];
  due: number[];
  head: number;
  moved: number;
  dropped: number;
}

function direction(from: number, to: number): Direction {
  return { from, to, frames: [], due: [], head: 0, moved: 0, dropped: 0 };
}

export function runDelayLine(args: Args): void {
  const max = args.maxQueued ?? 16_384;
  const delayNs = args.delayMs * 1e6;
  const fa = openPacketSocket(args.a);
  const fb = openPacketSocket(args.b);
  const dirs = [direction(fa, fb), direction(fb, fa)];
  const now = () => Number(process.hrtime.bigint());
  // Largest frame: a 64 KiB GSO super-frame and its header.
  const scratch = Buffer.allocUnsafe(65_536 + VNET_HDR_LEN + 64);
  let stopping = false;
  const stop = () => {
    stopping = true;
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdout.write('ready\n');

  const queued = (d: Direction) => d.frames.length - d.head;
  const receive = (d: Direction) => {
    // Drain what is waiting, up to a batch, so one direction cannot starve the other.
    for (let i = 0; i < 256; i++) {
      const n = recvFrame(d.from, scratch);
      if (n === 0) return;
      if (queued(d) >= max) {
        d.dropped++;
        continue;
      }
      d.frames.push(Buffer.from(scratch.subarray(0, n)));
      d.due.push(now() + delayNs);
    }
  };
  const release = (d: Direction, t: number) => {
    while (d.head < d.frames.length && d.due[d.head]! <= t) {
      const f = d.frames[d.head]!;
      if (sendFrame(d.to, f, f.length)) d.moved++;
      else d.dropped++;
      d.head++;
    }
    // Compact now and then instead of shifting per frame.
    if (d.head > 4096 && d.head * 2 > d.frames.length) {
      d.frames.splice(0, d.head);
      d.due.splice(0, d.head);
      d.head = 0;
    }
  };

  // A blocking loop: this process does nothing else. Signals are seen between waits (ppoll returns EINTR).
  const loop = () => {
    // Back to the event loop every 20 ms (signals are handled there), at once when idle.
    const until = now() + 20e6;
    while (!stopping) {
      if (now() > until) {
        setImmediate(loop);
        return;
      }
      const t = now();
      for (const d of dirs) release(d, t);
      let next: number | undefined;
      for (const d of dirs) if (queued(d) > 0) next = Math.min(next ?? Infinity, d.due[d.head]! - t);
      // At most 50 ms per wait, so a signal is acted on promptly.
      const ready = pollReadable([fa, fb], Math.min(next ?? 50e6, 50e6));
      if (ready[0]) receive(dirs[0]!);
      if (ready[1]) receive(dirs[1]!);
      if (!ready[0] && !ready[1] && next === undefined) {
        // Idle: let the event loop run (signal handlers) before waiting again.
        setImmediate(loop);
        return;
      }
    }
    closeFd(fa);
    closeFd(fb);
    process.stderr.write(`${JSON.stringify({ moved: dirs.map((d) => d.moved), dropped: dirs.map((d) => d.dropped), queued: dirs.map(queued) })}\n`);
    process.exit(0);
  };
  loop();
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split('/').pop() ?? '')) {
  runDelayLine(JSON.parse(process.argv[2] ?? '{}') as Args);
}
