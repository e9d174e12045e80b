/**
 * The service manager's readiness protocol (sd_notify(3)): datagrams of `KEY=value` lines to the AF_UNIX
 * socket named by $NOTIFY_SOCKET (a path, or an abstract name written `@name`). Node has no AF_UNIX datagram
 * sockets, so they go through the FFI adapter. Without $NOTIFY_SOCKET (not under systemd's Type=notify)
 * every call does nothing.
 *
 * - READY=1 once the role listens (and again after each reload), with STATUS= and MAINPID=.
 * - RELOADING=1 + MONOTONIC_USEC= when a reload starts (what Type=notify-reload expects; Type=notify takes it too).
 * - STOPPING=1 + EXTEND_TIMEOUT_USEC= at a stop: the drain plus the cleanup, so a drain longer than the
 *   unit's TimeoutStopSec is not cut short by SIGKILL.
 */
import type { Logger } from '../log.js';
import { closeFd, sendToUnix, unixDatagramSocket } from '../platform/linux/ffi.js';

export interface ServiceNotifier {
  /** READY=1 (start-up finished or a reload done), with a status line. */
  ready(status: string): void;
  /** RELOADING=1: a reload started (READY=1 follows when it is done, also when it failed). */
  reloading(): void;
  /** STOPPING=1, asking for `budgetMs` more before the manager's stop timeout (none: its own timeout). */
  stopping(budgetMs?: number): void;
  /** STATUS= alone. */
  status(text: string): void;
  /** Closes the socket (idempotent). */
  close(): void;
}

export const silentNotifier: ServiceNotifier = { ready() {}, reloading() {}, stopping() {}, status() {}, close() {} };

/** CLOCK_MONOTONIC in microseconds (what libuv's hrtime reads on Linux): the reference of MONOTONIC_USEC. */
const monotonicUsec = (): bigint => process.hrtime.bigint() / 1000n;

/** A status text as one line (STATUS= ends at the newline). */
const oneLine = (text: string): string => text.replace(/[\r\n]+/g, ' ').slice(0, 400);

export function systemdNotifier(env: NodeJS.ProcessEnv, logger: Logger): ServiceNotifier {
  const path = env['NOTIFY_SOCKET'];
  if (path === undefined || path === '') return silentNotifier;
  let fd: number | undefined;
  let warned = false;
  const send = (fields: string[]): void => {
    try {
      fd ??= unixDatagramSocket();
      sendToUnix(fd, path, Buffer.from(fields.join('\n') + '\n', 'utf8'));
    } catch (err) {
      // Readiness is the manager's business; a daemon that cannot tell it keeps running (and says so once).
      if (!warned) logger.warn({ err: (err as Error).message, notifySocket: path }, 'cannot notify the service manager (NOTIFY_SOCKET)');
      warned = true;
    }
  };
  return {
    ready: (status) => send(['READY=1', `STATUS=${oneLine(status)}`, `MAINPID=${process.pid}`]),
    reloading: () => send(['RELOADING=1', `MONOTONIC_USEC=${monotonicUsec()}`, 'STATUS=reloading the configuration']),
    stopping: (budgetMs) => send(['STOPPING=1', 'STATUS=stopping: draining connections', ...(budgetMs === undefined ? [] : [`EXTEND_TIMEOUT_USEC=${Math.ceil(budgetMs) * 1000}`])]),
    status: (text) => send([`STATUS=${oneLine(text)}`]),
    close: () => {
      if (fd !== undefined) closeFd(fd);
      fd = undefined;
    },
  };
}
