/**
 * The UDP figure of the bench (issue 11): what multi-link UDP gets today against mpconvert's UDP channel, on
 * two 50 Mbit/s uplinks. Each system carries, at once, a bulk iperf3 -u flow at 150 % of the uplinks' sum
 * (its received rate is the goodput) and a 20 pps probe to a UDP echo server (its round-trip times are the
 * latency a small flow sees under that load):
 * - mpconvert: `mpconvert cpe --transports tcp,udp` + the concentrator: transparent, one MPTCP channel;
 * - openvpn: an OpenVPN tunnel in TCP mode, both ends under `mptcpize run` (OpenMPTCProuter users' "UDP in a
 *   VPN over MPTCP"), static key, the server's address routed into the tunnel on the CPE, NAT on the
 *   concentrator;
 * - shadowsocks: shadowsocks-libev's UDP relay (`ss-tunnel -u` on the CPE, `ss-server -u`), single path; not
 *   transparent: the LAN client sends to the CPE's tunnel ports (an easier job);
 * - direct: no relay, the CPE forwards the UDP out of one uplink: what one uplink alone gives.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import type { Lab, LabHost } from './lab.js';
import { Proc, spawnIn } from './proc.js';
import { CLI, CONC_ADDR, CPE_LAN_ADDR, IPERF_PORT } from './systems.js';

export const UDP_SYSTEMS = ['mpconvert', 'openvpn', 'shadowsocks', 'direct'] as const;
export type UdpSystemName = (typeof UDP_SYSTEMS)[number];

export const UDP_NAMES: Record<UdpSystemName, string> = {
  mpconvert: 'mpconvert UDP channel',
  openvpn: 'OpenVPN (TCP) over mptcpize',
  shadowsocks: 'shadowsocks-libev UDP relay',
  direct: 'one uplink alone',
};

const TOOLS = fileURLToPath(new URL('../../test/support/tools/', import.meta.url));
export const ECHO_PORT = 7007;
const OVPN = { dev: 'mpcbovpn0', server: '198.19.251.1', client: '198.19.251.2', port: 1194 };

export interface UdpDeployment {
  readonly system: UdpSystemName;
  readonly client: LabHost;
  readonly server: LabHost;
  /** What the LAN client sends to, for a server port. */
  target(port: number): { address: string; port: number };
  readonly note: string;
  stop(): Promise<void>;
}

export interface UdpRun {
  /** iperf3 -u received rate (sent x (1 - loss)), Mbit/s. */
  goodputMbps: number;
  lossPercent: number;
  probeP50Ms: number;
  probeP95Ms: number;
  probeAnswered: number;
}

/** Does this system need the lab's plain-MPTCP routing (mptcpize)? */
export function udpNeedsLabMptcpRouting(s: UdpSystemName): boolean {
  return s !== 'mpconvert';
}

export async function deployUdp(system: UdpSystemName, lab: Lab, uplinks: number): Promise<UdpDeployment> {
  const server = lab.hosts.servers[0]!;
  const direct = (s: UdpSystemName, note: string, stop: () => Promise<void>): UdpDeployment => ({
    system: s, client: lab.hosts.client, server, target: (port) => ({ address: server.v4, port }), note, stop,
  });
  switch (system) {
    case 'direct':
      return direct('direct', 'no relay: the CPE routes the LAN UDP out of its default uplink', async () => {});
    case 'mpconvert':
      return deployMpconvertUdp(lab, uplinks, direct);
    case 'openvpn':
      return deployOpenvpn(lab, direct);
    case 'shadowsocks':
      return deployShadowsocksUdp(lab);
  }
}

type Direct = (s: UdpSystemName, note: string, stop: () => Promise<void>) => UdpDeployment;

async function deployMpconvertUdp(lab: Lab, uplinks: number, direct: Direct): Promise<UdpDeployment> {
  const procs: Proc[] = [];
  const stop = async () => {
    for (const p of procs.reverse()) await p.halt(8_000);
  };
  try {
    const conc = spawnIn(lab.hosts.concentrator, 'mpconvert concentrator', process.execPath, [
      CLI, 'concentrator', '--listen', `${CONC_ADDR}:5000`, '--allow', '198.18.0.0/15', '--log-level', 'warn',
    ]);
    procs.push(conc);
    await conc.waitFor(/^ready/m);
    const uplinkArgs = Array.from({ length: uplinks }, (_, i) => ['--uplink', `up${i + 1}`]).flat();
    const cpe = spawnIn(lab.hosts.cpe, 'mpconvert cpe', process.execPath, [
      CLI, 'cpe', '--lan', 'lan0', ...uplinkArgs, '--concentrator', `${CONC_ADDR}:5000`, '--instance', 'benchudp', '--transports', 'tcp,udp', '--log-level', 'info',
    ]);
    procs.push(cpe);
    await cpe.waitFor(/UDP channel up/, 30_000);
    return direct('mpconvert', 'transparent: TPROXY on the CPE, one MPTCP channel (UDP channel frames) to the concentrator, a mapping per LAN flow there (defaults: sendBuffer 128 KiB, queueMs 50)', stop);
  } catch (err) {
    await stop();
    throw err;
  }
}

async function deployOpenvpn(lab: Lab, direct: Direct): Promise<UdpDeployment> {
  const dir = mkdtempSync(join(tmpdir(), 'mpc-bench-ovpn-'));
  const key = join(dir, 'static.key');
  const table = `mpconvert_bench_ovpn_${randomBytes(3).toString('hex')}`;
  const server = lab.hosts.servers[0]!;
  const procs: Proc[] = [];
  let nft = false;
  const stop = async () => {
    if (nft) await lab.hosts.concentrator.exec('nft', ['delete', 'table', 'ip', table], { allowFailure: true });
    for (const p of procs.reverse()) await p.halt();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await lab.hosts.cpe.exec('openvpn', ['--genkey', 'secret', key]);
    // Static key mode (deprecated by OpenVPN 2.6, still the simplest point-to-point tunnel; the crypto cost is
    // the same as with TLS once the tunnel is up).
    const common = ['--dev', OVPN.dev, '--dev-type', 'tun', '--cipher', 'AES-128-CBC', '--auth', 'SHA256', '--tcp-nodelay', '--verb', '3'];
    const s = spawnIn(lab.hosts.concentrator, 'openvpn server', 'mptcpize', [
      'run', 'openvpn', ...common, '--proto', 'tcp-server', '--local', CONC_ADDR, '--lport', String(OVPN.port), '--secret', key, '0', '--ifconfig', OVPN.server, OVPN.client,
    ]);
    procs.push(s);
    await s.waitFor(/Listening for incoming TCP connection|TCPv4_SERVER link local/, 15_000);
    const c = spawnIn(lab.hosts.cpe, 'openvpn client', 'mptcpize', [
      'run', 'openvpn', ...common, '--proto', 'tcp-client', '--remote', CONC_ADDR, String(OVPN.port), '--secret', key, '1', '--ifconfig', OVPN.client, OVPN.server,
    ]);
    procs.push(c);
    await c.waitFor(/Initialization Sequence Completed/, 20_000);
    await s.waitFor(/Initialization Sequence Completed/, 20_000);
    await lab.hosts.cpe.exec('ip', ['route', 'replace', `${server.v4}/32`, 'via', OVPN.server, 'dev', OVPN.dev]);
    await lab.hosts.concentrator.exec('nft', ['-f', '-'], {
      input: `table ip ${table} {\n  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n    iifname "${OVPN.dev}" masquerade\n  }\n}\n`,
    });
    nft = true;
    return direct('openvpn', `OpenVPN ${'2.6'} tun in TCP mode (static key, AES-128-CBC + SHA256), both ends under mptcpize run; the server's address routed into the tunnel on the CPE, masqueraded on the concentrator`, stop);
  } catch (err) {
    await stop();
    throw err;
  }
}

async function deployShadowsocksUdp(lab: Lab): Promise<UdpDeployment> {
  const key = randomBytes(12).toString('hex');
  const server = lab.hosts.servers[0]!;
  const common = ['-k', key, '-m', 'aes-128-gcm', '-u'];
  const procs: Proc[] = [];
  const stop = async () => {
    for (const p of procs.reverse()) await p.halt();
  };
  try {
    const ss = spawnIn(lab.hosts.concentrator, 'ss-server', 'ss-server', ['-s', CONC_ADDR, '-p', '8389', ...common]);
    procs.push(ss);
    await ss.waitFor(/listening at/);
    // One tunnel per measured port (TCP and UDP: iperf3 needs its control connection too).
    for (const port of [IPERF_PORT, ECHO_PORT]) {
      const t = spawnIn(lab.hosts.cpe, `ss-tunnel :${port}`, 'ss-tunnel', ['-s', CONC_ADDR, '-p', '8389', '-b', CPE_LAN_ADDR, '-l', String(port), '-L', `${server.v4}:${port}`, ...common]);
      procs.push(t);
      await t.waitFor(/listening at/);
    }
    return {
      system: 'shadowsocks',
      client: lab.hosts.client,
      server,
      target: (port) => ({ address: CPE_LAN_ADDR, port }),
      note: 'ss-tunnel -u on the CPE (one per port; not transparent: the LAN client sends to the CPE), ss-server -u on the concentrator, aes-128-gcm, single path',
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** One run: iperf3 -u at `loadMbps` and a 20 pps probe at the same time, through deployment `d`. */
export async function udpRun(d: UdpDeployment, seconds: number, loadMbps: number): Promise<UdpRun> {
  const srv = spawnIn(d.server, 'iperf3 -s', 'iperf3', ['-s', '-1', '--forceflush', '-B', d.server.v4, '-p', String(IPERF_PORT)]);
  const echo = spawnIn(d.server, 'udp-echo', process.execPath, [`${TOOLS}udp-echo.js`, JSON.stringify({ host: d.server.v4, port: ECHO_PORT })]);
  try {
    await srv.waitFor(/Server listening/);
    await echo.waitFor(/ready/);
    const it = d.target(IPERF_PORT);
    const et = d.target(ECHO_PORT);
    const load = d.client.exec('iperf3', ['-c', it.address, '-p', String(it.port), '-u', '-b', `${loadMbps}M`, '-l', '1200', '-t', String(seconds), '-J'], { timeoutMs: (seconds + 30) * 1000 });
    // The probe starts after a second of load and ends a second before it.
    await new Promise((r) => setTimeout(r, 1_000));
    const probe = spawnIn(d.client, 'udp-client', process.execPath, [`${TOOLS}udp-client.js`, JSON.stringify({ mode: 'probe', host: et.address, port: et.port, pps: 20, durationMs: (seconds - 2) * 1000 })]);
    await probe.exited;
    const p = probe.json<{ sent: number; received: number; p50: number; p95: number }>().pop();
    const j = JSON.parse((await load).stdout) as { end: { sum: { bits_per_second: number; lost_percent: number } } };
    if (!p) throw new Error(`the probe printed nothing: ${probe.stderr.slice(-300)}`);
    return {
      goodputMbps: (j.end.sum.bits_per_second * (100 - j.end.sum.lost_percent)) / 100 / 1e6,
      lossPercent: j.end.sum.lost_percent,
      probeP50Ms: p.p50,
      probeP95Ms: p.p95,
      probeAnswered: p.sent > 0 ? p.received / p.sent : 0,
    };
  } finally {
    await srv.halt();
    await echo.halt();
  }
}
