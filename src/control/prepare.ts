/**
 * `--prepare`: the part of a start that needs root, run by the unit's privileged ExecStartPre (`+`) before the
 * unprivileged daemon starts: the sysctls its configuration needs. The daemon itself cannot write /proc/sys
 * (ProtectKernelTunables= in the units); it still checks them, and says what to run when one is missing.
 * What each role needs is a pure list; applying it reads every value first and writes only what differs.
 */
import type { CpeConfig } from '../cpe/config.js';
import type { ConcentratorConfig } from '../concentrator/config.js';
import type { KernelConfig } from '../platform/types.js';

export interface SysctlNeed {
  name: string;
  /** The value wanted given the current one; undefined = the current one is fine. */
  want(current: string): string | undefined;
  why: string;
}

const exactly = (value: string) => (current: string) => (current.trim() === value ? undefined : value);
const withBits = (bits: number) => (current: string) => {
  const v = Number(current.trim());
  return Number.isInteger(v) && (v & bits) === bits ? undefined : String((Number.isInteger(v) ? v : 0) | bits);
};

const MPTCP: SysctlNeed = { name: 'net.mptcp.enabled', want: exactly('1'), why: 'kernel MPTCP on' };

export function cpeSysctls(c: CpeConfig): SysctlNeed[] {
  const needs = [MPTCP];
  // DHCP's concentrators are not known before the daemon runs: their template's zeroRtt counts.
  if (c.concentrators.some((t) => t.zeroRtt) || (c.concentratorSource !== 'static' && c.dhcp.concentrator.zeroRtt)) needs.push({ name: 'net.ipv4.tcp_fastopen', want: withBits(0x1), why: 'TCP Fast Open client bit (0x1) for zeroRtt' });
  if (c.preserveDscp || c.distribution.classes.some((k) => k.dscp !== undefined)) {
    needs.push({ name: 'net.ipv4.tcp_fwmark_accept', want: exactly('1'), why: "accepted sockets carry their SYN's mark (the client's DSCP: preserveDscp, flow classes by DSCP)" });
  }
  return needs;
}

export function concentratorSysctls(c: ConcentratorConfig): SysctlNeed[] {
  const needs = [MPTCP];
  if (c.manageSysctls) {
    needs.push({ name: 'net.ipv4.tcp_fastopen', want: withBits(0x2), why: 'TCP Fast Open server bit (0x2): the signalling in the SYN' });
    if (c.preserveDscp) needs.push({ name: 'net.ipv4.tcp_reflect_tos', want: exactly('1'), why: "accepted sockets take their SYN's DSCP (preserveDscp)" });
  }
  if (c.onPath?.denyJoinInitial) {
    needs.push({ name: 'net.mptcp.allow_join_initial_addr_port', want: exactly('0'), why: 'on-path: the C bit on the MP_CAPABLE the box returns (hosts join its announced addresses only)' });
  }
  return needs;
}

/** Sets what differs; one line per sysctl (`name = value (was v): why`, or `name = v: already set`). */
export async function applySysctls(needs: readonly SysctlNeed[], sysctl: KernelConfig['sysctl']): Promise<string[]> {
  const lines: string[] = [];
  for (const n of needs) {
    const current = (await sysctl.get(n.name)).trim();
    const value = n.want(current);
    if (value === undefined) {
      lines.push(`${n.name} = ${current}: already set (${n.why})`);
      continue;
    }
    await sysctl.set(n.name, value);
    lines.push(`${n.name} = ${value} (was ${current}): ${n.why}`);
  }
  return lines;
}
