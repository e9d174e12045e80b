/**
 * Files that hold secrets (the concentrator's keys file, a CPE's secret file): refused when others may read
 * them, and the secret text format shared by both: `hex:<hex>` or `base64:<base64>`, at least 16 bytes.
 */
import { readFile, stat } from 'node:fs/promises';
import { ConfigError } from './config-file.js';

export const SECRET_MIN_BYTES = 16;

/** Reads a secret-holding file after checking that no one but its owner and group can read or write it. */
export async function readSecretFile(path: string, what: string): Promise<string> {
  let mode: number;
  try {
    mode = (await stat(path)).mode;
  } catch (err) {
    throw new ConfigError(`Cannot read ${what} ${path}: ${(err as Error).message}`, { cause: err });
  }
  if ((mode & 0o007) !== 0) {
    const octal = (mode & 0o777).toString(8).padStart(4, '0');
    throw new ConfigError(`${what} ${path} is accessible to every user (mode ${octal}): it holds secrets. Run 'chmod 600 ${path}' (or 640 with the daemon's group)`);
  }
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`Cannot read ${what} ${path}: ${(err as Error).message}`, { cause: err });
  }
}

/** `hex:...` or `base64:...` to bytes; undefined with the reason otherwise (the caller names the file and entry). */
export function parseSecret(text: string): { ok: true; secret: Buffer } | { ok: false; why: string } {
  const t = text.trim();
  let secret: Buffer;
  if (t.startsWith('hex:')) {
    const h = t.slice(4);
    if (!/^([0-9a-fA-F]{2})+$/.test(h)) return { ok: false, why: 'hex: must be followed by an even number of hex digits' };
    secret = Buffer.from(h, 'hex');
  } else if (t.startsWith('base64:')) {
    const b = t.slice(7);
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b)) return { ok: false, why: 'base64: must be followed by base64 text' };
    secret = Buffer.from(b, 'base64');
  } else {
    return { ok: false, why: "a secret starts with 'hex:' or 'base64:' (e.g. the output of 'echo hex:$(openssl rand -hex 32)')" };
  }
  if (secret.length < SECRET_MIN_BYTES) return { ok: false, why: `${secret.length} bytes; at least ${SECRET_MIN_BYTES} (32 recommended)` };
  return { ok: true, secret };
}
