/**
 * Volume quotas per uplink (metered links), as pure functions: which period a time falls in, and whether an
 * uplink has used its quota. The CPE counts usage from the interface's counters (src/cpe/quota.ts) and makes
 * an uplink past its quota a backup (it still carries traffic when no other uplink works: failover).
 */

export interface QuotaSpec {
  bytes: number;
  period: 'day' | 'month';
  /** Monthly periods start on this day of the month (1-28), at 00:00 UTC. */
  resetDay: number;
}

/** The start (ms, UTC) of the period that contains `now`. */
export function periodStart(now: number, q: Pick<QuotaSpec, 'period' | 'resetDay'>): number {
  const d = new Date(now);
  if (q.period === 'day') return Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate());
  const thisMonth = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), q.resetDay);
  return thisMonth <= now ? thisMonth : Date.UTC(d.getUTCFullYear(), d.getUTCMonth() - 1, q.resetDay);
}

export interface QuotaUsage {
  /** Start of the period the bytes belong to (ms). */
  periodStart: number;
  bytes: number;
}

/** Adds `bytes` at `now`; a new period starts from zero. */
export function addUsage(u: QuotaUsage | undefined, bytes: number, now: number, q: QuotaSpec): QuotaUsage {
  const start = periodStart(now, q);
  if (!u || u.periodStart !== start) return { periodStart: start, bytes };
  return { periodStart: start, bytes: u.bytes + bytes };
}

export function overQuota(u: QuotaUsage | undefined, now: number, q: QuotaSpec): boolean {
  return u !== undefined && u.periodStart === periodStart(now, q) && u.bytes >= q.bytes;
}
