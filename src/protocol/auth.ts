/**
 * The CPE authenticator (docs/protocol.md, "Authenticator"): one value, carried in an MP_CONVERT private IE
 * (Type 0x81) or in the RFC 8803 Cookie TLV (0x16, section 4.2.6), at the start of the connection (in the SYN
 * with 0-RTT). Pure: layout, location in the signalling bytes, MAC input. HMAC-SHA256 (RFC 2104) over a
 * label and the whole signalling with the MAC field zeroed, so that it binds the key id, the timestamp, the
 * nonce and every other byte of the signalling (IEs and their order, padding, the Connect TLV).
 *
 *  0                   1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +---------------+---------------+-------------------------------+
 * |  Version = 1  | Key ID Len (L)|   Timestamp (32, seconds ...  |
 * +---------------+---------------+-------------------------------+
 * |  ... since 1970-01-01 UTC)    |   Nonce (128) ...             |
 * +-------------------------------+-------------------------------+
 * |  ... Nonce | Key ID (L octets, 1-32, [A-Za-z0-9._:-]) | MAC (256) ...      |
 * +---------------------------------------------------------------+
 */
import { createHmac } from 'node:crypto';

export const AUTH_VERSION = 1;
export const AUTH_NONCE_BYTES = 16;
export const AUTH_MAC_BYTES = 32;
export const AUTH_KEY_ID_MAX = 32;
/** Version, Key ID Length, Timestamp, Nonce. */
const FIXED = 2 + 4 + AUTH_NONCE_BYTES;
/** The MP_CONVERT private IE Type of the authenticator. */
export const IE_TYPE_AUTHENTICATOR = 0x81;
const COOKIE_TLV = 0x16;
/** Domain separation: a key is never valid for anything else than this MAC. */
const MAC_LABEL = Buffer.from('mpconvert-authenticator-v1\0', 'latin1');
const KEY_ID_RE = /^[A-Za-z0-9._:-]{1,32}$/;

export const isValidKeyId = (id: string): boolean => KEY_ID_RE.test(id);

export interface AuthenticatorFields {
  keyId: string;
  /** Seconds since 1970-01-01 UTC. */
  timestamp: number;
  nonce: Buffer;
}

export interface ParsedAuthenticator extends AuthenticatorFields {
  mac: Buffer;
}

/** Where the authenticator's value sits in the signalling bytes. */
export interface AuthenticatorLocation {
  /** Offset of the value's first byte (Version) in the signalling. */
  offset: number;
  /** Bytes of the value (MP_CONVERT: Length - 4; RFC 8803: the Cookie's opaque bytes, padding included). */
  length: number;
}

export const authenticatorLength = (keyId: string): number => FIXED + Buffer.byteLength(keyId, 'latin1') + AUTH_MAC_BYTES;

/** The value with its MAC field zeroed (to be signed with signAuthenticator once placed). Throws TypeError. */
export function encodeAuthenticator(f: AuthenticatorFields): Buffer {
  if (!isValidKeyId(f.keyId)) throw new TypeError(`Cannot encode authenticator: key id "${f.keyId}" must be 1-32 of [A-Za-z0-9._:-]`);
  if (!Number.isInteger(f.timestamp) || f.timestamp < 0 || f.timestamp > 0xffff_ffff) throw new TypeError(`Cannot encode authenticator: timestamp ${f.timestamp}`);
  if (f.nonce.length !== AUTH_NONCE_BYTES) throw new TypeError(`Cannot encode authenticator: the nonce must be ${AUTH_NONCE_BYTES} bytes`);
  const id = Buffer.from(f.keyId, 'latin1');
  const out = Buffer.alloc(FIXED + id.length + AUTH_MAC_BYTES);
  out[0] = AUTH_VERSION;
  out[1] = id.length;
  out.writeUInt32BE(f.timestamp, 2);
  f.nonce.copy(out, 6);
  id.copy(out, FIXED);
  return out;
}

export type AuthenticatorParse = { ok: true; value: ParsedAuthenticator } | { ok: false; why: string };

/**
 * Parses a value. Total: never throws. After the MAC only zero bytes, fewer than 4, may follow (the
 * Cookie TLV's padding, RFC 8803 section 4.2).
 */
export function parseAuthenticator(value: Buffer): AuthenticatorParse {
  if (value.length < FIXED + 1 + AUTH_MAC_BYTES) return { ok: false, why: `${value.length} bytes, shorter than any authenticator` };
  if (value[0] !== AUTH_VERSION) return { ok: false, why: `version ${value[0]} (1 is supported)` };
  const l = value[1] as number;
  if (l < 1 || l > AUTH_KEY_ID_MAX) return { ok: false, why: `Key ID Length ${l} (1-32)` };
  const end = FIXED + l + AUTH_MAC_BYTES;
  if (value.length < end) return { ok: false, why: `truncated: ${value.length} bytes, Key ID Length ${l} needs ${end}` };
  if (value.length - end > 3 || value.subarray(end).some((b) => b !== 0)) return { ok: false, why: `${value.length - end} bytes after the MAC` };
  const keyId = value.toString('latin1', FIXED, FIXED + l);
  if (!isValidKeyId(keyId)) return { ok: false, why: 'the key id has a byte outside [A-Za-z0-9._:-]' };
  return {
    ok: true,
    value: {
      keyId,
      timestamp: value.readUInt32BE(2),
      nonce: Buffer.from(value.subarray(6, FIXED)),
      mac: Buffer.from(value.subarray(FIXED + l, end)),
    },
  };
}

/**
 * Finds the authenticator in signalling bytes that the signalling decoder accepted (src/protocol/signalling.ts):
 * 'none', 'twice' (two of them: refused, one of them would go unchecked), or where its value is.
 */
export function locateAuthenticator(format: 'mp-convert' | 'rfc8803', raw: Buffer): AuthenticatorLocation | 'none' | 'twice' {
  let found: AuthenticatorLocation | undefined;
  if (format === 'mp-convert') {
    // IEs: magic (4), Type, Length (counts Type to the end of the value), flags (2), value, padding to 32 bits.
    for (let off = 0; off + 8 <= raw.length; ) {
      const type = raw[off + 4] as number;
      const length = raw[off + 5] as number;
      if (type === IE_TYPE_AUTHENTICATOR) {
        if (found) return 'twice';
        found = { offset: off + 8, length: Math.max(0, length - 4) };
      }
      off += 4 + Math.ceil(length / 4) * 4;
    }
  } else {
    // Convert message: 4-byte header, then TLVs of Length (32-bit words); Cookie: Type, Length, Zero (16), value.
    for (let off = 4; off + 2 <= raw.length; ) {
      const words = raw[off + 1] as number;
      if (words === 0) break;
      if (raw[off] === COOKIE_TLV) {
        if (found) return 'twice';
        found = { offset: off + 4, length: Math.max(0, words * 4 - 4) };
      }
      off += words * 4;
    }
  }
  return found ?? 'none';
}

/** HMAC-SHA256(secret, label || signalling with the MAC field zeroed). `raw` is not modified. */
export function authenticatorMac(secret: Buffer, raw: Buffer, at: AuthenticatorLocation): Buffer {
  const keyIdLength = raw[at.offset + 1] as number;
  const macAt = at.offset + FIXED + keyIdLength;
  const zeroed = Buffer.from(raw);
  zeroed.fill(0, macAt, Math.min(macAt + AUTH_MAC_BYTES, zeroed.length));
  return createHmac('sha256', secret).update(MAC_LABEL).update(zeroed).digest();
}

/**
 * Signs encoded signalling whose authenticator was encoded with encodeAuthenticator (MAC zero): returns a
 * copy with the MAC filled in. Throws TypeError if the signalling holds no authenticator or two.
 */
export function signAuthenticator(format: 'mp-convert' | 'rfc8803', encoded: Buffer, secret: Buffer): Buffer {
  const at = locateAuthenticator(format, encoded);
  if (typeof at === 'string') throw new TypeError(`Cannot sign signalling: authenticator ${at === 'none' ? 'missing' : 'present twice'}`);
  const mac = authenticatorMac(secret, encoded, at);
  const out = Buffer.from(encoded);
  mac.copy(out, at.offset + FIXED + (encoded[at.offset + 1] as number));
  return out;
}
