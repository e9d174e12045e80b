/**
 * The admin endpoint of both daemons (plain node:http; docs/operations.md lists every route with examples).
 *
 * Read:  GET /healthz (readiness: 200 "ok", or 503 with the reason; never authenticated, for supervisors and
 *        load balancers), /metrics (Prometheus text), /status (JSON), /connections (?subflows=1, ?limit=N,
 *        ?cpe=ID), /events (server-sent events: the role's live state once a second, the dashboard's feed),
 *        / (the dashboard page) and /assets/ (uPlot, served from its npm package).
 * Write: POST /drain (stop accepting, finish the open connections, exit), POST /uplinks/NAME/mode
 *        ({"mode":"backup"|"subflow"}), DELETE /connections/ID, DELETE /cpes/ID (every connection of one CPE).
 *
 * Authentication: a bearer token read from a file (`adminTokenFile`), in `Authorization: Bearer TOKEN` or, for
 * the dashboard page and its EventSource (which cannot set headers), `?access_token=TOKEN` (RFC 6750 section
 * 2.3). Without a token file only a loopback address may be bound (the check at start). Every request is
 * logged once it ends, with its status.
 */
import http from 'node:http';
import { once } from 'node:events';
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isIP } from 'node:net';
import type { Registry, Counter } from 'prom-client';
import type { Endpoint } from './address.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { ConfigError } from './config-file.js';
import { readSecretFile } from './secret-file.js';
import { dashboardPage } from './dashboard.js';

/** Whether the component can do its job now, and if not, why (for the 503 body and for operators). */
export type Readiness = { ready: true } | { ready: false; reason: string };

/** What a role offers through the admin endpoint; absent members are routes answered 404. */
export interface AdminApi {
  registry: Registry;
  /** The /metrics text when it is more than `registry` (the concentrator's primary adds its workers'). */
  metricsText?(): Promise<string>;
  status(): unknown;
  readiness?(): Readiness;
  /** The live state (the dashboard's once-a-second event). */
  live?(): unknown;
  /** Sent once to each new event stream before the first live event (the charts' past). */
  history?(): unknown;
  connections?(q: { subflows: boolean; limit: number; cpe?: string }): unknown;
  /** Calls `onChange` when the state changes between periodic events (an uplink going down); returns the unsubscribe. */
  watch?(onChange: () => void): () => void;
  drain?(): void;
  setUplinkMode?(uplink: string, mode: 'subflow' | 'backup'): Promise<void>;
  closeConnection?(id: number): boolean;
  closeCpe?(cpe: string): number;
}

export interface AdminOptions {
  endpoint: Endpoint;
  /** The bearer token; undefined = none (only a loopback bind is allowed). */
  token?: string | undefined;
  logger?: Logger;
  /** mpconvert_admin_requests_total. */
  requests?: Counter<'route' | 'status'>;
  /** The dashboard's title ('cpe', 'concentrator'). */
  role?: string;
  /** Live event period (default 1 s). */
  liveIntervalMs?: number;
  /** Concurrent event streams (default 16): more are answered 503. */
  maxStreams?: number;
}

export interface AdminServer {
  readonly port: number;
  close(): Promise<void>;
}

/** Bytes of a request body (write operations take a small JSON object). */
const MAX_BODY = 4096;
export const ADMIN_TOKEN_MIN = 16;

export function isLoopback(host: string): boolean {
  if (isIP(host) === 4) return host.startsWith('127.');
  const h = host.toLowerCase();
  return h === '::1' || h.startsWith('::ffff:127.');
}

/** Reads the admin token file (mode checked like every secret file): its first line, at least 16 characters. */
export async function loadAdminToken(path: string): Promise<string> {
  const token = (await readSecretFile(path, 'admin token file')).split('\n')[0]?.trim() ?? '';
  if (token.length < ADMIN_TOKEN_MIN) throw new ConfigError(`admin token file ${path}: the token has ${token.length} characters, at least ${ADMIN_TOKEN_MIN} are needed (e.g. 'openssl rand -hex 32 > ${path}')`);
  if (!/^[\x21-\x7e]+$/.test(token)) throw new ConfigError(`admin token file ${path}: the token must be printable ASCII without spaces`);
  return token;
}

/** The exposure rule: an address others can reach needs a token. */
export function adminExposureProblem(endpoint: Endpoint, token: string | undefined): string | undefined {
  if (token !== undefined || isLoopback(endpoint.host)) return undefined;
  return `admin ${endpoint.host}:${endpoint.port} is not a loopback address: without adminTokenFile the admin API (which can drain the daemon and close connections) may only listen on 127.0.0.1 or ::1`;
}

const digest = (s: string) => createHash('sha256').update(s).digest();

let assets: Map<string, { type: string; body: Buffer }> | undefined;
/** uPlot's browser build and stylesheet, from the npm package (no build step). */
function asset(name: string): { type: string; body: Buffer } | undefined {
  if (!assets) {
    assets = new Map();
    const req = createRequire(import.meta.url);
    for (const [file, type] of [
      ['uPlot.iife.min.js', 'text/javascript; charset=utf-8'],
      ['uPlot.min.css', 'text/css; charset=utf-8'],
    ] as const) {
      try {
        assets.set(file, { type, body: readFileSync(req.resolve(`uplot/dist/${file}`)) });
      } catch {
        // Not installed: the dashboard says its charts are unavailable.
      }
    }
  }
  return assets.get(name);
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

function readBody(req: http.IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    req.on('data', (d: Buffer) => {
      size += d.length;
      if (size > MAX_BODY) {
        // Answer, then let the rest of the body go by unread (reading stops with the connection: close).
        req.removeAllListeners('data');
        req.resume();
        reject(new HttpError(413, `request body over ${MAX_BODY} bytes`));
        return;
      }
      parts.push(d);
    });
    req.on('end', () => {
      const text = Buffer.concat(parts).toString('utf8').trim();
      if (text === '') return resolve({});
      try {
        resolve(JSON.parse(text));
      } catch {
        reject(new HttpError(400, 'the request body is not JSON'));
      }
    });
    req.on('error', reject);
  });
}

export async function startAdmin(opts: AdminOptions, api: AdminApi): Promise<AdminServer> {
  const problem = adminExposureProblem(opts.endpoint, opts.token);
  if (problem) throw new ConfigError(problem);
  const logger = (opts.logger ?? silentLogger()).child({ component: 'admin' });
  const want = opts.token !== undefined ? digest(opts.token) : undefined;
  const liveMs = opts.liveIntervalMs ?? 1000;
  const maxStreams = opts.maxStreams ?? 16;
  const streams = new Set<http.ServerResponse>();
  let closing = false;

  const authorized = (req: http.IncomingMessage, url: URL): boolean => {
    if (!want) return true;
    const h = req.headers.authorization;
    const given = h?.startsWith('Bearer ') ? h.slice(7).trim() : url.searchParams.get('access_token');
    return given !== null && given !== undefined && timingSafeEqual(digest(given), want);
  };

  const json = (res: http.ServerResponse, status: number, body: unknown) => {
    res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(JSON.stringify(body, null, 2) + '\n');
  };

  const stream = (req: http.IncomingMessage, res: http.ServerResponse) => {
    if (!api.live) throw new HttpError(404, 'no live state');
    if (streams.size >= maxStreams) throw new HttpError(503, `already ${maxStreams} event streams`);
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' });
    streams.add(res);
    const send = async () => {
      try {
        const data = await api.live!();
        if (!res.writableEnded) res.write(`data: ${JSON.stringify(data)}\n\n`);
      } catch (err) {
        logger.debug({ err }, 'live state failed');
      }
    };
    if (api.history) res.write(`event: history\ndata: ${JSON.stringify(api.history())}\n\n`);
    void send();
    const timer = setInterval(() => void send(), liveMs);
    const unwatch = api.watch?.(() => void send());
    const end = () => {
      clearInterval(timer);
      unwatch?.();
      streams.delete(res);
    };
    req.on('close', end);
    res.on('close', end);
  };

  const route = async (req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<string> => {
    const method = req.method ?? 'GET';
    const path = url.pathname;
    const onlyMethod = (m: string) => {
      if (method !== m) throw Object.assign(new HttpError(405, `use ${m}`), { allow: m });
    };
    if (path === '/healthz') {
      onlyMethod('GET');
      const r = api.readiness?.() ?? { ready: true };
      if (r.ready) res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
      else res.writeHead(503, { 'content-type': 'text/plain' }).end(`not ready: ${r.reason}\n`);
      return 'healthz';
    }
    if (!authorized(req, url)) {
      res.writeHead(401, { 'www-authenticate': 'Bearer realm="mpconvert"', 'content-type': 'text/plain' }).end('a bearer token is needed (Authorization: Bearer TOKEN)\n');
      return 'unauthorized';
    }
    if (path === '/metrics') {
      onlyMethod('GET');
      const text = api.metricsText ? await api.metricsText() : await api.registry.metrics();
      res.writeHead(200, { 'content-type': api.registry.contentType }).end(text);
      return 'metrics';
    }
    if (path === '/status') {
      onlyMethod('GET');
      json(res, 200, await api.status());
      return 'status';
    }
    if (path === '/' || path === '/dashboard') {
      onlyMethod('GET');
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' }).end(dashboardPage(opts.role ?? 'mpconvert'));
      return 'dashboard';
    }
    if (path.startsWith('/assets/')) {
      onlyMethod('GET');
      const a = asset(path.slice('/assets/'.length));
      if (!a) throw new HttpError(404, 'no such asset');
      res.writeHead(200, { 'content-type': a.type, 'cache-control': 'max-age=3600' }).end(a.body);
      return 'assets';
    }
    if (path === '/events') {
      onlyMethod('GET');
      stream(req, res);
      return 'events';
    }
    if (path === '/connections') {
      onlyMethod('GET');
      if (!api.connections) throw new HttpError(404, 'no connection list');
      const limit = Math.min(Math.max(Number(url.searchParams.get('limit') ?? 100) || 100, 1), 10_000);
      const cpe = url.searchParams.get('cpe');
      json(res, 200, api.connections({ subflows: ['1', 'true', 'yes'].includes(url.searchParams.get('subflows') ?? ''), limit, ...(cpe ? { cpe } : {}) }));
      return 'connections';
    }
    const conn = /^\/connections\/(\d{1,15})$/.exec(path);
    if (conn) {
      onlyMethod('DELETE');
      if (!api.closeConnection) throw new HttpError(404, 'connections cannot be closed here');
      const id = Number(conn[1]);
      if (!api.closeConnection(id)) throw new HttpError(404, `no connection ${id}`);
      json(res, 200, { closed: id });
      return 'close-connection';
    }
    const cpe = /^\/cpes\/([^/]{1,200})$/.exec(path);
    if (cpe) {
      onlyMethod('DELETE');
      if (!api.closeCpe) throw new HttpError(404, 'CPEs cannot be closed here');
      const id = decodeURIComponent(cpe[1]!);
      json(res, 200, { cpe: id, closed: api.closeCpe(id) });
      return 'close-cpe';
    }
    const mode = /^\/uplinks\/([A-Za-z0-9_.:@+-]{1,15})\/mode$/.exec(path);
    if (mode) {
      onlyMethod('POST');
      if (!api.setUplinkMode) throw new HttpError(404, 'no uplinks here');
      const body = (await readBody(req)) as { mode?: unknown };
      if (body.mode !== 'subflow' && body.mode !== 'backup') throw new HttpError(400, 'the body is {"mode": "subflow"} or {"mode": "backup"}');
      try {
        await api.setUplinkMode(mode[1]!, body.mode);
      } catch (err) {
        throw new HttpError(/no such uplink/.test((err as Error).message) ? 404 : 409, (err as Error).message);
      }
      json(res, 200, { uplink: mode[1], mode: body.mode });
      return 'uplink-mode';
    }
    if (path === '/drain') {
      onlyMethod('POST');
      if (!api.drain) throw new HttpError(404, 'no drain here');
      json(res, 202, { draining: true });
      api.drain();
      return 'drain';
    }
    throw new HttpError(404, 'no such route');
  };

  const server = http.createServer((req, res) => {
    const t0 = Date.now();
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://admin');
    } catch {
      res.writeHead(400).end();
      return;
    }
    let name = 'unknown';
    const authenticated = want ? authorized(req, url) : null;
    res.on('close', () => {
      const status = res.statusCode;
      opts.requests?.inc({ route: name, status: String(status) });
      const line = { method: req.method, path: url.pathname, route: name, status, ms: Date.now() - t0, remote: req.socket.remoteAddress, authenticated };
      if (status >= 500 || status === 401 || status === 403) logger.warn(line, 'admin request');
      else logger.info(line, 'admin request');
    });
    route(req, res, url).then(
      (r) => (name = r),
      (err: unknown) => {
        if (err instanceof HttpError) {
          name = err.status === 405 ? 'method-not-allowed' : err.status === 404 ? 'not-found' : name;
          const allow = (err as HttpError & { allow?: string }).allow;
          if (!res.headersSent) res.writeHead(err.status, { 'content-type': 'text/plain', ...(allow ? { allow } : {}) }).end(`${err.message}\n`);
          return;
        }
        logger.error({ err }, 'admin request failed');
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' }).end(`${(err as Error).message}\n`);
      },
    );
  });
  server.listen(opts.endpoint.port, opts.endpoint.host);
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        if (closing) return resolve();
        closing = true;
        for (const s of streams) s.end();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
