/** One registry of error codes: every code the source uses is registered and documented. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ERROR_CODES } from '../../src/errors.js';
import { PROTOCOL_ERRORS } from '../../src/protocol/errors.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? sources(p) : p.endsWith('.ts') ? [p] : [];
  });
}

test('every MPC_ERR_ code in src/ is registered (ERROR_CODES or PROTOCOL_ERRORS) and documented', () => {
  const used = new Set<string>();
  for (const f of sources(join(root, 'src'))) for (const m of readFileSync(f, 'utf8').matchAll(/'(MPC_ERR_[A-Z0-9_]+)'/g)) used.add(m[1]!);
  assert.ok(used.size > 20, `found the codes (${used.size})`);
  const architecture = readFileSync(join(root, 'docs/architecture.md'), 'utf8');
  const protocol = readFileSync(join(root, 'docs/protocol.md'), 'utf8');
  for (const code of used) {
    const inRegistry = code in ERROR_CODES || code in PROTOCOL_ERRORS;
    assert.ok(inRegistry, `${code} is in a registry`);
  }
  for (const code of Object.keys(ERROR_CODES)) assert.ok(architecture.includes(`\`${code}\``), `${code} is documented in docs/architecture.md`);
  for (const code of Object.keys(PROTOCOL_ERRORS)) assert.ok(protocol.includes(code), `${code} is documented in docs/protocol.md`);
});
