/**
 * Every failed system call of the platform layer becomes a PlatformError whose `code` is the errno name
 * ('EADDRINUSE', 'ECONNREFUSED', ...) and whose message names the call, so callers branch on `code` and
 * operators read "bind(198.18.0.1:443): EADDRINUSE (address already in use)".
 */
import { constants } from 'node:os';
import { MpconvertError } from '../errors.js';

const ERRNO_NAMES = new Map<number, string>();
// Where two names share a number, the socket-layer one wins (95 is EOPNOTSUPP, 11 is EAGAIN).
const PREFERRED = ['EOPNOTSUPP', 'EAGAIN', 'EDEADLK'];
for (const name of PREFERRED) {
  const value = (constants.errno as Record<string, number | undefined>)[name];
  if (value !== undefined) ERRNO_NAMES.set(value, name);
}
for (const [name, value] of Object.entries(constants.errno)) if (!ERRNO_NAMES.has(value)) ERRNO_NAMES.set(value, name);

/**
 * The errors that mean the peer reset or aborted the connection, as names (Node's `err.code`) or numbers
 * (errno from a system call). One classification for every relay engine: such an error on one leg is
 * answered with a reset of the other leg, never with a FIN.
 */
const RESET_NAMES: ReadonlySet<string> = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED']);

export function isResetError(code: string | number | undefined): boolean {
  if (code === undefined) return false;
  return RESET_NAMES.has(typeof code === 'number' ? errnoName(code) : code);
}

/** errno number -> name ('EADDRINUSE'); unknown numbers become 'ERRNO_<n>'. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(Math.abs(errno)) ?? `ERRNO_${Math.abs(errno)}`;
}

const DESCRIPTIONS: Record<string, string> = {
  EADDRINUSE: 'address already in use',
  EADDRNOTAVAIL: 'address not available',
  ECONNREFUSED: 'connection refused',
  ETIMEDOUT: 'timed out',
  ENETUNREACH: 'network unreachable',
  EHOSTUNREACH: 'host unreachable',
  EPERM: 'operation not permitted (root or CAP_NET_ADMIN needed?)',
  EACCES: 'permission denied',
  EPROTONOSUPPORT: 'protocol not supported (MPTCP disabled: net.mptcp.enabled=0?)',
  ENOPROTOOPT: 'option not supported by this kernel or socket',
  EOPNOTSUPP: 'operation not supported',
  EINVAL: 'invalid argument',
  ECONNRESET: 'connection reset by peer',
  ABORT_ERR: 'aborted',
};

export class PlatformError extends MpconvertError {
  /** The failed call, e.g. 'connect(198.18.0.1:443)'. */
  readonly syscall: string;
  /** errno number (0 when not a kernel errno, e.g. ABORT_ERR). */
  readonly errno: number;
  constructor(syscall: string, code: string, errno = 0, options?: { cause?: unknown; detail?: string }) {
    const what = DESCRIPTIONS[code];
    super(code, `${syscall}: ${code}${what ? ` (${what})` : ''}${options?.detail ? `: ${options.detail}` : ''}`, options);
    this.syscall = syscall;
    this.errno = errno;
  }

  static fromErrno(syscall: string, errno: number, options?: { cause?: unknown; detail?: string }): PlatformError {
    return new PlatformError(syscall, errnoName(errno), Math.abs(errno), options);
  }

  /** Wraps a Node system error (code 'ECONNREFUSED', errno -111) or anything else. */
  static fromNode(syscall: string, err: unknown): PlatformError {
    if (err instanceof PlatformError) return err;
    const e = err as { code?: unknown; errno?: unknown; message?: unknown };
    const code = typeof e?.code === 'string' ? e.code : 'EIO';
    const errno = typeof e?.errno === 'number' ? Math.abs(e.errno) : 0;
    return new PlatformError(syscall, code, errno, { cause: err });
  }
}
