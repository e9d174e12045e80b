/**
 * The many-CPE topology (docs/lab.md, "The many-CPE topology"): N CPE namespaces, each with its own LAN client
 * namespace and its own uplinks to one concentrator, which reaches one server over a shared, shaped link. IPv4
 * only. Addresses: ./addressing.ts (MANY, manyCpeAddressing).
 *
 * With 50 CPEs the lab has 102 namespaces and 151 veth pairs: the links are made by one `ip -batch` in the
 * caller's namespace (each line names both ends' namespaces, nothing stays here), addresses by one batch per
 * namespace, a bounded number at a time.
 */
import { run } from '../platform/linux/exec.js';
import { LAB, MANY, manyCpeAddressing, serverAddressing } from './addressing.js';
import { batch, sysctl } from './commands.js';
import { tbfArgs } from './shaping.js';
import type { BuildStep, LabHosts, LabUplinkSpec } from './index.js';

export interface ManyBuildContext {
  uplinks: ReadonlyArray<LabUplinkSpec>;
  /** tbf rate of the shared server link at both ends; 0 = unshaped. */
  serverRate: string | 0;
  hosts: LabHosts;
  /** Checks for an abort and runs the caller's step hook. */
  step: (name: BuildStep) => Promise<void>;
  /** Makes every namespace of the lab with its resolv.conf. */
  makeNamespaces: () => Promise<void>;
}

/** How many namespaces are configured at once (each is a few short `ip`/`sysctl` processes). */
const PARALLEL = 8;

/** Runs `fn` over `items`, at most `limit` at a time; rejects with the first failure once the others settled. */
export async function inBatches<T>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  let failure: unknown = null;
  const worker = async () => {
    while (next < items.length && failure === null) {
      const i = next++;
      try {
        await fn(items[i]!, i);
      } catch (err) {
        failure ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure !== null) throw failure;
}

/** The `ip -batch` lines (caller's namespace) that make every veth pair of the topology. */
export function manyLinkLines(hosts: Pick<LabHosts, 'cpes' | 'clients' | 'concentrator' | 'servers'>, uplinks: number): string[] {
  const lines: string[] = [];
  const veth = (a: string, aDev: string, b: string, bDev: string) => lines.push(`link add ${aDev} netns ${a} type veth peer name ${bDev} netns ${b}`);
  hosts.cpes.forEach((cpe, j) => {
    const m = manyCpeAddressing(j + 1);
    veth(hosts.clients[j]!.name, m.lanDev, cpe.name, m.lanDev);
    for (let u = 1; u <= uplinks; u++) veth(cpe.name, m.uplink(u).cpeDev, hosts.concentrator.name, m.uplink(u).concDev);
  });
  veth(hosts.concentrator.name, MANY.concDev, hosts.servers[0]!.name, MANY.serverDev);
  return lines;
}

/** Address and route lines (`ip -batch`) of CPE c, its client, and the concentrator's side of CPE c. */
export function manyAddressLines(c: number, uplinks: number): { cpe: string[]; client: string[]; concentrator: string[] } {
  const m = manyCpeAddressing(c);
  const cpe = ['link set lo up', `link set ${m.lanDev} up`, `addr add ${m.lanV4}/${m.lanLen} dev ${m.lanDev}`];
  const client = ['link set lo up', `link set ${m.lanDev} up`, `addr add ${m.clientV4}/${m.lanLen} dev ${m.lanDev}`, `route add default via ${m.lanV4} dev ${m.lanDev}`];
  const concentrator: string[] = [];
  for (let u = 1; u <= uplinks; u++) {
    const a = m.uplink(u);
    cpe.push(`link set ${a.cpeDev} up`, `addr add ${a.cpeV4}/${a.v4Len} dev ${a.cpeDev}`, `route add default via ${a.concV4} dev ${a.cpeDev} metric ${a.metric}`);
    // The LAN behind the CPE, for what the CPE forwards unconverted (uplink 1, else the next with carrier).
    concentrator.push(`link set ${a.concDev} up`, `addr add ${a.concV4}/${a.v4Len} dev ${a.concDev}`, `route add ${m.lanPrefix} via ${a.cpeV4} dev ${a.concDev} metric ${a.metric}`);
  }
  return { cpe, client, concentrator };
}

export async function buildMany(ctx: ManyBuildContext): Promise<void> {
  const { hosts } = ctx;
  const n = ctx.uplinks.length;
  const conc = hosts.concentrator.name;
  const server = hosts.servers[0]!.name;
  await ctx.step('namespaces');
  await ctx.makeNamespaces();
  const noDad = ['net.ipv6.conf.all.accept_dad=0', 'net.ipv6.conf.default.accept_dad=0', 'net.ipv6.conf.all.accept_ra=0', 'net.ipv6.conf.default.accept_ra=0'];
  const router = ['net.ipv4.ip_forward=1', 'net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0'];
  const linkdown = ['net.ipv4.conf.all.ignore_routes_with_linkdown=1', 'net.ipv4.conf.default.ignore_routes_with_linkdown=1'];
  await sysctl(conc, [...noDad, ...router, ...linkdown]);
  await sysctl(server, noDad);
  await inBatches(hosts.cpes, PARALLEL, (h) => sysctl(h.name, [...noDad, ...router]));
  await inBatches(hosts.clients, PARALLEL, (h) => sysctl(h.name, noDad));

  await ctx.step('links');
  await run('ip', ['-batch', '-'], { input: manyLinkLines(hosts, n).join('\n') + '\n' });

  await ctx.step('addresses');
  const srv = serverAddressing(1);
  const concLines = ['link set lo up', `addr add ${LAB.concentrator.v4}/32 dev lo`, `link set ${MANY.concDev} up`, `addr add ${LAB.concentrator.inetV4}/${LAB.inet.v4Len} dev ${MANY.concDev}`];
  await inBatches(hosts.cpes, PARALLEL, async (h, j) => {
    const lines = manyAddressLines(j + 1, n);
    concLines.push(...lines.concentrator);
    await batch(h.name, lines.cpe);
    await batch(hosts.clients[j]!.name, lines.client);
  });
  await batch(conc, concLines);
  await batch(server, ['link set lo up', `link set ${MANY.serverDev} up`, `addr add ${srv.v4}/${LAB.inet.v4Len} dev ${MANY.serverDev}`, `route add default via ${LAB.concentrator.inetV4} dev ${MANY.serverDev}`]);

  await ctx.step('shaping');
  // The shared link: tbf on the egress of both ends (uploads queue at the concentrator's inet0, downloads at
  // the server's eth0), so every CPE's flow competes for the same bottleneck in either direction.
  if (ctx.serverRate !== 0) {
    await run('tc', tbfArgs(MANY.concDev, ctx.serverRate), { netns: conc });
    await run('tc', tbfArgs(MANY.serverDev, ctx.serverRate), { netns: server });
  }
  const shaped = ctx.uplinks.flatMap((u, j) => (u.rate === 0 ? [] : [{ u: j + 1, rate: u.rate }]));
  if (shaped.length > 0) {
    await inBatches(hosts.cpes, PARALLEL, async (h, j) => {
      const m = manyCpeAddressing(j + 1);
      for (const { u, rate } of shaped) {
        await run('tc', tbfArgs(m.uplink(u).cpeDev, rate), { netns: h.name });
        await run('tc', tbfArgs(m.uplink(u).concDev, rate), { netns: conc });
      }
    });
  }
}
