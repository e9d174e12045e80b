/**
 * The admin endpoint: GET /metrics (Prometheus text), /healthz (readiness: 200 "ok", or 503 with the
 * reason), /status (JSON from the component). Plain node:http: three read-only routes need no framework.
 */
import http from 'node:http';
import { once } from 'node:events';
import type { Registry } from 'prom-client';
import type { Endpoint } from './address.js';

/** Whether the component can do its job now, and if not, why (for the 503 body and for operators). */
export type Readiness = { ready: true } | { ready: false; reason: string };

export interface AdminServer {
  readonly port: number;
  close(): Promise<void>;
}

export async function startAdmin(endpoint: Endpoint, registry: Registry, status: () => unknown, readiness: () => Readiness = () => ({ ready: true })): Promise<AdminServer> {
  const server = http.createServer((req, res) => {
    const url = req.url ?? '/';
    if (req.method !== 'GET') {
      res.writeHead(405).end();
      return;
    }
    if (url === '/metrics') {
      registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
        (err: Error) => res.writeHead(500).end(err.message),
      );
    } else if (url === '/healthz') {
      const r = readiness();
      if (r.ready) res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
      else res.writeHead(503, { 'content-type': 'text/plain' }).end(`not ready: ${r.reason}\n`);
    } else if (url === '/status') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(status(), null, 2));
    } else {
      res.writeHead(404).end();
    }
  });
  server.listen(endpoint.port, endpoint.host);
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
