/** Zod refinements shared by the roles' config schemas: endpoints and IP prefixes, with operator-readable messages. */
import { isIP } from 'node:net';
import { z } from 'zod';
import { parseEndpoint } from './address.js';

function endpointSchema(allowPortZero: boolean) {
  return z.string().refine((s) => {
    try {
      parseEndpoint(s, { allowPortZero });
      return true;
    } catch {
      return false;
    }
  }, 'must be ADDR:PORT or [IPV6]:PORT with an IP address');
}

/** `ADDR:PORT` / `[V6]:PORT`, port 1-65535. */
export const endpoint = endpointSchema(false);
/** The same for listeners, where port 0 asks the kernel for any free port. */
export const listenEndpoint = endpointSchema(true);

export const cidr = z.string().refine((s) => {
  const [addr, len, extra] = s.split('/');
  if (extra !== undefined || addr === undefined) return false;
  const fam = isIP(addr);
  if (fam === 0) return false;
  if (len === undefined) return true;
  const n = Number(len);
  return /^\d+$/.test(len) && n >= 0 && n <= (fam === 4 ? 32 : 128);
}, 'must be an IP prefix such as 198.18.0.0/15 or 2001:db8::/32');

export const ip = z.string().refine((s) => isIP(s) !== 0, 'must be an IP address');
