/**
 * The primary's side of `workers` > 1: forks `workers - 1` processes of the CLI (`mpconvert concentrator
 * --worker N`; child_process.fork, not node:cluster, whose listen() interception cannot share the MPTCP
 * listeners the FFI opens), each of which opens the same listeners with SO_REUSEPORT and converts the
 * connections the kernel gives it. MP_JOIN subflows never pass through accept(): the kernel finds their
 * connection by its token, in whichever process holds it.
 *
 * The primary answers each worker's shared-state requests (./shared-state.ts) in order, writes its
 * session-log lines, gathers its metrics and status at scrape time, forwards each reload, restarts a worker
 * that died (a growing pause, counted) and releases what its connections held; at stop it asks every worker
 * to drain and waits for it.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { AggregatorRegistry, type Registry } from 'prom-client';
import type { Logger } from '../log.js';
import type { Metrics } from '../control/metrics.js';
import type { ConcentratorConfig } from './config.js';
import type { LocalSharedState } from './shared-state.js';
import { decodeWorkerMessage, type PrimaryToWorker, type WorkerStatus, type WorkerToPrimary } from './worker-messages.js';

/** The primary's answer to a worker's shared-state message (admit: the answer, in order; release: none). */
export function serveSharedState(shared: LocalSharedState, owner: string, m: Extract<WorkerToPrimary, { t: 'admit' | 'release' }>): PrimaryToWorker | undefined {
  if (m.t === 'release') {
    shared.release(m.lease);
    return undefined;
  }
  return { t: 'admitted', id: m.id, answer: shared.admitFor(owner, m.req) };
}

export interface WorkerPoolDeps {
  logger: Logger;
  metrics: Metrics;
  shared: LocalSharedState;
  sessionLog?: { info(line: Record<string, unknown>): void } | undefined;
  /** The command a worker runs: the CLI script and its arguments before `--worker N`. */
  command: { script: string; args: string[] };
  /** How long a worker may take to start (listeners open) or to answer a scrape or status request. */
  startTimeoutMs?: number;
  replyTimeoutMs?: number;
  /** Pause before a restart: min(firstRestartMs * 2^n, maxRestartMs), n = restarts in a row. */
  firstRestartMs?: number;
  maxRestartMs?: number;
}

interface Slot {
  index: number;
  child: ChildProcess | undefined;
  /** Restarts in a row (reset once a worker ran for a minute). */
  failures: number;
  startedAt: number;
  timer: NodeJS.Timeout | undefined;
  ready: Promise<void> | undefined;
}

/** A worker that lived this long before it died is restarted after the first pause again. */
const HEALTHY_MS = 60_000;

export class WorkerPool {
  readonly #d: WorkerPoolDeps;
  readonly #slots: Slot[] = [];
  #config: ConcentratorConfig;
  #stopping = false;
  #nextRequest = 1;
  readonly #requests = new Map<number, (value: unknown) => void>();

  /** `config`: what the workers run (its `listen` with the primary's actual ports, port 0 resolved). */
  constructor(config: ConcentratorConfig, deps: WorkerPoolDeps) {
    this.#config = config;
    this.#d = deps;
    for (let index = 1; index < config.workers; index++) this.#slots.push({ index, child: undefined, failures: 0, startedAt: 0, timer: undefined, ready: undefined });
  }

  /** Forks every worker and waits until each has its listeners open. */
  async start(): Promise<void> {
    await Promise.all(this.#slots.map((s) => this.#fork(s)));
  }

  get running(): number {
    return this.#slots.filter((s) => s.child && s.child.exitCode === null && s.child.signalCode === null).length;
  }

  #fork(slot: Slot): Promise<void> {
    const { script, args } = this.#d.command;
    const child = fork(script, [...args, '--worker', String(slot.index)], { serialization: 'advanced', stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    const owner = `worker-${slot.index}-${child.pid ?? 0}`;
    slot.child = child;
    slot.startedAt = Date.now();
    let readyResolve!: () => void;
    let readyReject!: (err: Error) => void;
    slot.ready = new Promise<void>((resolve, reject) => {
      readyResolve = resolve;
      readyReject = reject;
    });
    const timer = setTimeout(() => readyReject(new Error(`worker ${slot.index} did not start within ${this.#d.startTimeoutMs ?? 20_000} ms`)), this.#d.startTimeoutMs ?? 20_000);
    child.on('message', (raw: unknown) => {
      let m;
      try {
        m = decodeWorkerMessage(raw);
      } catch (err) {
        this.#d.logger.warn({ err, worker: slot.index }, 'dropped a message from a worker');
        return;
      }
      switch (m.t) {
        case 'ready':
          clearTimeout(timer);
          readyResolve();
          this.#d.metrics.workers.set(this.running);
          this.#d.logger.info({ worker: slot.index, pid: m.pid }, 'concentrator worker ready');
          break;
        case 'admit':
        case 'release': {
          const reply = serveSharedState(this.#d.shared, owner, m);
          if (reply) this.#send(child, reply);
          break;
        }
        case 'log':
          // Session ids are per process: the worker field tells them apart.
          this.#d.sessionLog?.info({ ...m.line, worker: slot.index });
          break;
        case 'scraped':
          this.#requests.get(m.id)?.(m.metrics);
          break;
        case 'status':
          this.#requests.get(m.id)?.(m.status);
          break;
      }
    });
    child.on('error', (err) => this.#d.logger.warn({ err, worker: slot.index }, 'worker process error'));
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      readyReject(new Error(`worker ${slot.index} exited (${signal ?? code}) before it was ready`));
      const released = this.#d.shared.releaseOwner(owner);
      this.#d.metrics.workers.set(this.running);
      if (this.#stopping) return;
      this.#d.metrics.workerRestarts.inc();
      if (Date.now() - slot.startedAt > HEALTHY_MS) slot.failures = 0;
      const first = this.#d.firstRestartMs ?? 250;
      const pause = Math.min(first * 2 ** slot.failures, this.#d.maxRestartMs ?? 30_000);
      slot.failures++;
      this.#d.logger.warn({ worker: slot.index, pid: child.pid, code, signal, released, restartInMs: pause }, 'concentrator worker ended; restarting it');
      slot.timer = setTimeout(() => {
        slot.timer = undefined;
        if (this.#stopping) return;
        this.#fork(slot).catch((err: unknown) => this.#d.logger.warn({ err, worker: slot.index }, 'a restarted worker did not start'));
      }, pause);
    });
    this.#send(child, { t: 'config', worker: slot.index, config: this.#config as unknown as Record<string, unknown> });
    return slot.ready;
  }

  #send(child: ChildProcess, m: PrimaryToWorker): void {
    if (!child.connected) return;
    try {
      child.send(m);
    } catch (err) {
      this.#d.logger.debug({ err }, 'could not send to a worker');
    }
  }

  /** One request to every running worker; a worker that does not answer in time is left out. */
  async #ask<T>(t: 'scrape' | 'status'): Promise<T[]> {
    const timeoutMs = this.#d.replyTimeoutMs ?? 1_000;
    const asks = this.#slots
      .filter((s) => s.child?.connected)
      .map(
        (s) =>
          new Promise<T | undefined>((resolve) => {
            const id = this.#nextRequest++;
            const timer = setTimeout(() => done(undefined), timeoutMs);
            const done = (v: unknown) => {
              clearTimeout(timer);
              this.#requests.delete(id);
              resolve(v as T | undefined);
            };
            this.#requests.set(id, done);
            this.#send(s.child as ChildProcess, { t, id });
          }),
      );
    return (await Promise.all(asks)).filter((v): v is Awaited<T> => v !== undefined) as T[];
  }

  /** The primary's registry and every worker's, aggregated (counters and gauges summed). */
  async metricsText(primary: Registry): Promise<string> {
    const all = [await primary.getMetricsAsJSON(), ...(await this.#ask<object[]>('scrape'))];
    return AggregatorRegistry.aggregate(all).metrics();
  }

  /** Per worker: its pid and its connections (accepted since it started, open now). */
  status(): Promise<WorkerStatus[]> {
    return this.#ask<WorkerStatus>('status');
  }

  /** SIGHUP: the primary applied `config`; the workers apply the same. */
  reload(config: ConcentratorConfig): void {
    this.#config = config;
    for (const s of this.#slots) if (s.child) this.#send(s.child, { t: 'config', worker: s.index, config: config as unknown as Record<string, unknown> });
  }

  /** Asks every worker to drain and exit; after `budgetMs`, kills what is left. */
  async stop(budgetMs: number): Promise<void> {
    this.#stopping = true;
    const exits: Array<Promise<unknown>> = [];
    for (const s of this.#slots) {
      if (s.timer) clearTimeout(s.timer);
      const child = s.child;
      if (!child || child.exitCode !== null || child.signalCode !== null) continue;
      exits.push(new Promise((resolve) => child.once('exit', resolve)));
      this.#send(child, { t: 'stop' });
    }
    const kill = setTimeout(() => {
      for (const s of this.#slots) if (s.child && s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGKILL');
    }, budgetMs);
    await Promise.all(exits);
    clearTimeout(kill);
    this.#d.metrics.workers.set(0);
  }
}
