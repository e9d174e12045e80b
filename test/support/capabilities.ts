/**
 * Lab tests need root and kernel MPTCP. Outside CI a missing capability is a visible skip; with CI=true it is
 * a failure (the Linux MPTCP selftests' rule: a SKIP that CI turns into a FAIL).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { TestContext } from 'node:test';

export const IN_CI = process.env['CI'] === 'true';

function missingLabCapability(): string | null {
  if (process.platform !== 'linux') return 'not Linux';
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'not root';
  try {
    if (readFileSync('/proc/sys/net/mptcp/enabled', 'utf8').trim() !== '1') return 'net.mptcp.enabled is not 1';
  } catch {
    return 'kernel has no MPTCP (/proc/sys/net/mptcp/enabled missing)';
  }
  for (const tool of ['ip', 'nft', 'tc']) {
    try {
      execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    } catch {
      return `${tool} not installed`;
    }
  }
  return null;
}

let cached: string | null | undefined;
export function labCapabilityMissing(): string | null {
  if (cached === undefined) cached = missingLabCapability();
  return cached;
}

/** Call at the start of a lab test: returns false (after skipping) when the lab cannot run here. */
export function requireLab(t: TestContext): boolean {
  const missing = labCapabilityMissing();
  if (missing === null) return true;
  if (IN_CI) throw new Error(`lab capability missing under CI=true: ${missing}`);
  t.skip(`lab capability missing: ${missing}`);
  return false;
}

/** Like requireLab, for an external tool (iperf3, curl, tcpdump...). */
export function requireTool(t: TestContext, tool: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    return true;
  } catch {
    if (IN_CI) throw new Error(`tool missing under CI=true: ${tool}`);
    t.skip(`tool missing: ${tool}`);
    return false;
  }
}
