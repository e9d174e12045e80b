/** The iproute2 and sysctl commands the lab's builders share, run inside a namespace. */
import { run, type RunResult } from '../platform/linux/exec.js';

export function sysctl(netns: string, settings: string[]): Promise<RunResult> {
  return run('sysctl', ['-q', '-w', ...settings], { netns });
}

/** `ip [-6] -batch -`: stops at the first failing line, whose message is in the error. */
export function batch(netns: string, lines: string[], family?: '-6'): Promise<RunResult> {
  if (lines.length === 0) return Promise.resolve({ stdout: '', stderr: '', code: 0 });
  return run('ip', [...(family ? [family] : []), '-batch', '-'], { netns, input: lines.join('\n') + '\n' });
}
