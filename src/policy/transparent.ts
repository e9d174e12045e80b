/**
 * Transparent source addresses (draft-nam-mptcp-deployment-considerations section 5.4.1) and NPTv6 (section
 * 5.4.2.3, RFC 6296), pure: which address the server leg of a connection is sourced from, and the
 * anti-spoofing gate on the address a CPE claims in its source IE (RFC 2827 ingress filtering, section 7.2).
 *
 * Who owns what: each CPE (the source address of its MPTCP connection) has customer prefixes from the
 * configuration (`sourceAddress.customers`, first entry whose `cpe` prefix contains it). A CPE without an
 * entry owns its own address only. The CPE's own address is always its own (the network delivered the
 * connection from it); a source IE outside the owned prefixes is a spoof and refused.
 */
import { isIPv4 } from 'node:net';
import { addressBytes, bytesInCidr, parseCidr, type Cidr } from './cidr.js';
import { refuse, type Refusal } from './refusals.js';
import { bytesToIpv6, ipv6ToBytes } from '../protocol/address.js';
import { nptv6Mapping, translate, type Nptv6Mapping } from './nptv6.js';

export type Ipv4Preservation = 'cpe' | 'host';
export type Ipv6Preservation = 'host' | 'prefix' | 'cpe';

export interface CustomerEntry {
  cpe: Cidr;
  prefixes: Cidr[];
}

/** Customer prefixes compiled once per configuration. */
export class CustomerPrefixes {
  readonly #entries: CustomerEntry[];
  readonly #owned = new Map<string, readonly Cidr[]>();

  constructor(entries: ReadonlyArray<{ cpe: string; prefixes: readonly string[] }>) {
    this.#entries = entries.map((e) => ({ cpe: parseCidr(e.cpe), prefixes: e.prefixes.map((p) => parseCidr(p)) }));
  }

  get entries(): readonly CustomerEntry[] {
    return this.#entries;
  }

  /** The prefixes `cpe` owns: its entry's, plus its own address as a host prefix. */
  owned(cpe: string): readonly Cidr[] {
    // Per connection: the entry search is linear, so remember it per CPE (bounded; CPEs come back often).
    const known = this.#owned.get(cpe);
    if (known) return known;
    const a = addressBytes(cpe);
    if (!a) return [];
    const own = parseCidr(cpe);
    const entry = this.#entries.find((e) => bytesInCidr(a.family, a.bytes, e.cpe));
    const list = entry ? [...entry.prefixes, own] : [own];
    if (this.#owned.size >= 65_536) this.#owned.clear();
    this.#owned.set(cpe, list);
    return list;
  }
}

function inAny(address: string, prefixes: readonly Cidr[]): Cidr | undefined {
  const a = addressBytes(address);
  if (!a) return undefined;
  return prefixes.find((p) => bytesInCidr(a.family, a.bytes, p));
}

const familyOf = (address: string): 4 | 6 => (isIPv4(address) ? 4 : 6);

/** source-spoofed: a source IE may only name an address the CPE owns. */
export function claimedSourceGate(claimed: string | undefined, owned: readonly Cidr[]): Refusal | undefined {
  if (claimed === undefined) return undefined;
  return inAny(claimed, owned) ? undefined : refuse('source-spoofed', { detail: { claimed } });
}

export interface SourceChoiceInput {
  /** The MPTCP connection's source address (IPv4-mapped already folded). */
  cpe: string;
  /** The source IE's address, when the signalling has one (already passed claimedSourceGate). */
  claimed: string | undefined;
  family: 4 | 6;
  owned: readonly Cidr[];
}

/** The CPE's own address of `family`: its connection's source, else a host prefix (/32, /128) it owns. */
function cpeAddress(input: SourceChoiceInput): string | undefined {
  if (familyOf(input.cpe) === input.family) return input.cpe;
  const host = input.owned.find((p) => p.family === input.family && p.bits === (input.family === 4 ? 32 : 128));
  return host ? host.text.split('/')[0] : undefined;
}

/** The end host's own address: the source IE's when it is of `family`, else the CPE's (it is the host). */
function hostAddress(input: SourceChoiceInput): string | undefined {
  if (input.claimed !== undefined && familyOf(input.claimed) === input.family) return input.claimed;
  return cpeAddress(input);
}

/**
 * An address in the CPE's IPv6 prefix (section 5.4.1.2): the prefix holding the host's address (else the
 * CPE's first IPv6 prefix), with `hostBits` as the interface part. A host prefix (/128) is the address itself.
 */
function prefixAddress(input: SourceChoiceInput, hostBits: Buffer): string | undefined {
  const base = hostAddress(input);
  const prefix = (base !== undefined ? inAny(base, input.owned) : undefined) ?? input.owned.find((p) => p.family === 6);
  if (!prefix || prefix.family !== 6) return undefined;
  const out = Buffer.alloc(16);
  for (let b = 0; b < 16; b++) {
    const keep = Math.max(0, Math.min(8, prefix.bits - b * 8));
    const m = (0xff << (8 - keep)) & 0xff;
    out[b] = ((prefix.bytes[b] as number) & m) | ((hostBits[b] as number) & ~m & 0xff);
  }
  return bytesToIpv6(out);
}

export interface TransparentOptions {
  ipv4: Ipv4Preservation;
  ipv6: Ipv6Preservation;
  /** The interface part of prefix-preserved addresses, as an IPv6 address (only the bits past the prefix count). */
  prefixHost: string;
}

/** Transparent MCP: the server leg's source address, or `no-source-address`. */
export function transparentSource(input: SourceChoiceInput, opts: TransparentOptions): string | Refusal {
  let address: string | undefined;
  if (input.family === 4) address = opts.ipv4 === 'host' ? hostAddress(input) : cpeAddress(input);
  else if (opts.ipv6 === 'host') address = hostAddress(input);
  else if (opts.ipv6 === 'cpe') address = cpeAddress(input);
  else address = prefixAddress(input, ipv6ToBytes(opts.prefixHost));
  return address ?? refuse('no-source-address', { detail: { family: input.family, mode: input.family === 4 ? opts.ipv4 : opts.ipv6 } });
}

/**
 * The NPTv6 mappings: each customer IPv6 prefix of /64 or shorter (in configuration order) gets the next free
 * external prefix of the same length from the pool, so the mapping is stable across restarts and the same on
 * every concentrator with the same configuration (stateless, RFC 6296 section 1). Throws TypeError naming the
 * prefix that has no external prefix left, or a length NPTv6 cannot map.
 */
export function nptv6Mappings(customers: CustomerPrefixes, pool: readonly string[]): Nptv6Mapping[] {
  const free = pool.map((p) => parseCidr(p));
  const bad = free.find((p) => p.family !== 6 || p.bits < 1 || p.bits > 64);
  if (bad) throw new TypeError(`NPTv6 external prefixes must be IPv6 /1../64: ${bad.text}`);
  const out: Nptv6Mapping[] = [];
  const seen = new Set<string>();
  for (const e of customers.entries) {
    for (const p of e.prefixes) {
      // Host prefixes and anything past /64 have no word to take the adjustment (RFC 6296 section 3.5).
      if (p.family !== 6 || p.bits > 64 || seen.has(p.text)) continue;
      seen.add(p.text);
      const i = free.findIndex((x) => x.bits === p.bits);
      if (i < 0) throw new TypeError(`no external /${p.bits} left in sourceAddress.nptv6.prefixes for the customer prefix ${p.text}`);
      const [ext] = free.splice(i, 1);
      out.push(nptv6Mapping(p.text, (ext as Cidr).text));
    }
  }
  return out;
}

/** NPTv6: the host's (else the CPE's) IPv6 address translated from its customer prefix; IPv6 only. */
export function nptv6Source(input: SourceChoiceInput, mappings: readonly Nptv6Mapping[]): string | Refusal {
  const internal = hostAddress({ ...input, family: 6 });
  const m = internal !== undefined ? mappings.find((x) => inAny(internal, [x.internal]) && inAny(internal, input.owned)) : undefined;
  const external = m && internal !== undefined ? translate(m, internal) : null;
  return external ?? refuse('no-source-address', { detail: { family: 6, mode: 'nptv6', address: internal } });
}
