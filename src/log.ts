import { fstatSync } from 'node:fs';
import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * json: one JSON object per line. journald: the same lines behind a syslog priority prefix (`<3>{...}`), which
 * journald strips into the entry's PRIORITY (SyslogLevelPrefix=, on by default), and without the time
 * (journald stamps every entry). auto: journald when stderr is the journal ($JOURNAL_STREAM names it).
 */
export type LogFormat = 'json' | 'journald' | 'auto';
export const LOG_FORMATS: readonly LogFormat[] = ['auto', 'json', 'journald'];

/** pino level number to syslog priority: fatal crit(2), error err(3), warn warning(4), info info(6), debug/trace debug(7). */
export function syslogPriority(level: number): number {
  if (level >= 60) return 2;
  if (level >= 50) return 3;
  if (level >= 40) return 4;
  if (level >= 30) return 6;
  return 7;
}

/** The `<N>` prefix for one pino line: its level is the first key (`{"level":30,...`). */
export function journaldLine(line: string): string {
  const m = /^\{"level":(\d+)/.exec(line);
  return `<${m ? syslogPriority(Number(m[1])) : 6}>${line}`;
}

/** Whether stderr is connected to the journal: $JOURNAL_STREAM is "device:inode" of that stream (systemd.exec(5)). */
export function stderrIsJournal(env: NodeJS.ProcessEnv = process.env, fd = 2): boolean {
  const stream = env['JOURNAL_STREAM'];
  if (!stream) return false;
  const [dev, ino] = stream.split(':');
  try {
    const st = fstatSync(fd, { bigint: true });
    return String(st.dev) === dev && String(st.ino) === ino;
  } catch {
    return false;
  }
}

export function resolveLogFormat(format: LogFormat | undefined, env: NodeJS.ProcessEnv = process.env): 'json' | 'journald' {
  const f = format ?? (env['MPCONVERT_LOG_FORMAT'] as LogFormat | undefined) ?? 'auto';
  if (f === 'journald' || f === 'json') return f;
  return stderrIsJournal(env) ? 'journald' : 'json';
}

/** The components' logger: structured JSON lines on stderr (stdout stays free for command output). */
export function createLogger(options: { level?: string; name?: string; format?: LogFormat } = {}): Logger {
  const journald = resolveLogFormat(options.format) === 'journald';
  return pino(
    {
      level: options.level ?? process.env['MPCONVERT_LOG_LEVEL'] ?? 'info',
      base: options.name ? { name: options.name } : {},
      ...(journald ? { timestamp: false, hooks: { streamWrite: journaldLine } } : {}),
    },
    pino.destination(2),
  );
}

/** A logger that drops everything, for tests and library use. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
