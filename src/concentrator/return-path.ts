/**
 * The return path of transparent server legs (transparent and NPTv6 source addresses): a server's replies are
 * addressed to the CPE's, the end host's or a mapped address, none of them this host's. The network brings
 * them here (routes for the customer and NPTv6 prefixes point at the concentrator, draft-nam-mptcp-
 * deployment-considerations section 5.4.1); this makes the kernel deliver them to the socket instead of
 * forwarding them on:
 *
 *   nft table inet mpconvert_conc_return: prerouting, `socket transparent 1 meta mark set M` (only packets of
 *   an existing IP_TRANSPARENT socket: forwarded traffic to the same prefixes is not touched);
 *   ip rule fwmark M/M lookup T (both families) with `local default dev lo` in table T.
 *
 * stop() removes exactly what start() added, in reverse, and is safe after a partial start.
 */
import type { Family, KernelConfig, RouteSpec, RuleSpec } from '../platform/types.js';
import type { Logger } from '../log.js';

export const RETURN_PATH_TABLE_NAME = 'mpconvert_conc_return';

export interface ReturnPathOptions {
  mark: number;
  table: number;
  rulePriority: number;
}

/** The nft table's body (pure; unit-tested). */
export function returnPathRuleset(mark: number): string {
  const m = `0x${(mark >>> 0).toString(16)}`;
  return [
    'chain prerouting {',
    '  type filter hook prerouting priority mangle; policy accept;',
    // Replies to our transparent server legs: deliver locally (policy routing below).
    `  meta l4proto tcp socket transparent 1 meta mark set meta mark | ${m} accept`,
    '}',
    '',
  ].join('\n');
}

interface UndoItem {
  what: string;
  run: () => Promise<void>;
}

export class ReturnPath {
  readonly #kernel: KernelConfig;
  readonly #logger: Logger;
  readonly #opts: ReturnPathOptions;
  #undo: UndoItem[] = [];

  constructor(deps: { kernel: KernelConfig; logger: Logger }, opts: ReturnPathOptions) {
    this.#kernel = deps.kernel;
    this.#logger = deps.logger;
    this.#opts = opts;
  }

  get installed(): boolean {
    return this.#undo.length > 0;
  }

  async start(): Promise<void> {
    if (this.installed) return;
    const k = this.#kernel;
    const { mark, table, rulePriority } = this.#opts;
    try {
      await k.nft.applyTable('inet', RETURN_PATH_TABLE_NAME, returnPathRuleset(mark));
      this.#undo.push({ what: `nft table inet ${RETURN_PATH_TABLE_NAME}`, run: () => k.nft.deleteTable('inet', RETURN_PATH_TABLE_NAME) });
      for (const family of [4, 6] as Family[]) {
        const route: RouteSpec = { family, table, dst: 'default', type: 'local', dev: 'lo' };
        await k.routes.addRoute(route);
        this.#undo.push({ what: `route local default dev lo table ${table} (IPv${family})`, run: () => k.routes.deleteRoute(route) });
        const rule: RuleSpec = { family, priority: rulePriority, fwmark: mark, fwmask: mark, table };
        // An identical rule can only be a leftover of a crashed run: replace it rather than duplicate it.
        await k.routes.deleteRule(rule);
        await k.routes.addRule(rule);
        this.#undo.push({ what: `rule fwmark ${mark}/${mark} lookup ${table} (IPv${family})`, run: () => k.routes.deleteRule(rule) });
      }
      this.#logger.info({ mark, table }, 'return path for transparent source addresses installed');
    } catch (err) {
      await this.stop().catch(() => {});
      throw err;
    }
  }

  /** Removes what start() added; an item that fails to go is logged and kept for the next call. */
  async stop(): Promise<void> {
    const failed: UndoItem[] = [];
    for (const item of this.#undo.reverse()) {
      try {
        await item.run();
      } catch (err) {
        this.#logger.warn({ err, what: item.what }, 'could not remove a return-path item');
        failed.unshift(item);
      }
    }
    this.#undo = failed;
  }
}
