/**
 * The session log: what an operator sharing addresses must keep (RFC 6888 section 4, "Logging"): the
 * time, the CPE (its address, or its key id with authentication), and the external address with its port or
 * port block. With port blocks (./port-blocks.ts) it holds one line per block allocation and release; per
 * connection lines (open, close) are on without port blocks and can be kept with them. Server addresses are
 * left out unless `sessionLogging.destinations` asks for them (REQ-12).
 *
 * Sinks: the daemon's log stream (stderr, lines with "log":"session"); a file of its own, reopened on SIGHUP
 * (move the file away, SIGHUP, the next line goes to a new file: logrotate without copytruncate); or syslog,
 * one datagram per line to a local socket (/dev/log: rsyslog or journald), RFC 3164 framing.
 */
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname } from 'node:path';
import { ConfigError } from '../control/config-file.js';
import { pino, type Logger } from 'pino';
import type { ConcentratorConfig } from './config.js';

export type SessionLine = Record<string, unknown>;

export interface SessionLogSink {
  write(line: SessionLine): void;
  /** Open the file again (rotation); a no-op for the other sinks. */
  reopen(): void;
  close(): Promise<void>;
}

/** What the log holds, read per line (a reload changes `portBlocks`, and with it the default of `connections`). */
export type SessionLogSettings = Pick<ConcentratorConfig, 'sessionLogging' | 'portBlocks'>;

/** Events written per connection; the rest (refusals, blocks) are always written. */
const CONNECTION_EVENTS = new Set(['open', 'close']);

export class SessionLog {
  readonly #sink: SessionLogSink;
  readonly #settings: () => SessionLogSettings;

  constructor(sink: SessionLogSink, settings: () => SessionLogSettings) {
    this.#sink = sink;
    this.#settings = settings;
  }

  /** Writes one line (the name of pino's method, so a plain logger can stand in for this class). */
  info(line: SessionLine): void {
    const s = this.#settings();
    if (!wanted(line, s)) return;
    this.#sink.write(redact(line, s));
  }

  reopen(): void {
    this.#sink.reopen();
  }

  close(): Promise<void> {
    return this.#sink.close();
  }
}

/** Whether a line is written under these settings. */
export function wanted(line: SessionLine, s: SessionLogSettings): boolean {
  const connections = s.sessionLogging.connections ?? s.portBlocks === undefined;
  return connections || !CONNECTION_EVENTS.has(String(line['event']));
}

/** The line without the server's address unless the settings ask for it (RFC 6888 REQ-12). */
export function redact(line: SessionLine, s: SessionLogSettings): SessionLine {
  if (s.sessionLogging.destinations || !('destination' in line)) return line;
  const { destination: _, ...rest } = line;
  return rest;
}

/** The daemon's own log stream: lines with "log":"session" among the others (the behaviour before sinks existed). */
export function loggerSink(logger: Logger): SessionLogSink {
  const child = logger.child({ log: 'session' });
  return { write: (line) => child.info(line), reopen: () => {}, close: async () => {} };
}

/**
 * A file of its own (sonic-boom, pino's destination): JSON lines with an ISO time, appended; `reopen()` opens the path again, so a file moved
 * away by logrotate keeps what was written and the next line starts a new file.
 */
export function fileSink(path: string, logger: Logger, now: () => number = Date.now): SessionLogSink {
  // Opened once here, synchronously: a file that cannot be written stops the start with a reason, instead of
  // a concentrator that shares addresses without its log. Created 0640 (the umask may narrow it).
  try {
    mkdirSync(dirname(path), { recursive: true });
    closeSync(openSync(path, 'a', 0o640));
  } catch (err) {
    throw new ConfigError(`sessionLogging.file ${path}: cannot open it for appending (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { cause: err });
  }
  const dest = pino.destination({ dest: path, append: true, mkdir: true, sync: false });
  dest.on('error', (err: unknown) => logger.error({ err, file: path }, 'session log file: write failed'));
  return {
    write: (line) => dest.write(`${JSON.stringify({ time: new Date(now()).toISOString(), log: 'session', ...line })}\n`),
    reopen: () => {
      dest.reopen();
      logger.info({ file: path }, 'session log file reopened');
    },
    close: () =>
      new Promise<void>((resolve) => {
        try {
          dest.flushSync();
        } catch {
          /* not open yet, or closed: nothing buffered to lose */
        }
        dest.end();
        dest.once('close', () => resolve());
        dest.once('error', () => resolve());
      }),
  };
}

const FACILITIES = { user: 1, daemon: 3, local0: 16, local1: 17, local2: 18, local3: 19, local4: 20, local5: 21, local6: 22, local7: 23 } as const;
const SEVERITY_INFO = 6;
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** One syslog message, RFC 3164 framing (what /dev/log readers parse): `<PRI>Mmm dd hh:mm:ss host tag[pid]: msg`. */
export function syslogMessage(o: { facility: keyof typeof FACILITIES; tag: string; pid: number; host: string; time: Date; msg: string }): string {
  const t = o.time;
  const two = (n: number) => String(n).padStart(2, '0');
  const stamp = `${MONTHS[t.getMonth()]} ${String(t.getDate()).padStart(2, ' ')} ${two(t.getHours())}:${two(t.getMinutes())}:${two(t.getSeconds())}`;
  return `<${FACILITIES[o.facility] * 8 + SEVERITY_INFO}>${stamp} ${o.host} ${o.tag}[${o.pid}]: ${o.msg}`;
}

/** Sends one datagram to a local socket path (the platform's AF_UNIX datagram socket). */
export type DatagramSender = (path: string, data: Buffer) => void;

/**
 * Syslog: one datagram per line to `socket`. The JSON carries its own ISO time (the syslog stamp has no year
 * nor zone). A line that cannot be sent (no syslog daemon, its queue full) is dropped and counted; the daemon's
 * log says so at most once a minute.
 */
export function syslogSink(options: ConcentratorConfig['sessionLogging']['syslog'], send: DatagramSender, logger: Logger, now: () => number = Date.now): SessionLogSink {
  const host = hostname().split('.')[0] ?? 'localhost';
  let dropped = 0;
  let warnedAt = -Infinity;
  return {
    write: (line) => {
      const time = new Date(now());
      const msg = JSON.stringify({ time: time.toISOString(), log: 'session', ...line });
      try {
        send(options.socket, Buffer.from(syslogMessage({ facility: options.facility, tag: options.tag, pid: process.pid, host, time, msg })));
      } catch (err) {
        dropped++;
        if (time.getTime() - warnedAt >= 60_000) {
          warnedAt = time.getTime();
          logger.warn({ err, socket: options.socket, dropped }, 'session log: syslog socket refused a line (dropped)');
        }
      }
    },
    reopen: () => {},
    close: async () => {},
  };
}

/** The session log a configuration asks for; undefined when `sessionLog` is off. */
export function createSessionLog(
  config: ConcentratorConfig,
  deps: { logger: Logger; settings: () => SessionLogSettings; sendDatagram?: DatagramSender | undefined },
): SessionLog | undefined {
  if (!config.sessionLog) return undefined;
  const s = config.sessionLogging;
  let sink: SessionLogSink;
  switch (s.sink) {
    case 'stderr':
      sink = loggerSink(deps.logger);
      break;
    case 'file':
      sink = fileSink(s.file ?? '', deps.logger);
      break;
    case 'syslog':
      if (!deps.sendDatagram) throw new Error('session log: the syslog sink needs a datagram sender');
      sink = syslogSink(s.syslog, deps.sendDatagram, deps.logger);
      break;
  }
  return new SessionLog(sink, deps.settings);
}
