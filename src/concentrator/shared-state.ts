/**
 * The concentrator's state that must stay one per box when several processes accept on the listeners
 * (`workers` > 1, SO_REUSEPORT): the authentication replay cache and key ring, the per-CPE and total
 * connection limits, and the source-address strategy (pool pairing). The primary process owns it
 * (`LocalSharedState`: what the primary's own pipeline and a single-process concentrator call, in process);
 * a worker process asks the primary through its IPC channel (`IpcSharedState`): one request per connection
 * carrying what the three steps need, answered in order, and one one-way release message when the
 * connection ends. The gates stay pure (src/policy); this file only decides where their state lives.
 */
import type { SignallingFormat } from '../policy/refusals.js';
import { refuse, type Refusal } from '../policy/refusals.js';
import { authenticateGate, type KeyRing, type ReplayCache } from '../policy/auth.js';
import { limitsGate } from '../policy/gates.js';
import type { ConnectionLimits } from '../policy/limits.js';
import type { SourceAddressStrategy, SourceContext } from './source-address.js';

/** What a worker sends for one connection: the inputs of the authenticate, limits and source-address steps. */
export interface AdmitRequest {
  /** The connection's source address. */
  cpe: string;
  /** The signalling as read (authenticate: the authenticator and what its MAC covers). */
  format: SignallingFormat;
  raw: Uint8Array;
  /** The destination's family (the pool pairs per family). */
  family: 4 | 6;
  /** The source IE's address, if any (transparent and NPTv6 modes check it against the CPE's prefixes). */
  source?: string | undefined;
}

/** Which of the shared steps refused. */
export type SharedStep = 'authenticate' | 'limits' | 'source-address';

export type AdmitAnswer =
  | {
      ok: true;
      /** Names what the connection holds in the primary; sent back once in `release`. */
      lease: number;
      identity: string;
      keyId?: string | undefined;
      external?: string | undefined;
      externalTransparent?: boolean | undefined;
    }
  | { ok: false; step: SharedStep; refusal: Refusal };

export interface SharedState {
  admit(req: AdmitRequest): Promise<AdmitAnswer>;
  /** The connection ended: what its lease holds goes back (idempotent, one-way). */
  release(lease: number): void;
}

export interface LocalSharedStateDeps {
  limits: ConnectionLimits;
  replay: ReplayCache;
  /** The keys and settings of `auth`; undefined while authentication is off. */
  auth: () => { keys: KeyRing; clockSkewS: number; required: boolean } | undefined;
  sourceAddress: () => SourceAddressStrategy;
  now: () => number;
}

interface Lease {
  owner: string;
  releases: Array<() => void>;
}

/** The shared state in the process that owns it (the primary). */
export class LocalSharedState implements SharedState {
  readonly #d: LocalSharedStateDeps;
  readonly #leases = new Map<number, Lease>();
  #nextLease = 1;

  constructor(deps: LocalSharedStateDeps) {
    this.#d = deps;
  }

  /** Leases held by worker processes' connections (status, tests). */
  get leases(): number {
    return this.#leases.size;
  }

  /** authenticate: the identity (`key:<cpe>`) of a verified authenticator, the source address without `auth`. */
  authenticate(s: { format: SignallingFormat; raw: Buffer; cpe: string }): { ok: true; identity: string; keyId?: string | undefined } | { ok: false; refusal: Refusal } {
    const auth = this.#d.auth();
    if (!auth) return { ok: true, identity: s.cpe };
    const v = authenticateGate({ format: s.format, raw: s.raw, source: s.cpe }, { ...auth, replay: this.#d.replay }, this.#d.now());
    return v.ok ? { ok: true, identity: v.identity, keyId: v.keyId } : v;
  }

  /** limits: a slot for this identity, released with `own`. */
  admitLimits(identity: string, own: (release: () => void) => void): Refusal | undefined {
    const refused = limitsGate(this.#d.limits.admit(identity));
    if (!refused) own(() => this.#d.limits.release(identity));
    return refused;
  }

  acquireSource(ctx: SourceContext): Refusal | undefined {
    return this.#d.sourceAddress().acquire(ctx);
  }

  async admit(req: AdmitRequest): Promise<AdmitAnswer> {
    return this.admitFor('local', req);
  }

  /** The three steps in the pipeline's order, for a connection of `owner` (a worker); what it acquires is its lease. */
  admitFor(owner: string, req: AdmitRequest): AdmitAnswer {
    const releases: Array<() => void> = [];
    const own = (release: () => void) => releases.push(release);
    const undo = () => {
      for (const r of releases.reverse()) r();
    };
    const auth = this.authenticate({ format: req.format, raw: Buffer.from(req.raw.buffer, req.raw.byteOffset, req.raw.byteLength), cpe: req.cpe });
    if (!auth.ok) return { ok: false, step: 'authenticate', refusal: auth.refusal };
    const limited = this.admitLimits(auth.identity, own);
    if (limited) return { ok: false, step: 'limits', refusal: limited };
    const ctx: SourceContext = {
      cpe: req.cpe,
      identity: auth.identity,
      keyId: auth.keyId,
      destination: { family: req.family },
      signalling: { source: req.source !== undefined ? { address: req.source } : undefined },
      own,
    };
    const refused = this.acquireSource(ctx);
    if (refused) {
      undo();
      return { ok: false, step: 'source-address', refusal: refused };
    }
    // Port blocks are refused with workers (config.ts): a lease would need its next port synchronously.
    if (ctx.ports) {
      undo();
      return { ok: false, step: 'source-address', refusal: refuse('port-block-limit', { detail: { why: 'port blocks are not served to worker processes' } }) };
    }
    const lease = this.#nextLease++;
    this.#leases.set(lease, { owner, releases });
    return { ok: true, lease, identity: auth.identity, keyId: auth.keyId, external: ctx.external, externalTransparent: ctx.externalTransparent };
  }

  release(lease: number): void {
    const l = this.#leases.get(lease);
    if (!l) return;
    this.#leases.delete(lease);
    for (const r of l.releases.reverse()) r();
  }

  /** A worker process ended: its connections ended with it (the kernel closed their sockets). */
  releaseOwner(owner: string): number {
    let n = 0;
    for (const [id, l] of [...this.#leases]) {
      if (l.owner !== owner) continue;
      this.release(id);
      n++;
    }
    return n;
  }
}

/** What a worker sends to the primary for the shared state. */
export type SharedStateRequest = { t: 'admit'; id: number; req: AdmitRequest } | { t: 'release'; lease: number };

/** The worker's side: each admit is one request to the primary; releases are one-way. */
export class IpcSharedState implements SharedState {
  /** false: the channel is closed (child_process's `process.send` returns false only on backpressure, throws when closed). */
  readonly #send: (m: SharedStateRequest) => boolean;
  readonly #timeoutMs: number;
  readonly #pending = new Map<number, { resolve: (a: AdmitAnswer) => void; timer: NodeJS.Timeout }>();
  #nextId = 1;
  #closed = false;

  constructor(send: (m: SharedStateRequest) => boolean, timeoutMs: number) {
    this.#send = send;
    this.#timeoutMs = timeoutMs;
  }

  get pending(): number {
    return this.#pending.size;
  }

  admit(req: AdmitRequest): Promise<AdmitAnswer> {
    if (this.#closed) return Promise.resolve(unavailable('the primary is gone'));
    const id = this.#nextId++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        resolve(unavailable(`no answer within ${this.#timeoutMs} ms`));
      }, this.#timeoutMs);
      this.#pending.set(id, { resolve, timer });
      try {
        this.#send({ t: 'admit', id, req });
      } catch {
        this.#answer(id, unavailable('the channel to the primary is closed'));
      }
    });
  }

  /** The primary's answer to request `id` (an answer to no pending request is ignored: it timed out). */
  answer(id: number, a: AdmitAnswer): void {
    this.#answer(id, a);
  }

  #answer(id: number, a: AdmitAnswer): void {
    const p = this.#pending.get(id);
    if (!p) return;
    this.#pending.delete(id);
    clearTimeout(p.timer);
    p.resolve(a);
  }

  release(lease: number): void {
    if (this.#closed) return;
    try {
      this.#send({ t: 'release', lease });
    } catch {
      /* the primary is gone: it released everything this worker held */
    }
  }

  /** The channel closed: every pending and later admit is refused. */
  close(): void {
    this.#closed = true;
    for (const id of [...this.#pending.keys()]) this.#answer(id, unavailable('the primary is gone'));
  }
}

const unavailable = (why: string): AdmitAnswer => ({ ok: false, step: 'limits', refusal: refuse('primary-unavailable', { detail: { why } }) });
