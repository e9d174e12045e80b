/** The process's descriptor budget from /proc/self (RLIMIT_NOFILE as `Max open files`, and /proc/self/fd). */
import { readdirSync, readFileSync } from 'node:fs';
import type { ProcessResources } from '../types.js';

/** The soft limit from the text of /proc/self/limits; Infinity for "unlimited" or when absent. */
export function parseOpenFilesLimit(limits: string): number {
  const line = limits.split('\n').find((l) => l.startsWith('Max open files'));
  const soft = line?.slice('Max open files'.length).trim().split(/\s+/)[0];
  const n = Number(soft);
  return soft === undefined || soft === 'unlimited' || !Number.isFinite(n) ? Infinity : n;
}

export const linuxProcessResources: ProcessResources = {
  descriptors() {
    return { open: readdirSync('/proc/self/fd').length, limit: parseOpenFilesLimit(readFileSync('/proc/self/limits', 'utf8')) };
  },
};
