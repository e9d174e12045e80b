/**
 * Throw-away network namespaces for the platform lab tests: random `mpc` names, lo up, the resolv.conf the
 * ground rules ask for, and removal that never throws (called from `after`/finally).
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';

export interface Netns {
  name: string;
  /** Runs a command inside the namespace (synchronously); returns stdout. */
  exec(cmd: string, args: string[], input?: string): string;
  /** Runs a node script inside the namespace; resolves with its stdout lines parsed as JSON. */
  node(script: string, args: string[], timeoutMs?: number): Promise<Array<Record<string, unknown>>>;
  remove(): void;
}

export function createNetns(sysctls: Record<string, string> = {}): Netns {
  const name = `mpc${randomBytes(4).toString('hex')}`;
  execFileSync('ip', ['netns', 'add', name]);
  mkdirSync(`/etc/netns/${name}`, { recursive: true });
  writeFileSync(`/etc/netns/${name}/resolv.conf`, 'nameserver 127.0.0.1\n');
  const ns: Netns = {
    name,
    exec(cmd, args, input) {
      return execFileSync('ip', ['netns', 'exec', name, cmd, ...args], { encoding: 'utf8', ...(input !== undefined ? { input } : {}) });
    },
    node(script, args, timeoutMs = 30_000) {
      return new Promise((resolve, reject) => {
        const child = spawn('ip', ['netns', 'exec', name, process.execPath, script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        let err = '';
        child.stdout.on('data', (d: Buffer) => (out += d.toString()));
        child.stderr.on('data', (d: Buffer) => (err += d.toString()));
        const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
        child.on('close', (code) => {
          clearTimeout(timer);
          if (code !== 0) {
            reject(new Error(`child in ${name} exited ${code}: ${err}\n${out}`));
            return;
          }
          resolve(out.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as Record<string, unknown>));
        });
      });
    },
    remove() {
      try {
        execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
      } catch {
        /* already gone */
      }
      rmSync(`/etc/netns/${name}`, { recursive: true, force: true });
    },
  };
  try {
    ns.exec('ip', ['link', 'set', 'lo', 'up']);
    for (const [k, v] of Object.entries(sysctls)) ns.exec('sysctl', ['-q', '-w', `${k}=${v}`]);
  } catch (err) {
    ns.remove();
    throw err;
  }
  return ns;
}
