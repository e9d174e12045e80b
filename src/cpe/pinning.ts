/**
 * Per-flow-class pinning (docs/operations.md, "Traffic distribution schemes"): a LAN connection in one of
 * `distribution.classes` is converted over one uplink only, with what the kernel offers per connection:
 *
 * - its MPTCP socket is bound to the chosen uplink's address, so the initial subflow leaves through that
 *   uplink (the uplink's source rule and table, src/cpe/uplinks.ts);
 * - its SO_MARK carries the uplink's pin mark (bits 16-23); MPTCP copies the mark onto every subflow it
 *   creates for the connection, and the nft table `inet mpconvert_pin_<instance>` (output hook) answers a
 *   marked SYN that would leave through any other uplink with a reset, so the in-kernel path manager's joins
 *   on the other uplinks fail at once (one SYN, no retry) while every other connection keeps aggregating.
 *
 * Why this and not the path manager: on Linux 6.18 the endpoint flags (subflow, backup, fullmesh) and the
 * path manager choice (net.mptcp.path_manager, the older pm_type) are per namespace, and the userspace path
 * manager's netlink commands act on connections that the userspace path manager runs; no socket option turns
 * joins off for one connection. SO_MARK is per socket and copied onto the subflows (seen in the lab: the join
 * SYN of a marked connection carries the mark and is reset, one packet). A pinned connection does not survive
 * the loss of its uplink; new connections of its class are pinned to another one.
 */
import type { KernelConfig } from '../platform/types.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../control/metrics.js';
import type { CpeConfig } from './config.js';
import type { UplinkState } from './uplinks.js';
import { PIN_MARK_MASK, classifyFlow, pinMark, pinUplink, type Flow, type PinCandidate } from '../policy/flow-class.js';

export function pinTableName(instance: string): string {
  if (!/^[a-z0-9_]{1,16}$/.test(instance)) throw new RangeError(`instance '${instance}' must be 1-16 of [a-z0-9_]`);
  return `mpconvert_pin_${instance}`;
}

const hex = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;

/** The pin table's body: per uplink, a SYN with its pin mark leaving through another interface is reset. */
export function pinRuleset(uplinks: readonly string[]): string {
  const rules = uplinks.map((name, i) => {
    if (!/^[A-Za-z0-9_.:@-]{1,15}$/.test(name)) throw new RangeError(`bad interface name '${name}'`);
    return `    meta mark & ${hex(PIN_MARK_MASK)} == ${hex(pinMark(i))} tcp flags & (syn | ack) == syn oifname != "${name}" counter reject with tcp reset comment "pin ${name}"`;
  });
  return `  chain output {\n    type filter hook output priority 0; policy accept;\n${rules.join('\n')}\n  }\n`;
}

/** What a pinned connection's MPTCP socket gets. */
export interface Pin {
  class: string;
  uplink: string;
  mark: number;
  localAddress: string;
}

export interface PinningDeps {
  kernel: KernelConfig;
  logger: Logger;
  metrics: Metrics;
}

export class FlowPinning {
  readonly #deps: PinningDeps;
  /** The instance whose table is installed, or null. */
  #installed: string | null = null;
  /** Last RTT (ms, the lowest smoothed RTT of its subflows) seen per uplink; kept while the uplink carries no subflow. */
  readonly #rtt = new Map<string, number>();
  /** Per class: the uplink its last connection was pinned to (status). */
  readonly #last = new Map<string, string>();

  constructor(deps: PinningDeps) {
    this.#deps = deps;
  }

  /** Installs (or replaces, or removes when there is no class) the pin table for this configuration. */
  async apply(cfg: CpeConfig): Promise<void> {
    const { kernel } = this.#deps;
    const name = pinTableName(cfg.instance);
    if (this.#installed !== null && this.#installed !== name) await this.stop();
    if (cfg.distribution.classes.length === 0) {
      await this.stop();
      return;
    }
    await kernel.nft.applyTable('inet', name, pinRuleset(cfg.uplinks.map((u) => u.interface)));
    this.#installed = name;
    for (const c of cfg.distribution.classes) if (c.uplink === undefined) this.#last.delete(c.name);
  }

  /** Records the path RTT measured on each uplink's subflows (the observer's sample). */
  noteRtt(rtt: ReadonlyMap<string, number>): void {
    for (const [u, ms] of rtt) this.#rtt.set(u, ms);
  }

  /** The pin of a connection to a concentrator of `family`, or undefined: not in a class, or no usable uplink. */
  choose(cfg: CpeConfig, flow: Flow, family: 4 | 6, uplinks: readonly UplinkState[]): Pin | undefined {
    const c = classifyFlow(cfg.distribution.classes, flow);
    if (!c) return undefined;
    const addr = (u: UplinkState) => (family === 4 ? u.ipv4 : u.ipv6);
    const candidates: PinCandidate[] = uplinks.map((u) => ({
      interface: u.interface,
      usable: u.up && (addr(u)?.routed ?? false),
      mode: u.mode,
      rttMs: this.#rtt.get(u.interface) ?? null,
    }));
    const name = pinUplink(c, candidates);
    const index = cfg.uplinks.findIndex((u) => u.interface === name);
    const state = uplinks.find((u) => u.interface === name);
    const local = state ? addr(state)?.address : undefined;
    if (name === undefined || index < 0 || local === undefined) {
      this.#deps.metrics.flowClass.inc({ class: c.name, uplink: 'none' });
      return undefined;
    }
    this.#deps.metrics.flowClass.inc({ class: c.name, uplink: name });
    this.#last.set(c.name, name);
    return { class: c.name, uplink: name, mark: pinMark(index), localAddress: local };
  }

  /** The classes and where their last connection went, and the path RTTs (status, dashboard). */
  view(cfg: CpeConfig) {
    return {
      classes: cfg.distribution.classes.map((c) => ({ name: c.name, pin: c.uplink ?? 'lowest-rtt', lastUplink: this.#last.get(c.name) ?? null })),
      pathRttMs: Object.fromEntries([...this.#rtt].map(([u, ms]) => [u, Math.round(ms * 100) / 100])),
    };
  }

  async stop(): Promise<void> {
    if (this.#installed === null) return;
    const name = this.#installed;
    this.#installed = null;
    await this.#deps.kernel.nft.deleteTable('inet', name);
  }
}
