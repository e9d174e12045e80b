/**
 * Every reason the concentrator refuses a connection, in one table: the metric label it is counted under
 * (`mpconvert_refused_total{reason}`), what it means, and the reaction on the wire for each signalling
 * format. MP_CONVERT has no error message: every refusal is a silent abort (RST / MP_FASTCLOSE). RFC 8803
 * refusals send a Convert message with an Error TLV (RFC 8803 section 6.2.8 codes), then close. A refusal
 * before the signalling is read has no format yet: abort.
 *
 * The gates (src/policy) return these codes; the concentrator's pipeline turns a code into the counter, the
 * log line and the wire reaction through `refusalReaction`. docs/concentrator.md lists every code (a unit
 * test reads it).
 */
import { ConvertErrorCode, type WireReaction } from '../protocol/errors.js';

export type SignallingFormat = 'mp-convert' | 'rfc8803';

interface RefusalSpec {
  meaning: string;
  /** RFC 8803 Error TLV code; undefined = abort in both formats (or nothing: the client is gone). */
  convertError?: number;
}

export const REFUSALS = {
  'not-customer': { meaning: 'the source address is in no `allow` prefix; nothing is read' },
  'onpath-source': { meaning: 'implicit mode: an intercepted connection from outside `onPath.sources` (rules of an earlier configuration); reset' },
  'tcp-fallback': { meaning: 'the connection fell back to plain TCP (no MPTCP), with `acceptFallback: false`' },
  'signalling-per-cpe': { meaning: 'this CPE already has `signalling.maxPendingPerCpe` connections waiting for their signalling' },
  'signalling-total': { meaning: '`signalling.maxPending` connections are waiting for their signalling' },
  'shed-fd-limit': { meaning: 'near the descriptor limit: the oldest connection still in signalling was dropped for a new one' },
  'warm-limit': { meaning: 'this CPE already keeps `signalling.warmMaxPerCpe` warm connections, or all CPEs `signalling.warmMax`: the CPE dials afresh instead' },
  'warm-unused': { meaning: 'a warm connection (CPE pool entry) was closed by its CPE before use: how a pool retires an entry, not an error' },
  'warm-idle': { meaning: 'a warm connection was not used within `signalling.warmIdleS`' },
  'signalling-empty': { meaning: 'closed before sending any byte (a health probe, or a CPE that gave up)' },
  signalling: { meaning: 'signalling malformed, truncated, too slow or over the limits; the label carries the protocol code (`signalling:MPC_ERR_...`)' },
  'auth-missing': { meaning: 'authentication is required and the signalling carries no authenticator (RFC 8803: with the Cookie TLV to send)', convertError: ConvertErrorCode.MissingCookie },
  'auth-malformed': { meaning: 'the authenticator is truncated, of an unknown version, has a bad key id, trailing bytes, or appears twice', convertError: ConvertErrorCode.NotAuthorized },
  'auth-unknown-key': { meaning: 'the authenticator names a key id that is not in the keys file', convertError: ConvertErrorCode.NotAuthorized },
  'auth-source': { meaning: 'the key may only be used from its `from` prefixes, and the source address is in none', convertError: ConvertErrorCode.NotAuthorized },
  'auth-mac': { meaning: 'the authenticator MAC is wrong (a forgery, a wrong secret, or signalling changed on the way)', convertError: ConvertErrorCode.NotAuthorized },
  'auth-clock': { meaning: 'the authenticator timestamp is outside `auth.clockSkewS` of the concentrator clock (expired, or a CPE clock off)', convertError: ConvertErrorCode.NotAuthorized },
  'auth-replay': { meaning: 'the authenticator nonce was already used within the clock window (a replay)', convertError: ConvertErrorCode.NotAuthorized },
  'auth-replay-full': { meaning: 'the replay cache holds `auth.replayCacheSize` nonces: new connections are refused until entries expire (fail closed)', convertError: ConvertErrorCode.NotAuthorized },
  'radius-reject': { meaning: 'the RADIUS server answered Access-Reject (or Access-Challenge) for this CPE', convertError: ConvertErrorCode.NotAuthorized },
  'radius-unavailable': {
    meaning: 'no RADIUS server answered, or not within `radius.maxWaitMs`, with `radius.failMode: closed`; the label carries why (`radius-unavailable:timeout`)',
    convertError: ConvertErrorCode.NetworkFailure,
  },
  'radius-other-concentrator': { meaning: 'the Access-Accept assigns this CPE concentrators none of which is this one (`radius.concentratorAttributes.enforce`)', convertError: ConvertErrorCode.NotAuthorized },
  'max-connections': { meaning: '`limits.maxConnections` reached', convertError: ConvertErrorCode.ResourceExceeded },
  'max-connections-per-cpe': { meaning: '`limits.maxConnectionsPerCpe` reached for this CPE', convertError: ConvertErrorCode.ResourceExceeded },
  'rate-per-cpe': { meaning: 'over `limits.newConnectionsPerSecondPerCpe` for this CPE', convertError: ConvertErrorCode.ResourceExceeded },
  'no-destination': { meaning: 'the signalling names no destination', convertError: ConvertErrorCode.MalformedMessage },
  destination: {
    meaning: 'the destination gate refused the destination (never a server: Error TLV 1; own address, deny prefix, special purpose: 32)',
    convertError: ConvertErrorCode.NotAuthorized,
  },
  source: { meaning: 'the source IE carries an address that is never a host', convertError: ConvertErrorCode.MalformedMessage },
  'source-spoofed': {
    meaning: 'transparent and nptv6 modes: the source IE names an address outside the prefixes of this CPE (`sourceAddress.customers`; without an entry, the CPE\'s own address)',
    convertError: ConvertErrorCode.NotAuthorized,
  },
  'no-source-address': {
    meaning: 'transparent and nptv6 modes: no address of the destination\'s family to source the server leg from (no source IE or CPE address of that family, no customer prefix, an NPTv6 address that cannot be mapped)',
    convertError: ConvertErrorCode.NetworkFailure,
  },
  'port-block-limit': {
    meaning: 'port blocks: every port of this CPE\'s `portBlocks.maxBlocksPerCpe` blocks is in use (or refused by the kernel)',
    convertError: ConvertErrorCode.ResourceExceeded,
  },
  'port-blocks-exhausted': { meaning: 'port blocks: the CPE needs another block and its pool address has no free one left', convertError: ConvertErrorCode.ResourceExceeded },
  'pool-exhausted': { meaning: 'no source pool address free for this CPE (1:1 pool)', convertError: ConvertErrorCode.ResourceExceeded },
  dial: { meaning: 'the server connection failed; the label carries the errno (`dial:ECONNREFUSED`), the Error TLV code follows it', convertError: ConvertErrorCode.NetworkFailure },
  'handshake-timeout': { meaning: "the CPE's handshake ACK did not arrive within 5 s of its 0-RTT SYN", convertError: ConvertErrorCode.NetworkFailure },
  'udp-not-offered': { meaning: 'a UDP channel (transport IE, protocol 17) while `transports` does not list udp, or a transport IE of another protocol: the CPE takes the abort as "UDP not offered"' },
  'udp-source-mode': { meaning: 'a UDP channel while `sourceAddress.mode` is transparent or nptv6 (UDP is sourced from the pool or by the kernel only)' },
  'tcp-not-offered': { meaning: 'a TCP conversion while `transports` does not list tcp', convertError: ConvertErrorCode.UnsupportedMessage },
  'client-gone': { meaning: 'the CPE closed the connection while the server was being dialled: nothing to answer' },
  stopping: { meaning: 'the concentrator is stopping' },
  'primary-unavailable': {
    meaning: 'a worker process (`workers` > 1) got no answer from the primary for the shared state (limits, replay cache, source pool): the primary is gone or too slow',
    convertError: ConvertErrorCode.NetworkFailure,
  },
  'binding-off': { meaning: 'a reverse connection (binding IE) to a concentrator without `bindings`' },
  'binding-data': { meaning: 'a reverse connection sent bytes after its claim (nothing may follow it before the concentrator\'s header)' },
  'binding-port': { meaning: 'the binding gate (the destination gate in reverse): the port is outside `bindings.ports`, or a service of the concentrator (a listener, the admin endpoint) uses it' },
  'binding-taken': { meaning: 'another CPE owns the binding on that port (and address): a second claim' },
  'binding-limit': { meaning: 'the CPE already owns `bindings.maxPerCpe` bindings' },
  'binding-idle-limit': { meaning: 'the binding already has `bindings.idlePerBinding` idle reverse connections' },
  'binding-no-address': { meaning: 'no address to open the binding on: no `bindings.addresses` of any family and no source-pool address for this CPE' },
  'binding-listen': { meaning: 'the binding\'s port could not be opened; the label carries the errno (`binding-listen:EADDRINUSE`)' },
} as const satisfies Record<string, RefusalSpec>;

export type RefusalCode = keyof typeof REFUSALS;

/** A gate's verdict: why, and what the wire reaction needs beyond the table (an Error TLV code of its own). */
export interface Refusal {
  code: RefusalCode;
  /** Appended to the metric label: `signalling:MPC_ERR_IE_MAGIC`, `dial:ETIMEDOUT`. A bounded set (codes, errnos). */
  qualifier?: string | undefined;
  /** Overrides the table's Error TLV code (the destination gate's reason, the dial errno). */
  convertError?: number | undefined;
  /** A reaction decided by the decoder itself (RFC 8803 Malformed Message echoes the message). */
  reaction?: WireReaction | undefined;
  /** Logged and written to the session log; never sent. */
  detail?: Record<string, unknown> | undefined;
}

export const refuse = (code: RefusalCode, more: Omit<Refusal, 'code'> = {}): Refusal => ({ code, ...more });

export function refusalLabel(r: Refusal): string {
  return r.qualifier ? `${r.code}:${r.qualifier}` : r.code;
}

/** The wire reaction for a refusal in the given format (undefined: the signalling was not read yet). */
export function refusalReaction(r: Refusal, format: SignallingFormat | undefined): WireReaction {
  // The decoder's own reaction already fits the format it recognised.
  if (r.reaction) return r.reaction;
  if (format !== 'rfc8803') return { kind: 'abort' };
  const spec: RefusalSpec = REFUSALS[r.code];
  const errorCode = r.convertError ?? spec.convertError;
  if (errorCode === undefined) return { kind: 'abort' };
  // Missing Cookie must carry the Cookie TLV to send (the authenticate gate supplies it as its reaction).
  if (errorCode === ConvertErrorCode.MissingCookie) return { kind: 'convert-error', errorCode: ConvertErrorCode.NotAuthorized };
  return { kind: 'convert-error', errorCode };
}
