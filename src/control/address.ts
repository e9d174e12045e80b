/** Parsing of the `ADDR:PORT` / `[V6ADDR]:PORT` endpoints that operators write in configs and flags. */
import { isIP } from 'node:net';
import { MpconvertError } from '../errors.js';

export interface Endpoint {
  host: string;
  port: number;
  family: 4 | 6;
}

/** `allowPortZero`: for listeners, where port 0 asks the kernel for any free port (tests). */
export function parseEndpoint(text: string, options: { allowPortZero?: boolean } = {}): Endpoint {
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(text) ?? /^([^:[\]]+):(\d{1,5})$/.exec(text);
  if (!m) throw new MpconvertError('MPC_ERR_ENDPOINT', `Cannot parse endpoint "${text}": expected ADDR:PORT or [IPV6]:PORT`);
  const host = m[1] as string;
  const port = Number(m[2]);
  const family = isIP(host);
  const bracketed = text.startsWith('[');
  if (family === 0 || (bracketed && family !== 6)) throw new MpconvertError('MPC_ERR_ENDPOINT', `Cannot parse endpoint "${text}": "${host}" is not an IP address`);
  if (port < (options.allowPortZero ? 0 : 1) || port > 65535) throw new MpconvertError('MPC_ERR_ENDPOINT', `Cannot parse endpoint "${text}": port ${port} is out of range ${options.allowPortZero ? 0 : 1}-65535`);
  return { host, port, family: family as 4 | 6 };
}

export function formatEndpoint(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}
