/**
 * Local delivery of marked packets, for both roles: packets the nft rules marked (TPROXY-diverted SYNs, the
 * packets of transparent sockets) are routed to this host instead of forwarded on, by policy routing:
 *
 *   ip rule [iif IF] fwmark M/MASK lookup T   (per family; one rule per interface when `iifs` is given)
 *   ip route add local default dev lo table T (per family)
 *
 * The CPE gives its LAN interfaces (with tcp_fwmark_accept its own replies carry the mark too, and an iif-less
 * rule would loop them back to itself); the concentrator's return path and on-path mode match any interface.
 * The changes go into the owner's KernelLedger, so they are undone with the owner's other changes.
 */
import type { Family, RouteSpec, RuleSpec } from '../platform/types.js';
import type { KernelLedger } from './ledger.js';

export interface LocalDeliverySpec {
  families: readonly Family[];
  /** Routing table holding the `local default dev lo` routes. */
  table: number;
  /** Priority of the fwmark rules. */
  priority: number;
  mark: number;
  mask: number;
  /** One rule per interface, matching only what arrives there; absent: one rule, any interface. */
  iifs?: readonly string[] | undefined;
}

const fam = (family: Family) => (family === 4 ? '-4' : '-6');

export class LocalDelivery {
  readonly spec: LocalDeliverySpec;

  constructor(spec: LocalDeliverySpec) {
    this.spec = spec;
  }

  route(family: Family): RouteSpec {
    return { family, table: this.spec.table, dst: 'default', type: 'local', dev: 'lo' };
  }

  rules(family: Family): RuleSpec[] {
    const { priority, mark, mask, table, iifs } = this.spec;
    if (iifs === undefined) return [{ family, priority, fwmark: mark, fwmask: mask, table }];
    return iifs.map((iif) => ({ family, priority, iif, fwmark: mark, fwmask: mask, table }));
  }

  /** Adds the routes and rules, recording each in `ledger` as soon as it exists (a failure leaves it complete). */
  async install(ledger: KernelLedger): Promise<void> {
    const routes = ledger.kernel.routes;
    for (const family of this.spec.families) {
      const route = this.route(family);
      await routes.addRoute(route);
      ledger.add(`route ${fam(family)} local default dev lo table ${route.table}`, () => routes.deleteRoute(route));
      for (const rule of this.rules(family)) {
        // A rule identical to ours can only be a leftover of a crashed run: replace it rather than duplicate.
        await routes.deleteRule(rule);
        await routes.addRule(rule);
        const iif = rule.iif === undefined ? '' : ` iif ${rule.iif}`;
        ledger.add(`rule ${fam(family)} priority ${rule.priority}${iif} fwmark ${rule.fwmark}/${rule.fwmask} lookup ${rule.table}`, () => routes.deleteRule(rule));
      }
    }
  }

  /** Whether `other` installs exactly the same routes and rules (a reload may keep them). */
  sameAs(other: LocalDeliverySpec): boolean {
    const a = this.spec;
    return (
      a.table === other.table && a.priority === other.priority && a.mark === other.mark && a.mask === other.mask &&
      JSON.stringify(a.families) === JSON.stringify(other.families) && JSON.stringify(a.iifs) === JSON.stringify(other.iifs)
    );
  }
}
