/** Reading Prometheus text in tests: sums by label, and what changed between two scrapes. */

/** Sum of a family's samples by the value of one label (`reason`, `result`, `to`...). */
export function byLabel(text: string, name: string, label: string): Record<string, number> {
  const out: Record<string, number> = {};
  const re = new RegExp(`^${name}\\{[^}]*${label}="([^"]+)"[^}]*\\} (\\S+)$`);
  for (const line of text.split('\n')) {
    const m = re.exec(line);
    if (m) out[m[1]!] = (out[m[1]!] ?? 0) + Number(m[2]);
  }
  return out;
}

/** The non-zero differences b - a. */
export function delta(a: Record<string, number>, b: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) if ((b[k] ?? 0) !== (a[k] ?? 0)) out[k] = (b[k] ?? 0) - (a[k] ?? 0);
  return out;
}

export const sum = (r: Record<string, number>): number => Object.values(r).reduce((x, y) => x + y, 0);

/** One sample's value: the sum of the lines of `name` whose labels contain `labels` (0 when none). */
export function metric(text: string, name: string, labels = ''): number {
  return text
    .split('\n')
    .filter((l) => l.startsWith(`${name}{`) && l.includes(labels))
    .reduce((a, l) => a + Number(l.split(' ').pop()), 0);
}
