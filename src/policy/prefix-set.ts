/**
 * Longest-prefix match over a fixed list of CIDR prefixes, pure: compile once per configuration, then look
 * addresses up in work bounded by the address length (at most 33 / 129 trie nodes), not by the list size.
 *
 * One path-compressed binary trie per family over the address bytes of src/policy/cidr.ts (the same parse:
 * host bits cleared, prefixes inside ::ffff:0:0/96 and IPv4-mapped addresses fold to IPv4, families never
 * match each other). A node exists only where a prefix ends or two branches part, so n prefixes take at most
 * 2n nodes whatever their lengths.
 */
import type { IpFamily } from '../protocol/address.js';
import { addressBytes, parseCidr } from './cidr.js';

interface Node {
  /** Prefix length at this node. */
  bits: number;
  /** Network bytes, zero past `bits`. */
  key: Buffer;
  /** Canonical text of the listed prefix that ends here; undefined for a branch-only node. */
  text?: string;
  zero?: Node;
  one?: Node;
}

const bitAt = (b: Buffer, i: number): number => ((b[i >> 3] as number) >> (7 - (i & 7))) & 1;

/** Index of the first bit where `a` and `b` differ, at most `limit`. */
function commonBits(a: Buffer, b: Buffer, limit: number): number {
  for (let i = 0; i * 8 < limit; i++) {
    const x = ((a[i] as number) ^ (b[i] as number)) & 0xff;
    if (x !== 0) return Math.min(limit, i * 8 + Math.clz32(x) - 24);
  }
  return limit;
}

/** Whether `a` and `b` agree on bits [from, to). */
function agree(a: Buffer, b: Buffer, from: number, to: number): boolean {
  const last = to >> 3;
  for (let i = from >> 3; i < last; i++) if (a[i] !== b[i]) return false;
  const rest = to & 7;
  if (rest === 0) return true;
  const m = (0xff << (8 - rest)) & 0xff;
  return (((a[last] as number) ^ (b[last] as number)) & m) === 0;
}

function mask(bytes: Buffer, bits: number): Buffer {
  const out = Buffer.alloc(bytes.length);
  bytes.copy(out, 0, 0, bits >> 3);
  if (bits & 7) out[bits >> 3] = (bytes[bits >> 3] as number) & ((0xff << (8 - (bits & 7))) & 0xff);
  return out;
}

function child(n: Node, bit: number): Node | undefined {
  return bit ? n.one : n.zero;
}
function setChild(n: Node, bit: number, c: Node): void {
  if (bit) n.one = c;
  else n.zero = c;
}

export interface PrefixLookup {
  /** Canonical text of the longest listed prefix holding the address; undefined when none does. */
  match: string | undefined;
  /** Trie nodes looked at (the root included): the lookup's cost, at most 33 (IPv4) / 129 (IPv6). */
  visits: number;
}

export class PrefixSet {
  readonly #roots: Record<IpFamily, Node> = { 4: { bits: 0, key: Buffer.alloc(4) }, 6: { bits: 0, key: Buffer.alloc(16) } };
  #size = 0;

  private constructor() {}

  /** Compiles `list` (CIDR text, or bare addresses as host prefixes). Throws parseCidr's TypeError on a bad one. */
  static from(list: readonly string[]): PrefixSet {
    const set = new PrefixSet();
    for (const text of list) set.#insert(parseCidr(text));
    return set;
  }

  /** Distinct prefixes (after host bits are cleared and mapped forms folded: 198.18.0.1/15 = 198.18.0.0/15). */
  get size(): number {
    return this.#size;
  }

  #insert(c: { family: IpFamily; bytes: Buffer; bits: number; text: string }): void {
    const leaf = (): Node => {
      this.#size++;
      return { bits: c.bits, key: c.bytes, text: c.text };
    };
    let node = this.#roots[c.family];
    for (;;) {
      if (node.bits === c.bits) {
        // Invariant: a node's key agrees with every prefix routed to it on node.bits, so this is the prefix.
        if (node.text === undefined) {
          node.text = c.text;
          this.#size++;
        }
        return;
      }
      const b = bitAt(c.bytes, node.bits);
      const next = child(node, b);
      if (!next) {
        setChild(node, b, leaf());
        return;
      }
      const common = commonBits(c.bytes, next.key, Math.min(c.bits, next.bits));
      if (common === next.bits) {
        node = next;
        continue;
      }
      // The new prefix and `next` part at `common`: put a node there (the new prefix itself if it ends there).
      const mid: Node = common === c.bits ? leaf() : { bits: common, key: mask(c.bytes, common) };
      setChild(mid, bitAt(next.key, common), next);
      if (common < c.bits) setChild(mid, bitAt(c.bytes, common), leaf());
      setChild(node, b, mid);
      return;
    }
  }

  /** The lookup on (family, bytes) as cidr.ts's addressBytes gives them, with its cost. */
  lookupBytes(family: IpFamily, bytes: Buffer): PrefixLookup {
    let node = this.#roots[family];
    let best = node.text;
    let visits = 1;
    const max = bytes.length * 8;
    while (node.bits < max) {
      const next = child(node, bitAt(bytes, node.bits));
      if (!next) break;
      visits++;
      if (!agree(bytes, next.key, node.bits + 1, next.bits)) break;
      if (next.text !== undefined) best = next.text;
      node = next;
    }
    return { match: best, visits };
  }

  matchBytes(family: IpFamily, bytes: Buffer): string | undefined {
    return this.lookupBytes(family, bytes).match;
  }

  /** The longest listed prefix holding `address` (canonical text); undefined for none or a non-address. */
  match(address: string): string | undefined {
    const a = addressBytes(address);
    return a ? this.lookupBytes(a.family, a.bytes).match : undefined;
  }

  has(address: string): boolean {
    return this.match(address) !== undefined;
  }
}

/**
 * A set of addresses keyed by their normalized bytes (IPv4-mapped folded to IPv4; any spelling of an IPv6
 * address is the same member). Throws TypeError on an entry that is not an IP address.
 */
export class AddressSet {
  readonly #keys = new Set<string>();

  private constructor() {}

  static from(list: readonly string[]): AddressSet {
    const set = new AddressSet();
    for (const text of list) {
      const a = addressBytes(text);
      if (!a) throw new TypeError(`Cannot use "${text}" as an address: not an IP address`);
      set.#keys.add(AddressSet.key(a.family, a.bytes));
    }
    return set;
  }

  static key(family: IpFamily, bytes: Buffer): string {
    return `${family}:${bytes.toString('hex')}`;
  }

  get size(): number {
    return this.#keys.size;
  }

  hasBytes(family: IpFamily, bytes: Buffer): boolean {
    return this.#keys.has(AddressSet.key(family, bytes));
  }

  has(address: string): boolean {
    const a = addressBytes(address);
    return a ? this.hasBytes(a.family, a.bytes) : false;
  }
}
