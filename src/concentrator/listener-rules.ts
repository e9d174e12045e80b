/**
 * Owner of the concentrator's nft table (./ruleset.ts): installs it for the listeners actually bound (port 0
 * resolved), replaces it when they or the settings change (SIGHUP), removes it on stop. applyTable replaces a
 * table of the same name atomically, so a leftover of a killed instance is taken over at start.
 */
import type { KernelConfig } from '../platform/types.js';
import type { Logger } from '../log.js';
import type { Endpoint } from '../control/address.js';
import type { ConcentratorConfig } from './config.js';
import { onPathRuleOptions } from './onpath.js';
import { buildConcentratorRuleset, concentratorRulesetWanted, concentratorTableName, type ConcentratorRulesetOptions } from './ruleset.js';

export class ListenerRules {
  #installed: string | undefined;
  /** The text last applied: a reload that changes nothing does not touch the kernel. */
  #text: string | undefined;

  constructor(private readonly deps: { kernel: KernelConfig; logger: Logger }) {}

  static options(config: ConcentratorConfig, listeners: readonly Endpoint[]): ConcentratorRulesetOptions {
    return {
      instance: config.instance,
      listeners: listeners.map((l) => ({ family: l.family, address: l.host, port: l.port })),
      synWindowClamp: config.synWindowClamp,
      allow: config.allow,
      dropNonCustomers: config.synFlood.dropNonCustomers,
      synRateLimit: config.synFlood.synRateLimit,
      onPath: onPathRuleOptions(config),
    };
  }

  async apply(config: ConcentratorConfig, listeners: readonly Endpoint[]): Promise<void> {
    const o = ListenerRules.options(config, listeners);
    const name = concentratorTableName(o.instance);
    if (this.#installed !== undefined && this.#installed !== name) await this.remove();
    if (!concentratorRulesetWanted(o)) {
      await this.remove();
      // Nothing of ours should stay from an earlier (killed) run either.
      await this.deps.kernel.nft.deleteTable('inet', name);
      return;
    }
    const text = buildConcentratorRuleset(o);
    if (text === this.#text && this.#installed === name) return;
    await this.deps.kernel.nft.applyTable('inet', name, text);
    this.#installed = name;
    this.#text = text;
    this.deps.logger.info(
      { table: `inet ${name}`, synWindowClamp: o.synWindowClamp, dropNonCustomers: o.dropNonCustomers, synRateLimit: o.synRateLimit },
      'nft table for the listeners installed',
    );
  }

  /** Idempotent. */
  async remove(): Promise<void> {
    const name = this.#installed;
    if (name === undefined) return;
    await this.deps.kernel.nft.deleteTable('inet', name);
    this.#installed = undefined;
    this.#text = undefined;
    this.deps.logger.info({ table: `inet ${name}` }, 'nft table for the listeners removed');
  }
}
