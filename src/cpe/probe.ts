/**
 * Background probe of concentrators held off as unreachable: an MPTCP handshake (no data) every
 * `intervalMs` while the selector says the concentrator is failing; the first one that completes ends the
 * hold (markWorking), so conversion resumes as soon as the concentrator answers again, not when a hold
 * runs out. A failed probe counts as a failure (the hold grows). At most one probe per concentrator at a time.
 * The concentrator sees a probe as a connection closed before its first byte (`signalling-empty`).
 */
import type { Logger } from '../log.js';
import type { Sockets } from '../platform/types.js';
import { parseEndpoint } from '../control/address.js';
import type { ConcentratorSelector } from './concentrators.js';
import type { ConcentratorTarget } from './config.js';

export interface ProbeDeps {
  sockets: Sockets;
  logger: Logger;
  selector: ConcentratorSelector;
  intervalMs: number;
  timeoutMs: () => number;
}

export class ConcentratorProbe {
  readonly #deps: ProbeDeps;
  readonly #running = new Map<string, AbortController>();
  #stopped = false;

  constructor(deps: ProbeDeps) {
    this.#deps = deps;
  }

  /** Probes `target` until it answers or is no longer failing. Idempotent per concentrator. */
  watch(target: ConcentratorTarget): void {
    if (this.#stopped || this.#running.has(target.address)) return;
    const abort = new AbortController();
    this.#running.set(target.address, abort);
    void this.#loop(target, abort.signal).finally(() => this.#running.delete(target.address));
  }

  async #loop(target: ConcentratorTarget, signal: AbortSignal): Promise<void> {
    const { sockets, logger, selector } = this.#deps;
    const ep = parseEndpoint(target.address);
    while (!signal.aborted && selector.isFailing(target)) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, this.#deps.intervalMs);
        signal.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
      });
      if (signal.aborted || !selector.isFailing(target)) return;
      try {
        const s = await sockets.dial({ family: ep.family, protocol: 'mptcp', host: ep.host, port: ep.port, timeoutMs: this.#deps.timeoutMs(), signal });
        s.on('error', () => {});
        s.destroy();
        selector.markWorking(target);
        logger.info({ concentrator: target.address }, 'concentrator answers again: converting through it');
        return;
      } catch (err) {
        if (signal.aborted) return;
        selector.markUnreachable(target);
        logger.debug({ concentrator: target.address, err: (err as Error).message }, 'probe: concentrator still unreachable');
      }
    }
  }

  stop(): void {
    this.#stopped = true;
    for (const a of this.#running.values()) a.abort();
    this.#running.clear();
  }
}
