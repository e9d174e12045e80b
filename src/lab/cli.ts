/**
 * `mpconvert lab up|down|status|exec`: the lab from the command line. `up` leaves the lab running (state in
 * /run/mpconvert/lab-<prefix>.json) so that later commands in other processes find it.
 */
import { Command, InvalidArgumentError } from 'commander';
import { createLogger } from '../log.js';
import { FIELD, LAB, fieldAccess } from './addressing.js';
import { Lab, type LabStatus } from './index.js';
import { runSelfTest } from './selftest.js';
import { fileURLToPath } from 'node:url';
import { dhcpClientSnippet } from '../cpe/dhcp.js';

function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

function int(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n)) throw new InvalidArgumentError('expected an integer');
  return n;
}

function fail(cmd: string, err: unknown): void {
  process.stderr.write(`mpconvert lab ${cmd}: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
}

/** The lab to act on: --prefix, else the only lab there is. */
function pick(prefix: string | undefined): Lab {
  if (prefix !== undefined) return Lab.attach(prefix);
  const labs = Lab.list();
  if (labs.length === 1) return Lab.attach(labs[0]!.prefix);
  throw new Error(labs.length === 0 ? 'no lab is up (mpconvert lab up)' : `several labs are up (${labs.map((l) => l.prefix).join(', ')}): give --prefix`);
}

export function describeStatus(s: LabStatus): string[] {
  const lines = [
    `lab ${s.prefix}: ${s.healthy ? 'healthy' : 'INCOMPLETE'}${s.topology === 'field' ? ', field topology' : s.topology === 'onpath' ? ', on-path topology (the cpe namespace is the MPTCP host)' : ''}${s.ownerPid === null ? ' (persistent)' : ` (owned by pid ${s.ownerPid})`}${s.mptcpRouting ? ', mptcp routing' : ''}`,
    `  namespaces: ${s.namespaces.map((n) => (n.present ? n.name : `${n.name} (missing)`)).join(' ')}`,
    s.topology === 'field'
      ? `  client ${LAB.lan.client.v4}  cpe lan0 ${LAB.lan.cpe.v4}  concentrator (public) ${FIELD.concentrator.v4}`
      : `  client ${LAB.lan.client.v4} ${LAB.lan.client.v6}  cpe lan0 ${LAB.lan.cpe.v4} ${LAB.lan.cpe.v6}  concentrator ${LAB.concentrator.v4} ${LAB.concentrator.v6}`,
  ];
  for (const u of s.uplinks) {
    const field = s.topology === 'field' ? `, isp${u.index} ${fieldAccess(u.index).coreV4}${u.cgn ? ' (CGN)' : ''}, DHCP ${u.v4 || 'no lease'}` : `, ${u.v4} ${u.v6}`;
    lines.push(
      `  ${u.dev}: ${u.state}, rate ${u.rate === 0 ? 'unshaped' : u.rate}${u.rttMs ? `, rtt ${u.rttMs} ms` : ''}${u.lossPercent > 0 ? `, loss ${u.lossPercent}%` : ''}${field}, tx ${u.txBytes} B rx ${u.rxBytes} B`,
    );
  }
  for (const srv of s.servers) lines.push(`  server ${srv.name}: ${srv.v4} ${srv.v6}`);
  if (s.poolAddresses > 0) lines.push(`  concentrator pool addresses: ${s.poolAddresses}`);
  return lines;
}

export function labCommand(): Command {
  const lab = new Command('lab').description('Build, inspect and remove the network-namespace lab (client, CPE, uplinks, concentrator, servers)');

  lab
    .command('up')
    .description('Build a lab and leave it running; prints its prefix')
    .option('--uplink <rate[@rtt][,cgn][,mtu=N]>', 'an uplink, its rate and optionally its round-trip time, e.g. 50mbit or 50mbit@40ms; 0 = unshaped; field topology: ,cgn and ,mtu=1492 (repeatable; default two of 50mbit; with --field a DSL 50mbit,mtu=1492 and an LTE 50mbit,cgn)', collect, [])
    .option('--field', 'the field topology: ISP routers with DHCP (dnsmasq), a CGN, a public concentrator, a private LAN (docs/lab.md)')
    .option('--onpath', 'the on-path topology: the CPE namespace is a dual-homed MPTCP host (no mpconvert), both paths routed through the concentrator (docs/implicit.md)')
    .option('--no-dhcp', 'field topology: do not start the CPE\'s DHCP clients (mpconvert lab dhcp start I does it later)')
    .option('--servers <k>', 'servers on the internet segment', int, 1)
    .option('--prefix <p>', 'namespace prefix: mpc + 1..9 of [a-z0-9] (default random)')
    .option('--mptcp-routing', 'plain kernel MPTCP on the CPE: policy routing + subflow endpoints + limits')
    .option('--json', 'print the status as JSON')
    .action(async (o: { uplink: string[]; servers: number; prefix?: string; mptcpRouting?: boolean; json?: boolean; field?: boolean; onpath?: boolean; dhcp: boolean }) => {
      try {
        const rates = o.uplink.length > 0 ? o.uplink : o.field ? ['50mbit,mtu=1492', '50mbit,cgn'] : ['50mbit', '50mbit'];
        const l = await Lab.up(
          {
            uplinks: rates.map(parseUplinkFlag),
            servers: o.servers,
            mptcpRouting: o.mptcpRouting ?? false,
            ...(o.field ? { topology: 'field' as const, dhcpClients: o.dhcp } : o.onpath ? { topology: 'onpath' as const } : {}),
            ...(o.prefix !== undefined ? { prefix: o.prefix } : {}),
          },
          { logger: createLogger({ name: 'lab', level: process.env['MPCONVERT_LOG_LEVEL'] ?? 'warn' }) },
        );
        l.detach();
        const s = await l.status();
        if (o.json) process.stdout.write(JSON.stringify(s) + '\n');
        else process.stdout.write([l.prefix, ...describeStatus(s), `  remove with: mpconvert lab down --prefix ${l.prefix}`].join('\n') + '\n');
      } catch (err) {
        fail('up', err);
      }
    });

  lab
    .command('down')
    .description('Remove a lab (--prefix), or every lab and leftover of crashed runs (--all)')
    .option('--prefix <p>', 'the lab to remove')
    .option('--all', 'remove all labs not owned by a live process, and lab namespaces without a state file')
    .option('--foreign', 'with --all: also other mpc* namespaces with no process inside')
    .action(async (o: { prefix?: string; all?: boolean; foreign?: boolean }) => {
      try {
        if (o.all) {
          const removed = await Lab.downAll({ foreign: o.foreign ?? false });
          process.stdout.write(removed.length > 0 ? `removed ${removed.join(' ')}\n` : 'nothing to remove\n');
          return;
        }
        const l = pick(o.prefix);
        await l.down();
        process.stdout.write(`removed lab ${l.prefix}\n`);
      } catch (err) {
        fail('down', err);
      }
    });

  lab
    .command('status')
    .description('Show the labs that are up (or one, with --prefix)')
    .option('--prefix <p>', 'the lab to show')
    .option('--json', 'JSON output (an array)')
    .action(async (o: { prefix?: string; json?: boolean }) => {
      try {
        const labs = o.prefix !== undefined ? [Lab.attach(o.prefix)] : Lab.list().map((s) => Lab.attach(s.prefix));
        const all = await Promise.all(labs.map((l) => l.status()));
        if (o.json) process.stdout.write(JSON.stringify(all) + '\n');
        else if (all.length === 0) process.stdout.write('no lab is up\n');
        else process.stdout.write(all.flatMap(describeStatus).join('\n') + '\n');
        if (all.some((s) => !s.healthy)) process.exitCode = 1;
      } catch (err) {
        fail('status', err);
      }
    });

  lab
    .command('exec')
    .description('Run a command in a lab host: client | cpe | concentrator | inet | srvK (mpconvert lab exec cpe -- ip addr)')
    .argument('<host>', 'client | cpe | concentrator | inet | srvK')
    .argument('<cmd...>', 'the command and its arguments (after --)')
    .option('--prefix <p>', 'the lab (default: the only one)')
    .action(async (hostName: string, cmd: string[], o: { prefix?: string }) => {
      try {
        const host = pick(o.prefix).host(hostName);
        const child = host.spawn(cmd[0]!, cmd.slice(1), { stdio: 'inherit' });
        const code = await new Promise<number>((resolve, reject) => {
          child.once('error', reject);
          child.once('exit', (c, sig) => resolve(c ?? (sig ? 128 : 1)));
        });
        process.exitCode = code;
      } catch (err) {
        fail('exec', err);
      }
    });

  lab
    .command('dhcp')
    .description('Field topology: the CPE\'s DHCP client on uplink I: start | stop | release | renumber (the ISP moves its pool)')
    .argument('<action>', 'start | stop | release | renumber')
    .argument('<uplink>', 'uplink index (1..N)', int)
    .option('--prefix <p>', 'the lab (default: the only one)')
    .option('--mcp <addrs>', 'with start: ISP I\'s dnsmasq sends these concentrators (comma-separated IPv4, option 224, T1 5 s) and the client requests them and runs mpconvert\'s dhclient hook (docs/operator.md)')
    .option('--lease-dir <dir>', 'with --mcp: where the hook writes (the CPE\'s dhcp.leaseDir)', '/run/mpconvert-dhcp')
    .action(async (action: string, i: number, o: { prefix?: string; mcp?: string; leaseDir: string }) => {
      try {
        const l = pick(o.prefix);
        if (action === 'start' && o.mcp !== undefined) {
          await l.dhcpServer(i, { mcpV4: o.mcp.split(',').filter(Boolean), renewS: 5 });
          const conf = `${dhcpClientSnippet('dhclient', { optionV4: 224, optionV6: 65224 })}also request dhcp-renewal-time, dhcp-rebinding-time;\n`;
          const hook = fileURLToPath(new URL('../../../packaging/dhcp/dhclient-exit-hook', import.meta.url));
          process.stdout.write(`up${i}: ${await l.startDhcpClient(i, { conf, exitHooks: [hook], env: { MPCONVERT_DHCP_DIR: o.leaseDir } })} (concentrators ${o.mcp} in ${o.leaseDir}/up${i}.v4)\n`);
        } else if (action === 'start') process.stdout.write(`up${i}: ${await l.startDhcpClient(i)}\n`);
        else if (action === 'renumber') process.stdout.write(`up${i}: ${await l.renumber(i)}\n`);
        else if (action === 'stop' || action === 'release') await l.stopDhcpClient(i, { release: action === 'release' });
        else throw new Error(`unknown action "${action}" (start, stop, release, renumber)`);
      } catch (err) {
        fail('dhcp', err);
      }
    });

  lab
    .command('selftest')
    .description('Plain kernel MPTCP over 2 shaped uplinks must beat one uplink by --threshold (proves lab + kernel)')
    .option('--rate <rate>', 'rate of each uplink', '50mbit')
    .option('--seconds <n>', 'seconds per measurement', int, 6)
    .option('--threshold <x>', 'minimum ratio', (v) => Number(v), 1.7)
    .option('--json', 'print the result as JSON')
    .action(async (o: { rate: string; seconds: number; threshold: number; json?: boolean }) => {
      try {
        const r = await runSelfTest({ rate: o.rate, seconds: o.seconds, threshold: o.threshold, ...(o.json ? {} : { print: (l: string) => process.stdout.write(l + '\n') }) });
        if (o.json) process.stdout.write(JSON.stringify(r) + '\n');
        if (!r.passed) process.exitCode = 1;
      } catch (err) {
        fail('selftest', err);
      }
    });

  return lab;
}

/**
 * `50mbit`, `0`, `50mbit@40ms`, `0@10ms`: the rate and the optional added round-trip time; then, for the field
 * topology, `,cgn` and `,mtu=N` (`50mbit,mtu=1492`, `50mbit,cgn`).
 */
export function parseUplinkFlag(text: string): { rate: string | 0; rttMs?: number; cgn?: boolean; mtu?: number } {
  const [head = '', ...extras] = text.split(',');
  const [rate = '', rtt] = head.split('@');
  const out: { rate: string | 0; rttMs?: number; cgn?: boolean; mtu?: number } = { rate: rate === '0' ? 0 : rate };
  if (rtt !== undefined) {
    const m = /^(\d+(?:\.\d+)?)ms$/.exec(rtt);
    if (!m) throw new Error(`Cannot parse uplink "${text}": the round-trip time is written like 40ms`);
    out.rttMs = Number(m[1]);
  }
  for (const x of extras) {
    const mtu = /^mtu=(\d+)$/.exec(x);
    if (x === 'cgn') out.cgn = true;
    else if (mtu) out.mtu = Number(mtu[1]);
    else throw new Error(`Cannot parse uplink "${text}": "${x}" is neither cgn nor mtu=N`);
  }
  return out;
}
