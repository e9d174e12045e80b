/**
 * The conversion pipeline: named steps over one connection's typed context, run in order until one refuses
 * or the last one hands the pair to a relay. A step is a pure gate (src/policy) or a strategy
 * (source address, conversion); its name is what logs and tests use to say where a connection stopped.
 * A step may also take the connection over ('handed-off': a reverse connection parked by the binding step);
 * the steps after it do not run.
 */
import type { Refusal } from '../policy/refusals.js';
import type { ConnectionContext } from './context.js';

export interface Step {
  readonly name: string;
  run(ctx: ConnectionContext): StepResult | Promise<StepResult>;
}

export type StepResult = Refusal | undefined | 'handed-off';

export const step = (name: string, run: Step['run']): Step => ({ name, run });

export type PipelineResult = { passed: true; handedOff?: string } | { passed: false; step: string; refusal: Refusal };

export async function runPipeline(steps: readonly Step[], ctx: ConnectionContext): Promise<PipelineResult> {
  for (const s of steps) {
    const r = s.run(ctx);
    const refusal = r instanceof Promise ? await r : r;
    if (refusal === 'handed-off') return { passed: true, handedOff: s.name };
    if (refusal) return { passed: false, step: s.name, refusal };
  }
  return { passed: true };
}
