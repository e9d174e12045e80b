/**
 * Installs the CPE's interception: the nft TPROXY table (./ruleset.ts), the policy routing that delivers
 * marked packets locally (src/interception/local-delivery.ts: `ip rule iif LAN fwmark M/MASK lookup T` +
 * `local default dev lo table T`, both families), and net.ipv4.tcp_fwmark_accept=1 so an accepted socket's SO_MARK is its SYN's mark (the DSCP).
 *
 * Why `iif LAN` on the rule: with tcp_fwmark_accept the accepted sockets (and their SYN/ACKs) carry the mark
 * too; an iif-less fwmark rule would send the replies to the LAN client into the `local` table (looped back
 * to ourselves). Locally generated packets have iif lo, so the rule only ever matches what arrives from a LAN.
 *
 * stop() removes exactly what start() added (a ledger, undone in reverse); it is idempotent, safe after a
 * partial start, and restores the sysctl's previous value.
 */
import type { Family, KernelConfig } from '../platform/types.js';
import type { Logger } from '../log.js';
import { KernelLedger, LocalDelivery, type LocalDeliverySpec } from '../interception/index.js';
import { buildInterceptionRuleset, interceptionTableName, validateRulesetOptions, type InterceptionRulesetOptions } from './ruleset.js';

export interface InterceptionDeps {
  kernel: KernelConfig;
  logger: Logger;
  /** Informational: the kernel adapter already runs in its namespace. */
  netns?: string | undefined;
}

export interface InterceptionOptions extends InterceptionRulesetOptions {
  /** Routing table holding the `local default dev lo` routes; default 100. */
  table?: number | undefined;
  /** Priority of the fwmark rules; default 9000 (before the uplinks' source rules). */
  rulePriority?: number | undefined;
}

export const DEFAULT_INTERCEPTION_TABLE = 100;
export const DEFAULT_INTERCEPTION_RULE_PRIORITY = 9_000;
const FWMARK_ACCEPT = 'net.ipv4.tcp_fwmark_accept';

export class Interception {
  readonly #kernel: KernelConfig;
  readonly #logger: Logger;
  #opts: InterceptionOptions;
  readonly #delivery: LocalDelivery;
  readonly #ledger: KernelLedger;
  #state: 'idle' | 'starting' | 'started' | 'stopping' = 'idle';

  constructor(deps: InterceptionDeps, opts: InterceptionOptions) {
    validateRulesetOptions(opts);
    this.#kernel = deps.kernel;
    this.#logger = deps.logger.child({ component: 'interception' });
    this.#opts = opts;
    this.#delivery = new LocalDelivery(localDeliverySpec(opts));
    this.#ledger = new KernelLedger(deps.kernel);
  }

  get tableName(): string {
    return interceptionTableName(this.#opts.instance);
  }

  /** What is currently installed, in installation order (for status and tests). */
  installed(): string[] {
    return this.#ledger.entries();
  }

  async start(): Promise<void> {
    if (this.#state !== 'idle') throw new Error(`Interception.start() while ${this.#state}`);
    this.#state = 'starting';
    const o = this.#opts;
    try {
      const name = this.tableName;
      await this.#ledger.applyTable('inet', name, buildInterceptionRuleset(o));
      if (o.dscpToMark) await this.#ledger.setSysctl(FWMARK_ACCEPT, '1');
      await this.#delivery.install(this.#ledger);
      this.#state = 'started';
      this.#logger.info({ table: name, routingTable: this.#delivery.spec.table, tproxyPort: o.tproxyPort, lan: o.lanInterfaces }, 'interception installed');
    } catch (err) {
      this.#logger.error({ err }, 'installing the interception failed; removing what was added');
      await this.#undoAll().catch((undoErr: unknown) => this.#logger.error({ err: undoErr }, 'could not remove everything after a failed start'));
      this.#state = 'idle';
      throw err;
    }
  }

  /**
   * Reload: the new ruleset (policy, DSCP, MSS clamp, SYN window clamps) replaces the running table in one nft
   * transaction, so no SYN is missed. Only possible when what the rules, routes and listeners hang on is
   * unchanged (LAN interfaces, mark, TPROXY port, routing table, rule priority, families): false otherwise,
   * and the caller installs a new Interception instead.
   */
  async update(next: InterceptionOptions): Promise<boolean> {
    if (this.#state !== 'started') return false;
    const o = this.#opts;
    if (!this.#delivery.sameAs(localDeliverySpec(next)) || o.tproxyPort !== next.tproxyPort || o.instance !== next.instance || Boolean(o.dscpToMark) !== Boolean(next.dscpToMark)) {
      return false;
    }
    validateRulesetOptions(next);
    await this.#kernel.nft.applyTable('inet', this.tableName, buildInterceptionRuleset(next));
    this.#opts = next;
    this.#logger.info({ table: this.tableName }, 'interception ruleset replaced');
    return true;
  }

  /** Removes what start() added. Idempotent; an entry that fails to go stays in the ledger for the next call. */
  async stop(): Promise<void> {
    if (this.#state === 'stopping') return;
    const was = this.#state;
    this.#state = 'stopping';
    try {
      await this.#undoAll();
      if (was !== 'idle') this.#logger.info('interception removed');
    } finally {
      this.#state = 'idle';
    }
  }

  async #undoAll(): Promise<void> {
    const failures = await this.#ledger.undoAll();
    for (const f of failures) this.#logger.error({ err: f.err, what: f.what }, 'could not remove');
    if (failures.length === 1) throw failures[0]?.err;
    if (failures.length > 1) throw new AggregateError(failures.map((f) => f.err), `could not remove ${failures.length} interception items`);
  }
}

/** The policy routing of the options: one rule per LAN interface and family (defaults filled in). */
function localDeliverySpec(o: InterceptionOptions): LocalDeliverySpec {
  const families: Family[] = [...(o.families ?? [4, 6])];
  return {
    families,
    table: o.table ?? DEFAULT_INTERCEPTION_TABLE,
    priority: o.rulePriority ?? DEFAULT_INTERCEPTION_RULE_PRIORITY,
    mark: o.mark,
    mask: o.markMask ?? o.mark,
    iifs: o.lanInterfaces,
  };
}
