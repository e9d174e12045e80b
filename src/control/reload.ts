/**
 * SIGHUP reloads: which top-level configuration keys changed, which of them the running daemon applies and
 * which need a restart. The daemon logs one line per applied change and one warning naming the keys it
 * kept at their running value, and /status shows the last report, so a reload never ignores a key silently.
 */
import type { Logger } from '../log.js';

export interface ReloadReport {
  /** When (ms since the epoch). */
  at: number;
  /** Changed keys now in effect. */
  applied: string[];
  /** Changed keys that keep their running value until a restart. */
  needRestart: string[];
}

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

/** The top-level keys whose value differs between `old` and `next`, split by `live` (the keys applied at once). */
export function diffConfig<T extends object>(old: T, next: T, live: ReadonlySet<string>, now = Date.now()): ReloadReport {
  const keys = new Set([...Object.keys(old), ...Object.keys(next)]);
  const applied: string[] = [];
  const needRestart: string[] = [];
  for (const k of [...keys].sort()) {
    if (same((old as Record<string, unknown>)[k], (next as Record<string, unknown>)[k])) continue;
    (live.has(k) ? applied : needRestart).push(k);
  }
  return { at: now, applied, needRestart };
}

/**
 * The configuration the daemon runs after a reload: `next`, except that the keys needing a restart keep
 * their running value (so /status and later reloads compare against what is really in force).
 */
export function effectiveConfig<T extends object>(old: T, next: T, report: ReloadReport): T {
  const out = { ...next } as Record<string, unknown>;
  for (const k of report.needRestart) {
    if (k in old) out[k] = (old as Record<string, unknown>)[k];
    else delete out[k];
  }
  return out as T;
}

/** Logs a reload report: each applied key with its old and new value, one warning for the rest. */
export function logReload<T extends object>(logger: Logger, old: T, next: T, report: ReloadReport): void {
  for (const k of report.applied) {
    logger.info({ key: k, from: (old as Record<string, unknown>)[k] ?? null, to: (next as Record<string, unknown>)[k] ?? null }, `reload: ${k} changed`);
  }
  if (report.needRestart.length > 0) {
    logger.warn({ keys: report.needRestart }, `reload: ${report.needRestart.join(', ')} changed but only take effect after a restart (running values kept)`);
  }
  logger.info({ applied: report.applied, needRestart: report.needRestart }, report.applied.length + report.needRestart.length === 0 ? 'configuration reloaded: nothing changed' : 'configuration reloaded');
}
