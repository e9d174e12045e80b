/**
 * The messages between the concentrator's primary process and its worker processes (`workers` > 1), over
 * the IPC channel of child_process.fork (serialization 'advanced': Buffers and plain objects pass as they are).
 * Both sides decode what they receive: a message that does not parse is dropped and logged, never acted on.
 *
 *   worker -> primary: ready, admit (one per connection), release (one-way), log (a session-log line),
 *                      scraped (the worker's metrics), status (its connection counts)
 *   primary -> worker: config (the first message, and each reload), admitted (answers in request order),
 *                      scrape, status, stop (drain and exit)
 */
import { z } from 'zod';
import { MpconvertError } from '../errors.js';
import { REFUSALS, type RefusalCode } from '../policy/refusals.js';
import type { AdmitAnswer, AdmitRequest } from './shared-state.js';

const id = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const refusalCode = z.enum(Object.keys(REFUSALS) as [RefusalCode, ...RefusalCode[]]);
const bytes = z.instanceof(Uint8Array);

const refusal = z.strictObject({
  code: refusalCode,
  qualifier: z.string().max(200).optional(),
  convertError: z.number().int().min(0).max(255).optional(),
  reaction: z.record(z.string(), z.unknown()).optional(),
  detail: z.record(z.string(), z.unknown()).optional(),
});

const admitRequest = z.strictObject({
  cpe: z.string().min(1).max(64),
  format: z.enum(['mp-convert', 'rfc8803']),
  raw: bytes.refine((b) => b.byteLength <= 65_536, 'signalling over 64 KiB'),
  family: z.union([z.literal(4), z.literal(6)]),
  source: z.string().max(64).optional(),
});

const admitAnswer = z.discriminatedUnion('ok', [
  z.strictObject({
    ok: z.literal(true),
    lease: id,
    identity: z.string().min(1).max(256),
    keyId: z.string().max(256).optional(),
    external: z.string().max(64).optional(),
    externalTransparent: z.boolean().optional(),
  }),
  z.strictObject({ ok: z.literal(false), step: z.enum(['authenticate', 'limits', 'source-address']), refusal }),
]);

export interface WorkerStatus {
  worker: number;
  pid: number;
  /** Connections this process accepted since it started. */
  accepted: number;
  /** Its connections open now (signalling, dialling or relayed). */
  active: number;
}

const workerStatus = z.strictObject({ worker: z.number().int().min(0), pid: z.number().int().min(1), accepted: z.number().int().min(0), active: z.number().int().min(0) });

const workerToPrimary = z.discriminatedUnion('t', [
  z.strictObject({ t: z.literal('ready'), pid: z.number().int().min(1) }),
  z.strictObject({ t: z.literal('admit'), id, req: admitRequest }),
  z.strictObject({ t: z.literal('release'), lease: id }),
  z.strictObject({ t: z.literal('log'), line: z.record(z.string(), z.unknown()) }),
  z.strictObject({ t: z.literal('scraped'), id, metrics: z.array(z.record(z.string(), z.unknown())) }),
  z.strictObject({ t: z.literal('status'), id, status: workerStatus }),
]);

const primaryToWorker = z.discriminatedUnion('t', [
  z.strictObject({ t: z.literal('config'), worker: z.number().int().min(1), config: z.record(z.string(), z.unknown()) }),
  z.strictObject({ t: z.literal('admitted'), id, answer: admitAnswer }),
  z.strictObject({ t: z.literal('scrape'), id }),
  z.strictObject({ t: z.literal('status'), id }),
  z.strictObject({ t: z.literal('stop') }),
]);

type Raw<T> = T extends { req: unknown } ? Omit<T, 'req'> & { req: AdmitRequest } : T extends { answer: unknown } ? Omit<T, 'answer'> & { answer: AdmitAnswer } : T;
export type WorkerToPrimary = Raw<z.output<typeof workerToPrimary>>;
export type PrimaryToWorker = Raw<z.output<typeof primaryToWorker>>;

/** Cannot parse a message on the workers' IPC channel: why, in one line. */
export class WorkerMessageError extends MpconvertError {
  constructor(message: string) {
    super('MPC_ERR_WORKER_MESSAGE', message);
  }
}

function decode<T>(schema: z.ZodType, m: unknown, side: string): T {
  const r = schema.safeParse(m);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new WorkerMessageError(`Cannot parse a ${side} message: ${issue ? `${issue.path.join('.') || 't'}: ${issue.message}` : 'invalid'}`);
  }
  return r.data as T;
}

export const decodeWorkerMessage = (m: unknown): WorkerToPrimary => decode<WorkerToPrimary>(workerToPrimary, m, 'worker');
export const decodePrimaryMessage = (m: unknown): PrimaryToWorker => decode<PrimaryToWorker>(primaryToWorker, m, 'primary');
