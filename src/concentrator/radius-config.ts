/** The concentrator's `radius` settings (docs/concentrator.md, "radius"; docs/operator.md, "RADIUS"). */
import { z } from 'zod';
import { ip } from '../control/schema.js';

const port = z.number().int().min(1).max(65_535);
const attrType = z.number().int().min(1).max(255);

export const radiusConfigSchema = z.strictObject({
  /** Tried in order (the last one that answered first); each server's shared secret is read from its file. */
  servers: z
    .array(z.strictObject({ host: ip, authPort: port.default(1812), acctPort: port.default(1813), secretFile: z.string().min(1) }))
    .min(1, 'at least one RADIUS server is needed'),
  /** Wait for an answer before a retry (RFC 5080 section 2.2.1: the same packet again). */
  timeoutMs: z.number().int().min(50).max(30_000).default(1_000),
  /** Retries per server before the next one. */
  retries: z.number().int().min(0).max(10).default(2),
  /** The longest a connection waits for its CPE's answer; past it, `failMode` (the request goes on, its answer is cached). */
  maxWaitMs: z.number().int().min(50).max(60_000).default(3_000),
  /** No answer in time: refuse the connection (closed) or let it through (open). */
  failMode: z.enum(['open', 'closed']).default('closed'),
  /** How long an Access-Accept is used when it has no Session-Timeout. */
  cacheTtlS: z.number().int().min(1).default(300),
  /** How long an Access-Reject is used. */
  rejectTtlS: z.number().int().min(1).default(60),
  /** How long "no server answered" is used for a CPE before it is asked again (its connections meanwhile: failMode at once). */
  failTtlS: z.number().int().min(1).default(10),
  /** CPE identities whose answer is cached (the oldest is forgotten beyond). */
  cacheSize: z.number().int().min(1).default(100_000),
  /** User-Password of every Access-Request: the AAA authorizes a CPE identity, there is no user secret. */
  password: z.string().min(1).max(128).default('mpconvert'),
  /** NAS-Identifier; absent: `mpconvert-<instance>`. */
  nasIdentifier: z.string().min(1).max(253).optional(),
  /** Local address the RADIUS requests are sent from (the address the AAA's client entry names); absent: the kernel's choice. */
  sourceAddress: ip.optional(),
  /** NAS-IP-Address (or NAS-IPv6-Address) sent in every request. */
  nasIpAddress: ip.optional(),
  /** Drop Access answers without a Message-Authenticator (RFC 3579; the BlastRADIUS mitigation, CVE-2024-3596). */
  requireMessageAuthenticator: z.boolean().default(false),
  /**
   * draft-boucadair-mptcp-radius: attributes that carry the concentrator addresses of a subscriber. Their types
   * are not assigned by IANA: site-specific, the defaults are in the Experimental Use range (RFC 3575).
   */
  concentratorAttributes: z
    .strictObject({
      ipv4Type: attrType.default(192),
      ipv6Type: attrType.default(193),
      /** Send the address the CPE reached this concentrator on in the Access-Request, as a hint. */
      hint: z.boolean().default(false),
      /** Refuse a CPE whose Access-Accept names concentrators none of which is this one (`radius-other-concentrator`). */
      enforce: z.boolean().default(false),
    })
    .default({ ipv4Type: 192, ipv6Type: 193, hint: false, enforce: false }),
  /** RFC 2866 accounting per CPE: Start, Interim-Update, Stop (to the servers' acctPort). */
  accounting: z
    .strictObject({
      enabled: z.boolean().default(true),
      interimS: z.number().int().min(1).max(86_400).default(300),
      /** Stop once a CPE has had no open connection for this long. */
      stopAfterIdleS: z.number().int().min(0).max(86_400).default(60),
    })
    .default({ enabled: true, interimS: 300, stopAfterIdleS: 60 }),
});

export type RadiusConfig = z.output<typeof radiusConfigSchema>;
