/**
 * The bench's own minimal namespace lab, used only when the shared testbed (src/lab) is not built: the same API
 * subset and the same addressing (LAN 198.18.0.0/24, uplink i 198.18.i.0/24, concentrator 198.18.200.1, server
 * 198.19.0.10), tbf on both ends of each uplink, `mptcpRouting` = per-uplink policy routing + MPTCP endpoints.
 * Namespaces are named mpc<random>...; removed on down(), on exit and on SIGINT/SIGTERM.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';

export interface LabHost {
  name: string;
  v4: string;
  v6: string;
  exec(cmd: string, args: string[], o?: { timeoutMs?: number; input?: string; allowFailure?: boolean }): Promise<{ stdout: string; stderr: string; code: number }>;
  spawn(cmd: string, args: string[]): ChildProcess;
}

function run(cmd: string, args: string[], o: { timeoutMs?: number; input?: string; allowFailure?: boolean } = {}): Promise<{ stdout: string; stderr: string; code: number }> {
  return new Promise((resolve, reject) => {
    const c = execFile(cmd, args, { timeout: o.timeoutMs ?? 60_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? ((err as { code?: number }).code ?? 1) : 0;
      if (err && !o.allowFailure) reject(new Error(`${cmd} ${args.join(' ')}: ${stderr || err.message}`));
      else resolve({ stdout, stderr, code: typeof code === 'number' ? code : 1 });
    });
    if (o.input !== undefined) c.stdin?.end(o.input);
  });
}

const live = new Set<Lab>();
function cleanupSync(): void {
  for (const lab of live) {
    for (const c of lab.children) if (c.exitCode === null) c.kill('SIGKILL');
    for (const n of lab.ns) {
      try {
        execFileSync('ip', ['netns', 'del', n], { stdio: 'ignore' });
      } catch {
        /* gone */
      }
      rmSync(`/etc/netns/${n}`, { recursive: true, force: true });
    }
  }
  live.clear();
}
process.once('exit', cleanupSync);

export class Lab {
  children: ChildProcess[] = [];
  hosts!: { client: LabHost; cpe: LabHost; concentrator: LabHost; servers: LabHost[] };
  ns: string[] = [];
  n = 0;
  static async up(o: { uplinks: Array<{ rate: string | 0 }>; servers?: number; mptcpRouting?: boolean }): Promise<Lab> {
    const lab = new Lab();
    live.add(lab);
    lab.n = o.uplinks.length;
    const sfx = randomBytes(3).toString('hex');
    const mk = (role: string, v4: string): LabHost => {
      const name = `mpc${sfx}${role}`;
      lab.ns.push(name);
      return {
        name, v4, v6: '',
        exec: (cmd, args, eo) => run('ip', ['netns', 'exec', name, cmd, ...args], eo),
        spawn: (cmd, args) => {
          const c = spawn('ip', ['netns', 'exec', name, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
          lab.children.push(c);
          return c;
        },
      };
    };
    const client = mk('cl', '198.18.0.2');
    const cpe = mk('cpe', '198.18.0.1');
    const conc = mk('conc', '198.18.200.1');
    const srv = mk('srv0', '198.19.0.10');
    lab.hosts = { client, cpe, concentrator: conc, servers: [srv] };
    for (const h of [client, cpe, conc, srv]) {
      await run('ip', ['netns', 'add', h.name]);
      mkdirSync(`/etc/netns/${h.name}`, { recursive: true });
      writeFileSync(`/etc/netns/${h.name}/resolv.conf`, 'nameserver 127.0.0.1\n');
      await h.exec('ip', ['link', 'set', 'lo', 'up']);
    }
    const veth = async (a: LabHost, an: string, b: LabHost, bn: string) => {
      await run('ip', ['link', 'add', 'tmpa', 'netns', a.name, 'type', 'veth', 'peer', 'tmpb', 'netns', b.name]);
      await a.exec('ip', ['link', 'set', 'tmpa', 'name', an]);
      await b.exec('ip', ['link', 'set', 'tmpb', 'name', bn]);
      await a.exec('ip', ['link', 'set', an, 'up']);
      await b.exec('ip', ['link', 'set', bn, 'up']);
    };
    await veth(client, 'eth0', cpe, 'lan0');
    await client.exec('ip', ['addr', 'add', '198.18.0.2/24', 'dev', 'eth0']);
    await cpe.exec('ip', ['addr', 'add', '198.18.0.1/24', 'dev', 'lan0']);
    await client.exec('ip', ['route', 'add', 'default', 'via', '198.18.0.1']);
    for (const [i, u] of o.uplinks.entries()) {
      const k = i + 1;
      await veth(cpe, `up${k}`, conc, `acc${k}`);
      await cpe.exec('ip', ['addr', 'add', `198.18.${k}.2/24`, 'dev', `up${k}`]);
      await conc.exec('ip', ['addr', 'add', `198.18.${k}.1/24`, 'dev', `acc${k}`]);
      await cpe.exec('ip', ['route', 'add', 'default', 'via', `198.18.${k}.1`, 'metric', String(100 * k)]);
      if (u.rate) {
        for (const [h, d] of [[cpe, `up${k}`], [conc, `acc${k}`]] as const) await h.exec('tc', ['qdisc', 'add', 'dev', d, 'root', 'tbf', 'rate', u.rate, 'burst', '32kbit', 'latency', '50ms']);
      }
      if (o.mptcpRouting) {
        await cpe.exec('ip', ['rule', 'add', 'from', `198.18.${k}.2`, 'table', String(100 + k)]);
        await cpe.exec('ip', ['route', 'add', 'default', 'via', `198.18.${k}.1`, 'dev', `up${k}`, 'table', String(100 + k)]);
        await cpe.exec('ip', ['mptcp', 'endpoint', 'add', `198.18.${k}.2`, 'dev', `up${k}`, 'subflow']);
      }
    }
    if (o.mptcpRouting) await cpe.exec('ip', ['mptcp', 'limits', 'set', 'subflow', '8', 'add_addr_accepted', '8']);
    await conc.exec('ip', ['mptcp', 'limits', 'set', 'subflow', '8', 'add_addr_accepted', '8']);
    await conc.exec('ip', ['addr', 'add', '198.18.200.1/32', 'dev', 'lo']);
    await conc.exec('ip', ['route', 'add', '198.18.0.0/24', 'via', '198.18.1.2']);
    await veth(conc, 'srv0', srv, 'eth0');
    await conc.exec('ip', ['addr', 'add', '198.19.0.1/24', 'dev', 'srv0']);
    await srv.exec('ip', ['addr', 'add', '198.19.0.10/24', 'dev', 'eth0']);
    await srv.exec('ip', ['route', 'add', 'default', 'via', '198.19.0.1']);
    for (const h of [cpe, conc]) await h.exec('sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
    return lab;
  }
  async uplinkDown(i: number): Promise<void> {
    await this.hosts.cpe.exec('ip', ['link', 'set', `up${i}`, 'down']);
  }
  async uplinkUp(i: number): Promise<void> {
    await this.hosts.cpe.exec('ip', ['link', 'set', `up${i}`, 'up']);
    await this.hosts.cpe.exec('ip', ['route', 'replace', 'default', 'via', `198.18.${i}.1`, 'metric', String(100 * i)], { allowFailure: true });
  }
  async down(): Promise<void> {
    live.delete(this);
    for (const c of this.children) if (c.exitCode === null) c.kill('SIGKILL');
    for (const n of this.ns) {
      await run('ip', ['netns', 'del', n], { allowFailure: true });
      rmSync(`/etc/netns/${n}`, { recursive: true, force: true });
    }
  }
}
