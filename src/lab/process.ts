/**
 * A process running in the lab (a daemon, a test tool, a peer of the bench): owns the child, keeps its stdout
 * lines and the tail of its output, lets callers wait for something in it (woken by new output or the exit,
 * never sleeping blindly), and stops it, optionally with every descendant (socat forks one per connection).
 * Used by the demo (src/cli/demo.ts), the lab tests (test/support/lab-procs.ts) and the bench (bench/lib/proc.ts).
 */
import type { ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

const TAIL = 200_000;

export class LabProcess {
  /** Complete stdout lines, in order. */
  readonly lines: string[] = [];
  /** The tail of stderr. */
  stderr = '';
  /** The tail of stdout and stderr together, as they came. */
  output = '';
  readonly exited: Promise<number | null>;
  #waiters: Array<() => void> = [];

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    let buf = '';
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (d: string) => {
      this.output = (this.output + d).slice(-TAIL);
      buf += d;
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        this.lines.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
      this.#wake();
    });
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (d: string) => {
      this.stderr = (this.stderr + d).slice(-TAIL);
      this.output = (this.output + d).slice(-TAIL);
      this.#wake();
    });
    // Resolved once the process exited and its output was read to the end ('close'), or at most 200 ms after
    // the exit (a descendant that inherited stdout can hold the pipe open).
    this.exited = new Promise((resolve) => {
      let done = false;
      const finish = (code: number | null) => {
        if (done) return;
        done = true;
        this.#wake();
        resolve(code);
      };
      child.once('close', (code) => finish(code));
      child.once('exit', (code) => setTimeout(() => finish(code), 200).unref());
    });
  }

  /** How the process ended, for messages: "exit code 0", "signal SIGKILL", or "running". */
  get ending(): string {
    if (this.child.signalCode !== null) return `signal ${this.child.signalCode}`;
    if (this.child.exitCode !== null) return `exit code ${this.child.exitCode}`;
    return 'running';
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error(`${this.name} has no pid (spawn failed)`);
    return this.child.pid;
  }

  /** stdout lines that are JSON objects, parsed. */
  json<T = Record<string, unknown>>(): T[] {
    return this.lines.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as T);
  }

  /**
   * Resolves with the first non-undefined value of `check`, re-evaluated on every piece of output; rejects with
   * the output's tail when the process exits first or after `timeoutMs` (`what` names the awaited thing).
   */
  async until<T>(check: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = check();
      if (v !== undefined) return v;
      if (!this.running) throw new Error(`${this.name} exited (${this.child.exitCode ?? this.child.signalCode}) before ${what}:\n${this.output.slice(-4000)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.name}: no ${what} within ${timeoutMs} ms:\n${this.output.slice(-4000)}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 200));
        this.#waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** The first stdout line that satisfies `pred`. */
  waitLine(pred: (line: string) => boolean, timeoutMs = 15_000): Promise<string> {
    return this.until(() => this.lines.find(pred), timeoutMs, 'the expected line');
  }

  /** Until the output (stdout and stderr together) matches `pattern`. */
  async waitFor(pattern: RegExp, timeoutMs = 20_000): Promise<void> {
    await this.until(() => (pattern.test(this.output) ? true : undefined), timeoutMs, `output matching ${pattern}`);
  }

  /** `signal`, then SIGKILL after `timeoutMs`; `tree`: every descendant too. Idempotent; resolves with the exit code. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 15_000, tree = false): Promise<number | null> {
    const kill = (sig: NodeJS.Signals) => {
      if (tree && this.child.pid !== undefined) for (const pid of descendants(this.child.pid)) killQuiet(pid, sig);
      this.child.kill(sig);
    };
    if (this.running) kill(signal);
    const t = setTimeout(() => kill('SIGKILL'), timeoutMs);
    const code = await this.exited;
    clearTimeout(t);
    return code;
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }
}

function killQuiet(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* already gone */
  }
}

/** The parent pid of `pid`, from /proc (undefined when it is gone). */
function parentOf(pid: number): number | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    return Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return undefined;
  }
}

/** Every live descendant of `root` (not including it). */
export function descendants(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const ppid = parentOf(Number(e));
    if (ppid === undefined) continue;
    const list = children.get(ppid) ?? [];
    list.push(Number(e));
    children.set(ppid, list);
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
