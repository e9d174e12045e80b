import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { REFUSALS, refuse, refusalLabel, refusalReaction } from '../../../src/policy/refusals.js';

const docs = readFileSync(fileURLToPath(new URL('../../../../docs/concentrator.md', import.meta.url)), 'utf8');

test('every refusal code is in the table of docs/concentrator.md, with its Error TLV code', () => {
  const rows = new Map<string, string>();
  for (const line of docs.split('\n')) {
    const m = /^\| `([a-z0-9-]+)(?::<[a-z]+>)?` \| ([^|]+) \|/.exec(line);
    if (m) rows.set(m[1]!, m[2]!.trim());
  }
  for (const [code, spec] of Object.entries(REFUSALS)) {
    const row = rows.get(code);
    assert.ok(row !== undefined, `refusal code ${code} is documented in docs/concentrator.md`);
    const tlv = (spec as { convertError?: number }).convertError;
    if (tlv !== undefined && code !== 'dial' && code !== 'destination') assert.equal(row, String(tlv), `${code}: the documented Error TLV`);
  }
});

test('reactions: MP_CONVERT always aborts; RFC 8803 gets the table code, a gate override, or the decoder own reaction', () => {
  assert.deepEqual(refusalReaction(refuse('rate-per-cpe'), 'mp-convert'), { kind: 'abort' });
  assert.deepEqual(refusalReaction(refuse('rate-per-cpe'), undefined), { kind: 'abort' });
  assert.deepEqual(refusalReaction(refuse('rate-per-cpe'), 'rfc8803'), { kind: 'convert-error', errorCode: 64 });
  assert.deepEqual(refusalReaction(refuse('destination', { convertError: 1 }), 'rfc8803'), { kind: 'convert-error', errorCode: 1 });
  assert.deepEqual(refusalReaction(refuse('not-customer'), 'rfc8803'), { kind: 'abort' });
  const own = { kind: 'convert-error' as const, errorCode: 1, value: 0, extra: Buffer.from('x') };
  assert.deepEqual(refusalReaction(refuse('signalling', { qualifier: 'MPC_ERR_CONVERT_MALFORMED', reaction: own }), undefined), own);
  assert.equal(refusalLabel(refuse('dial', { qualifier: 'ETIMEDOUT' })), 'dial:ETIMEDOUT');
  assert.equal(refusalLabel(refuse('tcp-fallback')), 'tcp-fallback');
});
