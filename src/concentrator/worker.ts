/**
 * A concentrator worker process (`mpconvert concentrator --worker N`, forked by the primary: ./workers.ts).
 * It waits for its configuration on the IPC channel, opens the listeners with SO_REUSEPORT, converts what
 * the kernel gives it, and asks the primary for the shared state (./shared-state.ts). Its log lines go to
 * the same stderr with a `worker` field; its session-log lines go to the primary, which writes them.
 * When the primary is gone (the channel closes) it stops accepting, drains and exits.
 */
import { createLinuxPlatform } from '../platform/linux/index.js';
import { createLogger, type LogFormat } from '../log.js';
import { createMetrics } from '../control/metrics.js';
import type { ConcentratorConfig } from './config.js';
import { Concentrator } from './concentrator.js';
import { IpcSharedState } from './shared-state.js';
import { decodePrimaryMessage, type WorkerToPrimary } from './worker-messages.js';

/** How long a connection waits for the primary's shared-state answer before it is refused. */
const ADMIT_TIMEOUT_MS = 2_000;

export async function runWorker(index: number, options: { logFormat?: LogFormat | undefined }): Promise<void> {
  const send = process.send?.bind(process);
  if (!send) {
    process.stderr.write('mpconvert concentrator: --worker is internal: only the concentrator itself starts workers (the `workers` key)\n');
    process.exitCode = 2;
    return;
  }
  const post = (m: WorkerToPrimary): boolean => {
    try {
      return send(m);
    } catch {
      return false; // the channel closed: 'disconnect' stops this worker
    }
  };
  const config = await new Promise<ConcentratorConfig>((resolve) => {
    const first = (raw: unknown) => {
      try {
        const m = decodePrimaryMessage(raw);
        if (m.t !== 'config') return;
        process.off('message', first);
        resolve(m.config as unknown as ConcentratorConfig);
      } catch {
        /* not for us yet */
      }
    };
    process.on('message', first);
    process.once('disconnect', () => process.exit(0));
  });
  const logger = createLogger({ level: config.logLevel, name: 'concentrator', ...(options.logFormat ? { format: options.logFormat } : {}) }).child({ worker: index });
  const platform = createLinuxPlatform();
  const metrics = createMetrics('concentrator', { perCpe: config.metrics.perCpe });
  // Throws once the channel is closed: the request is refused at once instead of waiting for its timeout.
  const shared = new IpcSharedState((m) => send(m), ADMIT_TIMEOUT_MS);
  const concentrator = new Concentrator(config, {
    sockets: platform.sockets,
    kernel: platform.kernel,
    logger,
    metrics,
    sessionLog: { info: (line) => void post({ t: 'log', line }) },
    splice: platform.splice,
    resources: platform.resources,
    worker: { index, shared },
  });

  let stopping: Promise<void> | undefined;
  const stop = (why: string) => {
    stopping ??= (async () => {
      logger.info({ why }, 'concentrator worker stopping');
      await concentrator.stop().catch((err: unknown) => logger.warn({ err }, 'worker stop failed'));
      await platform.splice?.close();
      process.exit(0);
    })();
  };

  process.on('message', (raw: unknown) => {
    let m;
    try {
      m = decodePrimaryMessage(raw);
    } catch (err) {
      logger.warn({ err }, 'dropped a message from the primary');
      return;
    }
    switch (m.t) {
      case 'admitted':
        shared.answer(m.id, m.answer);
        break;
      case 'scrape':
        metrics.registry
          .getMetricsAsJSON()
          .then((json) => post({ t: 'scraped', id: m.id, metrics: json as unknown as Array<Record<string, unknown>> }))
          .catch((err: unknown) => logger.warn({ err }, 'could not read the metrics'));
        break;
      case 'status':
        post({ t: 'status', id: m.id, status: { worker: index, pid: process.pid, accepted: concentrator.accepted, active: concentrator.activeSessions } });
        break;
      case 'config':
        concentrator.reload(m.config as unknown as ConcentratorConfig).catch((err: unknown) => logger.warn({ err }, 'worker reload failed'));
        break;
      case 'stop':
        stop('asked by the primary');
        break;
    }
  });
  process.removeAllListeners('disconnect');
  process.once('disconnect', () => {
    shared.close();
    stop('the primary is gone');
  });
  // The primary owns the signals: SIGHUP reloads there (and is forwarded), a terminal's SIGINT stops it (and so us).
  process.on('SIGHUP', () => {});
  process.on('SIGINT', () => {});
  process.on('SIGTERM', () => stop('SIGTERM'));

  try {
    await concentrator.start();
  } catch (err) {
    logger.error({ err }, 'concentrator worker could not start');
    process.exit(1);
  }
  post({ t: 'ready', pid: process.pid });
}
