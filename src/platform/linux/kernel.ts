/**
 * Kernel configuration through the standard tools, optionally inside a network namespace: nftables
 * (`nft -f -` transactions, `nft -j` to read), MPTCP endpoints and limits (`ip mptcp`), policy rules, routes
 * and addresses (`ip -j`), sysctls (`sysctl`). JSON output is read wherever the tool has it; the one
 * exception is `ip mptcp limits show`, which iproute2 6.1 prints only as "add_addr_accepted N subflows N"
 * (read as key/value pairs; JSON is taken when a newer iproute2 gives it).
 */
import { readFileSync } from 'node:fs';
import { CommandError, run, runJson } from './exec.js';
import { watchLinks } from './link-watch.js';
import { PlatformError } from '../errors.js';
import type {
  AddressEntry,
  Family,
  KernelConfig,
  MptcpEndpoint,
  LinkCounters,
  MptcpEndpointSpec,
  MptcpLimits,
  NftFamily,
  NftTableRef,
  RouteEntry,
  RouteSpec,
  RuleEntry,
  RuleSpec,
} from '../types.js';

const NFT_FAMILIES: readonly NftFamily[] = ['ip', 'ip6', 'inet', 'arp', 'bridge', 'netdev'];
const NAME = /^[A-Za-z_][A-Za-z0-9_-]{0,63}$/;
const TOKEN = /^[A-Za-z0-9_.:/%-]+$/;

function invalid(call: string, detail: string): PlatformError {
  return new PlatformError(call, 'EINVAL', 22, { detail });
}

function checkTable(call: string, family: NftFamily, name: string): void {
  if (!NFT_FAMILIES.includes(family)) throw invalid(call, `unknown nft family '${family}'`);
  if (!NAME.test(name)) throw invalid(call, `bad nft table name '${name}'`);
}

function tok(call: string, value: string | number): string {
  const s = String(value);
  if (!TOKEN.test(s)) throw invalid(call, `bad argument '${s}'`);
  return s;
}

/** True when a failed delete only says that the object is already gone. */
function isAbsent(err: unknown): boolean {
  return err instanceof CommandError && /No such file or directory|No such process|does not exist|Cannot find/i.test(err.stderr);
}

/**
 * The nft transaction that replaces a table atomically: declaring the table first makes the delete succeed
 * whether or not it existed, and the new contents follow in the same transaction.
 */
export function nftReplaceScript(family: NftFamily, name: string, rulesetText: string): string {
  const head = new RegExp(`^\\s*table\\s+${family}\\s+${name}\\s*\\{`);
  const anyTable = /^\s*table\s/;
  let body: string;
  if (head.test(rulesetText)) body = rulesetText.trim();
  else if (anyTable.test(rulesetText)) throw invalid('nft applyTable', `ruleset declares another table than ${family} ${name}`);
  else body = `table ${family} ${name} {\n${rulesetText.trim()}\n}`;
  return `table ${family} ${name}\ndelete table ${family} ${name}\n${body}\n`;
}

/** Parses `ip mptcp limits show`: JSON when iproute2 gives it, else "add_addr_accepted 0 subflows 2". */
export function parseMptcpLimits(text: string): MptcpLimits {
  const t = text.trim();
  let map: Record<string, unknown>;
  if (t.startsWith('{')) {
    map = JSON.parse(t) as Record<string, unknown>;
  } else {
    map = {};
    const words = t.split(/\s+/);
    for (let i = 0; i + 1 < words.length; i += 2) map[words[i] as string] = Number(words[i + 1]);
  }
  const subflows = Number(map['subflows']);
  const addAddrAccepted = Number(map['add_addr_accepted']);
  if (!Number.isInteger(subflows) || !Number.isInteger(addAddrAccepted)) {
    throw new PlatformError('ip mptcp limits show', 'EPROTO', 71, { detail: `cannot parse '${t}'` });
  }
  return { subflows, addAddrAccepted };
}

const ENDPOINT_FLAGS = ['signal', 'subflow', 'backup', 'fullmesh', 'implicit'] as const;

export function parseEndpoints(entries: Array<Record<string, unknown>>): MptcpEndpoint[] {
  return entries.map((e) => {
    const ep: MptcpEndpoint = {
      address: String(e['address']),
      id: Number(e['id']),
      flags: ENDPOINT_FLAGS.filter((f) => e[f] === true),
    };
    if (typeof e['dev'] === 'string') ep.dev = e['dev'];
    if (typeof e['port'] === 'number') ep.port = e['port'];
    return ep;
  });
}

function ruleArgs(spec: RuleSpec): string[] {
  const c = 'ip rule';
  const a = ['priority', tok(c, spec.priority)];
  if (spec.from !== undefined) a.push('from', tok(c, spec.from));
  if (spec.to !== undefined) a.push('to', tok(c, spec.to));
  if (spec.fwmark !== undefined) {
    a.push('fwmark', spec.fwmask !== undefined ? `0x${(spec.fwmark >>> 0).toString(16)}/0x${(spec.fwmask >>> 0).toString(16)}` : `0x${(spec.fwmark >>> 0).toString(16)}`);
  }
  if (spec.iif !== undefined) a.push('iif', tok(c, spec.iif));
  if (spec.oif !== undefined) a.push('oif', tok(c, spec.oif));
  a.push('lookup', tok(c, spec.table));
  return a;
}

function routeArgs(spec: RouteSpec): string[] {
  const c = 'ip route';
  const a: string[] = [];
  if (spec.type !== undefined && spec.type !== 'unicast') a.push(spec.type);
  a.push(tok(c, spec.dst));
  if (spec.via !== undefined) a.push('via', tok(c, spec.via));
  if (spec.dev !== undefined) a.push('dev', tok(c, spec.dev));
  if (spec.src !== undefined) a.push('src', tok(c, spec.src));
  if (spec.metric !== undefined) a.push('metric', tok(c, spec.metric));
  a.push('table', tok(c, spec.table));
  return a;
}

/**
 * Parses /proc/net/dev: two header lines, then `IFNAME: rx_bytes rx_packets errs drop fifo frame compressed
 * multicast tx_bytes tx_packets ...` per interface. Lines that do not fit are skipped.
 */
export function parseProcNetDev(text: string): LinkCounters[] {
  const out: LinkCounters[] = [];
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const ifname = line.slice(0, colon).trim();
    const f = line.slice(colon + 1).trim().split(/\s+/).map(Number);
    if (ifname === '' || f.length < 10 || f.slice(0, 10).some((n) => !Number.isFinite(n))) continue;
    out.push({ ifname, rxBytes: f[0]!, rxPackets: f[1]!, txBytes: f[8]!, txPackets: f[9]! });
  }
  return out;
}

const fam = (f: Family) => (f === 4 ? '-4' : '-6');

export function createLinuxKernelConfig(opts: { netns?: string } = {}): KernelConfig {
  const netns = opts.netns;
  const o = { netns };
  const nft = (script: string) => run('nft', ['-f', '-'], { ...o, input: script });

  return {
    netns,
    watchLinks(onChange, onError) {
      return watchLinks(onChange, onError, { netns });
    },
    // /proc/net/dev shows the reading process's namespace: only for a kernel adapter of this namespace.
    ...(netns === undefined ? { linkCounters: () => parseProcNetDev(readFileSync('/proc/net/dev', 'utf8')) } : {}),
    nft: {
      async applyTable(family, name, rulesetText) {
        checkTable('nft applyTable', family, name);
        await nft(nftReplaceScript(family, name, rulesetText));
      },
      async deleteTable(family, name) {
        checkTable('nft deleteTable', family, name);
        await nft(`table ${family} ${name}\ndelete table ${family} ${name}\n`);
      },
      async listTables() {
        const out = await runJson<{ nftables?: Array<{ table?: { family: NftFamily; name: string; handle?: number } }> }>('nft', ['-j', 'list', 'tables'], o);
        const tables: NftTableRef[] = [];
        for (const e of out.nftables ?? []) {
          if (!e.table) continue;
          const t: NftTableRef = { family: e.table.family, name: e.table.name };
          if (e.table.handle !== undefined) t.handle = e.table.handle;
          tables.push(t);
        }
        return tables;
      },
      async getTable(family, name) {
        checkTable('nft getTable', family, name);
        try {
          const out = await runJson<{ nftables?: unknown[] }>('nft', ['-j', 'list', 'table', family, name], o);
          return (out.nftables ?? []).filter((e) => !(typeof e === 'object' && e !== null && 'metainfo' in e));
        } catch (err) {
          if (isAbsent(err)) return null;
          throw err;
        }
      },
      async addSetElements(family, name, set, elements) {
        const c = 'nft addSetElements';
        checkTable(c, family, name);
        if (!NAME.test(set)) throw invalid(c, `bad nft set name '${set}'`);
        if (elements.length === 0) return;
        // Elements are addresses, ports and a timeout: `198.19.0.12 . 80 timeout 3600s`.
        for (const e of elements) if (!/^[0-9A-Za-z.:/ ]{1,128}$/.test(e)) throw invalid(c, `bad set element '${e}'`);
        await nft(`add element ${family} ${name} ${set} { ${elements.join(', ')} }\n`);
      },
    },
    mptcp: {
      async endpoints() {
        return parseEndpoints(await runJson<Array<Record<string, unknown>>>('ip', ['-j', 'mptcp', 'endpoint', 'show'], o));
      },
      async addEndpoint(spec: MptcpEndpointSpec) {
        const c = 'ip mptcp endpoint add';
        const a = ['mptcp', 'endpoint', 'add', tok(c, spec.address)];
        if (spec.port !== undefined) a.push('port', tok(c, spec.port));
        if (spec.dev !== undefined) a.push('dev', tok(c, spec.dev));
        if (spec.id !== undefined) a.push('id', tok(c, spec.id));
        for (const f of spec.flags) a.push(tok(c, f));
        await run('ip', a, o);
      },
      async deleteEndpoint(id: number) {
        try {
          await run('ip', ['mptcp', 'endpoint', 'delete', 'id', tok('ip mptcp endpoint delete', id)], o);
        } catch (err) {
          // Idempotent: fine when the endpoint is already gone.
          const still = (await this.endpoints()).some((e) => e.id === id);
          if (still) throw err;
        }
      },
      async setEndpointBackup(id: number, backup: boolean) {
        await run('ip', ['mptcp', 'endpoint', 'change', 'id', tok('ip mptcp endpoint change', id), backup ? 'backup' : 'nobackup'], o);
      },
      async flushEndpoints() {
        await run('ip', ['mptcp', 'endpoint', 'flush'], o);
      },
      async limits() {
        const { stdout } = await run('ip', ['-j', 'mptcp', 'limits', 'show'], o);
        return parseMptcpLimits(stdout);
      },
      async setLimits(limits: Partial<MptcpLimits>) {
        const c = 'ip mptcp limits set';
        const a = ['mptcp', 'limits', 'set'];
        if (limits.subflows !== undefined) a.push('subflows', tok(c, limits.subflows));
        if (limits.addAddrAccepted !== undefined) a.push('add_addr_accepted', tok(c, limits.addAddrAccepted));
        if (a.length === 3) return;
        await run('ip', a, o);
      },
    },
    routes: {
      async addRule(spec) {
        await run('ip', [fam(spec.family), 'rule', 'add', ...ruleArgs(spec)], o);
      },
      async deleteRule(spec) {
        try {
          await run('ip', [fam(spec.family), 'rule', 'del', ...ruleArgs(spec)], o);
        } catch (err) {
          if (!isAbsent(err)) throw err;
        }
      },
      async listRules(family) {
        return runJson<RuleEntry[]>('ip', ['-j', fam(family), 'rule', 'show'], o);
      },
      async addRoute(spec) {
        await run('ip', [fam(spec.family), 'route', 'replace', ...routeArgs(spec)], o);
      },
      async deleteRoute(spec) {
        try {
          await run('ip', [fam(spec.family), 'route', 'del', ...routeArgs(spec)], o);
        } catch (err) {
          if (!isAbsent(err)) throw err;
        }
      },
      async listRoutes(table, family) {
        try {
          return await runJson<RouteEntry[]>('ip', ['-j', fam(family), 'route', 'show', 'table', tok('ip route show', table)], o);
        } catch (err) {
          if (isAbsent(err)) return [];
          throw err;
        }
      },
      async flushTable(table, family) {
        try {
          await run('ip', [fam(family), 'route', 'flush', 'table', tok('ip route flush', table)], o);
        } catch (err) {
          if (!isAbsent(err)) throw err;
        }
      },
      async listAddresses(dev?: string) {
        return runJson<AddressEntry[]>('ip', ['-j', 'address', 'show', ...(dev !== undefined ? ['dev', tok('ip address show', dev)] : [])], o);
      },
    },
    sysctl: {
      async get(name) {
        const { stdout } = await run('sysctl', ['-n', tok('sysctl', name)], o);
        return stdout.trim();
      },
      async set(name, value) {
        try {
          await run('sysctl', ['-q', '-w', `${tok('sysctl', name)}=${tok('sysctl', value)}`], o);
        } catch (err) {
          // An unprivileged daemon (the systemd units) cannot write /proc/sys: say where that is done instead.
          if (err instanceof CommandError && /permission denied|read-only/i.test(err.stderr)) {
            throw new CommandError(err.command, err.exitCode, `${err.stderr.trim()}; sysctls are set as root before the daemon starts: 'mpconvert cpe|concentrator --config FILE --prepare' (the units' ExecStartPre), or 'sysctl -w ${name}=${value}'`, err);
          }
          throw err;
        }
      },
    },
  };
}
