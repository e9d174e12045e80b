/**
 * Processes of the bench: spawn inside a lab namespace, wait for a line (polling the output, never sleeping
 * blindly), stop; and the /proc figures the bench reports (CPU seconds, resident memory) of a process tree.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { LabProcess, descendants } from '../../src/lab/process.js';
import type { LabHost } from './lab.js';

/** A bench process: the lab's process owner with the bench's wait and stop shapes. */
export class Proc extends LabProcess {
  /** Waits for a stdout line that parses as JSON and satisfies `pred`. */
  waitJson<T>(pred: (v: Record<string, unknown>) => boolean, timeoutMs: number): Promise<T> {
    return this.until(() => this.json().find(pred) as T | undefined, timeoutMs, 'the expected JSON line');
  }

  /** SIGTERM to the whole tree (socat forks a child per connection), SIGKILL after `timeoutMs`. Idempotent. */
  async halt(timeoutMs = 5_000): Promise<void> {
    await this.stop('SIGTERM', timeoutMs, true);
  }
}

export function spawnIn(host: LabHost, name: string, cmd: string, args: string[]): Proc {
  return new Proc(`${name} (${host.name})`, host.spawn(cmd, args));
}

const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
  } catch {
    return 100;
  }
})();

interface Stat {
  ppid: number;
  utime: number;
  stime: number;
  cutime: number;
  cstime: number;
}

function readStat(pid: number): Stat | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { ppid: Number(f[1]), utime: Number(f[11]), stime: Number(f[12]), cutime: Number(f[13]), cstime: Number(f[14]) };
  } catch {
    return undefined;
  }
}


/**
 * CPU seconds (user + system) used so far by the trees under `roots`: the roots, their live descendants, and the
 * children they already reaped (cutime/cstime: socat's per-connection children end up there).
 */
export function cpuSeconds(roots: number[]): number {
  let ticks = 0;
  for (const root of roots) {
    const st = readStat(root);
    if (!st) continue;
    ticks += st.utime + st.stime + st.cutime + st.cstime;
    for (const d of descendants(root)) {
      const ds = readStat(d);
      if (ds) ticks += ds.utime + ds.stime;
    }
  }
  return ticks / CLK_TCK;
}

function statusKb(pid: number, field: string): number {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

function pssKb(pid: number): number {
  try {
    const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/**
 * Process memory of a tree in bytes: VmRSS of a single process; for a tree of several processes (socat forks one
 * per connection) the sum of PSS, so that pages shared after fork are not counted once per process.
 */
export function memoryBytes(root: number): { bytes: number; processes: number; measure: 'VmRSS' | 'sum of Pss' } {
  const tree = [root, ...descendants(root)];
  if (tree.length === 1) return { bytes: statusKb(root, 'VmRSS') * 1024, processes: 1, measure: 'VmRSS' };
  return { bytes: tree.reduce((s, p) => s + pssKb(p), 0) * 1024, processes: tree.length, measure: 'sum of Pss' };
}
