/**
 * Prometheus metrics for both roles. One registry per component instance (no global state), so tests and
 * several instances in one process do not mix their counts.
 */
import { readFileSync } from 'node:fs';
import { release } from 'node:os';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** The version in package.json (the one `mpconvert --version` prints). */
/** Gauges computed at scrape time are computed once for a scrape that reads several of them. */
const SCRAPE_DEDUP_MS = 100;

export const VERSION: string = (() => {
  try {
    return (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version?: string }).version ?? 'unknown';
  } catch {
    return 'unknown';
  }
})();

export interface MetricsOptions {
  /** Process and Node runtime metrics (process_*, nodejs_*); default on. Off in unit tests that build many registries. */
  runtime?: boolean;
  /** Concentrator: per-CPE families (a `cpe` label per CPE identity); off by default to bound cardinality. */
  perCpe?: boolean;
}

export function createMetrics(role: 'cpe' | 'concentrator', opts: MetricsOptions = {}) {
  const registry = new Registry();
  registry.setDefaultLabels({ role });
  if (opts.runtime ?? true) {
    collectDefaultMetrics({ register: registry });
    // Gauges named like counters (promtool's lint refuses them); the per-type families beside them remain.
    for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) registry.removeSingleMetric(name);
  }
  const cpeOnly = role === 'cpe' ? [registry] : [];
  const concOnly = role === 'concentrator' ? [registry] : [];
  const perCpe = role === 'concentrator' && opts.perCpe === true ? [registry] : [];
  const buildInfo = new Gauge({
    name: 'mpconvert_build_info',
    help: 'Always 1; the labels say which mpconvert, Node.js and kernel run',
    labelNames: ['version', 'node', 'kernel'] as const,
    registers: [registry],
  });
  buildInfo.set({ version: VERSION, node: process.version, kernel: release() }, 1);
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
    help: 'Connections towards servers, by transport actually used (mptcp, tcp-fallback, tcp-cached, tcp-learned, tcp)',
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
    help: 'CPE: concentrator checks, by result (docs/operations.md lists the results)',
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
    registers: cpeOnly,
  });
  const serverMptcp = new Counter({
    name: 'mpconvert_server_mptcp_total',
    help: 'CPE: direct MPTCP to servers (serverMptcp: direct), by event (learned, direct, fallback, flushed)',
    labelNames: ['event'] as const,
    registers: cpeOnly,
  });
  // CPE, per uplink (src/cpe/observer.ts, sampled once a second).
  const uplinkUp = new Gauge({ name: 'mpconvert_uplink_up', help: 'CPE: 1 while the uplink has carrier and is administratively up', labelNames: ['uplink'] as const, registers: cpeOnly });
  const uplinkBackup = new Gauge({ name: 'mpconvert_uplink_backup', help: 'CPE: 1 while the uplink is in backup mode (used only when no subflow uplink works)', labelNames: ['uplink'] as const, registers: cpeOnly });
  const uplinkBytes = new Counter({
    name: 'mpconvert_uplink_interface_bytes_total',
    help: 'CPE: bytes through the uplink interface since the CPE started (all traffic, converted or not), by direction (rx, tx)',
    labelNames: ['uplink', 'direction'] as const,
    registers: cpeOnly,
  });
  const uplinkSubflowBytes = new Counter({
    name: 'mpconvert_uplink_subflow_bytes_total',
    help: 'CPE: bytes of converted connections carried by the subflows on the uplink (tcp_info deltas), by direction (up = acknowledged towards the concentrator, down = received)',
    labelNames: ['uplink', 'direction'] as const,
    registers: cpeOnly,
  });
  const uplinkSubflows = new Gauge({ name: 'mpconvert_uplink_subflows', help: 'CPE: subflows of converted connections on the uplink now', labelNames: ['uplink'] as const, registers: cpeOnly });
  const uplinkRtt = new Gauge({ name: 'mpconvert_uplink_subflow_rtt_seconds', help: 'CPE: mean smoothed RTT of the established subflows on the uplink', labelNames: ['uplink'] as const, registers: cpeOnly });
  const uplinkRetransmits = new Counter({ name: 'mpconvert_uplink_subflow_retransmits_total', help: 'CPE: TCP retransmissions of the subflows on the uplink', labelNames: ['uplink'] as const, registers: cpeOnly });
  const uplinkShare = new Gauge({ name: 'mpconvert_uplink_share_ratio', help: 'CPE: the share of converted bytes (both directions) the uplink carried since start, 0 to 1', labelNames: ['uplink'] as const, registers: cpeOnly });
  const uplinkQuotaUsed = new Gauge({ name: 'mpconvert_uplink_quota_used_bytes', help: 'CPE: bytes the uplink used in its current quota period (uplinks with a quota)', labelNames: ['uplink'] as const, registers: cpeOnly });
  const uplinkQuotaLimit = new Gauge({ name: 'mpconvert_uplink_quota_limit_bytes', help: 'CPE: the uplink\'s quota per period (past it the uplink is only a backup)', labelNames: ['uplink'] as const, registers: cpeOnly });
  // Concentrator, per CPE identity (only with metrics.perCpe).
  const flowClass = new Counter({ name: 'mpconvert_flow_class_connections_total', help: 'CPE: converted connections in a flow class, by class and the uplink they were pinned to (none: no usable uplink, aggregated)', labelNames: ['class', 'uplink'] as const, registers: cpeOnly });
  // Computed when scraped (the Prometheus convention), not on a timer: an idle concentrator with many connections
  // does no per-connection work between scrapes. The role sets `onScrape.figures`; one computation per scrape.
  const onScrape: { figures?: (() => void) | undefined } = {};
  let figuresAt = -Infinity;
  const figures = () => {
    const now = performance.now();
    if (now - figuresAt < SCRAPE_DEDUP_MS) return;
    figuresAt = now;
    onScrape.figures?.();
  };
  const activeCpes = new Gauge({ name: 'mpconvert_active_cpes', help: 'Concentrator: CPEs (identities) with at least one connection open now', registers: concOnly, collect: figures });
  const cpeConnections = new Gauge({ name: 'mpconvert_cpe_connections', help: 'Concentrator: connections open now, per CPE (metrics.perCpe)', labelNames: ['cpe'] as const, registers: perCpe, collect: figures });
  const cpeSubflows = new Gauge({ name: 'mpconvert_cpe_subflows', help: 'Concentrator: subflows of the open connections, per CPE (metrics.perCpe)', labelNames: ['cpe'] as const, registers: perCpe, collect: figures });
  const cpeBytes = new Counter({ name: 'mpconvert_cpe_bytes_total', help: 'Concentrator: bytes relayed (counted at close), per CPE and direction (up = towards the server) (metrics.perCpe)', labelNames: ['cpe', 'direction'] as const, registers: perCpe });
  // Concentrator, RADIUS (src/concentrator/radius.ts; only with `radius` configured).
  const radiusRequests = new Counter({
    name: 'mpconvert_radius_requests_total',
    help: 'Concentrator: RADIUS tries, by kind (auth, acct), server and result (answer, timeout, invalid:<why>, unexpected-code, send-error, no-identifier)',
    labelNames: ['kind', 'server', 'result'] as const,
    registers: concOnly,
  });
  const radiusAuthorizations = new Counter({
    name: 'mpconvert_radius_authorizations_total',
    help: 'Concentrator: connections through the RADIUS step, by verdict (accept, reject, unavailable) and source (cache, answer, wait-bound)',
    labelNames: ['verdict', 'source'] as const,
    registers: concOnly,
  });
  const radiusAccounting = new Counter({
    name: 'mpconvert_radius_accounting_total',
    help: 'Concentrator: RADIUS accounting records, by status (start, interim, stop) and result (answered, no-answer)',
    labelNames: ['status', 'result'] as const,
    registers: concOnly,
  });
  const radiusCached = new Gauge({ name: 'mpconvert_radius_cache_entries', help: 'Concentrator: CPE identities with a cached RADIUS answer', registers: concOnly });
  const radiusSessions = new Gauge({ name: 'mpconvert_radius_accounting_sessions', help: 'Concentrator: RADIUS accounting sessions open (CPEs between Start and Stop)', registers: concOnly });
  // Concentrator, port blocks (portBlocks; 0 without them).
  const portBlocks = new Gauge({ name: 'mpconvert_port_blocks', help: 'Concentrator: port blocks held by CPEs now (portBlocks)', registers: concOnly, collect: figures });
  // Inbound bindings (src/concentrator/bindings.ts, src/cpe/bindings.ts).
  const bindingReverse = new Counter({
    name: 'mpconvert_binding_reverse_total',
    help: 'Reverse connections of inbound bindings, by event (CPE: opened, used, retired, died, failed; concentrator: claimed, used, closed, idle)',
    labelNames: ['event'] as const,
    registers: [registry],
  });
  const bindingInbound = new Counter({
    name: 'mpconvert_binding_inbound_total',
    help: 'Concentrator: internet connections to inbound bindings, by outcome (relayed, no-reverse, stopping)',
    labelNames: ['outcome'] as const,
    registers: concOnly,
  });
  const bindingsOpen = new Gauge({ name: 'mpconvert_bindings', help: 'Concentrator: inbound bindings open now', registers: concOnly });
  const onPath = new Counter({
    name: 'mpconvert_onpath_connections_total',
    help: 'Concentrator, implicit mode: intercepted connections relayed, by what the server leg spoke (mptcp, tcp)',
    labelNames: ['server'] as const,
    registers: concOnly,
  });
  const udpChannels = new Gauge({ name: 'mpconvert_udp_channels', help: 'UDP channels open now', registers: [registry] });
  const udpMappings = new Gauge({ name: 'mpconvert_udp_mappings', help: 'UDP flows with a mapping now (concentrator: external sockets; CPE: LAN flows)', registers: [registry] });
  const udpDatagrams = new Counter({
    name: 'mpconvert_udp_datagrams_total',
    help: 'UDP datagrams carried over channels, by direction (up = towards the server)',
    labelNames: ['direction'] as const,
    registers: [registry],
  });
  const udpBytes = new Counter({
    name: 'mpconvert_udp_bytes_total',
    help: 'UDP payload bytes carried over channels, by direction (up = towards the server)',
    labelNames: ['direction'] as const,
    registers: [registry],
  });
  const udpDropped = new Counter({
    name: 'mpconvert_udp_dropped_total',
    help: 'UDP datagrams dropped, by reason (docs/concentrator.md and docs/cpe.md list them)',
    labelNames: ['reason'] as const,
    registers: [registry],
  });
  const udpChannelAborts = new Counter({
    name: 'mpconvert_udp_channel_aborts_total',
    help: 'UDP channels aborted, by reason (a framing error code, or why the CPE gave a channel up)',
    labelNames: ['reason'] as const,
    registers: [registry],
  });
  // Worker processes (concentrator `workers` > 1): set by the primary only, so the aggregated sum is its value.
  const workers = new Gauge({ name: 'mpconvert_workers', help: 'Concentrator: worker processes running besides the primary (workers - 1 when all are up)', registers: concOnly });
  const workerRestarts = new Counter({
    name: 'mpconvert_worker_restarts_total',
    help: 'Concentrator: worker processes that ended without being asked to and were started again',
    registers: concOnly,
  });
  // Admin API.
  const adminRequests = new Counter({ name: 'mpconvert_admin_requests_total', help: 'Admin API requests, by route and HTTP status', labelNames: ['route', 'status'] as const, registers: [registry] });
  return {
    registry, connections, relayed, refused, active, bytes, serverLeg, setup, capability, fallback,
    uplinkUp, uplinkBackup, uplinkBytes, uplinkSubflowBytes, uplinkSubflows, uplinkRtt, uplinkRetransmits, uplinkShare, uplinkQuotaUsed, uplinkQuotaLimit, flowClass,
    onScrape, activeCpes, cpeConnections, cpeSubflows, cpeBytes, perCpe: perCpe.length > 0, adminRequests, warm, serverMptcp, portBlocks, onPath,
    radiusRequests, radiusAuthorizations, radiusAccounting, radiusCached, radiusSessions,
    bindingReverse, bindingInbound, bindingsOpen,
    udpChannels, udpMappings, udpDatagrams, udpBytes, udpDropped, udpChannelAborts,
    workers, workerRestarts,
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
