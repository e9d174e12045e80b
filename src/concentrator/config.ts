/** The concentrator's settings: schema, defaults, and the merge of file and command-line flags. */
import { isIPv6 } from 'node:net';
import { z } from 'zod';
import { loadYaml, validateConfig } from '../control/config-file.js';
import { endpoint, listenEndpoint, cidr, ip } from '../control/schema.js';
import { CustomerPrefixes, nptv6Mappings } from '../policy/transparent.js';
import { openAllowProblem } from '../policy/auth.js';
import { radiusConfigSchema } from './radius-config.js';

export const concentratorConfigSchema = z.strictObject({
  /** Instance name: names the nft table `inet mpconvert_conc_<instance>`, so two concentrators never collide. */
  instance: z.string().regex(/^[a-z0-9_]{1,16}$/, 'lowercase letters, digits and _ (at most 16)').default('default'),
  /** Customer-facing MPTCP listeners. Both signalling formats are served on each. */
  listen: z.array(listenEndpoint).min(1, 'at least one listener is needed'),
  /** Customer prefixes allowed to use the concentrator (source address of the MPTCP connection). */
  allow: z.array(cidr).min(1, 'at least one customer prefix is needed: an empty list would refuse everybody'),
  /** Destinations refused on top of the special-purpose ranges and the concentrator's own addresses. */
  deny: z.array(cidr).default([]),
  /**
   * Addresses announced to every CPE with ADD_ADDR (kernel `signal` endpoints), typically the listener address
   * of the other family: a CPE connected over IPv6 then adds IPv4 subflows too (draft-nam-mptcp-deployment-considerations section 5.5, "IPv6 & IPv4"
   * MPTCP legs). Added at start, removed at stop; a change needs a restart.
   */
  announce: z.array(ip).default([]),
  /**
   * The window of SYNs to the listeners lowered to 16384 >> their window scale (nft, the concentrator's own
   * table): works around the Linux
   * MPTCP passive-TFO window bug for every client, third-party ones included (docs/kernel-tfo-window.md).
   */
  synWindowClamp: z.boolean().default(true),
  /** Guards in front of the listeners' SYN queue (nft), against SYN floods (docs/concentrator.md). */
  synFlood: z
    .strictObject({
      /** Drop SYNs from outside `allow` before they reach the SYN queue (they would be refused anyway). */
      dropNonCustomers: z.boolean().default(false),
      /** SYNs per second to the listeners, in total; beyond, dropped. 0 = no limit. */
      synRateLimit: z.number().int().min(0).default(0),
    })
    .default({ dropNonCustomers: false, synRateLimit: 0 }),
  /**
   * Implicit (on-path) mode (docs/implicit.md): this box is on the forwarding path of MPTCP hosts that run no
   * mpconvert software; their MPTCP SYNs from `sources` are taken (nft TPROXY) by a transparent MPTCP listener
   * that terminates them as the destination and dials the server as explicit mode does. Absent: off.
   */
  onPath: z
    .strictObject({
      /** Hosts (or access networks) whose MPTCP connections are proxied; MPTCP SYNs from elsewhere are routed untouched. */
      sources: z.array(cidr).min(1, 'list the prefixes of the hosts whose MPTCP connections are proxied'),
      /** The transparent listener's port on 127.0.0.1 / [::1] (the TPROXY target). */
      port: z.number().int().min(1).max(65_535).default(4_243),
      /**
       * draft-boucadair-mptcp-plain-mode section 5.6.1 (MCP withdrawal): `maintain` proxies every MPTCP connection
       * from `sources`; `withdraw` leaves connections to servers known to speak MPTCP end to end (routed untouched).
       */
      withdrawal: z.enum(['maintain', 'withdraw']).default('maintain'),
      /** withdraw: servers taken as MPTCP-capable from the start (prefixes), besides the ones learned. */
      nativeServers: z.array(cidr).default([]),
      /** withdraw: how long a server learned as MPTCP-capable (its server leg came up with MPTCP) stays known. */
      learnTtlS: z.number().int().min(1).max(604_800).default(3_600),
      /**
       * This box's addresses advertised (ADD_ADDR, with `joinPort`) to every MPTCP connection, the intercepted ones
       * included: where the hosts' additional subflows go. Kernel `signal` endpoints with a port, added at start.
       */
      announce: z.array(ip).default([]),
      /** The port the announced addresses take MP_JOINs on (the kernel listens there for the endpoints). */
      joinPort: z.number().int().min(1).max(65_535).default(4_244),
      /** Sets net.mptcp.allow_join_initial_addr_port=0 (the C bit): hosts join the announced addresses, never the server's. */
      denyJoinInitial: z.boolean().default(true),
      /** Intercepted MPTCP SYNs per second, in total; beyond, dropped (0 = no limit). */
      synRateLimit: z.number().int().min(0).default(0),
    })
    .optional(),
  /** Accept signalling on a connection that fell back to plain TCP (the seeds say ignore it). */
  acceptFallback: z.boolean().default(false),
  signalling: z
    .strictObject({
      timeoutMs: z.number().int().min(100).max(60_000).default(3_000),
      /** Connections of one CPE accepted but still without complete signalling; more are refused. */
      maxPendingPerCpe: z.number().int().min(1).default(256),
      /** The same, all CPEs together. */
      maxPending: z.number().int().min(1).default(4_096),
      /** How long a warm connection (a CPE's pool entry, docs/protocol.md section 1.5) may wait for its use. */
      warmIdleS: z.number().int().min(1).max(3_600).default(120),
      /** Warm connections one CPE may keep waiting at once; 0 = none accepted. */
      warmMaxPerCpe: z.number().int().min(0).default(16),
      /** The same, all CPEs together (beyond it, CPEs dial afresh: slower first bytes, nothing refused). */
      warmMax: z.number().int().min(0).default(4_096),
    })
    .default({ timeoutMs: 3_000, maxPendingPerCpe: 256, maxPending: 4_096, warmIdleS: 120, warmMaxPerCpe: 16, warmMax: 4_096 }),
  server: z
    .strictObject({
      /** Dial servers with MPTCP (servers that speak it get end-to-end MPTCP). */
      mptcp: z.boolean().default(true),
      /**
       * RFC 8803 replies say, unasked, when the server leg came up with MPTCP (an Extended TCP Header TLV with
       * MP_CAPABLE), so CPEs with `serverMptcp.mode: direct` can dial that server themselves next time
       * (docs/protocol.md section 1.7). MP_CONVERT's server MPTCP query IE is answered whatever this says: the CPE
       * asked for it.
       */
      reportMptcp: z.boolean().default(false),
      connectTimeoutMs: z.number().int().min(100).max(120_000).default(10_000),
      /** Lifetime of an entry in the cache of servers that broke or delayed MPTCP (draft-nam-mptcp-deployment-considerations section 5.6.1). */
      fallbackCacheTtlS: z.number().int().min(1).default(86_400),
      fallbackCacheSize: z.number().int().min(1).default(100_000),
      /** A connection that fell back after at least this long is taken as an MPTCP SYN that was dropped. */
      slowFallbackMs: z.number().int().min(100).default(900),
      /**
       * Servers (address and port) that answered an MPTCP SYN with plain TCP are dialled with TCP for this long,
       * then MPTCP is tried again. 0 (the default) dials every server with MPTCP, as draft-nam section 5.6.1
       * asks (MP_CAPABLE never stripped); a positive value trades the discovery of servers that start to speak
       * MPTCP for a TCP server leg, which the kernel reads faster than one in MPTCP fallback (docs/performance.md).
       */
      tcpServersTtlS: z.number().int().min(0).max(30 * 86_400).default(0),
      /**
       * Destinations whose server connection starts with a PROXY protocol v2 header naming the original client
       * (draft-nam-mptcp-deployment-considerations section 4.3, HOST_ID): prefix, and ports (absent = all).
       * Only servers configured to expect it may be listed (HAProxy `accept-proxy`, nginx `proxy_protocol`).
       */
      proxyProtocol: z
        .array(
          z.strictObject({
            prefix: cidr,
            ports: z.array(z.number().int().min(1).max(65_535)).min(1, 'list at least one port, or leave ports out for every port').optional(),
          }),
        )
        .default([]),
    })
    .default({ mptcp: true, reportMptcp: false, connectTimeoutMs: 10_000, fallbackCacheTtlS: 86_400, fallbackCacheSize: 100_000, slowFallbackMs: 900, tcpServersTtlS: 0, proxyProtocol: [] }),
  sourcePool: z
    .strictObject({
      addresses: z.array(ip).default([]),
      /** shared = N:1 (several CPEs per address), dedicated = 1:1. */
      mode: z.enum(['shared', 'dedicated']).default('shared'),
    })
    .default({ addresses: [], mode: 'shared' }),
  /**
   * How the server leg's source address is chosen (draft-nam-mptcp-deployment-considerations section 5.4):
   * kernel, pool (`sourcePool`), transparent (the end host's or the CPE's own address), nptv6 (RFC 6296).
   * Absent: pool when `sourcePool.addresses` has any, else kernel (the behaviour before this section existed).
   */
  sourceAddress: z
    .strictObject({
      mode: z.enum(['kernel', 'pool', 'transparent', 'nptv6']).optional(),
      /** transparent, IPv4 destinations: the CPE's WAN address (5.4.1.1, wired) or the host's own (mobile). */
      ipv4: z.enum(['cpe', 'host']).default('cpe'),
      /** transparent, IPv6 destinations: the host's address (5.4.1.3), an address in its prefix (5.4.1.2), the CPE's. */
      ipv6: z.enum(['host', 'prefix', 'cpe']).default('host'),
      /** ipv6: prefix: the interface part of the address (the bits past the customer prefix). */
      prefixHost: z.string().refine((a) => isIPv6(a), 'must be an IPv6 address').default('::100:0:0:1'),
      /** Per-CPE customer prefixes: what a CPE may claim in its source IE (first entry whose `cpe` contains it). */
      customers: z.array(z.strictObject({ cpe: cidr, prefixes: z.array(cidr).min(1) })).default([]),
      /** nptv6: the external prefixes; each customer IPv6 prefix takes the next free one of the same length. */
      nptv6: z.strictObject({ prefixes: z.array(cidr).min(1) }).optional(),
      /** Return path of transparent sockets (nft `socket transparent 1` mark, `ip rule fwmark`, local table). */
      returnMark: z.number().int().min(1).max(0xffffffff).default(0x6d70),
      returnTable: z.number().int().min(1).max(0xfffffffe).default(4_242),
      returnRulePriority: z.number().int().min(1).max(32_765).default(9_100),
    })
    .optional(),
  /**
   * CPE authentication (docs/concentrator.md, "Authentication"): an authenticator in the signalling,
   * HMAC-SHA256 with a per-CPE key from `keysFile` (re-read on SIGHUP), checked before any dial. With it,
   * limits and the source pool go by the CPE's key, not its source address. Required when `allow` admits
   * the whole internet.
   */
  auth: z
    .strictObject({
      keysFile: z.string().min(1),
      /** Accepted distance between the authenticator's timestamp and this host's clock, either way. */
      clockSkewS: z.number().int().min(1).max(3_600).default(30),
      /** false: connections without an authenticator still pass, by source address (migration only). */
      required: z.boolean().default(true),
      /** Nonces remembered for the clock window; when full, new connections are refused (fail closed). */
      replayCacheSize: z.number().int().min(1).default(1_000_000),
    })
    .optional(),
  /** RADIUS authorization and accounting of CPEs (docs/operator.md, "RADIUS"; src/concentrator/radius.ts). */
  radius: radiusConfigSchema.optional(),
  /**
   * Inbound bindings (docs/concentrator.md, "Inbound bindings"): external ports CPEs claim with reverse
   * connections (docs/protocol.md section 1.6). Absent: every reverse connection is refused (`binding-off`).
   */
  bindings: z
    .strictObject({
      /** Addresses the external ports open on (one port on each); empty: the CPE's own address (transparent) or its paired sourcePool address. */
      addresses: z.array(ip).default([]),
      /** The ports CPEs may claim (the concentrator's own listeners and admin port are refused anyway). */
      ports: z
        .strictObject({ from: z.number().int().min(1).max(65_535), to: z.number().int().min(1).max(65_535) })
        .refine((p) => p.from <= p.to, 'from must not be above to')
        .default({ from: 1024, to: 65_535 }),
      /** Bindings one CPE may own at once. */
      maxPerCpe: z.number().int().min(0).default(8),
      /** Idle reverse connections one binding may hold. */
      idlePerBinding: z.number().int().min(1).max(256).default(8),
      /** An idle reverse connection is closed after this long (the CPE retires and replaces its own sooner). */
      idleS: z.number().int().min(1).max(86_400).default(600),
      /** A binding without reverse connections is closed after this long (its CPE is gone). */
      graceS: z.number().min(0).max(3_600).default(10),
      /** How long an internet connection may wait for a reverse connection when none is idle; then reset. */
      waitMs: z.number().int().min(0).max(60_000).default(2_000),
    })
    .optional(),
  /**
   * Transport protocols relayed (draft-nam-mptcp-deployment-considerations section 5.6.6). 'udp': UDP channels
   * (docs/protocol.md section 4) are accepted and echoed; without it a channel's signalling is refused
   * (`udp-not-offered`, an abort), which the CPE reads as "UDP not offered" and forwards UDP untouched.
   */
  transports: z.array(z.enum(['tcp', 'udp'])).min(1, 'list at least one transport').default(['tcp', 'udp']),
  /** UDP channels: NAT behaviour per RFC 4787 and the bounds of each channel's queue (docs/concentrator.md, "UDP"). */
  udp: z
    .strictObject({
      /** Mapping lifetime, refreshed by outbound datagrams (RFC 4787 REQ-5: at least 2 minutes; 5 recommended). */
      mappingLifetimeS: z.number().int().min(120).max(86_400).default(300),
      /** Which inbound datagrams a mapping lets through (RFC 4787 section 5). */
      filtering: z.enum(['endpoint-independent', 'address-dependent', 'address-and-port-dependent']).default('address-dependent'),
      maxMappingsPerCpe: z.number().int().min(1).default(1_024),
      maxMappings: z.number().int().min(1).default(65_536),
      /** Larger datagrams from a CPE are dropped (and counted). */
      maxDatagram: z.number().int().min(1).max(65_507).default(65_507),
      /** Per channel, downstream: queued frames beyond this many bytes drop the oldest. */
      queueBytes: z.number().int().min(2_048).default(262_144),
      /** Per channel, downstream: a frame queued longer than this is dropped instead of sent. */
      queueMs: z.number().int().min(1).max(10_000).default(50),
      /** TCP_NOTSENT_LOWAT on the channel's socket: unsent bytes the kernel may hold. */
      notsentLowat: z.number().int().min(1_024).default(32_768),
      /**
       * SO_SNDBUF of the channel, applied by the kernel to each subflow: bounds what waits in a subflow's queue
       * (the largest part of a channel's delay under load). About the uplinks' bandwidth-delay product
       * (50 Mbit/s x 20 ms = 125 KB); 0 = the kernel's autotuning (megabytes: fine for bulk, not for latency).
       */
      sendBuffer: z.number().int().min(0).max(64 << 20).default(131_072),
    })
    .default({
      mappingLifetimeS: 300,
      filtering: 'address-dependent',
      maxMappingsPerCpe: 1_024,
      maxMappings: 65_536,
      maxDatagram: 65_507,
      queueBytes: 262_144,
      queueMs: 50,
      notsentLowat: 32_768,
      sendBuffer: 131_072,
    }),
  limits: z
    .strictObject({
      maxConnections: z.number().int().min(1).default(100_000),
      maxConnectionsPerCpe: z.number().int().min(1).default(4_096),
      newConnectionsPerSecondPerCpe: z.number().int().min(0).default(500),
      maxSubflows: z.number().int().min(0).max(8).default(8),
      maxAddAddrAccepted: z.number().int().min(0).max(8).default(8),
    })
    .default({ maxConnections: 100_000, maxConnectionsPerCpe: 4_096, newConnectionsPerSecondPerCpe: 500, maxSubflows: 8, maxAddAddrAccepted: 8 }),
  /**
   * Who moves the relayed bytes: 'splice' (in the kernel, splice(2) in a worker thread; no copy through
   * JavaScript) or 'streams' (Node streams on the event loop).
   */
  relayEngine: z.enum(['splice', 'streams']).default('splice'),
  idleTimeoutS: z.number().int().min(1).default(600),
  /** Graceful shutdown: how long established connections may drain after SIGTERM. */
  shutdownDrainS: z.number().min(0).default(10),
  /** Set net.ipv4.tcp_fastopen bits 0x2 (server) if missing; otherwise only check and refuse to start. */
  manageSysctls: z.boolean().default(true),
  /**
   * Use the DSCP of the CPE's SYN towards the server (draft-nam-mptcp-deployment-considerations section 5.6.5): needs net.ipv4.tcp_reflect_tos=1 so
   * the accepted socket takes the SYN's DSCP (set when manageSysctls is on).
   */
  preserveDscp: z.boolean().default(true),
  sessionLog: z.boolean().default(true),
  /** Where the session log goes and what it holds (docs/operator.md, "Logging for address sharing"). */
  sessionLogging: z
    .strictObject({
      /** stderr: the daemon's own log stream (lines with "log":"session"); file: `file`, reopened on SIGHUP; syslog: a datagram socket. */
      sink: z.enum(['stderr', 'file', 'syslog']).default('stderr'),
      file: z.string().min(1).optional(),
      syslog: z
        .strictObject({
          socket: z.string().min(1).default('/dev/log'),
          facility: z.enum(['daemon', 'user', 'local0', 'local1', 'local2', 'local3', 'local4', 'local5', 'local6', 'local7']).default('local0'),
          tag: z.string().regex(/^[A-Za-z0-9._-]{1,32}$/, 'letters, digits, . _ - (at most 32)').default('mpconvert'),
        })
        .default({ socket: '/dev/log', facility: 'local0', tag: 'mpconvert' }),
      /** Log server addresses and ports too (RFC 6888 REQ-12: not by default). */
      destinations: z.boolean().default(false),
      /** One line per connection (open, close); absent: on without port blocks, off with them. */
      connections: z.boolean().optional(),
    })
    .default({ sink: 'stderr', syslog: { socket: '/dev/log', facility: 'local0', tag: 'mpconvert' }, destinations: false }),
  /**
   * Port blocks (RFC 6888 section 4, RFC 7422): each CPE's server legs take their source ports from blocks of
   * `size` ports on its pool address; the session log has a line per block instead of per connection.
   */
  portBlocks: z
    .strictObject({
      size: z.number().int().min(1).max(65_535).default(256),
      maxBlocksPerCpe: z.number().int().min(1).default(4),
      first: z.number().int().min(1).max(65_535).default(1_024),
      last: z.number().int().min(1).max(65_535).default(65_535),
      releaseAfterS: z.number().int().min(0).default(120),
    })
    .optional(),
  /** Admin endpoint (metrics, health, status) ADDR:PORT; keep it on a management address. */
  admin: endpoint.optional(),
  /** The admin API's bearer token (docs/operations.md); without it the admin endpoint must be a loopback address. */
  adminTokenFile: z.string().min(1).optional(),
  /**
   * Per-CPE figures: `topCpes` in /status and on the dashboard; `perCpe` adds the mpconvert_cpe_* families with
   * one `cpe` label per CPE identity (off by default: one series per subscriber).
   */
  metrics: z
    .strictObject({ perCpe: z.boolean().default(false), topCpes: z.number().int().min(0).max(1000).default(10) })
    .default({ perCpe: false, topCpes: 10 }),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /**
   * Processes that accept on the listeners (SO_REUSEPORT): this one (the primary) and `workers - 1` forked
   * workers; the primary keeps the shared state (limits, replay cache, source pool). 1 = no extra process.
   * A change needs a restart. docs/concentrator.md, "Worker processes".
   */
  workers: z.number().int().min(1).max(64).default(1),
}).superRefine((c, issue) => {
  const mode = c.sourceAddress?.mode;
  if (mode === 'pool' && c.sourcePool.addresses.length === 0) {
    issue.addIssue({ code: 'custom', path: ['sourceAddress', 'mode'], message: 'mode pool needs addresses in sourcePool.addresses' });
  }
  if (mode === 'nptv6' && !c.sourceAddress?.nptv6) {
    issue.addIssue({ code: 'custom', path: ['sourceAddress', 'nptv6'], message: 'mode nptv6 needs nptv6.prefixes (the external prefixes)' });
  }
  if (mode === 'nptv6' && c.sourceAddress?.nptv6) {
    try {
      nptv6Mappings(new CustomerPrefixes(c.sourceAddress.customers), c.sourceAddress.nptv6.prefixes);
    } catch (err) {
      issue.addIssue({ code: 'custom', path: ['sourceAddress', 'nptv6', 'prefixes'], message: (err as Error).message });
    }
  }
  if (c.sessionLogging.sink === 'file' && !c.sessionLogging.file) {
    issue.addIssue({ code: 'custom', path: ['sessionLogging', 'file'], message: 'sessionLogging.sink file needs sessionLogging.file (the session log path)' });
  }
  const pb = c.portBlocks;
  if (pb) {
    if (sourceAddressMode(c) !== 'pool') issue.addIssue({ code: 'custom', path: ['portBlocks'], message: 'port blocks need the pool source-address mode (sourcePool.addresses)' });
    if (pb.first > pb.last) issue.addIssue({ code: 'custom', path: ['portBlocks', 'first'], message: `first (${pb.first}) is above last (${pb.last})` });
    else if (pb.size > pb.last - pb.first + 1) issue.addIssue({ code: 'custom', path: ['portBlocks', 'size'], message: `a block of ${pb.size} ports does not fit in ${pb.first}-${pb.last}` });
  }
  if (c.bindings && c.bindings.addresses.length === 0 && sourceAddressMode(c) !== 'pool' && sourceAddressMode(c) !== 'transparent') {
    issue.addIssue({
      code: 'custom',
      path: ['bindings', 'addresses'],
      message: 'list the addresses bindings open on (or use a source pool or the transparent mode: then each CPE\'s binding opens on its pool address, or on its own)',
    });
  }
  for (const problem of workersProblems(c)) issue.addIssue({ code: 'custom', path: ['workers'], message: problem });
  // Checked here so a start and a SIGHUP reload both refuse it with the other configuration problems.
  const open = openAllowProblem(c.allow, c.auth);
  if (open) issue.addIssue({ code: 'custom', path: ['allow'], message: open });
});

/**
 * What worker processes cannot serve yet: UDP channels, reverse connections (bindings), the on-path listener
 * and RADIUS live in the primary only, and a port-block lease takes its next port synchronously while dialling.
 */
export function workersProblems(c: Pick<ConcentratorConfig, 'workers' | 'transports' | 'bindings' | 'onPath' | 'radius' | 'portBlocks'>): string[] {
  if (c.workers <= 1) return [];
  const out: string[] = [];
  if (c.transports.includes('udp')) out.push('workers > 1 needs transports: [tcp] (UDP channels are served by one process)');
  if (c.bindings) out.push('workers > 1 cannot be combined with bindings (reverse connections are parked in one process)');
  if (c.onPath) out.push('workers > 1 cannot be combined with onPath');
  if (c.radius) out.push('workers > 1 cannot be combined with radius');
  if (c.portBlocks) out.push('workers > 1 cannot be combined with portBlocks');
  return out;
}

/** The effective source-address mode (an absent `sourceAddress.mode` keeps the `sourcePool` behaviour). */
export function sourceAddressMode(c: Pick<ConcentratorConfig, 'sourceAddress' | 'sourcePool'>): 'kernel' | 'pool' | 'transparent' | 'nptv6' {
  return c.sourceAddress?.mode ?? (c.sourcePool.addresses.length > 0 ? 'pool' : 'kernel');
}

export type ConcentratorConfig = z.output<typeof concentratorConfigSchema>;
export type ConcentratorConfigInput = z.input<typeof concentratorConfigSchema>;

export interface ConcentratorFlags {
  config?: string;
  listen?: string[];
  allow?: string[];
  deny?: string[];
  admin?: string;
  pool?: string[];
  announce?: string[];
  noServerMptcp?: boolean;
  logLevel?: string;
}

/** File first, then flags on top (a repeatable flag replaces the file's list). */
export async function resolveConcentratorConfig(flags: ConcentratorFlags): Promise<ConcentratorConfig> {
  const fromFile = flags.config ? ((await loadYaml(flags.config)) as Record<string, unknown> | null) ?? {} : {};
  const raw: Record<string, unknown> = { ...fromFile };
  if (flags.listen?.length) raw['listen'] = flags.listen;
  if (flags.allow?.length) raw['allow'] = flags.allow;
  if (flags.deny?.length) raw['deny'] = flags.deny;
  if (flags.admin) raw['admin'] = flags.admin;
  if (flags.logLevel) raw['logLevel'] = flags.logLevel;
  if (flags.pool?.length) raw['sourcePool'] = { ...((raw['sourcePool'] as object | undefined) ?? {}), addresses: flags.pool };
  if (flags.announce?.length) raw['announce'] = flags.announce;
  if (flags.noServerMptcp) raw['server'] = { ...((raw['server'] as object | undefined) ?? {}), mptcp: false };
  return validateConfig(concentratorConfigSchema, raw, flags.config ?? 'command-line flags');
}
