/**
 * Running mpconvert and the test tools inside lab namespaces: start a process, wait for its "ready" line
 * (polling the output, never sleeping), collect its JSON lines, stop it.
 */
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { LabHost } from '../../src/lab/index.js';

export const DIST = fileURLToPath(new URL('../../', import.meta.url));
export const CLI = `${DIST}src/cli/main.js`;
export const TOOL = (name: string) => `${DIST}test/support/tools/${name}.js`;

export class Proc {
  readonly lines: string[] = [];
  stderr = '';
  readonly exited: Promise<number | null>;
  #waiters: Array<() => void> = [];

  constructor(readonly child: ChildProcess) {
    let buf = '';
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (d: string) => {
      buf += d;
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        this.lines.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
      for (const w of this.#waiters.splice(0)) w();
    });
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (d: string) => {
      this.stderr = (this.stderr + d).slice(-200_000);
    });
    this.exited = new Promise((resolve) => child.once('exit', (code) => {
      for (const w of this.#waiters.splice(0)) w();
      resolve(code);
    }));
  }

  json<T = Record<string, unknown>>(): T[] {
    return this.lines.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as T);
  }

  /** Waits until a line satisfies `pred`; fails with the process's stderr after `timeoutMs`. */
  async waitLine(pred: (line: string) => boolean, timeoutMs = 15_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.lines.find(pred);
      if (found !== undefined) return found;
      if (this.child.exitCode !== null) throw new Error(`process exited (${this.child.exitCode}) before the expected line; stderr:\n${this.stderr}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for a line; stderr:\n${this.stderr.slice(-4000)}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 200));
        this.#waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 15_000): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const code = await this.exited;
    clearTimeout(t);
    return code;
  }
}

export function start(host: LabHost, args: string[]): Proc {
  return new Proc(host.spawn(process.execPath, args));
}

/** Runs a tool to completion and returns its last JSON line. */
export async function runTool<T = Record<string, unknown>>(host: LabHost, name: string, args: unknown, timeoutMs = 120_000): Promise<T> {
  const p = start(host, [TOOL(name), JSON.stringify(args)]);
  const t = setTimeout(() => p.child.kill('SIGKILL'), timeoutMs);
  await p.exited;
  clearTimeout(t);
  const out = p.json<T>();
  if (out.length === 0) throw new Error(`${name} printed nothing; stderr:\n${p.stderr}`);
  return out[out.length - 1] as T;
}
