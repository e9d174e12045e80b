/**
 * The typed context one accepted connection carries through the concentrator's pipeline
 * (src/concentrator/pipeline.ts): each step reads what the steps before it set and adds its own part.
 * Whatever a step acquires (a limits slot, a pool address) it registers with `own`; the pipeline runs the
 * releases once, in reverse order, when the connection ends, however it ends.
 */
import type { Socket } from 'node:net';
import type { Endpoint } from '../control/address.js';
import type { SignallingFormat } from '../policy/refusals.js';
import type { RelayHandle } from '../relay/index.js';
import type { ReadSignalling } from './signalling.js';
import type { PortLease } from './port-blocks.js';
import type { ConversionStrategy } from './conversion.js';

export interface Destination {
  address: string;
  port: number;
  family: 4 | 6;
}

export interface ConnectionContext {
  readonly id: number;
  /** The MPTCP connection from the CPE. */
  readonly socket: Socket;
  /** The source address of the CPE's connection (customer gate, signalling admission, logs). */
  readonly cpe: string;
  /**
   * Who the CPE is for limits and the source pool: its source address, until the authenticate step sets
   * `key:<cpe>` from its verified key (then CPEs behind one address, and one CPE on several, are told apart).
   */
  identity: string;
  /** Set by the authenticate step: the key id that verified. */
  keyId?: string | undefined;
  readonly listener: Endpoint;
  /** When it was accepted (the deps' clock). */
  readonly started: number;
  /** Set by the signalling step. */
  format?: SignallingFormat;
  signalling?: ReadSignalling | undefined;
  /** Set by the destination step. */
  destination?: Destination;
  /** Set by the source-address step: the local address of the server leg; undefined = the kernel picks. */
  external?: string | undefined;
  /** Set with `external` when it is not an address of this host (transparent, NPTv6): bind with IP_TRANSPARENT. */
  externalTransparent?: boolean;
  /** Set with `external` under port blocks: the source port to bind, from the CPE's blocks. */
  ports?: PortLease | undefined;
  /** Set by the conversion once the pair is relayed; from then on the relay owns both sockets. */
  relay?: RelayHandle;
  /** Set with `relay` by a conversion that wants to hear of its end (ConversionStrategy.closed). */
  conversion?: ConversionStrategy;
  /** The server leg's local endpoint (`address:port`), for the session log's close line. */
  serverLocal?: string | undefined;
  /** Bytes that came with the signalling and went to the server before the relay (set when the signalling's buffers are let go). */
  earlyUp?: number;
  /** Registers a release; run once when the connection ends. */
  own(release: () => void): void;
}
