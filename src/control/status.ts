/**
 * `mpconvert status`: a daemon's readiness and status, read from its admin endpoint, as text for a terminal
 * (the same data as GET /healthz and GET /status).
 */
import { Command } from 'commander';
import { parseEndpoint, formatEndpoint, type Endpoint } from './address.js';
import { loadAdminToken } from './admin.js';

/** Nested JSON as indented `key: value` lines. */
export function statusText(value: unknown, indent = ''): string[] {
  if (value === null || typeof value !== 'object') return [`${indent}${String(value)}`];
  const lines: string[] = [];
  for (const [k, v] of Array.isArray(value) ? value.map((x, i) => [String(i), x] as const) : Object.entries(value)) {
    if (v !== null && typeof v === 'object' && Object.keys(v).length > 0) {
      lines.push(`${indent}${k}:`, ...statusText(v, `${indent}  `));
    } else {
      lines.push(`${indent}${k}: ${v !== null && typeof v === 'object' ? (Array.isArray(v) ? '[]' : '{}') : String(v)}`);
    }
  }
  return lines;
}

/** Reads /healthz and /status; returns the text and whether the daemon is ready. */
export async function readStatus(admin: Endpoint, timeoutMs = 3_000, token?: string): Promise<{ ready: boolean; text: string }> {
  const base = `http://${formatEndpoint(admin.host, admin.port)}`;
  const signal = AbortSignal.timeout(timeoutMs);
  const health = await fetch(`${base}/healthz`, { signal });
  const healthText = (await health.text()).trim();
  const res = await fetch(`${base}/status`, { signal, ...(token ? { headers: { authorization: `Bearer ${token}` } } : {}) });
  if (res.status === 401) throw new Error(token ? 'the token was refused (401)' : 'the admin API needs a token: pass --token-file');
  if (!res.ok) throw new Error(`GET /status answered ${res.status}`);
  const status = (await res.json()) as unknown;
  return { ready: health.status === 200, text: [`readiness: ${healthText}`, ...statusText(status)].join('\n') + '\n' };
}

export function statusCommand(): Command {
  return new Command('status')
    .description("Show a daemon's readiness and status from its admin endpoint (GET /healthz, /status)")
    .option('--admin <addr:port>', 'the daemon\'s admin endpoint', '127.0.0.1:9091')
    .option('--token-file <file>', 'the admin token file (adminTokenFile of the daemon)')
    .action(async (o: { admin: string; tokenFile?: string }) => {
      try {
        const token = o.tokenFile ? await loadAdminToken(o.tokenFile) : undefined;
        const r = await readStatus(parseEndpoint(o.admin), 3_000, token);
        process.stdout.write(r.text);
        process.exitCode = r.ready ? 0 : 1;
      } catch (err) {
        process.stderr.write(`mpconvert status: cannot read ${o.admin}: ${(err as Error).message} (is the daemon running with admin: "${o.admin}"?)\n`);
        process.exitCode = 2;
      }
    });
}
