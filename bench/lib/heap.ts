/**
 * V8 heap snapshots (`node --heapsnapshot-signal`), summed by what the objects are: the JavaScript heap a
 * relayed connection costs, split by constructor, from two snapshots (before and with N idle connections).
 *
 * A .heapsnapshot is JSON: `nodes` is a flat array of `snapshot.meta.node_fields` per node, `type` indexes
 * `snapshot.meta.node_types[0]` and `name` indexes `strings`. Objects are grouped by their constructor name,
 * closures by their function name, everything else by its node type.
 */

export interface HeapGroup {
  /** `Socket`, `closure onData`, `(array)`, ... */
  what: string;
  count: number;
  bytes: number;
}

interface RawSnapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]] } };
  nodes: number[];
  strings: string[];
}

/** Self sizes summed per group (pure). */
export function summariseHeap(raw: RawSnapshot): Map<string, HeapGroup> {
  const fields = raw.snapshot.meta.node_fields;
  const types = raw.snapshot.meta.node_types[0];
  const width = fields.length;
  const iType = fields.indexOf('type');
  const iName = fields.indexOf('name');
  const iSize = fields.indexOf('self_size');
  if (iType < 0 || iName < 0 || iSize < 0 || width === 0) throw new Error('not a V8 heap snapshot (node_fields lack type, name or self_size)');
  const out = new Map<string, HeapGroup>();
  for (let i = 0; i + width <= raw.nodes.length; i += width) {
    const type = types[raw.nodes[i + iType]!] ?? '?';
    const name = raw.strings[raw.nodes[i + iName]!] ?? '?';
    const what = type === 'object' ? name : type === 'closure' ? `closure ${name || '(anonymous)'}` : `(${type})`;
    const g = out.get(what) ?? { what, count: 0, bytes: 0 };
    g.count++;
    g.bytes += raw.nodes[i + iSize]!;
    out.set(what, g);
  }
  return out;
}

/** after - before per group, largest growth first, per `per` (connections); groups that did not grow left out. */
export function diffHeap(before: Map<string, HeapGroup>, after: Map<string, HeapGroup>, per: number): HeapGroup[] {
  const rows: HeapGroup[] = [];
  for (const [what, a] of after) {
    const b = before.get(what);
    const bytes = (a.bytes - (b?.bytes ?? 0)) / per;
    const count = (a.count - (b?.count ?? 0)) / per;
    if (bytes > 0) rows.push({ what, count, bytes });
  }
  return rows.sort((x, y) => y.bytes - x.bytes);
}

/** The Markdown table of a diff: the top `top` groups and the total. */
export function renderHeapDiff(rows: HeapGroup[], per: number, top = 40): string {
  const total = rows.reduce((s, r) => s + r.bytes, 0);
  const lines = [
    `JavaScript heap growth per idle relayed connection (${per} held), by constructor: ${total.toFixed(0)} bytes in all.`,
    '',
    '| what | objects per connection | bytes per connection |',
    '|---|---|---|',
    ...rows.slice(0, top).map((r) => `| ${r.what.replace(/\|/g, '\\|').slice(0, 80)} | ${r.count.toFixed(2)} | ${r.bytes.toFixed(0)} |`),
  ];
  if (rows.length > top) lines.push(`| (${rows.length - top} more) | | ${rows.slice(top).reduce((s, r) => s + r.bytes, 0).toFixed(0)} |`);
  return lines.join('\n') + '\n';
}
