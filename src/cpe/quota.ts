/**
 * The uplinks' quota usage, counted from the observer's samples and kept in a small JSON file
 * (`quotaStateFile`) so that a restart or a reboot does not reset a metered link's count. Written atomically
 * (temporary file + rename) every `saveEveryMs` while bytes are counted, and on stop.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { addUsage, overQuota, type QuotaSpec, type QuotaUsage } from '../policy/quota.js';
import type { Logger } from '../log.js';

export class QuotaBook {
  readonly #path: string;
  readonly #logger: Logger;
  readonly #specs: Map<string, QuotaSpec>;
  #usage = new Map<string, QuotaUsage>();
  #dirty = false;
  #lastSave = 0;

  constructor(path: string, specs: Map<string, QuotaSpec>, logger: Logger) {
    this.#path = path;
    this.#specs = specs;
    this.#logger = logger;
  }

  get empty(): boolean {
    return this.#specs.size === 0;
  }

  async load(): Promise<void> {
    if (this.empty) return;
    try {
      const data = JSON.parse(await readFile(this.#path, 'utf8')) as { uplinks?: Record<string, QuotaUsage> };
      for (const [u, v] of Object.entries(data.uplinks ?? {})) {
        if (this.#specs.has(u) && Number.isFinite(v.periodStart) && Number.isFinite(v.bytes) && v.bytes >= 0) this.#usage.set(u, { periodStart: v.periodStart, bytes: v.bytes });
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.#logger.warn({ err: (err as Error).message, file: this.#path }, 'cannot read the quota state: counting from zero');
    }
  }

  /** Counts `bytes` on `uplink` at `now`. */
  add(uplink: string, bytes: number, now: number): void {
    const q = this.#specs.get(uplink);
    if (!q) return;
    const before = this.#usage.get(uplink);
    const after = addUsage(before, bytes, now, q);
    this.#usage.set(uplink, after);
    if (bytes > 0 || before?.periodStart !== after.periodStart) this.#dirty = true;
  }

  over(uplink: string, now: number): boolean {
    const q = this.#specs.get(uplink);
    return q !== undefined && overQuota(this.#usage.get(uplink), now, q);
  }

  view(uplink: string, now: number): { limit: number; used: number; period: string; over: boolean } | null {
    const q = this.#specs.get(uplink);
    if (!q) return null;
    const u = this.#usage.get(uplink);
    const used = u && u.periodStart === addUsage(undefined, 0, now, q).periodStart ? u.bytes : 0;
    return { limit: q.bytes, used, period: q.period, over: used >= q.bytes };
  }

  /** Writes the file when something changed and `force` or `saveEveryMs` passed. */
  async save(now: number, force = false, saveEveryMs = 10_000): Promise<void> {
    if (this.empty || !this.#dirty || (!force && now - this.#lastSave < saveEveryMs)) return;
    this.#dirty = false;
    this.#lastSave = now;
    const tmp = `${this.#path}.${process.pid}.tmp`;
    try {
      await mkdir(dirname(this.#path), { recursive: true, mode: 0o755 });
      await writeFile(tmp, JSON.stringify({ uplinks: Object.fromEntries(this.#usage) }) + '\n', { mode: 0o644 });
      await rename(tmp, this.#path);
    } catch (err) {
      this.#dirty = true;
      this.#logger.warn({ err: (err as Error).message, file: this.#path }, 'cannot save the quota state');
    }
  }
}
