/**
 * The authenticate gate, pure (the clock and the replay cache are passed in): checks the CPE authenticator
 * (src/protocol/auth.ts, docs/protocol.md "Authenticator") in the signalling bytes before anything is dialled,
 * and names the CPE identity that limits and the source pool use from then on. Order: locate, parse, key,
 * source prefix, MAC (constant time), clock window, then the nonce: only an authenticator that verified
 * reaches the replay cache, so forgeries cannot fill it.
 */
import { timingSafeEqual } from 'node:crypto';
import { authenticatorMac, locateAuthenticator, parseAuthenticator, type ParsedAuthenticator } from '../protocol/auth.js';
import { ConvertErrorCode, type WireReaction } from '../protocol/errors.js';
import { encodeConvertMessage } from '../protocol/convert.js';
import type { PrefixMatcher } from './gates.js';
import { refuse, type Refusal, type SignallingFormat } from './refusals.js';

export interface CpeKey {
  id: string;
  secret: Buffer;
  /** The CPE this key belongs to (two keys of one CPE during a rotation share it); default: the key id. */
  cpe: string;
  /** Source prefixes the key may be used from; undefined = any customer address. */
  from?: PrefixMatcher | undefined;
}

export type KeyRing = ReadonlyMap<string, CpeKey>;

/**
 * Nonces of authenticators accepted within the clock window, each kept until its timestamp leaves the
 * window. Bounded: when `maxEntries` are held (after dropping the expired), a new authenticator is refused
 * (fail closed: `auth-replay-full`), never an entry evicted early, which would re-open a replay.
 */
export class ReplayCache {
  /** Expiry second -> keys expiring then; `#all` answers the lookups. */
  readonly #buckets = new Map<number, string[]>();
  readonly #all = new Set<string>();
  #maxEntries: number;
  #swept = 0;

  constructor(maxEntries: number) {
    this.#maxEntries = maxEntries;
  }

  get size(): number {
    return this.#all.size;
  }

  resize(maxEntries: number): void {
    this.#maxEntries = maxEntries;
  }

  /** Drops every entry that expired before `nowS`. */
  sweep(nowS: number): void {
    if (nowS <= this.#swept) return;
    this.#swept = nowS;
    for (const [at, keys] of this.#buckets) {
      if (at >= nowS) continue;
      for (const k of keys) this.#all.delete(k);
      this.#buckets.delete(at);
    }
  }

  /** 'new' (remembered until `expiresS`), 'seen' (a replay) or 'full'. */
  remember(key: string, expiresS: number, nowS: number): 'new' | 'seen' | 'full' {
    this.sweep(nowS);
    if (this.#all.has(key)) return 'seen';
    if (this.#all.size >= this.#maxEntries) return 'full';
    this.#all.add(key);
    const bucket = this.#buckets.get(expiresS);
    if (bucket) bucket.push(key);
    else this.#buckets.set(expiresS, [key]);
    return 'new';
  }
}

export interface AuthSettings {
  keys: KeyRing;
  clockSkewS: number;
  /** false: a connection without an authenticator passes as its source address (migration); a bad one never does. */
  required: boolean;
  replay: ReplayCache;
}

export type AuthVerdict = { ok: true; identity: string; keyId?: string | undefined } | { ok: false; refusal: Refusal };

/**
 * What RFC 8803 Missing Cookie (section 6.2.8, code 3) carries: the Cookie TLV the client is to send. The
 * authenticator is the CPE's to compute, so this one only says which (Version 1) and the concentrator's
 * clock (seconds), which lets an operator see a skew: | 1 | 0 | 0 | 0 | Timestamp (32) |.
 */
export function missingCookieTlv(nowS: number): Buffer {
  const hint = Buffer.alloc(8);
  hint[0] = 1;
  hint.writeUInt32BE(nowS >>> 0, 4);
  // A whole Convert message minus its 4-byte header is exactly the encoded TLV.
  return encodeConvertMessage({ tlvs: [{ type: 'cookie', cookie: hint }] }).subarray(4);
}

const NOT_AUTHORIZED = ConvertErrorCode.NotAuthorized;

export function authenticateGate(
  s: { format: SignallingFormat; raw: Buffer; source: string },
  settings: AuthSettings,
  nowMs: number,
): AuthVerdict {
  const nowS = Math.floor(nowMs / 1000);
  const no = (code: Parameters<typeof refuse>[0], detail?: Record<string, unknown>): AuthVerdict => ({ ok: false, refusal: refuse(code, { convertError: NOT_AUTHORIZED, detail }) });
  const at = locateAuthenticator(s.format, s.raw);
  if (at === 'none') {
    if (!settings.required) return { ok: true, identity: s.source };
    const reaction: WireReaction | undefined =
      s.format === 'rfc8803' ? { kind: 'convert-error', errorCode: ConvertErrorCode.MissingCookie, value: 0, extra: missingCookieTlv(nowS) } : undefined;
    return { ok: false, refusal: refuse('auth-missing', { reaction }) };
  }
  if (at === 'twice') return no('auth-malformed', { why: 'two authenticators' });
  const parsed = parseAuthenticator(s.raw.subarray(at.offset, at.offset + at.length));
  if (!parsed.ok) return no('auth-malformed', { why: parsed.why });
  const a: ParsedAuthenticator = parsed.value;
  const key = settings.keys.get(a.keyId);
  if (!key) return no('auth-unknown-key', { keyId: a.keyId });
  if (key.from && !key.from.has(s.source)) return no('auth-source', { keyId: a.keyId });
  const mac = authenticatorMac(key.secret, s.raw, at);
  if (!timingSafeEqual(mac, a.mac)) return no('auth-mac', { keyId: a.keyId });
  const skew = a.timestamp - nowS;
  if (Math.abs(skew) > settings.clockSkewS) return no('auth-clock', { keyId: a.keyId, skewS: skew });
  // The nonce is remembered for as long as this authenticator would pass the clock check.
  const seen = settings.replay.remember(`${a.keyId}/${a.nonce.toString('hex')}`, a.timestamp + settings.clockSkewS, nowS);
  if (seen === 'seen') return no('auth-replay', { keyId: a.keyId });
  if (seen === 'full') return no('auth-replay-full', { keyId: a.keyId });
  return { ok: true, identity: `key:${key.cpe}`, keyId: a.keyId };
}

/**
 * A concentrator open to the whole internet (an `allow` prefix shorter than /8, e.g. 0.0.0.0/0, ::/0,
 * 2000::/3) must authenticate every CPE: the problem to report at start, or undefined.
 */
export function openAllowProblem(allow: readonly string[], auth: { keysFile: string; required: boolean } | undefined): string | undefined {
  const wide = allow.filter((p) => {
    const len = p.split('/')[1];
    return len !== undefined && Number(len) < 8;
  });
  if (wide.length === 0 || (auth && auth.required)) return undefined;
  return (
    `allow ${wide.join(', ')} admits (nearly) the whole internet, and ${auth ? 'auth.required is false' : 'authentication is off'}: ` +
    `anyone could use this concentrator to reach any server. Configure 'auth: { keysFile: /etc/mpconvert/keys.yaml, required: true }' ` +
    `(docs/concentrator.md, "Authentication"), or narrow allow to your customers' prefixes`
  );
}
