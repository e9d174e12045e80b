/** Summary of a V8 .cpuprofile: self time per function (and per file), the top entries as markdown. */

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

const short = (url: string) => {
  if (!url) return '(native)';
  const i = url.indexOf('/dist/');
  if (i >= 0) return url.slice(i + 6);
  return url.replace(/^file:\/\/.*node_modules\//, '').replace(/^node:/, 'node:');
};

export function summariseProfile(p: CpuProfile, title: string, top = 20): string {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  p.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + (p.timeDeltas[i] ?? 0)));
  const total = [...self.values()].reduce((s, x) => s + x, 0) || 1;
  const fn = new Map<string, number>();
  const file = new Map<string, number>();
  let idle = 0;
  for (const [id, us] of self) {
    const n = byId.get(id);
    if (!n) continue;
    const name = n.callFrame.functionName || '(anonymous)';
    if (name === '(idle)') {
      idle += us;
      continue;
    }
    const key = `${name} ${short(n.callFrame.url)}${n.callFrame.url ? `:${n.callFrame.lineNumber + 1}` : ''}`;
    fn.set(key, (fn.get(key) ?? 0) + us);
    const f = n.callFrame.url ? short(n.callFrame.url) : name;
    file.set(f, (file.get(f) ?? 0) + us);
  }
  const busy = total - idle || 1;
  // Inclusive time of the project's own functions (src/): each sample counts once for every function on its stack.
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const keyOf = (n: ProfileNode) => `${n.callFrame.functionName || '(anonymous)'} ${short(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`;
  const inclusive = new Map<string, number>();
  for (const [id, us] of self) {
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const n = byId.get(cur);
      if (!n || !short(n.callFrame.url).startsWith('src/')) continue;
      const k = keyOf(n);
      if (seen.has(k)) continue;
      seen.add(k);
      inclusive.set(k, (inclusive.get(k) ?? 0) + us);
    }
  }
  const rows = (m: Map<string, number>) =>
    [...m]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([k, us]) => `| ${(us / 1e6).toFixed(2)} | ${((100 * us) / busy).toFixed(1)}% | \`${k.replace(/\|/g, '\\|')}\` |`)
      .join('\n');
  return [
    `## ${title} CPU profile (node --cpu-prof)`,
    '',
    `Profile ${(total / 1e6).toFixed(1)} s, of which idle ${(idle / 1e6).toFixed(1)} s. Shares are of the non-idle time.`,
    '',
    '### Self time by function',
    '',
    '| self s | share | function |',
    '|---|---|---|',
    rows(fn),
    '',
    "### Inclusive time of mpconvert's own functions (src/)",
    '',
    '| inclusive s | share | function |',
    '|---|---|---|',
    rows(inclusive),
    '',
    '### Self time by file',
    '',
    '| self s | share | file |',
    '|---|---|---|',
    rows(file),
    '',
  ].join('\n');
}
