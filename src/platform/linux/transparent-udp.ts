/**
 * Transparent UDP interception on Linux: the owner of the thread in ./transparent-udp-worker.ts (its header
 * explains the sockets). Sends are batched per event-loop turn into one message and one eventfd signal.
 */
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import type { InterceptedDatagram, TransparentUdp, TransparentUdpFactory, TransparentUdpSpec, UdpEndpoint } from '../types.js';
import { closeFd, eventfd, eventfdSignal } from './ffi.js';
import type { DatagramMeta, TransparentUdpCommand, TransparentUdpReport, TransparentUdpWorkerData } from './transparent-udp-worker.js';

const SEND_BATCH_BYTES = 256 * 1024;

class LinuxTransparentUdp implements TransparentUdp {
  readonly #worker: Worker;
  readonly #port: MessagePort;
  #eventFd: number;
  #onDatagrams: (batch: InterceptedDatagram[], at: number) => void = () => {};
  #onDropped: (reason: string, n: number) => void = () => {};
  #out: Buffer[] = [];
  #outBytes = 0;
  #outMeta: DatagramMeta = [];
  #scheduled = false;
  #closed: Promise<void> | undefined;
  readonly #exited: Promise<void>;

  constructor(worker: Worker, port: MessagePort, eventFd: number) {
    this.#worker = worker;
    this.#port = port;
    this.#eventFd = eventFd;
    this.#exited = new Promise((resolve) => worker.once('exit', () => resolve()));
    port.on('message', (m: TransparentUdpReport) => {
      if (m.op === 'datagrams') {
        const buf = Buffer.from(m.buf);
        const batch: InterceptedDatagram[] = [];
        const md = m.meta;
        for (let i = 0; i + 5 < md.length; i += 6) {
          batch.push({
            source: { address: md[i] as string, port: md[i + 1] as number },
            destination: { address: md[i + 2] as string, port: md[i + 3] as number },
            payload: buf.subarray(md[i + 4] as number, (md[i + 4] as number) + (md[i + 5] as number)),
          });
        }
        this.#onDatagrams(batch, m.at);
      } else if (m.op === 'dropped') this.#onDropped(m.reason, m.n);
    });
  }

  onDatagrams(handler: (batch: InterceptedDatagram[], at: number) => void): void {
    this.#onDatagrams = handler;
  }

  onDropped(handler: (reason: string, n: number) => void): void {
    this.#onDropped = handler;
  }

  send(from: UdpEndpoint, to: UdpEndpoint, payload: Buffer): void {
    if (this.#closed) return;
    if (this.#outBytes + payload.length > SEND_BATCH_BYTES) this.#flush();
    this.#outMeta.push(from.address, from.port, to.address, to.port, this.#outBytes, payload.length);
    this.#out.push(payload);
    this.#outBytes += payload.length;
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(() => this.#flush());
    }
  }

  #flush(): void {
    this.#scheduled = false;
    if (this.#outMeta.length === 0 || this.#eventFd < 0) return;
    const buf = Buffer.concat(this.#out, this.#outBytes);
    // Buffer.concat may return a slice of a shared pool: copy to a buffer of its own to transfer it.
    const ab = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length) as ArrayBuffer;
    this.#send({ op: 'send', buf: ab, meta: this.#outMeta }, [ab]);
    this.#out = [];
    this.#outBytes = 0;
    this.#outMeta = [];
  }

  #send(c: TransparentUdpCommand, transfer: ArrayBuffer[] = []): void {
    if (this.#eventFd < 0) return;
    this.#port.postMessage(c, transfer);
    eventfdSignal(this.#eventFd);
  }

  close(): Promise<void> {
    this.#closed ??= (async () => {
      this.#flush();
      this.#send({ op: 'exit' });
      const t = setTimeout(() => void this.#worker.terminate(), 3_000);
      await this.#exited;
      clearTimeout(t);
      this.#port.close();
      if (this.#eventFd >= 0) closeFd(this.#eventFd);
      this.#eventFd = -1;
    })();
    return this.#closed;
  }
}

export const linuxTransparentUdp: TransparentUdpFactory = {
  async open(spec: TransparentUdpSpec): Promise<TransparentUdp> {
    const fd = eventfd();
    const { port1, port2 } = new MessageChannel();
    const data: TransparentUdpWorkerData = {
      port: port2,
      eventFd: fd,
      listen: spec.families.map((family) => ({ family, address: family === 4 ? '127.0.0.1' : '::1', port: spec.port })),
      bufferBytes: spec.bufferBytes ?? 512 << 10,
      replyIdleMs: spec.replyIdleMs,
      maxReplySockets: spec.maxReplySockets,
    };
    const worker = new Worker(new URL('./transparent-udp-worker.js', import.meta.url), { workerData: data, transferList: [port2] });
    worker.unref();
    const first = await new Promise<TransparentUdpReport | Error>((resolve) => {
      port1.once('message', (m: TransparentUdpReport) => resolve(m));
      worker.once('error', (err) => resolve(err));
      worker.once('exit', (code) => resolve(new Error(`the transparent UDP thread exited (code ${code})`)));
    });
    if (first instanceof Error || first.op !== 'ready') {
      port1.close();
      await worker.terminate().catch(() => 0);
      closeFd(fd);
      const why = first instanceof Error ? first.message : first.op === 'fatal' ? first.message : first.op;
      throw new Error(`Cannot open the transparent UDP sockets on port ${spec.port}: ${why}`);
    }
    port1.unref();
    return new LinuxTransparentUdp(worker, port1, fd);
  },
};
