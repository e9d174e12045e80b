/**
 * A loopback stand-in for the platform layer, so the roles' logic (gates, signalling, confirmation, relay,
 * fallback) is unit-tested without root: plain TCP on 127.0.0.1 plays both MPTCP and TCP, and the kernel
 * configuration is recorded instead of applied.
 */
import net from 'node:net';
import { once } from 'node:events';
import type { DialSpec, KernelConfig, ListenSpec, Sockets } from '../../src/platform/types.js';

export interface FakeOptions {
  /** Answer isMptcp() with this (per remote port when a function). */
  mptcp?: boolean | ((socket: net.Socket) => boolean);
  /** Rewrite dial targets (e.g. map a lab address to a loopback port). */
  route?: (spec: DialSpec) => { host: string; port: number } | Error;
  /** Whether a TFO dial's SYN data counts as acknowledged in the SYN/ACK (tcp_info SYN_DATA); default yes. */
  synDataAccepted?: (spec: DialSpec, nth: number) => boolean;
}

export function fakeSockets(opts: FakeOptions = {}): Sockets & { dials: DialSpec[]; listens: ListenSpec[] } {
  const dials: DialSpec[] = [];
  const listens: ListenSpec[] = [];
  const marks = new WeakMap<net.Socket, number>();
  const toses = new WeakMap<net.Socket, number>();
  const synData = new WeakMap<net.Socket, boolean>();
  const impl = {
    dials,
    listens,
    /**
     * A transparent listener only ever receives what TPROXY hands it, which no fake can: it is recorded and
     * served on an ephemeral 127.0.0.1 port, so a test never depends on a fixed port being free or on the
     * host having ::1.
     */
    async listen(spec: ListenSpec): Promise<net.Server> {
      listens.push(spec);
      const server = net.createServer();
      if (spec.transparent) server.listen(0, '127.0.0.1');
      else server.listen(spec.port, spec.host);
      await once(server, 'listening');
      return server;
    },
    async dial(spec: DialSpec): Promise<net.Socket> {
      dials.push(spec);
      const target = opts.route ? opts.route(spec) : { host: spec.host, port: spec.port };
      if (target instanceof Error) throw target;
      const sock = net.connect({ host: target.host, port: target.port, allowHalfOpen: true });
      await new Promise<void>((resolve, reject) => {
        sock.once('connect', () => resolve());
        sock.once('error', reject);
        spec.signal?.addEventListener('abort', () => reject(Object.assign(new Error('aborted'), { code: 'ABORT_ERR' })));
      });
      if (spec.data && spec.data.length > 0) sock.write(spec.data);
      if (spec.tos !== undefined) toses.set(sock, spec.tos);
      const tfo = spec.fastOpen !== undefined && spec.fastOpen !== 'off' && (spec.data?.length ?? 0) > 0;
      synData.set(sock, tfo && (opts.synDataAccepted?.(spec, dials.length - 1) ?? true));
      return sock;
    },
    isMptcp(socket: net.Socket): boolean {
      return typeof opts.mptcp === 'function' ? opts.mptcp(socket) : (opts.mptcp ?? true);
    },
    mptcpInfo: () => null,
    // Only what the roles read: tcpi_options' SYN_DATA bit (32).
    tcpInfo: (s: net.Socket) => ({ options: synData.get(s) ? 32 : 0 }),
    subflows: () => [],
    setTos: (s: net.Socket, tos: number) => void toses.set(s, tos),
    getTos: (s: net.Socket) => toses.get(s) ?? 0,
    setMark: (s: net.Socket, mark: number) => void marks.set(s, mark),
    getMark: (s: net.Socket) => marks.get(s) ?? 0,
    setLinger: () => {},
    takeError: () => null,
    setNotSentLowat: () => {},
    setSendBuffer: () => {},
  };
  return impl as unknown as Sockets & { dials: DialSpec[]; listens: ListenSpec[] };
}

export function fakeKernel(): KernelConfig & { sysctls: Map<string, string>; calls: string[] } {
  const sysctls = new Map<string, string>([
    ['net.ipv4.tcp_fastopen', '1'],
    ['net.ipv4.tcp_reflect_tos', '0'],
  ]);
  const calls: string[] = [];
  const record = (name: string) => async (...args: unknown[]) => {
    calls.push(`${name} ${JSON.stringify(args)}`);
    return [] as unknown;
  };
  const kernel = {
    sysctls,
    calls,
    sysctl: {
      get: async (name: string) => sysctls.get(name) ?? '0',
      set: async (name: string, value: string) => {
        calls.push(`sysctl ${name}=${value}`);
        sysctls.set(name, value);
      },
    },
    mptcp: new Proxy({}, { get: (_t, p) => record(`mptcp.${String(p)}`) }),
    nft: new Proxy({}, { get: (_t, p) => record(`nft.${String(p)}`) }),
    routes: new Proxy({}, { get: (_t, p) => record(`routes.${String(p)}`) }),
  };
  return kernel as unknown as KernelConfig & { sysctls: Map<string, string>; calls: string[] };
}
