/**
 * The PROXY protocol v2 header for one connection's server leg (src/protocol/proxy-v2.ts): the original
 * client and the destination it asked for. The client is the LAN host named by the source IE (MP_CONVERT
 * D = 1, CPE setting `sourceIe: true`); without one (not sent, or RFC 8803, which has no source), the CPE
 * itself: the remote address and port of the MPTCP connection, the only client the concentrator knows.
 */
import { encodeProxyV2 } from '../protocol/proxy-v2.js';
import { unmapAddress } from '../protocol/address.js';
import type { ConnectionContext, Destination } from './context.js';

export function proxyHeader(ctx: ConnectionContext, dest: Destination): Buffer {
  const ie = ctx.signalling?.source;
  // A source IE without a port (Length 8 / 20) names the host only: port 0, "unknown", rather than the CPE's.
  const source = ie ? { address: unmapAddress(ie.address), port: ie.port ?? 0 } : { address: ctx.cpe, port: ctx.socket.remotePort ?? 0 };
  return encodeProxyV2({ source, destination: { address: dest.address, port: dest.port } });
}
