import assert from 'node:assert/strict';
import type { DoctorCheck } from '../../src/control/doctor-checks.js';

/** Parses the doctor's text back into checks and compares them with its JSON report (also used by the lab test). */
export function assertAgree(text: string, json: unknown): void {
  const report = json as { ok: boolean; failed: number; total: number; checks: DoctorCheck[] };
  const parsed: DoctorCheck[] = [];
  const lines = text.trimEnd().split('\n');
  const summary = lines.pop() ?? '';
  for (const line of lines) {
    const m = /^(?: ok |FAIL) {2}(\S+)\s+(.*)$/.exec(line);
    if (m) {
      parsed.push({ name: m[1]!, ok: line.startsWith(' ok '), detail: m[2]! });
      continue;
    }
    const f = /^\s+(fix|hint): (.*)$/.exec(line);
    assert.ok(f && parsed.length > 0, `unexpected line: ${line}`);
    const last = parsed[parsed.length - 1]!;
    assert.equal(f[1], last.ok ? 'hint' : 'fix', line);
    last.fix = f[2]!;
  }
  assert.deepEqual(parsed, report.checks);
  assert.equal(report.total, report.checks.length);
  assert.equal(report.failed, report.checks.filter((c) => !c.ok).length);
  assert.equal(report.ok, report.failed === 0);
  assert.equal(summary, report.ok ? `all ${report.total} checks passed` : `${report.failed} of ${report.total} checks failed`);
}
