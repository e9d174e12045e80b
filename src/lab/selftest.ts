/**
 * The lab self-test: before any proxy exists, plain kernel MPTCP between the CPE and the concentrator over two
 * shaped uplinks must reach at least `threshold` x the rate of one uplink. Proves the namespaces, the shaping,
 * the policy routing and kernel MPTCP work. Measured with iperf3 (-J), MPTCP through `mptcpize run` on both
 * ends; the kernel's MPTcpExt counters in the concentrator namespace show the joins, the uplinks' byte
 * counters show that both carried data.
 */
import { MpconvertError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { LAB, uplinkAddressing } from './addressing.js';
import { Lab, type LabHost } from './index.js';

export interface SelfTestOptions {
  /** Rate of each of the two uplinks (default 50mbit). */
  rate?: string;
  /** Seconds per measurement (default 6). */
  seconds?: number;
  /** Minimum MPTCP / single-uplink ratio (default 1.7). */
  threshold?: number;
  prefix?: string;
  logger?: Logger;
  /** Progress lines for humans (the README demo); default: none. */
  print?: (line: string) => void;
}

export interface SelfTestResult {
  prefix: string;
  rate: string;
  seconds: number;
  /** Plain TCP from the CPE over uplink 1 alone, Mbit/s (receiver side). */
  singleMbps: number;
  /** Kernel MPTCP from the CPE over both uplinks, Mbit/s (receiver side). */
  mptcpMbps: number;
  ratio: number;
  threshold: number;
  /** MPTcpExt counter deltas in the concentrator namespace during the MPTCP run. */
  mpCapableSynRx: number;
  mpJoinSynRx: number;
  mpJoinAckRx: number;
  /** Bytes sent by the CPE on each uplink during the MPTCP run. */
  uplinkTxBytes: number[];
  passed: boolean;
  /** Why it failed ('' when passed). */
  reason: string;
}

const PORT = 5201;

/** Kernel MIB counters of a namespace (/proc/net/netstat + /proc/net/snmp, "Prefix" + "Name"). */
export async function netstat(host: LabHost): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const file of ['/proc/net/netstat', '/proc/net/snmp']) {
    const lines = (await host.exec('cat', [file])).stdout.split('\n');
    for (let i = 0; i + 1 < lines.length; i += 2) {
      const names = lines[i]!.trim().split(/\s+/);
      const values = lines[i + 1]!.trim().split(/\s+/);
      const prefix = names[0]?.replace(/:$/, '') ?? '';
      for (let j = 1; j < names.length; j++) out.set(`${prefix}${names[j]}`, Number(values[j] ?? 0));
    }
  }
  return out;
}

/** Polls until a TCP listener on address:port exists in the namespace (never a fixed sleep). */
export async function waitListening(host: LabHost, address: string, port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const want = address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
  for (;;) {
    const r = await host.exec('ss', ['-Hltn'], { allowFailure: true });
    if (r.stdout.split('\n').some((l) => l.split(/\s+/).includes(want))) return;
    if (Date.now() > deadline) throw new MpconvertError('MPC_ERR_LAB_PROBE', `nothing listens on ${want} in ${host.name} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function iperf(lab: Lab, seconds: number, mptcp: boolean, bind?: string): Promise<number> {
  const wrap = mptcp ? ['run', 'iperf3'] : [];
  const tool = mptcp ? 'mptcpize' : 'iperf3';
  const conc = lab.hosts.concentrator;
  const server = conc.spawn(tool, [...wrap, '-s', '-1', '-B', LAB.concentrator.v4, '-p', String(PORT)]);
  let serverErr = '';
  server.stderr?.on('data', (d: Buffer) => (serverErr += d.toString()));
  const exited = new Promise<void>((r) => server.once('exit', () => r()));
  try {
    await waitListening(conc, LAB.concentrator.v4, PORT);
    const args = [...wrap, '-c', LAB.concentrator.v4, '-p', String(PORT), '-t', String(seconds), '-J', ...(bind !== undefined ? ['-B', bind] : [])];
    const r = await lab.hosts.cpe.exec(tool, args, { timeoutMs: seconds * 1000 + 30_000, allowFailure: true });
    let j: { end?: { sum_received?: { bits_per_second?: number } }; error?: string };
    try {
      j = JSON.parse(r.stdout) as typeof j;
    } catch {
      throw new MpconvertError('MPC_ERR_LAB_PROBE', `iperf3 gave no JSON (exit ${r.code}): ${r.stderr.trim()} ${serverErr.trim()}`);
    }
    const bps = j.end?.sum_received?.bits_per_second;
    if (j.error !== undefined || bps === undefined) throw new MpconvertError('MPC_ERR_LAB_PROBE', `iperf3 failed: ${j.error ?? 'no sum_received'} ${serverErr.trim()}`);
    return bps / 1e6;
  } finally {
    if (server.exitCode === null && server.signalCode === null) server.kill('SIGKILL');
    await exited;
  }
}

async function txBytes(lab: Lab): Promise<number[]> {
  const s = await lab.status();
  return s.uplinks.map((u) => u.txBytes);
}

export async function runSelfTest(opts: SelfTestOptions = {}): Promise<SelfTestResult> {
  const rate = opts.rate ?? '50mbit';
  const seconds = opts.seconds ?? 6;
  const threshold = opts.threshold ?? 1.7;
  const print = opts.print ?? (() => {});
  const logger = opts.logger ?? silentLogger();
  print(`Building a lab with 2 uplinks of ${rate} and plain kernel MPTCP routing on the CPE...`);
  const lab = await Lab.up({ uplinks: [{ rate }, { rate }], servers: 1, mptcpRouting: true, ...(opts.prefix !== undefined ? { prefix: opts.prefix } : {}) }, { logger });
  try {
    print(`Lab ${lab.prefix} is up. One uplink alone: plain TCP from the CPE bound to ${uplinkAddressing(1).cpeV4} (${seconds} s)...`);
    const singleMbps = await iperf(lab, seconds, false, uplinkAddressing(1).cpeV4);
    print(`  ${singleMbps.toFixed(1)} Mbit/s. Kernel MPTCP over both uplinks (mptcpize run iperf3, ${seconds} s)...`);
    const before = await netstat(lab.hosts.concentrator);
    const tx0 = await txBytes(lab);
    const mptcpMbps = await iperf(lab, seconds, true);
    const after = await netstat(lab.hosts.concentrator);
    const tx1 = await txBytes(lab);
    const delta = (k: string) => (after.get(k) ?? 0) - (before.get(k) ?? 0);
    const ratio = mptcpMbps / singleMbps;
    const uplinkTxBytes = tx1.map((b, i) => b - (tx0[i] ?? 0));
    const result: SelfTestResult = {
      prefix: lab.prefix,
      rate,
      seconds,
      singleMbps,
      mptcpMbps,
      ratio,
      threshold,
      mpCapableSynRx: delta('MPTcpExtMPCapableSYNRX'),
      mpJoinSynRx: delta('MPTcpExtMPJoinSynRx'),
      mpJoinAckRx: delta('MPTcpExtMPJoinAckRx'),
      uplinkTxBytes,
      passed: false,
      reason: '',
    };
    const total = uplinkTxBytes.reduce((a, b) => a + b, 0);
    if (result.mpCapableSynRx < 1) result.reason = 'the concentrator saw no MP_CAPABLE SYN: the connection was not MPTCP';
    else if (result.mpJoinSynRx < 1) result.reason = 'the concentrator saw no MP_JOIN SYN: no second subflow';
    else if (uplinkTxBytes.some((b) => b < total * 0.25)) result.reason = `the uplinks did not share the load (bytes sent: ${uplinkTxBytes.join(', ')})`;
    else if (ratio < threshold) result.reason = `MPTCP reached ${ratio.toFixed(2)}x one uplink, below ${threshold}x`;
    result.passed = result.reason === '';
    print(`  ${mptcpMbps.toFixed(1)} Mbit/s = ${ratio.toFixed(2)}x one uplink; MP_JOIN SYNs at the concentrator: ${result.mpJoinSynRx}; ${result.passed ? 'PASS' : `FAIL: ${result.reason}`}`);
    logger.info({ ...result }, 'lab: self-test');
    return result;
  } finally {
    await lab.down();
  }
}
