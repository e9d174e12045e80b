/**
 * Processes of the bench: spawn inside a lab namespace, wait for a line (polling the output, never sleeping
 * blindly), stop; and the /proc figures the bench reports (CPU seconds, resident memory) of a process tree.
 */
import type { ChildProcess } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import type { LabHost } from './lab.js';

export class Proc {
  readonly lines: string[] = [];
  output = '';
  readonly exited: Promise<number | null>;
  #waiters: Array<() => void> = [];

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    let buf = '';
    const onOut = (d: string) => {
      this.output = (this.output + d).slice(-100_000);
      buf += d;
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        this.lines.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
      for (const w of this.#waiters.splice(0)) w();
    };
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', onOut);
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (d: string) => {
      this.output = (this.output + d).slice(-100_000);
      for (const w of this.#waiters.splice(0)) w();
    });
    this.exited = new Promise((resolve) =>
      child.once('exit', (code) => {
        for (const w of this.#waiters.splice(0)) w();
        resolve(code);
      }),
    );
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error(`${this.name} has no pid (spawn failed)`);
    return this.child.pid;
  }

  /** Waits until the output (stdout or stderr) matches `pattern`. */
  async waitFor(pattern: RegExp, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (pattern.test(this.output)) return;
      if (this.child.exitCode !== null || this.child.signalCode !== null) {
        throw new Error(`${this.name} exited (${this.child.exitCode ?? this.child.signalCode}) before it was ready:\n${this.output.slice(-3000)}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.name} was not ready within ${timeoutMs} ms:\n${this.output.slice(-3000)}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 100));
        this.#waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Waits for a stdout line that parses as JSON and satisfies `pred`. */
  async waitJson<T>(pred: (v: Record<string, unknown>) => boolean, timeoutMs: number): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (const l of this.lines) {
        if (!l.startsWith('{')) continue;
        const v = JSON.parse(l) as Record<string, unknown>;
        if (pred(v)) return v as T;
      }
      if (this.child.exitCode !== null || this.child.signalCode !== null) {
        throw new Error(`${this.name} exited (${this.child.exitCode ?? this.child.signalCode}) without the expected output:\n${this.output.slice(-3000)}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.name}: no expected output within ${timeoutMs} ms:\n${this.output.slice(-3000)}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 100));
        this.#waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** SIGTERM, then SIGKILL after `timeoutMs`. Idempotent. */
  async stop(timeoutMs = 5_000): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      // The whole tree: socat forks a child per connection, and those children must go too.
      for (const pid of descendants(this.pid)) killQuiet(pid, 'SIGTERM');
      this.child.kill('SIGTERM');
    }
    const t = setTimeout(() => {
      for (const pid of descendants(this.child.pid ?? -1)) killQuiet(pid, 'SIGKILL');
      this.child.kill('SIGKILL');
    }, timeoutMs);
    await this.exited;
    clearTimeout(t);
  }
}

function killQuiet(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* already gone */
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

/** Every live descendant of `root` (not including it). */
export function descendants(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const st = readStat(Number(e));
    if (!st) continue;
    const list = children.get(st.ppid) ?? [];
    list.push(Number(e));
    children.set(st.ppid, list);
  }
  const out: number[] = [];
  const stack = [...(children.get(root) ?? [])];
  while (stack.length) {
    const p = stack.pop()!;
    out.push(p);
    stack.push(...(children.get(p) ?? []));
  }
  return out;
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
