/**
 * Runs the kernel configuration tools (ip, nft, tc, sysctl) as child processes, optionally inside a network
 * namespace (`ip netns exec NAME ...`). Every failure is a typed error naming the command and its stderr, so
 * an operator reads "nft: Could not process rule: No such file or directory" and not "exit code 1".
 */
import { execFile } from 'node:child_process';
import { MpconvertError } from '../../errors.js';

export class CommandError extends MpconvertError {
  readonly command: string;
  readonly exitCode: number | null;
  readonly stderr: string;
  constructor(command: string, exitCode: number | null, stderr: string, cause?: unknown) {
    super('MPC_ERR_COMMAND', `${command} failed (exit ${exitCode ?? 'signal'}): ${stderr.trim() || 'no message'}`, { cause });
    this.command = command;
    this.exitCode = exitCode;
    this.stderr = stderr;
  }
}

export interface RunOptions {
  /** Network namespace to run in; undefined = the caller's own. */
  netns?: string | undefined;
  /** Written to the child's standard input (e.g. an nft ruleset for `nft -f -`). */
  input?: string;
  timeoutMs?: number;
  /** Do not throw on a non-zero exit; the caller reads `code`. */
  allowFailure?: boolean;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number;
}

export function withNetns(netns: string | undefined, cmd: string, args: readonly string[]): [string, string[]] {
  return netns === undefined ? [cmd, [...args]] : ['ip', ['netns', 'exec', netns, cmd, ...args]];
}

export function run(cmd: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const [file, argv] = withNetns(options.netns, cmd, args);
  const printable = `${cmd} ${args.join(' ')}`;
  return new Promise((resolve, reject) => {
    const child = execFile(
      file,
      argv,
      { timeout: options.timeoutMs ?? 30_000, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0;
        if (err && !options.allowFailure) {
          reject(new CommandError(printable, code === -1 ? null : code, stderr || err.message, err));
          return;
        }
        resolve({ stdout, stderr, code });
      },
    );
    if (options.input !== undefined) child.stdin?.end(options.input);
  });
}

/** Runs a tool with `-j` output and parses it; empty output is an empty list. */
export async function runJson<T>(cmd: string, args: readonly string[], options: RunOptions = {}): Promise<T> {
  const { stdout } = await run(cmd, args, options);
  const text = stdout.trim();
  if (text === '') return [] as unknown as T;
  try {
    return JSON.parse(text) as T;
  } catch (err) {
    throw new CommandError(`${cmd} ${args.join(' ')}`, 0, `Cannot parse JSON output: ${String(err)}`, err);
  }
}
