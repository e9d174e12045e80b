/**
 * Random loss on an uplink, injected with nftables (`numgen random`; this kernel has no netem): one table in
 * the CPE namespace with a rule per lossy uplink in each direction (prerouting for packets arriving on up{i},
 * postrouting for packets leaving through it). The whole table is replaced atomically on every change.
 */
import { MpconvertError } from '../errors.js';
import { LAB, uplinkAddressing } from './addressing.js';

/** Resolution of the loss percentage: numgen draws from 0..9999, so 0.01 % steps. */
const SCALE = 100;

export function checkLossPercent(percent: number): void {
  if (!Number.isFinite(percent) || percent < 0 || percent > 100) {
    throw new MpconvertError('MPC_ERR_LAB_SPEC', `Cannot set loss ${percent}%: expected 0..100`);
  }
}

/** The nft script that makes the loss table hold exactly `losses` (uplink index -> percent); empty map = no table. */
export function lossRuleset(losses: ReadonlyMap<number, number>): string {
  const table = `inet ${LAB.lossTable}`;
  for (const p of losses.values()) checkLossPercent(p);
  const active = [...losses.entries()].filter(([, p]) => p > 0).sort(([a], [b]) => a - b);
  // "table X" first makes "delete table X" valid whether or not it exists: one transaction either way.
  const head = `table ${table}\ndelete table ${table}\n`;
  if (active.length === 0) return head;
  const rule = (dir: 'iifname' | 'oifname', i: number, p: number) => {
    const dev = uplinkAddressing(i).cpeDev;
    return `    ${dir} "${dev}" numgen random mod ${100 * SCALE} < ${Math.round(p * SCALE)} counter drop comment "loss ${dev} ${p}"`;
  };
  return (
    head +
    `table ${table} {\n` +
    `  chain ingress {\n    type filter hook prerouting priority -300; policy accept;\n${active.map(([i, p]) => rule('iifname', i, p)).join('\n')}\n  }\n` +
    `  chain egress {\n    type filter hook postrouting priority 300; policy accept;\n${active.map(([i, p]) => rule('oifname', i, p)).join('\n')}\n  }\n` +
    `}\n`
  );
}

/** Reads the loss map back from `nft -j list table inet mpconvert_lab_loss` output (the rule comments). */
export function parseLossTable(json: string): Map<number, number> {
  const out = new Map<number, number>();
  let doc: { nftables?: Array<{ rule?: { comment?: string } }> };
  try {
    doc = JSON.parse(json) as typeof doc;
  } catch {
    return out;
  }
  for (const e of doc.nftables ?? []) {
    const m = e.rule?.comment !== undefined ? /^loss up(\d+) ([\d.]+)$/.exec(e.rule.comment) : null;
    if (m) out.set(Number(m[1]), Number(m[2]));
  }
  return out;
}
