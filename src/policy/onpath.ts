/**
 * The implicit (on-path) mode's gate, pure (docs/implicit.md, "Native or proxied"): only connections from the
 * configured `onPath.sources` are proxied. The nft rules already route every other MPTCP SYN untouched; this
 * gate is the same decision at the listener, for SYNs taken by rules of an earlier configuration.
 */
import type { PrefixMatcher } from './gates.js';
import { refuse, type Refusal } from './refusals.js';

export function onPathSourceGate(source: string, sources: PrefixMatcher): Refusal | undefined {
  return sources.has(source) ? undefined : refuse('onpath-source');
}
