/**
 * The life cycle both daemons share (`mpconvert cpe`, `mpconvert concentrator`): signals are handled from the
 * first instant, the `ready` line comes only once everything is up, and a stop always runs the role's
 * cleanup (the kernel changes it made) before the process exits.
 *
 * - SIGTERM / SIGINT: graceful stop, exit code 0. One that arrives during start-up waits for the start to
 *   finish, then stops (never the default action, which would leave nftables rules and MPTCP endpoints).
 *   Another one while stopping is logged and otherwise ignored: the cleanup has to finish.
 * - SIGHUP: `reload()` when the role has one; else logged (never the default action, which terminates).
 *   One SIGHUP during a reload runs one more reload after it (the file may have changed again).
 * - Start failure: logged, what was set up is removed (`stop()`), exit code 1.
 *
 * Under systemd (Type=notify) the service manager is told READY=1 with the ready line, RELOADING=1 then READY=1
 * around each reload, and STOPPING=1 with the stop's time budget (./notify.ts).
 */
import type { Logger } from '../log.js';
import { MpconvertError } from '../errors.js';
import { systemdNotifier, type ServiceNotifier } from './notify.js';

export interface DaemonRole {
  /**
   * Starts the role; resolves with what the `ready` line carries (JSON). `control.stop(reason)` asks for the
   * graceful stop a SIGTERM gives (the admin API's drain).
   */
  start(control: DaemonControl): Promise<unknown>;
  /** Graceful stop: removes everything the role set up. Also called after a failed start. */
  stop(reason: string): Promise<void>;
  /** SIGHUP; absent: the role has nothing to reload. */
  reload?(): Promise<void>;
  /** How long a stop may take (drain and cleanup): told to the service manager at STOPPING=1. */
  stopBudgetMs?(): number;
}

export interface DaemonControl {
  stop(reason: string): void;
}

export interface DaemonIo {
  /** Where the `ready` line goes (stdout). */
  write(line: string): void;
  /** Ends the process (process.exit). */
  exit(code: number): void;
  /** Signal subscription (process.on / process.off). */
  on(signal: NodeJS.Signals, handler: () => void): void;
  off(signal: NodeJS.Signals, handler: () => void): void;
  /** The service manager's notifications; absent: systemd's from $NOTIFY_SOCKET (a no-op without it). */
  notifier?: ServiceNotifier;
}

const processIo: DaemonIo = {
  write: (line) => process.stdout.write(line),
  exit: (code) => process.exit(code),
  on: (signal, handler) => process.on(signal, handler),
  off: (signal, handler) => process.off(signal, handler),
};

/** Runs `role` until a stop signal; resolves when the process is about to exit (tests inject `io`). */
export async function runDaemon(role: DaemonRole, logger: Logger, io: DaemonIo = processIo): Promise<void> {
  let phase: 'starting' | 'running' | 'stopping' = 'starting';
  let stopRequested: string | undefined;
  let finished!: () => void;
  const done = new Promise<void>((resolve) => (finished = resolve));
  const notifier = io.notifier ?? systemdNotifier(process.env, logger);

  let reloading: Promise<void> | undefined;
  let reloadAgain = false;
  const stop = async (reason: string): Promise<void> => {
    phase = 'stopping';
    logger.info({ signal: reason }, 'shutting down');
    notifier.stopping(role.stopBudgetMs?.());
    // A reload under way finishes first (it may be adding a listener the stop must close).
    await reloading;
    let code = 0;
    try {
      await role.stop(reason);
    } catch (err) {
      logger.error({ err }, 'the stop did not complete');
      code = 1;
    }
    for (const [s, h] of handlers) io.off(s, h);
    notifier.close();
    finished();
    io.exit(code);
  };
  const onStopSignal = (signal: NodeJS.Signals) => () => {
    if (phase === 'stopping' || stopRequested !== undefined) {
      logger.warn({ signal }, 'already stopping: waiting for the cleanup to finish');
      return;
    }
    if (phase === 'starting') {
      stopRequested = signal;
      logger.info({ signal }, 'stop requested during start-up: stopping once started');
      return;
    }
    void stop(signal);
  };
  const reload = async (): Promise<void> => {
    do {
      reloadAgain = false;
      notifier.reloading();
      let outcome = 'running; configuration reloaded';
      try {
        await role.reload!();
      } catch (err) {
        // A configuration mistake is one line naming it; only a program error carries its stack.
        if (err instanceof MpconvertError) logger.error({ code: err.code }, `SIGHUP: reload failed, keeping the running configuration: ${err.message}`);
        else logger.error({ err }, 'SIGHUP: reload failed, keeping the running configuration');
        outcome = `running; reload failed, the previous configuration stays: ${err instanceof Error ? err.message : String(err)}`;
      }
      // READY=1 ends the reload for the manager, whether it applied or not (the daemon still serves).
      if (phase === 'running') notifier.ready(outcome);
    } while (reloadAgain && phase === 'running');
    reloading = undefined;
  };
  const onHup = () => {
    if (phase !== 'running') {
      logger.warn({ signal: 'SIGHUP' }, `SIGHUP while ${phase}: ignored`);
      return;
    }
    if (!role.reload) {
      logger.warn({ signal: 'SIGHUP' }, 'SIGHUP: nothing to reload (restart to apply a new configuration)');
      return;
    }
    if (reloading) {
      reloadAgain = true;
      return;
    }
    reloading = reload();
  };
  const handlers: Array<[NodeJS.Signals, () => void]> = [
    ['SIGTERM', onStopSignal('SIGTERM')],
    ['SIGINT', onStopSignal('SIGINT')],
    ['SIGHUP', onHup],
  ];
  for (const [s, h] of handlers) io.on(s, h);

  let ready: unknown;
  try {
    ready = await role.start({
      stop: (reason) => {
        if (phase === 'running') void stop(reason);
        else if (phase === 'starting') stopRequested ??= reason;
      },
    });
  } catch (err) {
    // A known failure (configuration, a listener, the kernel) is one line that says what is wrong; only a
    // program error carries its stack.
    if (err instanceof MpconvertError) logger.fatal({ code: err.code }, `cannot start: ${err.message}`);
    else logger.fatal({ err }, 'cannot start');
    phase = 'stopping';
    await role.stop('start failed').catch((stopErr: unknown) => logger.error({ err: stopErr }, 'could not remove everything after the failed start'));
    for (const [s, h] of handlers) io.off(s, h);
    notifier.close();
    finished();
    io.exit(1);
    return done;
  }
  if (stopRequested !== undefined) {
    void stop(stopRequested);
    return done;
  }
  phase = 'running';
  // Tell a supervisor (and the tests) that everything is up.
  io.write(`ready ${JSON.stringify(ready)}\n`);
  notifier.ready(`running ${JSON.stringify(ready)}`);
  return done;
}

/** Seconds a stop may take beyond the drain: closing listeners, removing nft tables, rules, routes, endpoints. */
export const STOP_CLEANUP_S = 15;

/** `--prepare`: runs `apply` (the sysctls), prints its lines; exit code 0, or 1 naming what failed. */
export async function runPrepare(role: string, apply: () => Promise<string[]>, io: { out: (s: string) => void; err: (s: string) => void } = { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) }): Promise<number> {
  try {
    for (const line of await apply()) io.out(`mpconvert ${role} --prepare: ${line}\n`);
    return 0;
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    io.err(`mpconvert ${role} --prepare: ${why}${/EACCES|EPERM|permission denied|Read-only/i.test(why) ? ' (run it as root: the unit runs it with the + prefix)' : ''}\n`);
    return 1;
  }
}
