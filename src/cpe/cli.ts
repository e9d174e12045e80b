/** `mpconvert cpe`: the composition root of the CPE role (picks the Linux platform). */
import { Command } from 'commander';
import { createLinuxPlatform } from '../platform/linux/index.js';
import { createLogger, LOG_FORMATS, type LogFormat } from '../log.js';
import { applySysctls, cpeSysctls } from '../control/prepare.js';
import { createMetrics } from '../control/metrics.js';
import { loadAdminToken, startAdmin, type AdminServer } from '../control/admin.js';
import { runDaemon, runPrepare, STOP_CLEANUP_S } from '../control/daemon.js';
import { checkCpe, hostFacts, reportCheck } from '../control/check.js';
import { kernelCheck } from '../control/doctor.js';
import { ConfigError } from '../control/config-file.js';
import { parseEndpoint } from '../control/address.js';
import { resolveCpeConfig, type CpeFlags } from './config.js';
import { Cpe } from './cpe.js';
import { FileEndpointLedger } from './ledger.js';
import { DHCP_CLIENT_KINDS, dhcpClientSnippet, type DhcpClientKind } from './dhcp.js';
import { DHCP_MCP_OPTION_V4_DEFAULT, DHCP_MCP_OPTION_V6_DEFAULT } from '../protocol/dhcp-mcp.js';

const collect = (v: string, prev: string[] = []) => [...prev, v];

export function cpeCommand(): Command {
  return new Command('cpe')
    .description('Run the CPE (upstream MPTCP conversion point)')
    .option('-c, --config <file>', 'YAML configuration file (see docs/cpe.md)')
    .option('--lan <iface>', 'LAN interface whose TCP is intercepted (repeatable)', collect)
    .option('--uplink <iface[:backup]>', 'uplink interface, optionally backup-only (repeatable)', collect)
    .option('--concentrator <addr:port>', 'concentrator, in order of preference (repeatable)', collect)
    .option('--format <format>', 'signalling format for --concentrator: mp-convert|rfc8803')
    .option('--zero-rtt', 'signalling and first bytes in the SYN (TFO) for --concentrator: the default (see docs/cpe.md)')
    .option('--no-zero-rtt', 'signalling after the handshake for --concentrator (one round trip more)')
    .option('--warm-pool <n>', 'warm connections kept open to each --concentrator (0 = none; see docs/cpe.md, "Warm pool")', (v: string) => Number(v))
    .option('--fallback <mode>', 'when no concentrator works: direct|refuse')
    .option('--transports <list>', 'transport protocols converted, comma-separated: tcp, udp (see docs/cpe.md, "UDP")', (v: string) => v.split(','))
    .option('--instance <name>', 'instance name (nft table, routing tables)')
    .option('--admin <addr:port>', 'admin endpoint: /metrics, /healthz, /status')
    .option('--log-level <level>', 'fatal|error|warn|info|debug|trace')
    .option('--log-format <format>', `log lines: ${LOG_FORMATS.join('|')} (auto: journald when stderr is the journal, else json)`)
    .option('--prepare', 'as root, before the daemon starts (the unit\'s ExecStartPre): set the sysctls this configuration needs, print them, and exit')
    .option('--dhcp-snippet <client>', `print the router-side DHCP client configuration for the concentrators option (${DHCP_CLIENT_KINDS.join('|')}), with the codes of --config (else the defaults), and exit`)
    .option('--check', 'check the configuration and this host (interfaces, addresses, kernel MPTCP and the kernel features the role needs), print every problem, and exit: 0 = fine, 2 = problems')
    .action(async (opts: CpeFlags & { check?: boolean; prepare?: boolean; logFormat?: string; dhcpSnippet?: string }) => {
      const { check, prepare, logFormat, dhcpSnippet, ...flags } = opts;
      if (dhcpSnippet !== undefined) {
        process.exitCode = await printDhcpSnippet(dhcpSnippet, flags.config);
        return;
      }
      if (logFormat !== undefined && !LOG_FORMATS.includes(logFormat as LogFormat)) {
        process.stderr.write(`mpconvert cpe: --log-format ${logFormat}: one of ${LOG_FORMATS.join(', ')}\n`);
        process.exitCode = 2;
        return;
      }
      let config;
      try {
        config = await resolveCpeConfig(flags);
      } catch (err) {
        process.stderr.write(`mpconvert cpe: ${(err as Error).message}\n`);
        process.exitCode = 2;
        return;
      }
      if (prepare) {
        process.exitCode = await runPrepare('cpe', () => applySysctls(cpeSysctls(config), createLinuxPlatform().kernel.sysctl));
        return;
      }
      // The configuration against the host, and the kernel features it needs (the doctor's probes).
      const problems = [...checkCpe(config, hostFacts()), ...(await kernelCheck('cpe', config))];
      if (check) {
        process.exitCode = reportCheck('cpe', problems);
        return;
      }
      const logger = createLogger({ level: config.logLevel, name: 'cpe', ...(logFormat ? { format: logFormat as LogFormat } : {}) });
      const platform = createLinuxPlatform();
      const metrics = createMetrics('cpe');
      const ledger = new FileEndpointLedger(config.stateDir, config.instance);
      const cpe = new Cpe(config, { sockets: platform.sockets, kernel: platform.kernel, logger, metrics, splice: platform.splice, transparentUdp: platform.transparentUdp, ledger });
      let admin: AdminServer | undefined;
      let running = config;
      await runDaemon(
        {
          start: async (control) => {
            // The same checks as --check, before anything is changed on the host.
            if (problems.length > 0) throw new ConfigError(problems.join('; '));
            const token = config.adminTokenFile ? await loadAdminToken(config.adminTokenFile) : undefined;
            await cpe.start();
            if (config.admin) {
              admin = await startAdmin(
                { endpoint: parseEndpoint(config.admin), token, logger, requests: metrics.adminRequests, role: 'cpe' },
                {
                  registry: metrics.registry,
                  status: () => cpe.status(),
                  readiness: () => cpe.readiness(),
                  live: () => cpe.live(),
                  history: () => cpe.history(),
                  watch: (f) => cpe.watch(f),
                  connections: (q) => cpe.connections(q),
                  closeConnection: (id) => cpe.closeConnection(id),
                  setUplinkMode: (uplink, mode) => cpe.setUplinkMode(uplink, mode),
                  drain: () => control.stop('admin drain'),
                },
              );
            }
            return { tproxyPort: config.tproxyPort, admin: admin?.port };
          },
          stop: async (reason) => {
            // After a failed start there is nothing to drain.
            await cpe.stop(reason === 'start failed' ? 0 : undefined);
            await platform.splice?.close();
            await admin?.close();
          },
          reload: async () => {
            if (!flags.config) {
              logger.warn('SIGHUP: no config file to reload (the configuration came from flags)');
              return;
            }
            // A file that does not load, or names interfaces this host lacks, keeps the running configuration.
            const next = await resolveCpeConfig(flags);
            const problems = checkCpe(next, hostFacts());
            if (problems.length > 0) throw new ConfigError(problems.join('; '));
            await cpe.reload(next);
            running = next;
          },
          stopBudgetMs: () => (running.shutdownDrainS + STOP_CLEANUP_S) * 1000,
        },
        logger,
      );
    });
}

/** `--dhcp-snippet`: the dhclient.conf / dhcpcd.conf lines for the configured option codes. */
async function printDhcpSnippet(kind: string, config: string | undefined): Promise<number> {
  if (!DHCP_CLIENT_KINDS.includes(kind as DhcpClientKind)) {
    process.stderr.write(`mpconvert cpe: --dhcp-snippet ${kind}: one of ${DHCP_CLIENT_KINDS.join(', ')}\n`);
    return 2;
  }
  let codes = { optionV4: DHCP_MCP_OPTION_V4_DEFAULT, optionV6: DHCP_MCP_OPTION_V6_DEFAULT };
  if (config !== undefined) {
    try {
      codes = (await resolveCpeConfig({ config })).dhcp;
    } catch (err) {
      process.stderr.write(`mpconvert cpe: ${(err as Error).message}\n`);
      return 2;
    }
  }
  process.stdout.write(dhcpClientSnippet(kind as DhcpClientKind, codes));
  return 0;
}
