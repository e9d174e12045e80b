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

/**
 * A trie node. The key is kept as four 32-bit words in the node itself (IPv4: k0 only) rather than a Buffer:
 * a Buffer is a separate object of its own, which doubled the memory of a 100,000-prefix list.
 */
interface Node {
  /** Prefix length at this node. */
  bits: number;
  /** Network address as big-endian 32-bit words (int32), zero past `bits`. */
  k0: number;
  k1: number;
  k2: number;
  k3: number;
  /** Canonical text of the listed prefix that ends here; undefined for a branch-only node. */
  text: string | undefined;
  zero: Node | undefined;
  one: Node | undefined;
}

type Words = [number, number, number, number];

function words(b: Buffer): Words {
  return b.length === 4 ? [b.readInt32BE(0), 0, 0, 0] : [b.readInt32BE(0), b.readInt32BE(4), b.readInt32BE(8), b.readInt32BE(12)];
}

const kw = (n: Node, j: number): number => (j === 0 ? n.k0 : j === 1 ? n.k1 : j === 2 ? n.k2 : n.k3);
const bitAt = (w: Words, i: number): number => ((w[i >>> 5] as number) >>> (31 - (i & 31))) & 1;
const nodeBit = (n: Node, i: number): number => (kw(n, i >>> 5) >>> (31 - (i & 31))) & 1;
/** The top `n` bits of a word set (0 <= n <= 32). */
const topBits = (n: number): number => (n <= 0 ? 0 : n >= 32 ? -1 : -1 << (32 - n));

/** Index of the first bit where `w` and the node's key differ, at most `limit`. */
function commonBits(w: Words, n: Node, limit: number): number {
  for (let j = 0; j * 32 < limit; j++) {
    const x = (w[j] as number) ^ kw(n, j);
    if (x !== 0) return Math.min(limit, j * 32 + Math.clz32(x));
  }
  return limit;
}

/** Whether `w` agrees with the node's key on bits [from, to) (the bits before `from` are known to agree). */
function agree(w: Words, n: Node, from: number, to: number): boolean {
  for (let j = from >>> 5; j * 32 < to; j++) {
    if ((((w[j] as number) ^ kw(n, j)) & topBits(to - j * 32)) !== 0) return false;
  }
  return true;
}

function makeNode(w: Words, bits: number, text: string | undefined): Node {
  const m = (j: number) => (w[j] as number) & topBits(bits - j * 32);
  return { bits, k0: m(0), k1: m(1), k2: m(2), k3: m(3), text, zero: undefined, one: undefined };
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
  readonly #roots: Record<IpFamily, Node> = { 4: makeNode([0, 0, 0, 0], 0, undefined), 6: makeNode([0, 0, 0, 0], 0, undefined) };
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
    const w = words(c.bytes);
    const leaf = (): Node => {
      this.#size++;
      return makeNode(w, c.bits, c.text);
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
      const b = bitAt(w, node.bits);
      const next = b ? node.one : node.zero;
      if (!next) {
        setChild(node, b, leaf());
        return;
      }
      const common = commonBits(w, next, Math.min(c.bits, next.bits));
      if (common === next.bits) {
        node = next;
        continue;
      }
      // The new prefix and `next` part at `common`: put a node there (the new prefix itself if it ends there).
      const mid = common === c.bits ? leaf() : makeNode(w, common, undefined);
      setChild(mid, nodeBit(next, common), next);
      if (common < c.bits) setChild(mid, bitAt(w, common), leaf());
      setChild(node, b, mid);
      return;
    }
  }

  /** The lookup on (family, bytes) as cidr.ts's addressBytes gives them, with its cost. */
  lookupBytes(family: IpFamily, bytes: Buffer): PrefixLookup {
    const w = words(bytes);
    let node = this.#roots[family];
    let best = node.text;
    let visits = 1;
    const max = bytes.length * 8;
    while (node.bits < max) {
      const next = bitAt(w, node.bits) ? node.one : node.zero;
      if (!next) break;
      visits++;
      if (!agree(w, next, node.bits + 1, next.bits)) break;
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
 * address is the same member; a zone index is dropped). Throws TypeError on an entry that is not an IP address.
 */
export class AddressSet {
  readonly #keys = new Set<string>();

  private constructor() {}

  static from(list: readonly string[]): AddressSet {
    const set = new AddressSet();
    for (const text of list) {
      // A zone index (fe80::1%eth0, as interfaces and link-local listeners have) is not part of the address.
      const a = addressBytes(text.split('%')[0] as string);
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
