/**
 * Running mpconvert and the test tools inside lab namespaces: start a process, wait for its "ready" line
 * (polling the output, never sleeping), collect its JSON lines, stop it.
 */
import type { ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { LabHost } from '../../src/lab/index.js';
import { LabProcess } from '../../src/lab/process.js';

export const DIST = fileURLToPath(new URL('../../', import.meta.url));
export const CLI = `${DIST}src/cli/main.js`;
export const TOOL = (name: string) => `${DIST}test/support/tools/${name}.js`;

/** A test's process: the lab's process owner (src/lab/process.ts), named after its command line. */
export class Proc extends LabProcess {
  constructor(child: ChildProcess) {
    super(child.spawnargs.slice(-2).join(' ').slice(0, 80), child);
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

/** The JSON line of test/support/tools/mpc-client.ts. */
export interface ClientOut {
  head?: string;
  received?: number;
  receivedSha256?: string;
  sentSha256?: string;
  mptcp?: boolean;
  subflows?: number;
  error?: string;
}

/** The JSON line of test/support/tools/sink-server.ts, per connection. */
export interface ServerOut {
  remote?: string;
  received?: number;
  receivedSha256?: string;
  sentSha256?: string;
  mptcp?: boolean;
}

/**
 * Writes a daemon's new configuration, sends it SIGHUP and waits until it says it reloaded it (one more
 * "configuration reloaded" line than before).
 */
export async function reloadConfig(daemon: Proc, file: string, text: string): Promise<void> {
  const count = () => daemon.stderr.split('configuration reloaded').length;
  const before = count();
  writeFileSync(file, text);
  daemon.child.kill('SIGHUP');
  await daemon.waitLine(() => count() > before);
}
