/**
 * RADIUS accounting per CPE (RFC 2866): an accounting session starts with the CPE's first relayed connection
 * (Start), reports every `interimS` (Interim-Update), and ends (Stop) once the CPE has had no open connection
 * for `stopAfterIdleS`, or when the concentrator stops. Each record carries the session's bytes so far:
 * Acct-Input-Octets / Acct-Input-Gigawords = bytes from the CPE (towards servers), Acct-Output-* = bytes to
 * the CPE, closed connections plus the live counts of the open ones; Acct-Link-Count = the connections the
 * session has had. The Class of the Access-Accept is echoed (RFC 2865 section 5.25).
 */
import { randomBytes } from 'node:crypto';
import { isIPv6 } from 'node:net';
import {
  AcctStatusType,
  AcctTerminateCause,
  RadiusAttr,
  attrAddress,
  attrBytes,
  attrString,
  attrUint32,
  encodeAccountingRequest,
  octetsAndGigawords,
  type RadiusAttribute,
} from '../protocol/radius.js';
import type { RadiusClient } from './radius-client.js';

export interface RadiusAccountingSettings {
  interimS: number;
  stopAfterIdleS: number;
  nasIdentifier: string;
  nasIpAddress?: string | undefined;
}

export interface AccountingDeps {
  client: RadiusClient;
  now: () => number;
  /** Bytes of the identity's open connections now (up = from the CPE). */
  liveBytes: (identity: string) => { up: number; down: number };
  /** One call per record's outcome: `<status>:answered` / `<status>:no-answer`. */
  onRecord?: (status: 'start' | 'interim' | 'stop', answered: boolean) => void;
}

interface AcctSession {
  id: string;
  identity: string;
  userName: string;
  cpe: string;
  started: number;
  open: number;
  connections: number;
  closedUp: number;
  closedDown: number;
  classes: readonly Buffer[];
  interim: NodeJS.Timeout | undefined;
  idle: NodeJS.Timeout | undefined;
}

export class RadiusAccounting {
  #s: RadiusAccountingSettings;
  readonly #deps: AccountingDeps;
  readonly #sessions = new Map<string, AcctSession>();
  /** Records being sent (stop waits for them, bounded by the client's tries). */
  readonly #sending = new Set<Promise<void>>();
  readonly #prefix = randomBytes(4).toString('hex');
  #next = 1;

  constructor(settings: RadiusAccountingSettings, deps: AccountingDeps) {
    this.#s = settings;
    this.#deps = deps;
  }

  reconfigure(settings: RadiusAccountingSettings): void {
    this.#s = settings;
  }

  get sessions(): number {
    return this.#sessions.size;
  }

  /** A relayed connection of this CPE started: Start on the first of a session. */
  opened(identity: string, userName: string, cpe: string, classes: readonly Buffer[]): void {
    let s = this.#sessions.get(identity);
    if (!s) {
      s = {
        id: `${this.#prefix}-${(this.#next++).toString(16).padStart(8, '0')}`,
        identity,
        userName,
        cpe,
        started: this.#deps.now(),
        open: 0,
        connections: 0,
        closedUp: 0,
        closedDown: 0,
        classes,
        interim: undefined,
        idle: undefined,
      };
      this.#sessions.set(identity, s);
      this.#send(s, AcctStatusType.Start);
      const session = s;
      s.interim = setInterval(() => this.#send(session, AcctStatusType.InterimUpdate), this.#s.interimS * 1000);
      s.interim.unref();
    }
    if (s.idle) clearTimeout(s.idle);
    s.idle = undefined;
    s.open++;
    s.connections++;
  }

  /** A relayed connection of this CPE closed with these bytes: Stop once the CPE stays without connections. */
  closed(identity: string, up: number, down: number): void {
    const s = this.#sessions.get(identity);
    if (!s) return;
    s.open = Math.max(0, s.open - 1);
    s.closedUp += up;
    s.closedDown += down;
    if (s.open === 0) {
      s.idle = setTimeout(() => this.#end(s, AcctTerminateCause.IdleTimeout), this.#s.stopAfterIdleS * 1000);
      s.idle.unref();
    }
  }

  #end(s: AcctSession, cause: number): void {
    if (this.#sessions.get(s.identity) !== s) return;
    this.#sessions.delete(s.identity);
    clearInterval(s.interim);
    if (s.idle) clearTimeout(s.idle);
    this.#send(s, AcctStatusType.Stop, cause);
  }

  #send(s: AcctSession, status: number, cause?: number): void {
    const now = this.#deps.now();
    const live = status === AcctStatusType.Stop && s.open === 0 ? { up: 0, down: 0 } : this.#deps.liveBytes(s.identity);
    const up = octetsAndGigawords(s.closedUp + live.up);
    const down = octetsAndGigawords(s.closedDown + live.down);
    const attrs: RadiusAttribute[] = [
      attrUint32(RadiusAttr.AcctStatusType, status),
      attrString(RadiusAttr.AcctSessionId, s.id),
      attrString(RadiusAttr.UserName, s.userName),
      attrString(RadiusAttr.CallingStationId, s.cpe),
      attrString(RadiusAttr.NasIdentifier, this.#s.nasIdentifier),
      attrUint32(RadiusAttr.EventTimestamp, Math.floor(now / 1000)),
      ...s.classes.map((c) => attrBytes(RadiusAttr.Class, c)),
    ];
    if (this.#s.nasIpAddress) attrs.push(attrAddress(isIPv6(this.#s.nasIpAddress) ? RadiusAttr.NasIpv6Address : RadiusAttr.NasIpAddress, this.#s.nasIpAddress));
    if (status !== AcctStatusType.Start) {
      attrs.push(
        attrUint32(RadiusAttr.AcctSessionTime, Math.floor((now - s.started) / 1000)),
        attrUint32(RadiusAttr.AcctInputOctets, up.octets),
        attrUint32(RadiusAttr.AcctOutputOctets, down.octets),
        attrUint32(RadiusAttr.AcctLinkCount, s.connections),
      );
      if (up.gigawords > 0) attrs.push(attrUint32(RadiusAttr.AcctInputGigawords, up.gigawords));
      if (down.gigawords > 0) attrs.push(attrUint32(RadiusAttr.AcctOutputGigawords, down.gigawords));
    }
    if (cause !== undefined) attrs.push(attrUint32(RadiusAttr.AcctTerminateCause, cause));
    const name = status === AcctStatusType.Start ? 'start' : status === AcctStatusType.Stop ? 'stop' : 'interim';
    const sending = this.#deps.client
      .request('acct', (identifier, server) => {
        const packet = encodeAccountingRequest({ identifier, attributes: attrs }, server.secret);
        return { packet, authenticator: packet.subarray(4, 20) };
      })
      .then((answer) => this.#deps.onRecord?.(name, answer !== undefined))
      .finally(() => this.#sending.delete(sending));
    this.#sending.add(sending);
  }

  /** Stop for every session (the concentrator stops), and wait until the records are answered or given up. */
  async stop(): Promise<void> {
    for (const s of [...this.#sessions.values()]) this.#end(s, AcctTerminateCause.NasRequest);
    await Promise.all([...this.#sending]);
  }
}
