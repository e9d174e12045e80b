/**
 * The four systems the bench compares, each deployed into a running lab:
 * - kernel: plain kernel MPTCP between the CPE and concentrator namespaces (iperf3 and the load generator run
 *   under `mptcpize` on both ends): the ceiling, no relay;
 * - mpconvert: `mpconvert cpe` + `mpconvert concentrator`, transparent (the LAN client dials the server);
 * - shadowsocks: shadowsocks-libev, ss-redir on the CPE behind an nft `redirect` + ss-server on the
 *   concentrator, both `--mptcp --fast-open`, aes-128-gcm (OpenMPTCProuter's data plane), transparent;
 * - socat: `mptcpize run socat` on both sides; not transparent: the LAN client dials the CPE's relay port and
 *   each relay forwards to a fixed address (socat gets the easier job).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import type { Lab, LabHost } from './lab.js';
import { Proc, spawnIn } from './proc.js';

export const SYSTEMS = ['kernel', 'mpconvert', 'shadowsocks', 'socat'] as const;
export type SystemName = (typeof SYSTEMS)[number];

export const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
export const CONC_ADDR = '198.18.200.1';
export const CPE_LAN_ADDR = '198.18.0.1';
/** Ports of the measured servers (iperf3, request/response). socat relays exactly these. */
export const IPERF_PORT = 5201;
export const RR_PORT = 7000;
/** Node options of the CPE as the packaged unit runs it (packaging/systemd/mpconvert-cpe.service, NODE_OPTIONS). */
export const CPE_NODE_ARGS = ['--max-semi-space-size=2'] as const;

export interface Endpoint {
  host: LabHost;
  /** Command prefix (e.g. `mptcpize run`) for programs run there. */
  wrap: string[];
}

export interface Deployment {
  readonly system: SystemName;
  /** Where the load (iperf3 client, rr-client) runs. */
  readonly client: Endpoint;
  /** Where the measured servers run, and the address they bind. */
  readonly server: Endpoint & { address: string };
  /** What the client dials for a server listening on `server.address:port`. */
  target(port: number): { address: string; port: number };
  /** Root pids of every relay process (CPE + concentrator); empty for the kernel. */
  readonly relayRoots: number[];
  /** Root pid of the concentrator-side relay. */
  readonly concentratorRoot: number | undefined;
  /** Root pid of the CPE-side relay (for socat, the relay of the setup/memory port). */
  readonly cpeRoot: number | undefined;
  /** The relays are garbage-collected processes (Node): their memory is read again once the collector ran idle. */
  readonly garbageCollected?: boolean;
  /** How the deployment differs from a transparent relay, for the results. */
  readonly note: string;
  stop(): Promise<void>;
}

export interface DeployOptions {
  lab: Lab;
  uplinks: number;
  /** Write a V8 CPU profile of the mpconvert concentrator into this directory. */
  cpuProfileDir?: string | undefined;
  /** The mpconvert concentrator writes a heap snapshot into this directory on SIGUSR2. */
  heapSnapshotDir?: string | undefined;
}

/** Splits a wrapped command line into exec()'s (cmd, args). */
export function cmdline(ep: { wrap: string[] }, cmd: string, args: string[]): [string, string[]] {
  const all = [...ep.wrap, cmd, ...args];
  return [all[0]!, all.slice(1)];
}

export async function deploy(system: SystemName, o: DeployOptions): Promise<Deployment> {
  switch (system) {
    case 'kernel':
      return deployKernel(o);
    case 'mpconvert':
      return deployMpconvert(o);
    case 'shadowsocks':
      return deployShadowsocks(o);
    case 'socat':
      return deploySocat(o);
  }
}

/** Does this system need the lab's plain-MPTCP routing (endpoints + policy routing made by the lab)? */
export function needsLabMptcpRouting(system: SystemName): boolean {
  return system !== 'mpconvert'; // the mpconvert CPE installs its own
}

function deployKernel({ lab }: DeployOptions): Deployment {
  const mptcp = ['mptcpize', 'run'];
  return {
    system: 'kernel',
    client: { host: lab.hosts.cpe, wrap: mptcp },
    server: { host: lab.hosts.concentrator, wrap: mptcp, address: CONC_ADDR },
    target: (port) => ({ address: CONC_ADDR, port }),
    relayRoots: [],
    concentratorRoot: undefined,
    cpeRoot: undefined,
    note: 'no relay: MPTCP end to end between the CPE and concentrator namespaces',
    stop: async () => {},
  };
}

async function deployMpconvert({ lab, uplinks, cpuProfileDir, heapSnapshotDir }: DeployOptions): Promise<Deployment> {
  const dir = mkdtempSync(join(tmpdir(), 'mpc-bench-'));
  const config = join(dir, 'concentrator.yaml');
  // The defaults are for production (500 new connections/s and 4096 connections per CPE): the bench lifts them,
  // and turns the per-connection session log off (no peer logs per connection either).
  writeFileSync(
    config,
    [
      `listen: ["${CONC_ADDR}:5000"]`,
      'allow: ["198.18.0.0/15", "2001:db8::/32"]',
      'limits: { maxConnections: 200000, maxConnectionsPerCpe: 200000, newConnectionsPerSecondPerCpe: 0 }',
      'sessionLog: false',
      'shutdownDrainS: 0',
      'logLevel: warn',
      process.env['MPC_BENCH_CONCENTRATOR_YAML'] ?? '',
      '',
    ].join('\n'),
  );
  const prof = (role: string) => (cpuProfileDir ? ['--cpu-prof', `--cpu-prof-dir=${join(cpuProfileDir, role)}`] : []);
  const heap = heapSnapshotDir ? ['--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${heapSnapshotDir}`] : [];
  const procs: Proc[] = [];
  const stop = async () => {
    for (const p of procs.reverse()) await p.halt(8_000);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const conc = spawnIn(lab.hosts.concentrator, 'mpconvert concentrator', process.execPath, [...prof('concentrator'), ...heap, CLI, 'concentrator', '--config', config]);
    procs.push(conc);
    await conc.waitFor(/^ready/m);
    const uplinkArgs = Array.from({ length: uplinks }, (_, i) => ['--uplink', `up${i + 1}`]).flat();
    const cpe = spawnIn(lab.hosts.cpe, 'mpconvert cpe', process.execPath, [
      ...CPE_NODE_ARGS,
      ...prof('cpe'), CLI, 'cpe', '--lan', 'lan0', ...uplinkArgs, '--concentrator', `${CONC_ADDR}:5000`, '--instance', 'bench', '--log-level', 'warn',
      ...(process.env['MPC_BENCH_CPE_ARGS']?.split(' ').filter(Boolean) ?? []),
    ]);
    procs.push(cpe);
    await cpe.waitFor(/^ready/m);
    const server = lab.hosts.servers[0]!;
    return {
      system: 'mpconvert',
      client: { host: lab.hosts.client, wrap: [] },
      server: { host: server, wrap: [], address: server.v4 },
      target: (port) => ({ address: server.v4, port }),
      relayRoots: [cpe.pid, conc.pid],
      concentratorRoot: conc.pid,
      cpeRoot: cpe.pid,
      garbageCollected: true,
      note: 'transparent: the LAN client dials the server; TPROXY on the CPE, signalling and first bytes in the SYN (zeroRtt, the default; the concentrator clamps SYN windows)',
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

async function deployShadowsocks({ lab }: DeployOptions): Promise<Deployment> {
  const key = randomBytes(12).toString('hex');
  const table = `mpconvert_bench_${randomBytes(3).toString('hex')}`;
  const common = ['-k', key, '-m', 'aes-128-gcm', '--mptcp', '--fast-open', '-n', '20000'];
  const procs: Proc[] = [];
  let nftAdded = false;
  const stop = async () => {
    if (nftAdded) await lab.hosts.cpe.exec('nft', ['delete', 'table', 'ip', table], { allowFailure: true });
    for (const p of procs.reverse()) await p.halt();
  };
  try {
    const ssServer = spawnIn(lab.hosts.concentrator, 'ss-server', 'ss-server', ['-s', CONC_ADDR, '-p', '8388', ...common]);
    procs.push(ssServer);
    await ssServer.waitFor(/listening at/);
    const ssRedir = spawnIn(lab.hosts.cpe, 'ss-redir', 'ss-redir', ['-s', CONC_ADDR, '-p', '8388', '-b', '0.0.0.0', '-l', '1080', ...common]);
    procs.push(ssRedir);
    await ssRedir.waitFor(/listening at/);
    await lab.hosts.cpe.exec('nft', ['-f', '-'], {
      input: `table ip ${table} {\n  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    iifname "lan0" ip daddr 198.19.0.0/16 meta l4proto tcp redirect to :1080\n  }\n}\n`,
    });
    nftAdded = true;
    const server = lab.hosts.servers[0]!;
    return {
      system: 'shadowsocks',
      client: { host: lab.hosts.client, wrap: [] },
      server: { host: server, wrap: [], address: server.v4 },
      target: (port) => ({ address: server.v4, port }),
      relayRoots: [ssRedir.pid, ssServer.pid],
      concentratorRoot: ssServer.pid,
      cpeRoot: ssRedir.pid,
      note: 'transparent: the LAN client dials the server; nft redirect to ss-redir on the CPE',
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

async function listening(host: LabHost, address: string, port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await host.exec('ss', ['-Hltn', `sport = :${port}`], { allowFailure: true });
    if (r.stdout.includes(`${address}:${port}`)) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${address}:${port} in ${host.name}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function deploySocat({ lab }: DeployOptions): Promise<Deployment> {
  const server = lab.hosts.servers[0]!;
  const procs: Proc[] = [];
  const stop = async () => {
    for (const p of procs.reverse()) await p.halt();
  };
  const socat = ['mptcpize', 'run', 'socat'];
  try {
    for (const port of [IPERF_PORT, RR_PORT]) {
      const conc = spawnIn(lab.hosts.concentrator, `socat :${port}`, socat[0]!, [
        ...socat.slice(1), `TCP4-LISTEN:${port},bind=${CONC_ADDR},fork,reuseaddr,backlog=4096`, `TCP4:${server.v4}:${port}`,
      ]);
      procs.push(conc);
      const cpe = spawnIn(lab.hosts.cpe, `socat :${port}`, socat[0]!, [
        ...socat.slice(1), `TCP4-LISTEN:${port},bind=${CPE_LAN_ADDR},fork,reuseaddr,backlog=4096`, `TCP4:${CONC_ADDR}:${port}`,
      ]);
      procs.push(cpe);
      await listening(lab.hosts.concentrator, CONC_ADDR, port);
      await listening(lab.hosts.cpe, CPE_LAN_ADDR, port);
    }
    // procs: [conc iperf, cpe iperf, conc rr, cpe rr]
    return {
      system: 'socat',
      client: { host: lab.hosts.client, wrap: [] },
      server: { host: server, wrap: [], address: server.v4 },
      target: (port) => ({ address: CPE_LAN_ADDR, port }),
      relayRoots: procs.map((p) => p.pid),
      concentratorRoot: procs[2]!.pid,
      cpeRoot: procs[3]!.pid,
      note: 'not transparent: the LAN client dials the CPE relay port, each relay forwards to a fixed address (easier job); one process per connection (fork)',
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
