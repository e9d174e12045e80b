/**
 * Netlink link/address/route events through `ip -o monitor link address route`: one long-lived child per
 * watch, one line per event. The child is tied to this process (`setpriv --pdeathsig KILL`), so a CPE killed
 * with SIGKILL does not leave it behind; it runs in its own process group, so a SIGTERM to the daemon's
 * group does not end it before the daemon's own cleanup; it is restarted (after a pause) if it ends by
 * itself, and killed by close().
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { PlatformError } from '../errors.js';
import type { LinkWatch } from '../types.js';
import { withNetns } from './exec.js';

export interface LinkWatchOptions {
  netns?: string | undefined;
  /** Pause before restarting a monitor that ended (default 1 s). */
  restartDelayMs?: number;
  /** The command line, for tests (default: setpriv --pdeathsig KILL -- ip -o monitor link address route). */
  command?: readonly string[];
}

const MONITOR = ['setpriv', '--pdeathsig', 'KILL', '--', 'ip', '-o', 'monitor', 'link', 'address', 'route'] as const;

export function watchLinks(onChange: () => void, onError: (err: Error) => void, opts: LinkWatchOptions = {}): LinkWatch {
  const [cmd0, ...args0] = opts.command ?? MONITOR;
  const [cmd, args] = withNetns(opts.netns, cmd0!, args0);
  const restartDelayMs = opts.restartDelayMs ?? 1_000;
  let child: ChildProcess | undefined;
  let closed = false;
  let restart: NodeJS.Timeout | undefined;

  const start = () => {
    if (closed) return;
    // Its own process group: a signal to the daemon's group (systemd's stop, `timeout`) is the daemon's to
    // handle; the monitor ends with the daemon (pdeathsig) or through close().
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    child = c;
    let stderr = '';
    let partial = '';
    c.stdout!.setEncoding('utf8');
    c.stdout!.on('data', (chunk: string) => {
      partial += chunk;
      const lines = partial.split('\n');
      partial = lines.pop() ?? '';
      if (lines.some((l) => l.trim() !== '')) onChange();
    });
    c.stderr!.setEncoding('utf8');
    c.stderr!.on('data', (chunk: string) => {
      if (stderr.length < 2_000) stderr += chunk;
    });
    c.on('error', (err) => {
      // spawn failure (e.g. no such command): reported by 'close' as well, with code null.
      stderr ||= err.message;
    });
    c.on('close', (code, signal) => {
      if (child === c) child = undefined;
      if (closed) return;
      onError(new PlatformError('ip monitor', 'EIO', 5, { detail: `ended (${signal ?? `exit ${code}`})${stderr ? `: ${stderr.trim().slice(0, 300)}` : ''}; restarting` }));
      restart = setTimeout(start, restartDelayMs);
      restart.unref();
    });
  };
  start();

  return {
    close() {
      if (closed) return;
      closed = true;
      if (restart) clearTimeout(restart);
      child?.kill('SIGTERM');
      child = undefined;
    },
  };
}
