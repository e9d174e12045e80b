/**
 * The conversion pipeline: named steps over one connection's typed context, run in order until one refuses
 * or the last one hands the pair to a relay. A step is a pure gate (src/policy) or a strategy
 * (source address, conversion); its name is what logs and tests use to say where a connection stopped.
 */
import type { Refusal } from '../policy/refusals.js';
import type { ConnectionContext } from './context.js';

export interface Step {
  readonly name: string;
  run(ctx: ConnectionContext): Refusal | undefined | Promise<Refusal | undefined>;
}

export const step = (name: string, run: Step['run']): Step => ({ name, run });

export type PipelineResult = { passed: true } | { passed: false; step: string; refusal: Refusal };

export async function runPipeline(steps: readonly Step[], ctx: ConnectionContext): Promise<PipelineResult> {
  for (const s of steps) {
    const r = s.run(ctx);
    const refusal = r instanceof Promise ? await r : r;
    if (refusal) return { passed: false, step: s.name, refusal };
  }
  return { passed: true };
}
