/**
 * The return path of transparent server legs (transparent and NPTv6 source addresses): a server's replies are
 * addressed to the CPE's, the end host's or a mapped address, none of them this host's. The network brings
 * them here (routes for the customer and NPTv6 prefixes point at the concentrator, draft-nam-mptcp-
 * deployment-considerations section 5.4.1); this makes the kernel deliver them to the socket instead of
 * forwarding them on:
 *
 *   nft table inet mpconvert_conc_return: prerouting, `socket transparent 1 meta mark set M` (only packets of
 *   an existing IP_TRANSPARENT socket: forwarded traffic to the same prefixes is not touched);
 *   ip rule fwmark M/M lookup T (both families) with `local default dev lo` in table T (the shared
 *   LocalDelivery of src/interception, any input interface).
 *
 * stop() removes exactly what start() added, in reverse, and is safe after a partial start.
 */
import type { KernelConfig } from '../platform/types.js';
import type { ConcentratorConfig } from './config.js';
import type { Logger } from '../log.js';
import { KernelLedger, LocalDelivery, markOr, mangleHook, nftChain, transparentSocket } from '../interception/index.js';

export const RETURN_PATH_TABLE_NAME = 'mpconvert_conc_return';

export interface ReturnPathOptions {
  mark: number;
  table: number;
  rulePriority: number;
}

/**
 * The return path of a configuration: `sourceAddress`'s settings, else their defaults (the on-path mode
 * needs it without a source-address mode, and marks its intercepted SYNs with the same mark).
 */
export function returnPathOptions(config: Pick<ConcentratorConfig, 'sourceAddress'>): ReturnPathOptions {
  const sa = config.sourceAddress;
  return { mark: sa?.returnMark ?? 0x6d70, table: sa?.returnTable ?? 4_242, rulePriority: sa?.returnRulePriority ?? 9_100 };
}

/** The nft table's body (pure; unit-tested). */
export function returnPathRuleset(mark: number): string {
  // Replies to our transparent server legs: deliver locally (policy routing below).
  return `${nftChain('prerouting', mangleHook('prerouting'), [`${transparentSocket()} ${markOr(mark)} accept`], '').join('\n')}\n`;
}

export class ReturnPath {
  readonly #logger: Logger;
  readonly #opts: ReturnPathOptions;
  readonly #ledger: KernelLedger;

  constructor(deps: { kernel: KernelConfig; logger: Logger }, opts: ReturnPathOptions) {
    this.#logger = deps.logger;
    this.#opts = opts;
    this.#ledger = new KernelLedger(deps.kernel);
  }

  get installed(): boolean {
    return !this.#ledger.empty;
  }

  async start(): Promise<void> {
    if (this.installed) return;
    const { mark, table, rulePriority } = this.#opts;
    try {
      await this.#ledger.applyTable('inet', RETURN_PATH_TABLE_NAME, returnPathRuleset(mark));
      await new LocalDelivery({ families: [4, 6], table, priority: rulePriority, mark, mask: mark }).install(this.#ledger);
      this.#logger.info({ mark, table }, 'return path for transparent source addresses installed');
    } catch (err) {
      await this.stop().catch(() => {});
      throw err;
    }
  }

  /** Removes what start() added; an item that fails to go is logged and kept for the next call. */
  async stop(): Promise<void> {
    for (const f of await this.#ledger.undoAll()) this.#logger.warn({ err: f.err, what: f.what }, 'could not remove a return-path item');
  }
}
