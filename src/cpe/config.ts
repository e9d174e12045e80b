/** The CPE's settings: schema, defaults, and the merge of file and command-line flags. */
import { isIP } from 'node:net';
import { z } from 'zod';
import { loadYaml, validateConfig } from '../control/config-file.js';
import { endpoint, cidr } from '../control/schema.js';
import { ConfigError } from '../control/config-file.js';
import { parseSecret, readSecretFile } from '../control/secret-file.js';
import { isValidKeyId } from '../protocol/auth.js';
import { DHCP_MCP_OPTION_V4_DEFAULT, DHCP_MCP_OPTION_V6_DEFAULT } from '../protocol/dhcp-mcp.js';

/** Where the DHCP client hooks (packaging/dhcp) leave the leases' concentrators. */
export const DHCP_LEASE_DIR_DEFAULT = '/run/mpconvert-dhcp';

const portRange = z.union([
  z.number().int().min(1).max(65535),
  z.tuple([z.number().int().min(1).max(65535), z.number().int().min(1).max(65535)]).refine(([a, b]) => a <= b, 'range start must be <= end'),
]);

const flowMatch = z.strictObject({ prefix: cidr, ports: z.array(portRange).optional() });
/** A flow class of the distribution (src/policy/flow-class.ts): latency-sensitive traffic pinned to one uplink. */
const flowClass = z
  .strictObject({
    name: z.string().regex(/^[a-z0-9_-]{1,32}$/, 'lowercase letters, digits, _ and - (at most 32)'),
    /** DSCP values of the client's packets (0-63, e.g. 46 = EF). */
    dscp: z.array(z.number().int().min(0).max(63)).min(1).optional(),
    /** Destination prefixes, each with optional ports. */
    destinations: z.array(flowMatch).min(1).optional(),
    /** Pin to this uplink (interface) while it is usable; absent: the uplink with the lowest path RTT. */
    uplink: z.string().min(1).optional(),
  })
  .refine((c) => c.dscp !== undefined || c.destinations !== undefined, 'a class needs dscp or destinations (or both)');
/** Warm connections kept per concentrator by default (docs/performance.md, "Warm pool"). */
export const WARM_POOL_DEFAULT = 0;

/** The settings of one concentrator besides its address (a static entry's, and the template of DHCP-learned ones). */
const concentratorSettings = {
  format: z.enum(['mp-convert', 'rfc8803']).default('mp-convert'),
  /** Also send the client's source address (an IE with D = 1), for transparent concentrators. */
  sourceIe: z.boolean().default(false),
  /**
   * Signalling and the client's first bytes in the SYN (TCP Fast Open): the 0-RTT conversion. Off: they go
   * first thing after the handshake, one round trip more per connection. On a SYN-cookie answer (the
   * concentrator under a SYN flood) the connection is retried at once without data in the SYN.
   */
  zeroRtt: z.boolean().default(true),
  /**
   * Clamp the window of the CPE's SYNs to this concentrator (nft, output): the workaround for the Linux
   * MPTCP passive-TFO window bug when the concentrator does not clamp it itself (a third-party one, or an
   * mpconvert concentrator with synWindowClamp off). See docs/kernel-tfo-window.md.
   */
  synWindowClamp: z.boolean().default(false),
  /**
   * Warm pool (docs/cpe.md, "Warm pool"): connections kept open to this concentrator, subflows joined,
   * so a new LAN connection sends its signalling and first bytes at once. 0 = none. MP_CONVERT only.
   */
  warmPool: z.number().int().min(0).max(64).default(WARM_POOL_DEFAULT),
  /** A warm connection unused for this long is closed and replaced (below the concentrator's signalling.warmIdleS). */
  warmIdleS: z.number().int().min(1).max(3_000).default(60),
  /**
   * Authentication towards this concentrator (docs/cpe.md, "Authentication"): the key id, and the file
   * that holds its secret (`hex:...` or `base64:...`, mode 600); never the secret itself in this file.
   */
  keyId: z.string().refine(isValidKeyId, 'a key id is 1-32 of A-Z a-z 0-9 . _ : -').optional(),
  secretFile: z.string().min(1).optional(),
};

type Settings = { format: string; warmPool: number; keyId?: string | undefined; secretFile?: string | undefined };
/** Rules across a concentrator's settings (a static entry's and DHCP's template). */
const keysTogether = [(c: Settings) => (c.keyId === undefined) === (c.secretFile === undefined), 'keyId and secretFile go together (both, or neither)'] as const;
const warmNeedsMpConvert = [(c: Settings) => c.format === 'mp-convert' || c.warmPool === 0, { message: 'warmPool needs format mp-convert (RFC 8803 has no warm connection)', path: ['warmPool'] as PropertyKey[] }] as const;

export const cpeConfigSchema = z.strictObject({
  /** Instance name: names the nft table and routing tables, so two CPE daemons never collide. */
  instance: z.string().regex(/^[a-z0-9_]{1,16}$/, 'lowercase letters, digits and _ (at most 16)').default('default'),
  /**
   * What the CPE is in the network. 'router': the home router of a private LAN (its default gateway towards
   * the uplinks): every uplink NATs what the CPE forwards untouched (`nat` defaults to true). 'transit': the
   * LAN's prefix is routed to the CPE by the access networks (or another box NATs): nothing is NATed unless an
   * uplink says `nat: true`.
   */
  mode: z.enum(['router', 'transit']).default('transit'),
  /** LAN interfaces whose TCP connections are intercepted. */
  lan: z.array(z.string().min(1)).min(1, 'at least one LAN interface is needed'),
  uplinks: z
    .array(
      z.strictObject({
        interface: z.string().min(1),
        /** subflow = used all the time; backup = used only when no subflow uplink works (primary/backup scheme). */
        mode: z.enum(['subflow', 'backup']).default('subflow'),
        gateway4: z.string().refine((s) => isIP(s) === 4, 'must be an IPv4 address').optional(),
        gateway6: z.string().refine((s) => isIP(s) === 6, 'must be an IPv6 address').optional(),
        /**
         * Masquerade (IPv4) what the CPE forwards untouched out of this uplink: traffic it does not convert
         * (UDP, ICMP, excluded TCP, native MPTCP) leaves with the uplink's address. Default: on in router mode.
         */
        nat: z.boolean().optional(),
        /**
         * A volume quota (metered uplinks): past `bytes` (both directions, the interface's counters) in the
         * current period the uplink is only a backup until the period ends. Usage is kept in quotaStateFile.
         */
        quota: z
          .strictObject({
            bytes: z.number().int().positive(),
            period: z.enum(['day', 'month']).default('month'),
            /** The day of the month a monthly period starts (1-28). */
            resetDay: z.number().int().min(1).max(28).default(1),
          })
          .optional(),
      }),
    )
    .min(1, 'at least one uplink is needed'),
  /**
   * The traffic distribution scheme (docs/operations.md): `aggregate` uses the uplinks' modes (subflow, or
   * backup for active-backup); `overflow` keeps everything on `overflow.primary` until the load nears its
   * capacity, then lets the other uplinks join (and leave again below `leaveBelow` for `holdS`).
   */
  distribution: z
    .strictObject({
      scheme: z.enum(['aggregate', 'overflow']).default('aggregate'),
      overflow: z
        .strictObject({
          primary: z.string().min(1),
          capacityMbit: z.number().positive(),
          joinAbove: z.number().gt(0).max(1).default(0.8),
          leaveBelow: z.number().gt(0).max(1).default(0.5),
          holdS: z.number().min(0).max(3600).default(5),
        })
        .refine((o) => o.leaveBelow <= o.joinAbove, 'leaveBelow must not be above joinAbove')
        .optional(),
      /**
       * Flow classes (with any scheme): a LAN connection in a class is pinned to one uplink (`uplink`, or the
       * one with the lowest path RTT) instead of being aggregated. A class matches by DSCP and/or destination
       * (prefix and ports); the first class that matches wins. Reloadable (src/cpe/pinning.ts).
       */
      classes: z.array(flowClass).default([]),
    })
    .refine((d) => d.scheme !== 'overflow' || d.overflow !== undefined, 'scheme overflow needs overflow: {primary, capacityMbit}')
    .refine((d) => new Set(d.classes.map((c) => c.name)).size === d.classes.length, 'class names must be unique')
    .default({ scheme: 'aggregate', classes: [] }),
  /** Concentrators in order of preference (with concentratorSource other than static, combined with DHCP's). */
  concentrators: z
    .array(z.strictObject({ address: endpoint, ...concentratorSettings }).refine(...keysTogether).refine(...warmNeedsMpConvert))
    .default([]),
  /**
   * Where the concentrators come from (docs/cpe.md, "Concentrators from DHCP"): `static` the list above only;
   * `dhcp` only those the uplinks' DHCP leases name (draft-boucadair-mptcp-dhc); `dhcp-first` those, then the
   * list above (a lease without the option falls back to it); `static-first` the list above, then DHCP's.
   */
  concentratorSource: z.enum(['static', 'dhcp', 'dhcp-first', 'static-first']).default('static'),
  /** DHCP provisioning of the concentrators (docs/operator.md, "DHCP provisioning"). */
  dhcp: z
    .strictObject({
      /** Where the DHCP client hooks leave one file per uplink and family (the hooks' MPCONVERT_DHCP_DIR). */
      leaseDir: z.string().min(1).default(DHCP_LEASE_DIR_DEFAULT),
      /** The DHCPv4 option code (site-specific range 224-254 by default, RFC 3942): for the router-side snippets. */
      optionV4: z.number().int().min(1).max(254).default(DHCP_MCP_OPTION_V4_DEFAULT),
      /** The DHCPv6 option code (no private-use range exists: one near the top of the space). */
      optionV6: z.number().int().min(1).max(65_535).default(DHCP_MCP_OPTION_V6_DEFAULT),
      /** How often the lease directory is read (a changed lease takes effect within this). */
      pollMs: z.number().int().min(100).max(60_000).default(1_000),
      /** The settings of every concentrator DHCP names: its port (DHCP carries addresses only) and the per-concentrator keys above. */
      concentrator: z
        .strictObject({ port: z.number().int().min(1).max(65_535).default(5_000), ...concentratorSettings })
        .refine(...keysTogether)
        .refine(...warmNeedsMpConvert)
        .prefault({}),
    })
    .prefault({}),
  /**
   * Inbound bindings (docs/cpe.md, "Inbound bindings"): an external port on the concentrator carried to a LAN
   * host over reverse MPTCP connections that the CPE opens (so it works behind a CGN, over every uplink).
   */
  bindings: z
    .array(
      z.strictObject({
        /** The external port claimed on the concentrator (its address is the concentrator's choice). */
        port: z.number().int().min(1).max(65_535),
        /** The LAN host and port the binding leads to (ADDR:PORT, [V6]:PORT). */
        to: endpoint,
        /** The concentrator (its `address` in `concentrators`); default: the first one. */
        concentrator: z.string().optional(),
        /** Idle reverse connections kept ready (each internet connection uses one; refilled at once). */
        pool: z.number().int().min(1).max(64).default(2),
        /** An idle reverse connection is closed and replaced after this long (below the concentrator's bindings.idleS). */
        idleS: z.number().int().min(1).max(86_400).default(240),
      }),
    )
    .default([]),
  /** Which flows are converted; the rest is forwarded untouched. Exclude wins over include. */
  policy: z
    .strictObject({
      include: z.array(flowMatch).default([{ prefix: '0.0.0.0/0' }, { prefix: '::/0' }]),
      exclude: z.array(flowMatch).default([]),
      /** LAN SYNs that already carry MP_CAPABLE: passthrough keeps end-to-end MPTCP (the Network-Assisted MPTCP design: encourage end-to-end MPTCP). */
      nativeMptcp: z.enum(['passthrough', 'intercept']).default('passthrough'),
    })
    .default({ include: [{ prefix: '0.0.0.0/0' }, { prefix: '::/0' }], exclude: [], nativeMptcp: 'passthrough' }),
  /**
   * Transport protocols converted (draft-nam-mptcp-deployment-considerations section 5.6.6). 'udp': LAN UDP
   * of the same policy goes over UDP channels to the first concentrator that offers them (docs/cpe.md, "UDP").
   */
  transports: z.array(z.enum(['tcp', 'udp'])).min(1, 'list at least one transport').default(['tcp']),
  udp: z
    .strictObject({
      /** A LAN flow (client address and port) without a datagram for this long is forgotten. */
      flowIdleS: z.number().int().min(10).max(86_400).default(300),
      maxFlows: z.number().int().min(1).default(16_384),
      /** Per channel, upstream: queued frames beyond this many bytes drop the oldest. */
      queueBytes: z.number().int().min(2_048).default(262_144),
      /** Per channel, upstream: a frame queued longer than this is dropped instead of sent. */
      queueMs: z.number().int().min(1).max(10_000).default(50),
      /** TCP_NOTSENT_LOWAT on the channel's socket. */
      notsentLowat: z.number().int().min(1_024).default(32_768),
      /**
       * SO_SNDBUF of the channel, applied by the kernel to each subflow: bounds what waits in a subflow's queue
       * (the largest part of a channel's delay under load). About the uplinks' bandwidth-delay product
       * (50 Mbit/s x 20 ms = 125 KB); 0 = the kernel's autotuning (megabytes: fine for bulk, not for latency).
       */
      sendBuffer: z.number().int().min(0).max(64 << 20).default(131_072),
      /** After a concentrator refused a channel (UDP not offered), how long until it is asked again. */
      notOfferedRetryS: z.number().int().min(1).default(60),
    })
    .default({ flowIdleS: 300, maxFlows: 16_384, queueBytes: 262_144, queueMs: 50, notsentLowat: 32_768, sendBuffer: 131_072, notOfferedRetryS: 60 }),
  /**
   * Servers that speak MPTCP themselves (docs/cpe.md, "Direct MPTCP to servers"). 'maintain': every converted
   * connection goes through the concentrator. 'direct': the CPE learns from the concentrator whether the server
   * leg negotiated MPTCP (MP_CONVERT: the answer to its server MPTCP query IE; RFC 8803: an Extended TCP Header
   * TLV with MP_CAPABLE in the reply) and, for a server that did, dials later connections to it itself over
   * MPTCP (every uplink), falling back to the concentrator if that fails. The cache of such servers is bounded
   * and expires.
   */
  serverMptcp: z
    .strictObject({
      mode: z.enum(['maintain', 'direct']).default('maintain'),
      cacheTtlS: z.number().int().min(1).max(86_400).default(600),
      cacheSize: z.number().int().min(1).max(100_000).default(4_096),
    })
    .default({ mode: 'maintain', cacheTtlS: 600, cacheSize: 4_096 }),
  /** When no concentrator works: connect directly (plain TCP) or refuse the client connection. */
  fallback: z.enum(['direct', 'refuse']).default('direct'),
  /** How long to wait for the client's first bytes so they ride in the SYN with the signalling. */
  firstDataWaitMs: z.number().int().min(0).max(1_000).default(20),
  /** Most client bytes put in the SYN (the rest follows after the echo). */
  synDataMax: z.number().int().min(0).max(1_400).default(1_200),
  connectTimeoutMs: z.number().int().min(100).max(60_000).default(5_000),
  echoTimeoutMs: z.number().int().min(100).max(60_000).default(5_000),
  /** How long a concentrator that did not echo stays "not capable". */
  capabilityCacheTtlS: z.number().int().min(1).default(3_600),
  /** How long an unreachable concentrator is skipped. */
  unreachableHoldS: z.number().int().min(0).default(30),
  /** Use the client's DSCP on the MPTCP subflows (draft-nam-mptcp-deployment-considerations section 5.6.5). */
  preserveDscp: z.boolean().default(true),
  /** TCP MSS of the converted connections' subflows; 0 = the kernel's choice. */
  mss: z.number().int().min(0).max(65_535).default(0),
  /** MSS clamp for flows forwarded untouched: 'pmtu' (route MTU), a value, or 'off'. */
  mssClamp: z.union([z.literal('pmtu'), z.literal('off'), z.number().int().min(536).max(65_535)]).default('pmtu'),
  tproxyPort: z.number().int().min(1).max(65_535).default(15_001),
  /** Firewall mark bit used by the interception routing (and, above it, the client's DSCP). */
  mark: z.number().int().min(1).max(0xff).default(0x1),
  routingTableBase: z.number().int().min(1).max(0x7fff_0000).default(200),
  rulePriorityBase: z.number().int().min(1).max(32_000).default(10_000),
  uplinkPollMs: z.number().int().min(200).default(2_000),
  mptcpLimits: z
    .strictObject({ subflows: z.number().int().min(0).max(8).default(8), addAddrAccepted: z.number().int().min(0).max(8).default(8) })
    .default({ subflows: 8, addAddrAccepted: 8 }),
  /**
   * Who moves the relayed bytes: 'splice' (in the kernel, splice(2) in a worker thread; no copy through
   * JavaScript) or 'streams' (Node streams on the event loop).
   */
  relayEngine: z.enum(['splice', 'streams']).default('splice'),
  idleTimeoutS: z.number().int().min(1).default(600),
  shutdownDrainS: z.number().min(0).default(5),
  /** Where the uplinks' quota usage is kept across restarts and reboots. */
  quotaStateFile: z.string().min(1).default('/var/lib/mpconvert/quota.json'),
  /** Where the CPE remembers the MPTCP endpoints it created, so a restart after a crash removes them. */
  stateDir: z.string().min(1).default('/run/mpconvert'),
  admin: endpoint.optional(),
  /** The admin API's bearer token (docs/operations.md); without it the admin endpoint must be a loopback address. */
  adminTokenFile: z.string().min(1).optional(),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
}).refine((c) => c.concentrators.length > 0 || c.concentratorSource === 'dhcp', {
  message: 'at least one concentrator is needed (or concentratorSource: dhcp)',
  path: ['concentrators'],
}).superRefine((c, issue) => {
  c.bindings.forEach((b, i) => {
    const target = b.concentrator === undefined ? c.concentrators[0] : c.concentrators.find((t) => t.address === b.concentrator);
    if (!target) issue.addIssue({ code: 'custom', path: ['bindings', i, 'concentrator'], message: `no concentrator with address ${b.concentrator} in concentrators` });
    else if (target.format !== 'mp-convert') issue.addIssue({ code: 'custom', path: ['bindings', i, 'concentrator'], message: 'bindings need a concentrator with format mp-convert (RFC 8803 has no binding)' });
    if (c.bindings.findIndex((o) => o.port === b.port && o.concentrator === b.concentrator) !== i) issue.addIssue({ code: 'custom', path: ['bindings', i, 'port'], message: `port ${b.port} is bound twice` });
  });
});

export type CpeConfig = z.output<typeof cpeConfigSchema>;
export type CpeConfigInput = z.input<typeof cpeConfigSchema>;
export type ConcentratorTarget = CpeConfig['concentrators'][number];
export type BindingConfig = CpeConfig['bindings'][number];

/** The uplinks that NAT: `nat` where given, else on in router mode. */
export function natUplinks(cfg: Pick<CpeConfig, 'mode' | 'uplinks'>): string[] {
  return cfg.uplinks.filter((u) => u.nat ?? cfg.mode === 'router').map((u) => u.interface);
}

export interface CpeFlags {
  config?: string;
  lan?: string[];
  uplink?: string[];
  concentrator?: string[];
  format?: 'mp-convert' | 'rfc8803';
  zeroRtt?: boolean;
  warmPool?: number;
  fallback?: 'direct' | 'refuse';
  transports?: string[];
  admin?: string;
  logLevel?: string;
  instance?: string;
}

/** `--uplink IFACE` or `--uplink IFACE:backup`. */
function parseUplinkFlag(text: string): { interface: string; mode: 'subflow' | 'backup' } {
  const [iface, mode] = text.split(':');
  return { interface: iface ?? '', mode: mode === 'backup' ? 'backup' : 'subflow' };
}

export async function resolveCpeConfig(flags: CpeFlags): Promise<CpeConfig> {
  const fromFile = flags.config ? ((await loadYaml(flags.config)) as Record<string, unknown> | null) ?? {} : {};
  const raw: Record<string, unknown> = { ...fromFile };
  if (flags.lan?.length) raw['lan'] = flags.lan;
  if (flags.uplink?.length) raw['uplinks'] = flags.uplink.map(parseUplinkFlag);
  if (flags.concentrator?.length) raw['concentrators'] = flags.concentrator.map((address) => ({
      address,
      ...(flags.format ? { format: flags.format } : {}),
      ...(flags.zeroRtt !== undefined ? { zeroRtt: flags.zeroRtt } : {}),
      ...(flags.warmPool !== undefined ? { warmPool: flags.warmPool } : {}),
    }));
  if (flags.fallback) raw['fallback'] = flags.fallback;
  if (flags.transports?.length) raw['transports'] = flags.transports;
  if (flags.admin) raw['admin'] = flags.admin;
  if (flags.logLevel) raw['logLevel'] = flags.logLevel;
  if (flags.instance) raw['instance'] = flags.instance;
  return validateConfig(cpeConfigSchema, raw, flags.config ?? 'command-line flags');
}

export interface Credentials {
  keyId: string;
  secret: Buffer;
}

/** Reads the secret file of every concentrator that has one (at start): by concentrator address. */
export async function loadCredentials(concentrators: readonly ConcentratorTarget[]): Promise<Map<string, Credentials>> {
  const out = new Map<string, Credentials>();
  for (const c of concentrators) {
    if (c.keyId === undefined || c.secretFile === undefined) continue;
    const s = parseSecret(await readSecretFile(c.secretFile, 'secret file'));
    if (!s.ok) throw new ConfigError(`secret file ${c.secretFile} (concentrator ${c.address}): ${s.why}`);
    out.set(c.address, { keyId: c.keyId, secret: s.secret });
  }
  return out;
}
