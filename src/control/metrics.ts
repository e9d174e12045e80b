/**
 * Prometheus metrics for both roles. One registry per component instance (no global state), so tests and
 * several instances in one process do not mix their counts.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

export function createMetrics(role: 'cpe' | 'concentrator') {
  const registry = new Registry();
  registry.setDefaultLabels({ role });
  const connections = new Counter({
    name: 'mpconvert_connections_total',
    help: 'Connections handled, by final outcome',
    labelNames: ['outcome'] as const,
    registers: [registry],
  });
  const refused = new Counter({
    name: 'mpconvert_refused_total',
    help: 'Connections refused before relaying, by reason',
    labelNames: ['reason'] as const,
    registers: [registry],
  });
  const relayed = new Counter({
    name: 'mpconvert_relayed_total',
    help: 'Relayed connections (counted at close), by the engine that moved their bytes: splice (in the kernel) or streams (through Node)',
    labelNames: ['engine'] as const,
    registers: [registry],
  });
  const active = new Gauge({ name: 'mpconvert_active_connections', help: 'Relayed connections open now', registers: [registry] });
  const bytes = new Counter({
    name: 'mpconvert_bytes_total',
    help: 'Bytes relayed, by direction (up = towards the server)',
    labelNames: ['direction'] as const,
    registers: [registry],
  });
  const serverLeg = new Counter({
    name: 'mpconvert_server_leg_total',
    help: 'Connections towards servers, by transport actually used (mptcp, tcp-fallback, tcp-cached, tcp)',
    labelNames: ['transport'] as const,
    registers: [registry],
  });
  const setup = new Histogram({
    name: 'mpconvert_setup_seconds',
    help: 'From accept to the first relayed byte being possible (signalling read, server connected)',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [registry],
  });
  const capability = new Counter({
    name: 'mpconvert_concentrator_capability_total',
    help: 'CPE: echo checks, by result (ok, missing, mismatch) ',
    labelNames: ['result'] as const,
    registers: [registry],
  });
  const fallback = new Counter({
    name: 'mpconvert_fallback_total',
    help: 'CPE: connections not converted by the first concentrator, by what was used instead',
    labelNames: ['to'] as const,
    registers: [registry],
  });
  const warm = new Counter({
    name: 'mpconvert_warm_connections_total',
    help: 'CPE: warm pool connections, by event (opened, used, retired, died, failed, flushed)',
    labelNames: ['event'] as const,
    registers: [registry],
  });
  return { registry, connections, relayed, refused, active, bytes, serverLeg, setup, capability, fallback, warm };
}

export type Metrics = ReturnType<typeof createMetrics>;
