/**
 * One error base for the whole project (after undici's UND_ERR_* codes): every error that crosses a module
 * boundary carries a stable `code` that logs, metrics and tests can rely on.
 */
/**
 * Every error code outside the wire protocol (those are PROTOCOL_ERRORS in src/protocol/errors.ts, with their
 * wire reaction), what it means. Platform errors carry the errno name as their code instead (ECONNREFUSED...).
 * docs/architecture.md ("Errors") lists them all; a unit test checks that every code the source uses is here
 * and in the docs.
 */
export const ERROR_CODES = {
  MPC_ERR_CONFIG: 'a configuration file or flag is invalid, or names something this host lacks; the message names each problem',
  MPC_ERR_ENDPOINT: 'an ADDR:PORT / [V6]:PORT text does not parse',
  MPC_ERR_COMMAND: 'a kernel tool (ip, nft, sysctl, tc) failed; the message carries its stderr',
  MPC_ERR_STRUCT: 'a kernel structure (tcp_info, MPTCP_INFO, sockaddr) has an unexpected size or layout',
  MPC_ERR_CPE_RULESET: 'the CPE interception ruleset cannot be built from the options (interface, mark, port, prefix)',
  MPC_ERR_CONC_RULESET: "the concentrator's listener ruleset (SYN window clamp, SYN-flood guards) cannot be built from the options",
  MPC_ERR_CPE_UPLINK: 'an uplink cannot be set up (interface, addresses, routes, endpoints)',
  MPC_ERR_SIGNALLING: 'the concentrator could not read the signalling for a reason without its own code',
  MPC_ERR_SIGNALLING_TIMEOUT: 'the concentrator got no complete signalling within signalling.timeoutMs',
  MPC_ERR_SIGNALLING_CLOSED: 'the connection ended in the middle of its signalling',
  MPC_ERR_SIGNALLING_EMPTY: 'the connection ended before its first byte (a probe, or a CPE that gave up)',
  MPC_ERR_WARM_UNUSED: 'a warm connection (a CPE pool entry) was closed by the CPE before a LAN connection used it',
  MPC_ERR_WARM_IDLE: 'a warm connection was not used within signalling.warmIdleS',
  MPC_ERR_WARM_LIMIT: 'a CPE opened more than signalling.warmMaxPerCpe warm connections, or all CPEs together signalling.warmMax',
  MPC_ERR_PORT_BLOCKS: "no source port left in a CPE's port blocks that the kernel accepts (portBlocks): the connection is refused",
  MPC_ERR_LAB_SPEC: 'a lab specification (rate, uplink index, loss, host name) is invalid',
  MPC_ERR_LAB_EXISTS: 'a namespace of the requested lab prefix exists already',
  MPC_ERR_LAB_UP: 'building the lab failed (everything it made was removed)',
  MPC_ERR_LAB_NOT_FOUND: 'no lab state for that prefix',
  MPC_ERR_LAB_PROBE: 'a lab probe or the self-test failed',
  MPC_ERR_WORKER_MESSAGE: "a message on the IPC channel between the concentrator's primary and a worker process does not parse; it is dropped and logged",
  MPC_ERR_RADIUS_PACKET: 'a RADIUS packet is malformed (length, attribute overrun) or cannot be built (attribute too long); a received one is dropped',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export class MpconvertError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** Narrow an unknown caught value to an Error with a message. */
export function toError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}
