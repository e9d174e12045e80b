/** `mpconvert concentrator`: the composition root of the concentrator role (picks the Linux platform). */
import { Command, Option } from 'commander';
import { createLinuxPlatform } from '../platform/linux/index.js';
import { createLogger, LOG_FORMATS, type LogFormat } from '../log.js';
import { applySysctls, concentratorSysctls } from '../control/prepare.js';
import { createMetrics } from '../control/metrics.js';
import { loadAdminToken, startAdmin, type AdminServer } from '../control/admin.js';
import { runDaemon, runPrepare, STOP_CLEANUP_S } from '../control/daemon.js';
import { checkConcentrator, hostFacts, reportCheck } from '../control/check.js';
import { kernelCheck } from '../control/doctor.js';
import { ConfigError } from '../control/config-file.js';
import { parseEndpoint } from '../control/address.js';
import { resolveConcentratorConfig, type ConcentratorFlags } from './config.js';
import { Concentrator } from './concentrator.js';
import { createSessionLog } from './session-log.js';
import { closeFd, sendToUnix, unixDatagramSocket } from '../platform/linux/ffi.js';
import { formatEndpoint } from '../control/address.js';
import { runWorker } from './worker.js';
import { WorkerPool } from './workers.js';

const collect = (v: string, prev: string[] = []) => [...prev, v];

export function concentratorCommand(): Command {
  return new Command('concentrator')
    .description('Run the concentrator (downstream MPTCP conversion point)')
    .option('-c, --config <file>', 'YAML configuration file (see docs/concentrator.md)')
    .option('--listen <addr:port>', 'customer-facing MPTCP listener (repeatable)', collect)
    .option('--allow <cidr>', 'customer prefix allowed to connect (repeatable)', collect)
    .option('--deny <cidr>', 'destination prefix to refuse (repeatable)', collect)
    .option('--pool <addr>', 'external source address for server connections (repeatable)', collect)
    .option('--announce <addr>', 'address announced to CPEs with ADD_ADDR, e.g. the other family (repeatable)', collect)
    .option('--no-server-mptcp', 'dial servers with plain TCP only')
    .option('--admin <addr:port>', 'admin endpoint: /metrics, /healthz, /status')
    .option('--log-level <level>', 'fatal|error|warn|info|debug|trace')
    .option('--log-format <format>', `log lines: ${LOG_FORMATS.join('|')} (auto: journald when stderr is the journal, else json)`)
    .option('--prepare', 'as root, before the daemon starts (the unit\'s ExecStartPre): set the sysctls this configuration needs, print them, and exit')
    .addOption(new Option('--worker <index>', 'internal: run as worker process N of a concentrator with `workers` > 1 (started by the concentrator itself)').hideHelp())
    .option('--check', 'check the configuration and this host (interfaces, addresses, kernel MPTCP and the kernel features the role needs), print every problem, and exit: 0 = fine, 2 = problems')
    .action(async (opts: ConcentratorFlags & { serverMptcp?: boolean; check?: boolean; prepare?: boolean; logFormat?: string; worker?: string }) => {
      const { check, prepare, logFormat, serverMptcp, worker, ...rest } = opts;
      const flags: ConcentratorFlags = { ...rest };
      if (serverMptcp === false) flags.noServerMptcp = true;
      if (logFormat !== undefined && !LOG_FORMATS.includes(logFormat as LogFormat)) {
        process.stderr.write(`mpconvert concentrator: --log-format ${logFormat}: one of ${LOG_FORMATS.join(', ')}\n`);
        process.exitCode = 2;
        return;
      }
      if (worker !== undefined) {
        await runWorker(Number(worker), { logFormat: logFormat as LogFormat | undefined });
        return;
      }
      let config;
      try {
        config = await resolveConcentratorConfig(flags);
      } catch (err) {
        process.stderr.write(`mpconvert concentrator: ${(err as Error).message}\n`);
        process.exitCode = 2;
        return;
      }
      if (prepare) {
        process.exitCode = await runPrepare('concentrator', () => applySysctls(concentratorSysctls(config), createLinuxPlatform().kernel.sysctl));
        return;
      }
      // The configuration against the host, and the kernel features it needs (the doctor's probes).
      const problems = [...checkConcentrator(config, hostFacts()), ...(await kernelCheck('concentrator', config))];
      if (check) {
        process.exitCode = reportCheck('concentrator', problems);
        return;
      }
      const logger = createLogger({ level: config.logLevel, name: 'concentrator', ...(logFormat ? { format: logFormat as LogFormat } : {}) });
      let running = config;
      const platform = createLinuxPlatform();
      const metrics = createMetrics('concentrator', { perCpe: config.metrics.perCpe });
      // The syslog sink's socket, opened at its first line.
      let syslogFd: number | undefined;
      let sessionLog;
      try {
        sessionLog = createSessionLog(config, {
          logger,
          settings: () => concentrator.config,
          sendDatagram: (path, data) => sendToUnix((syslogFd ??= unixDatagramSocket()), path, data),
        });
      } catch (err) {
        process.stderr.write(`mpconvert concentrator: ${(err as Error).message}\n`);
        process.exitCode = 2;
        return;
      }
      const concentrator: Concentrator = new Concentrator(config, {
        sockets: platform.sockets,
        kernel: platform.kernel,
        logger,
        metrics,
        sessionLog,
        splice: platform.splice,
        resources: platform.resources,
      });
      let admin: AdminServer | undefined;
      let workers: WorkerPool | undefined;
      // The workers' configuration: the primary's, with the listeners' actual ports (port 0 resolved at start).
      const workerConfig = () => ({ ...concentrator.config, listen: concentrator.addresses.map((a) => formatEndpoint(a.host, a.port)) });
      await runDaemon(
        {
          start: async (control) => {
            // The same checks as --check, before anything is changed on the host.
            if (problems.length > 0) throw new ConfigError(problems.join('; '));
            const token = config.adminTokenFile ? await loadAdminToken(config.adminTokenFile) : undefined;
            await concentrator.start();
            if (config.workers > 1) {
              workers = new WorkerPool(workerConfig(), {
                logger,
                metrics,
                shared: concentrator.shared,
                sessionLog,
                command: { script: process.argv[1] ?? '', args: ['concentrator', ...(logFormat ? ['--log-format', logFormat] : [])] },
              });
              await workers.start();
            }
            if (config.admin) {
              admin = await startAdmin(
                { endpoint: parseEndpoint(config.admin), token, logger, requests: metrics.adminRequests, role: 'concentrator' },
                {
                  registry: metrics.registry,
                  ...(workers ? { metricsText: () => (workers as WorkerPool).metricsText(metrics.registry) } : {}),
                  status: async () => {
                    const own = concentrator.status();
                    if (!workers) return own;
                    const primary = { worker: 0, pid: process.pid, accepted: concentrator.accepted, active: concentrator.activeSessions };
                    return { ...own, workers: [primary, ...(await workers.status())], sharedLeases: concentrator.shared.leases };
                  },
                  readiness: () => concentrator.readiness(),
                  live: () => concentrator.live(),
                  connections: (q) => concentrator.connections(q),
                  closeConnection: (id) => concentrator.closeConnection(id),
                  closeCpe: (cpe) => concentrator.closeCpe(cpe),
                  drain: () => control.stop('admin drain'),
                },
              );
            }
            return { listen: concentrator.addresses, admin: admin?.port };
          },
          stop: async (reason) => {
            // After a failed start there is nothing to drain. The workers drain at the same time as the primary,
            // which keeps answering their releases meanwhile.
            await Promise.all([
              workers?.stop(reason === 'start failed' ? 0 : running.shutdownDrainS * 1000 + 2_000),
              concentrator.stop(reason === 'start failed' ? 0 : undefined),
            ]);
            await platform.splice?.close();
            await admin?.close();
            await sessionLog?.close();
            if (syslogFd !== undefined) closeFd(syslogFd);
          },
          reload: async () => {
            // First: rotation works even when the configuration does not load (or there is none).
            sessionLog?.reopen();
            if (!flags.config) {
              logger.warn('SIGHUP: no config file to reload');
              return;
            }
            // A file that does not load keeps the running configuration (the daemon logs why).
            const next = await resolveConcentratorConfig(flags);
            await concentrator.reload(next);
            running = next;
            workers?.reload(workerConfig());
          },
          stopBudgetMs: () => (running.shutdownDrainS + STOP_CLEANUP_S) * 1000,
        },
        logger,
      );
    });
}
