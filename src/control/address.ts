/** Parsing of the `ADDR:PORT` / `[V6ADDR]:PORT` endpoints that operators write in configs and flags. */
import { isIP } from 'node:net';
import { MpconvertError } from '../errors.js';

export interface Endpoint {
  host: string;
  port: number;
  family: 4 | 6;
}

export function parseEndpoint(text: string): Endpoint {
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(text) ?? /^([^:[\]]+):(\d{1,5})$/.exec(text);
  if (!m) throw new MpconvertError('MPC_ERR_ENDPOINT', `Cannot parse endpoint "${text}": expected ADDR:PORT or [IPV6]:PORT`);
  const host = m[1] as string;
  const port = Number(m[2]);
  const family = isIP(host);
  if (family === 0) throw new MpconvertError('MPC_ERR_ENDPOINT', `Cannot parse endpoint "${text}": "${host}" is not an IP address`);
  if (port < 1 || port > 65535) throw new MpconvertError('MPC_ERR_ENDPOINT', `Cannot parse endpoint "${text}": port ${port} is out of range 1-65535`);
  return { host, port, family: family as 4 | 6 };
}

export function formatEndpoint(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}
