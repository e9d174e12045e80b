/**
 * RADIUS authorization of CPEs (RFC 2865): an Access-Request on a CPE's first connection, the answer cached
 * per CPE identity (Session-Timeout, else `cacheTtlS`; a reject for `rejectTtlS`; no answer for `failTtlS`),
 * one request in flight per CPE (its further connections wait for the same answer), and no connection waits
 * longer than `maxWaitMs`: past it the connection gets the fail behaviour while the request goes on and its
 * answer is cached for the next ones.
 *
 * The Access-Request (draft-boucadair-mptcp-radius: the concentrator hosts the RADIUS client that asks whether
 * connections from a CPE are authorized): User-Name = the CPE's key id with authentication on, else its source
 * address; User-Password = the configured password (the AAA authorizes an identity, there is no user secret);
 * Calling-Station-Id and Framed-IP-Address / Framed-IPv6-Address = the source address; NAS-Identifier and
 * NAS-IP-Address; with `concentratorAttributes.hint`, this concentrator's address in the draft's MCP attribute
 * of its family. The Access-Accept may carry the draft's attributes: the concentrators assigned to this CPE.
 */
import { randomBytes } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';
import {
  RadiusAttr,
  RadiusCode,
  attrAddress,
  attrString,
  encodeAccessRequest,
  findAll,
  findAttr,
  readAddress,
  readUint32,
  type RadiusAttribute,
} from '../protocol/radius.js';
import { canonicalAddress } from '../protocol/address.js';
import type { RadiusVerdict } from '../policy/radius.js';
import type { RadiusClient } from './radius-client.js';

export interface RadiusAuthorizerSettings {
  password: string;
  nasIdentifier: string;
  nasIpAddress?: string | undefined;
  maxWaitMs: number;
  cacheTtlS: number;
  rejectTtlS: number;
  failTtlS: number;
  cacheSize: number;
  /** The draft's MCP attribute types (not assigned by IANA: site-specific). */
  concentratorAttributes: { ipv4Type: number; ipv6Type: number; hint: boolean };
}

export interface AuthorizeRequest {
  /** The cache key: `ctx.identity`. */
  identity: string;
  /** Source address of the CPE. */
  cpe: string;
  keyId?: string | undefined;
  /** The concentrator address the connection arrived on (the hint). */
  local: string;
}

export interface Authorization {
  verdict: RadiusVerdict;
  /** Where it came from: the cache, an answer waited for, or the wait bound. */
  source: 'cache' | 'answer' | 'wait-bound';
  /** Class attributes of the Access-Accept (echoed in accounting, RFC 2865 section 5.25). */
  classes: readonly Buffer[];
  /** The User-Name asked with (accounting uses the same). */
  userName: string;
}

interface Entry {
  verdict: RadiusVerdict;
  classes: Buffer[];
  expires: number;
}

export interface RadiusAuthorizerDeps {
  client: RadiusClient;
  now: () => number;
  /** One call per Access-Request's outcome: accept, reject, challenge, no-answer. */
  onAnswer?: (result: string) => void;
}

export class RadiusAuthorizer {
  #s: RadiusAuthorizerSettings;
  readonly #deps: RadiusAuthorizerDeps;
  /** identity -> cached answer (insertion order: the oldest goes first when full). */
  readonly #cache = new Map<string, Entry>();
  readonly #inflight = new Map<string, Promise<Entry>>();

  constructor(settings: RadiusAuthorizerSettings, deps: RadiusAuthorizerDeps) {
    this.#s = settings;
    this.#deps = deps;
  }

  reconfigure(settings: RadiusAuthorizerSettings): void {
    this.#s = settings;
    this.#cache.clear();
  }

  get cached(): number {
    return this.#cache.size;
  }

  get inflight(): number {
    return this.#inflight.size;
  }

  /** Forget one CPE's answer (admin), or all. */
  flush(identity?: string): void {
    if (identity === undefined) this.#cache.clear();
    else this.#cache.delete(identity);
  }

  static userName(r: Pick<AuthorizeRequest, 'cpe' | 'keyId'>): string {
    return r.keyId ?? r.cpe;
  }

  async authorize(r: AuthorizeRequest): Promise<Authorization> {
    const userName = RadiusAuthorizer.userName(r);
    const now = this.#deps.now();
    const hit = this.#cache.get(r.identity);
    if (hit && hit.expires > now) return { verdict: hit.verdict, source: 'cache', classes: hit.classes, userName };
    if (hit) this.#cache.delete(r.identity);
    let pending = this.#inflight.get(r.identity);
    if (!pending) {
      pending = this.#ask(r, userName)
        .catch((err: unknown): Entry => {
          // A request that cannot even be built (an attribute too long) is no answer, not a crash.
          this.#deps.onAnswer?.(`error:${(err as Error).message}`);
          return { verdict: { kind: 'unavailable', why: 'no-answer' }, classes: [], expires: this.#deps.now() + this.#s.failTtlS * 1000 };
        })
        .then((entry) => {
          this.#inflight.delete(r.identity);
          this.#remember(r.identity, entry);
          return entry;
        });
      this.#inflight.set(r.identity, pending);
    }
    let timer: NodeJS.Timeout | undefined;
    const bound = new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), this.#s.maxWaitMs);
    });
    const entry = await Promise.race([pending, bound]);
    clearTimeout(timer);
    if (!entry) return { verdict: { kind: 'unavailable', why: 'timeout' }, source: 'wait-bound', classes: [], userName };
    return { verdict: entry.verdict, source: 'answer', classes: entry.classes, userName };
  }

  #remember(identity: string, e: Entry): void {
    this.#cache.delete(identity);
    this.#cache.set(identity, e);
    while (this.#cache.size > this.#s.cacheSize) this.#cache.delete(this.#cache.keys().next().value as string);
  }

  async #ask(r: AuthorizeRequest, userName: string): Promise<Entry> {
    const s = this.#s;
    const attributes: RadiusAttribute[] = [
      attrString(RadiusAttr.UserName, userName),
      attrString(RadiusAttr.CallingStationId, r.cpe),
      attrString(RadiusAttr.NasIdentifier, s.nasIdentifier),
    ];
    if (isIPv4(r.cpe)) attributes.push(attrAddress(RadiusAttr.FramedIpAddress, r.cpe));
    else if (isIPv6(r.cpe)) attributes.push(attrAddress(RadiusAttr.FramedIpv6Address, r.cpe));
    if (s.nasIpAddress) attributes.push(attrAddress(isIPv6(s.nasIpAddress) ? RadiusAttr.NasIpv6Address : RadiusAttr.NasIpAddress, s.nasIpAddress));
    if (s.concentratorAttributes.hint && (isIPv4(r.local) || isIPv6(r.local))) {
      attributes.push(attrAddress(isIPv4(r.local) ? s.concentratorAttributes.ipv4Type : s.concentratorAttributes.ipv6Type, r.local));
    }
    const password = Buffer.from(s.password, 'utf8');
    const answer = await this.#deps.client.request('auth', (identifier, server) => {
      const authenticator = randomBytes(16);
      return { packet: encodeAccessRequest({ identifier, authenticator, attributes, password }, server.secret), authenticator };
    });
    const now = this.#deps.now();
    if (!answer) {
      this.#deps.onAnswer?.('no-answer');
      return { verdict: { kind: 'unavailable', why: 'no-answer' }, classes: [], expires: now + s.failTtlS * 1000 };
    }
    const p = answer.packet;
    if (p.code === RadiusCode.AccessAccept) {
      this.#deps.onAnswer?.('accept');
      const timeout = findAttr(p, RadiusAttr.SessionTimeout);
      // A Session-Timeout of 0 is no limit: the configured TTL then.
      const ttlS = (timeout ? readUint32(timeout) : undefined) || s.cacheTtlS;
      const concentrators = [...findAll(p, s.concentratorAttributes.ipv4Type), ...findAll(p, s.concentratorAttributes.ipv6Type)]
        .map(readAddress)
        .filter((a): a is string => a !== undefined)
        .map(canonicalAddress);
      return { verdict: { kind: 'accept', concentrators }, classes: findAll(p, RadiusAttr.Class), expires: now + ttlS * 1000 };
    }
    // Access-Challenge: there is no user to answer a challenge; RFC 2865 section 4.4 lets a NAS treat it as a reject.
    this.#deps.onAnswer?.(p.code === RadiusCode.AccessReject ? 'reject' : 'challenge');
    return { verdict: { kind: 'reject' }, classes: [], expires: now + s.rejectTtlS * 1000 };
  }
}
