/**
 * Installs the CPE's interception: the nft TPROXY table (./ruleset.ts), the policy routing that delivers
 * marked packets locally (`ip rule iif LAN fwmark M/MASK lookup T` + `local default dev lo table T`, both
 * families), and net.ipv4.tcp_fwmark_accept=1 so an accepted socket's SO_MARK is its SYN's mark (the DSCP).
 *
 * Why `iif LAN` on the rule: with tcp_fwmark_accept the accepted sockets (and their SYN/ACKs) carry the mark
 * too; an iif-less fwmark rule would send the replies to the LAN client into the `local` table (looped back
 * to ourselves). Locally generated packets have iif lo, so the rule only ever matches what arrives from a LAN.
 *
 * stop() removes exactly what start() added (a ledger, undone in reverse); it is idempotent, safe after a
 * partial start, and restores the sysctl's previous value.
 */
import type { Family, KernelConfig, RouteSpec, RuleSpec } from '../platform/types.js';
import type { Logger } from '../log.js';
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

interface LedgerEntry {
  what: string;
  undo: () => Promise<void>;
}

export class Interception {
  readonly #kernel: KernelConfig;
  readonly #logger: Logger;
  #opts: InterceptionOptions;
  readonly #table: number;
  readonly #priority: number;
  #ledger: LedgerEntry[] = [];
  #state: 'idle' | 'starting' | 'started' | 'stopping' = 'idle';

  constructor(deps: InterceptionDeps, opts: InterceptionOptions) {
    validateRulesetOptions(opts);
    this.#kernel = deps.kernel;
    this.#logger = deps.logger.child({ component: 'interception' });
    this.#opts = opts;
    this.#table = opts.table ?? DEFAULT_INTERCEPTION_TABLE;
    this.#priority = opts.rulePriority ?? DEFAULT_INTERCEPTION_RULE_PRIORITY;
  }

  get tableName(): string {
    return interceptionTableName(this.#opts.instance);
  }

  /** What is currently installed, in installation order (for status and tests). */
  installed(): string[] {
    return this.#ledger.map((e) => e.what);
  }

  async start(): Promise<void> {
    if (this.#state !== 'idle') throw new Error(`Interception.start() while ${this.#state}`);
    this.#state = 'starting';
    const k = this.#kernel;
    const o = this.#opts;
    const families: Family[] = [...(o.families ?? [4, 6])];
    try {
      const name = this.tableName;
      const text = buildInterceptionRuleset(o);
      await k.nft.applyTable('inet', name, text);
      this.#add(`nft table inet ${name}`, () => k.nft.deleteTable('inet', name));

      if (o.dscpToMark) {
        const previous = await k.sysctl.get(FWMARK_ACCEPT);
        if (previous !== '1') {
          await k.sysctl.set(FWMARK_ACCEPT, '1');
          this.#add(`sysctl ${FWMARK_ACCEPT}=1 (was ${previous})`, () => k.sysctl.set(FWMARK_ACCEPT, previous));
        }
      }

      for (const family of families) {
        const route: RouteSpec = { family, table: this.#table, dst: 'default', type: 'local', dev: 'lo' };
        await k.routes.addRoute(route);
        this.#add(`route ${family === 4 ? '-4' : '-6'} local default dev lo table ${this.#table}`, () => k.routes.deleteRoute(route));
        for (const iif of o.lanInterfaces) {
          const rule: RuleSpec = { family, priority: this.#priority, iif, fwmark: o.mark, fwmask: o.markMask ?? o.mark, table: this.#table };
          // A rule identical to ours can only be a leftover of a crashed run: replace it rather than duplicate.
          await k.routes.deleteRule(rule);
          await k.routes.addRule(rule);
          this.#add(`rule ${family === 4 ? '-4' : '-6'} priority ${this.#priority} iif ${iif} fwmark ${rule.fwmark}/${rule.fwmask} lookup ${this.#table}`, () => k.routes.deleteRule(rule));
        }
      }
      this.#state = 'started';
      this.#logger.info({ table: name, routingTable: this.#table, tproxyPort: o.tproxyPort, lan: o.lanInterfaces }, 'interception installed');
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
    const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
    if (
      !same(o.lanInterfaces, next.lanInterfaces) || o.mark !== next.mark || (o.markMask ?? o.mark) !== (next.markMask ?? next.mark) ||
      o.tproxyPort !== next.tproxyPort || this.#table !== (next.table ?? DEFAULT_INTERCEPTION_TABLE) ||
      this.#priority !== (next.rulePriority ?? DEFAULT_INTERCEPTION_RULE_PRIORITY) || !same(o.families ?? [4, 6], next.families ?? [4, 6]) ||
      o.instance !== next.instance || Boolean(o.dscpToMark) !== Boolean(next.dscpToMark)
    ) {
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

  #add(what: string, undo: () => Promise<void>): void {
    this.#ledger.push({ what, undo });
  }

  async #undoAll(): Promise<void> {
    const failed: LedgerEntry[] = [];
    const errors: unknown[] = [];
    for (const entry of [...this.#ledger].reverse()) {
      try {
        await entry.undo();
      } catch (err) {
        this.#logger.error({ err, what: entry.what }, 'could not remove');
        failed.unshift(entry);
        errors.push(err);
      }
    }
    this.#ledger = failed;
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, `could not remove ${errors.length} interception items`);
  }
}
