/**
 * A lab's state file, /run/mpconvert/lab-<prefix>.json: written before the first namespace is made and removed
 * after the last is gone, so `lab status/down/exec` in another process find the lab, and `lab down --all` can
 * tell a crashed run (owner process gone) from a live one.
 */
import { mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const STATE_DIR = process.env['MPCONVERT_LAB_STATE_DIR'] ?? '/run/mpconvert';

export interface LabState {
  version: 1;
  prefix: string;
  uplinks: Array<{ rate: string | 0; rttMs?: number; cgn?: boolean; mtu?: number }>;
  servers: number;
  mptcpRouting: boolean;
  /** Absent: the classic topology. */
  topology?: 'field' | 'onpath' | 'many';
  /** Many-CPE topology: the number of CPEs and the shared server link's tbf rate (0 = unshaped). */
  cpes?: number;
  serverRate?: string | 0;
  namespaces: string[];
  /** The process that removes the lab on exit; null = persistent (made by `mpconvert lab up`). */
  owner: { pid: number; start: string } | null;
  createdAt: string;
}

export function statePath(prefix: string, dir = STATE_DIR): string {
  return join(dir, `lab-${prefix}.json`);
}

export function writeState(state: LabState, dir = STATE_DIR): void {
  mkdirSync(dir, { recursive: true });
  const path = statePath(state.prefix, dir);
  writeFileSync(`${path}.tmp`, JSON.stringify(state, null, 2) + '\n');
  renameSync(`${path}.tmp`, path);
}

export function readState(prefix: string, dir = STATE_DIR): LabState | null {
  try {
    return JSON.parse(readFileSync(statePath(prefix, dir), 'utf8')) as LabState;
  } catch {
    return null;
  }
}

/** Files a lab's processes keep (DHCP leases, pid files, dnsmasq logs): removed with the state. */
export function runDir(prefix: string, dir = STATE_DIR): string {
  return join(dir, `lab-${prefix}.d`);
}

export function removeState(prefix: string, dir = STATE_DIR): void {
  rmSync(statePath(prefix, dir), { force: true });
  rmSync(runDir(prefix, dir), { recursive: true, force: true });
}

export function listStates(dir = STATE_DIR): LabState[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const out: LabState[] = [];
  for (const n of names) {
    const m = /^lab-(.+)\.json$/.exec(n);
    if (!m) continue;
    const s = readState(m[1]!, dir);
    if (s) out.push(s);
  }
  return out;
}

/** The start time of a process (field 22 of /proc/PID/stat), to tell a live owner from a reused pid. */
export function processStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[19] ?? null;
  } catch {
    return null;
  }
}

export function ownerAlive(owner: LabState['owner']): boolean {
  if (owner === null) return false;
  return processStart(owner.pid) === owner.start;
}
