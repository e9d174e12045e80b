/**
 * Concentrators from DHCP (docs/operator.md, "DHCP provisioning"): the router's DHCP client (ISC dhclient or
 * dhcpcd) runs the hook shipped in packaging/dhcp after every lease event; the hook leaves one small file per
 * uplink and family in the lease directory (`<interface>.v4`, `<interface>.v6`). The CPE reads that directory at
 * start and every dhcp.pollMs after, so a lease that came before the CPE started, or while it was down, counts.
 *
 *   # written by the mpconvert dhclient hook (RENEW)
 *   interface=up1
 *   family=4
 *   mcp=198.19.0.2 198.19.0.3       (the option's text as the client gives it; empty: the lease names none)
 *   expires=1765101234              (end of the lease, seconds since 1970; empty: unknown)
 *
 * Only files of configured uplinks count (a lease on a LAN interface names no concentrator of ours). A file past
 * its lease end counts as no lease (a DHCP client that died without running its hook).
 */
import { EventEmitter } from 'node:events';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { parseMcpText } from '../protocol/dhcp-mcp.js';
import type { IpFamily } from '../protocol/address.js';
import type { LearnedConcentrators } from '../policy/concentrator-source.js';

export interface DhcpLease {
  interface: string;
  family: IpFamily;
  addresses: string[];
  /** Addresses of the option that can never be a concentrator (loopback, multicast...), left out. */
  dropped: string[];
  /** Seconds since 1970; undefined: not known. */
  expires?: number;
}

/** Cap on a lease file: a few addresses and four short lines. */
const LEASE_FILE_MAX = 4_096;
const IFNAME_RE = /^[^/\s]{1,15}$/;

/** One hook file, pure. */
export function parseLeaseFile(text: string): { ok: true; lease: DhcpLease } | { ok: false; why: string } {
  if (text.length > LEASE_FILE_MAX) return { ok: false, why: `Cannot parse lease file: more than ${LEASE_FILE_MAX} bytes` };
  const kv = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line.trim() === '' || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    if (eq <= 0) return { ok: false, why: `Cannot parse lease file: "${line.slice(0, 40)}" is not key=value` };
    kv.set(line.slice(0, eq).trim(), line.slice(eq + 1).trim());
  }
  const iface = kv.get('interface') ?? '';
  if (!IFNAME_RE.test(iface)) return { ok: false, why: `Cannot parse lease file: interface "${iface.slice(0, 20)}" is not an interface name` };
  const fam = kv.get('family');
  if (fam !== '4' && fam !== '6') return { ok: false, why: `Cannot parse lease file: family "${fam ?? ''}" (4 or 6)` };
  const family: IpFamily = fam === '4' ? 4 : 6;
  const mcp = parseMcpText(kv.get('mcp') ?? '', family);
  if (!mcp.ok) return { ok: false, why: mcp.why };
  const exp = kv.get('expires') ?? '';
  if (exp !== '' && !/^\d{1,12}$/.test(exp)) return { ok: false, why: `Cannot parse lease file: expires "${exp.slice(0, 20)}"` };
  const lease: DhcpLease = { interface: iface, family, addresses: mcp.addresses, dropped: mcp.dropped };
  if (exp !== '') lease.expires = Number(exp);
  return { ok: true, lease };
}

/** What the uplinks' leases name now, in the order of `uplinks`, from the lease files read. */
export function learnedFrom(uplinks: readonly string[], leases: readonly DhcpLease[], nowS: number): LearnedConcentrators[] {
  return uplinks.map((uplink) => {
    const live = (family: IpFamily) => leases.find((l) => l.interface === uplink && l.family === family && (l.expires === undefined || l.expires > nowS))?.addresses ?? [];
    return { uplink, v4: live(4), v6: live(6) };
  });
}

export type DhcpClientKind = 'dhclient' | 'dhclient6' | 'dhcpcd';
export const DHCP_CLIENT_KINDS: readonly DhcpClientKind[] = ['dhclient', 'dhclient6', 'dhcpcd'];

/**
 * The router-side declaration of the options (what the hooks read: new_mpconvert_mcp, new_dhcp6_mpconvert_mcp),
 * for the configured codes: appended to /etc/dhcp/dhclient.conf, or to /etc/dhcpcd.conf.
 */
export function dhcpClientSnippet(kind: DhcpClientKind, codes: { optionV4: number; optionV6: number }): string {
  const head = `# mpconvert: the concentrators (MPTCP Conversion Points) of the access network, draft-boucadair-mptcp-dhc\n# (site-specific codes: the DHCP server must send the same ones). docs/operator.md, "DHCP provisioning".\n`;
  switch (kind) {
    case 'dhclient':
      return `${head}option mpconvert-mcp code ${codes.optionV4} = array of ip-address;\nalso request mpconvert-mcp;\n`;
    case 'dhclient6':
      return `${head}option dhcp6.mpconvert-mcp code ${codes.optionV6} = array of ip6-address;\nalso request dhcp6.mpconvert-mcp;\n`;
    case 'dhcpcd':
      return `${head}define ${codes.optionV4} array ipaddress mpconvert_mcp\noption mpconvert_mcp\ndefine6 ${codes.optionV6} array ip6address mpconvert_mcp\noption dhcp6_mpconvert_mcp\n`;
  }
}

export interface DhcpWatcherOptions {
  dir: string;
  /** The configured uplinks, in order (read at each poll: a reload may change them). */
  uplinks: () => readonly string[];
  pollMs: number;
  logger: Logger;
  now?: () => number;
}

/**
 * Follows the lease directory: `learned()` is what the uplinks' leases name now; 'change' when that changes
 * (a lease added, renewed with other addresses, withdrawn, expired). A missing directory is no lease.
 */
export class DhcpWatcher extends EventEmitter {
  readonly #opts: DhcpWatcherOptions;
  #learned: LearnedConcentrators[] = [];
  #timer: NodeJS.Timeout | undefined;
  #busy = false;
  /** Per file, the last problem logged (a file is reported once per content, not at every poll). */
  readonly #reported = new Map<string, string>();

  constructor(opts: DhcpWatcherOptions) {
    super();
    this.#opts = opts;
  }

  learned(): LearnedConcentrators[] {
    return this.#learned;
  }

  /** Reads the directory once (before start resolves: leases that came earlier count at once), then polls. */
  async start(): Promise<void> {
    this.#learned = await this.#read();
    this.#timer = setInterval(() => void this.poll(), this.#opts.pollMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** One read of the directory; emits 'change' when what the leases name changed. */
  async poll(): Promise<void> {
    if (this.#busy) return;
    this.#busy = true;
    try {
      const next = await this.#read();
      if (JSON.stringify(next) !== JSON.stringify(this.#learned)) {
        const prev = this.#learned;
        this.#learned = next;
        this.emit('change', next, prev);
      }
    } finally {
      this.#busy = false;
    }
  }

  async #read(): Promise<LearnedConcentrators[]> {
    const { dir, logger } = this.#opts;
    const uplinks = this.#opts.uplinks();
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') this.#report(dir, `cannot read the DHCP lease directory: ${code ?? String(err)}`);
      return learnedFrom(uplinks, [], 0);
    }
    const leases: DhcpLease[] = [];
    for (const name of names) {
      const m = /^(.+)\.v([46])$/.exec(name);
      if (!m || !uplinks.includes(m[1]!)) continue;
      const file = join(dir, name);
      let text: string;
      try {
        text = await readFile(file, 'utf8');
      } catch {
        continue; // replaced or removed under us: the next poll sees what is there
      }
      const r = parseLeaseFile(text);
      if (!r.ok) {
        this.#report(file, r.why);
        continue;
      }
      if (r.lease.interface !== m[1] || String(r.lease.family) !== m[2]) {
        this.#report(file, `names ${r.lease.interface} IPv${r.lease.family}: not what its file name says`);
        continue;
      }
      if (r.lease.dropped.length > 0) this.#report(file, `addresses that cannot be a concentrator left out: ${r.lease.dropped.join(', ')}`);
      else this.#reported.delete(file);
      leases.push(r.lease);
    }
    logger.trace({ dir, leases }, 'dhcp: lease directory read');
    return learnedFrom(uplinks, leases, Math.floor((this.#opts.now ?? Date.now)() / 1000));
  }

  #report(key: string, why: string): void {
    if (this.#reported.get(key) === why) return;
    this.#reported.set(key, why);
    this.#opts.logger.warn({ file: key }, `dhcp: ${why}`);
  }
}
