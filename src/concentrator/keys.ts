/**
 * The concentrator's keys file: per-CPE credentials for the authenticator (docs/concentrator.md,
 * "Authentication"). YAML:
 *   keys:
 *     - { id: cpe-0042-2026a, secret: "hex:...", cpe: cpe-0042, from: [198.51.100.0/24] }
 * `cpe` (default: the id) groups the keys of one CPE (two during a rotation); `from` optionally restricts
 * the source prefixes. Read at start and on SIGHUP; refused when every user may read it.
 */
import { parse } from 'yaml';
import { z } from 'zod';
import { ConfigError, formatIssues } from '../control/config-file.js';
import { cidr } from '../control/schema.js';
import { parseSecret, readSecretFile } from '../control/secret-file.js';
import { isValidKeyId } from '../protocol/auth.js';
import { PrefixSet } from '../policy/prefix-set.js';
import type { CpeKey, KeyRing } from '../policy/auth.js';

const keyIdSchema = z.string().refine(isValidKeyId, 'a key id is 1-32 of A-Z a-z 0-9 . _ : -');

const keysFileSchema = z.strictObject({
  keys: z.array(
    z.strictObject({
      id: keyIdSchema,
      secret: z.string(),
      cpe: z.string().min(1).max(64).optional(),
      from: z.array(cidr).min(1).optional(),
    }),
  ),
});

export function parseKeysFile(text: string, path: string): KeyRing {
  let raw: unknown;
  try {
    raw = parse(text) as unknown;
  } catch (err) {
    throw new ConfigError(`Keys file ${path} is not valid YAML: ${(err as Error).message}`, { cause: err });
  }
  const r = keysFileSchema.safeParse(raw ?? {});
  if (!r.success) throw new ConfigError(`Invalid keys file ${path}:\n${formatIssues(r.error)}`);
  const ring = new Map<string, CpeKey>();
  const problems: string[] = [];
  r.data.keys.forEach((k, i) => {
    const s = parseSecret(k.secret);
    if (!s.ok) problems.push(`  keys.${i} (${k.id}): secret: ${s.why}`);
    if (ring.has(k.id)) problems.push(`  keys.${i}: key id ${k.id} appears twice (each key id names one secret)`);
    if (s.ok) ring.set(k.id, { id: k.id, secret: s.secret, cpe: k.cpe ?? k.id, from: k.from ? PrefixSet.from(k.from) : undefined });
  });
  if (problems.length) throw new ConfigError(`Invalid keys file ${path}:\n${problems.join('\n')}`);
  return ring;
}

export async function loadKeysFile(path: string): Promise<KeyRing> {
  return parseKeysFile(await readSecretFile(path, 'keys file'), path);
}
