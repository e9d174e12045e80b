import { pino, type Logger } from 'pino';

export type { Logger };

/** The components' logger: structured JSON lines on stderr (stdout stays free for command output). */
export function createLogger(options: { level?: string; name?: string } = {}): Logger {
  return pino(
    { level: options.level ?? process.env['MPCONVERT_LOG_LEVEL'] ?? 'info', base: options.name ? { name: options.name } : {} },
    pino.destination(2),
  );
}

/** A logger that drops everything, for tests and library use. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
