/** A systemd unit file read the way systemd reads it: sections, keys, and every value of a repeated key. */
import { readFileSync } from 'node:fs';

export type Unit = Map<string, Map<string, string[]>>;

export function parseUnit(text: string): Unit {
  const unit: Unit = new Map();
  let section: Map<string, string[]> | undefined;
  // Continuation lines (a trailing backslash) join the next line.
  for (const raw of text.replace(/\\\n/g, ' ').split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      section = unit.get(header[1]!) ?? new Map<string, string[]>();
      unit.set(header[1]!, section);
      continue;
    }
    const eq = line.indexOf('=');
    if (!section || eq < 0) throw new Error(`Cannot parse unit line: ${line}`);
    const key = line.slice(0, eq).trim();
    const value = line.slice(eq + 1).trim();
    section.set(key, [...(section.get(key) ?? []), value]);
  }
  return unit;
}

export function readUnit(path: string): Unit {
  return parseUnit(readFileSync(path, 'utf8'));
}

/** The last value of a key (what systemd uses for single-valued keys). */
export function value(unit: Unit, section: string, key: string): string | undefined {
  return unit.get(section)?.get(key)?.at(-1);
}

/** Capability names of a (possibly repeated) capability key: `CAP_NET_ADMIN CAP_NET_RAW` -> ['CAP_NET_ADMIN', ...]. */
export function capabilities(unit: Unit, key: 'AmbientCapabilities' | 'CapabilityBoundingSet'): string[] {
  return (unit.get('Service')?.get(key) ?? []).flatMap((v) => v.split(/\s+/).filter(Boolean));
}

/** Splits an Exec line into its prefix characters (`+`, `-`, `@`, `!`, `:`) and its arguments. */
export function execLine(line: string): { prefix: string; argv: string[] } {
  const m = /^([-+@!:]*)(.*)$/.exec(line)!;
  return { prefix: m[1]!, argv: m[2]!.trim().split(/\s+/) };
}
