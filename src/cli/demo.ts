/**
 * `mpconvert demo`: the lab with a CPE and a concentrator, a transfer through them, and the throughput of one
 * uplink next to all uplinks through mpconvert. Everything runs in network namespaces of this machine.
 */
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { Lab, type LabHost } from '../lab/index.js';
import { LabProcess } from '../lab/process.js';

const CLI = fileURLToPath(new URL('./main.js', import.meta.url));

async function iperf(host: LabHost, args: string[]): Promise<number> {
  const r = await host.exec('iperf3', ['-J', ...args], { timeoutMs: 120_000 });
  const j = JSON.parse(r.stdout) as { end: { sum_received: { bits_per_second: number } } };
  return j.end.sum_received.bits_per_second / 1e6;
}

export interface DemoOptions {
  uplink: string[];
  seconds: number;
}

export async function runDemo(opts: DemoOptions, print: (line: string) => void = (l) => process.stdout.write(l + '\n')): Promise<{ one: number; all: number }> {
  const rates = opts.uplink.length ? opts.uplink : ['50mbit', '50mbit'];
  print(`Building the lab: a LAN client, a CPE with ${rates.length} uplinks (${rates.join(', ')}), a concentrator, a server.`);
  const lab = await Lab.up({ uplinks: rates.map((rate) => ({ rate: rate === '0' ? 0 : rate })), servers: 1 });
  try {
    const server = lab.hosts.servers[0]!;
    const conc = new LabProcess('concentrator', lab.hosts.concentrator.spawn(process.execPath, [
      CLI, 'concentrator', '--listen', '198.18.200.1:5000', '--listen', '[2001:db8:200::1]:5000',
      '--allow', '198.18.0.0/15', '--allow', '2001:db8::/32', '--log-level', 'warn',
    ]));
    await conc.waitFor(/^ready/m);
    const uplinkArgs = rates.flatMap((_, i) => ['--uplink', `up${i + 1}`]);
    const cpe = new LabProcess('cpe', lab.hosts.cpe.spawn(process.execPath, [CLI, 'cpe', '--lan', 'lan0', ...uplinkArgs, '--concentrator', '198.18.200.1:5000', '--log-level', 'warn']));
    await cpe.waitFor(/^ready/m);
    const srv = new LabProcess('iperf3 server', server.spawn('iperf3', ['-s', '--forceflush', '-B', server.v4]));
    await srv.waitFor(/Server listening/);
    const t = String(opts.seconds);
    print(`Measuring one uplink alone (plain TCP from the CPE over up1, ${t} s)...`);
    const one = await iperf(lab.hosts.cpe, ['-c', server.v4, '-B', '198.18.1.2', '-t', t]);
    print(`Measuring the LAN client through mpconvert (its plain TCP converted to MPTCP over all uplinks, ${t} s)...`);
    const all = await iperf(lab.hosts.client, ['-c', server.v4, '-t', t]);
    const sum = rates.reduce((s, r) => s + parseRate(r), 0);
    print('');
    print('| path | throughput | vs one uplink |');
    print('|---|---|---|');
    print(`| one uplink (up1, plain TCP) | ${one.toFixed(1)} Mbit/s | 1.00x |`);
    print(`| LAN client through mpconvert (${rates.length} uplinks) | ${all.toFixed(1)} Mbit/s | ${(all / one).toFixed(2)}x |`);
    if (sum > 0) print(`\nSum of the uplink rates: ${sum.toFixed(0)} Mbit/s; mpconvert reaches ${((100 * all) / sum).toFixed(0)}% of it.`);
    return { one, all };
  } finally {
    await lab.down();
  }
}

function parseRate(r: string): number {
  const m = /^(\d+(?:\.\d+)?)(k|m|g)?bit$/i.exec(r);
  if (!m) return 0;
  const unit = (m[2] ?? '').toLowerCase();
  return Number(m[1]) * (unit === 'g' ? 1000 : unit === 'm' ? 1 : unit === 'k' ? 0.001 : 1e-6);
}

export function demoCommand(): Command {
  const collect = (v: string, prev: string[] = []) => [...prev, v];
  return new Command('demo')
    .description('Run the lab demo: one uplink vs. all uplinks through mpconvert')
    .option('--uplink <rate>', 'uplink rate, e.g. 50mbit (repeatable; default two of 50mbit)', collect, [])
    .option('--seconds <n>', 'duration of each measurement', (v) => Number(v), 8)
    .action(async (o: DemoOptions) => {
      try {
        await runDemo(o);
      } catch (err) {
        process.stderr.write(`mpconvert demo: ${(err as Error).message}\n`);
        process.exitCode = 1;
      }
    });
}
