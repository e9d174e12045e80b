/**
 * CPE authentication on loopback with the fake platform (which records every dial): a valid authenticator
 * converts in both formats; missing, forged, truncated, reordered, replayed, expired, unknown-key ones are
 * refused with their counter and nothing is dialled; limits and the source pool go by the CPE's key, not its
 * source address; keys rotate on reload; a concentrator open to the internet needs auth to start; a
 * time-boxed fuzz of authenticators against the live concentrator gets 0 conversions and leaves it serving.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { Concentrator } from '../../../src/concentrator/concentrator.js';
import { concentratorConfigSchema, type ConcentratorConfigInput } from '../../../src/concentrator/config.js';
import { createMetrics, type Metrics } from '../../../src/control/metrics.js';
import { silentLogger } from '../../../src/log.js';
import { encodeConvertMessage, encodeMpConvert } from '../../../src/protocol/index.js';
import { encodeAuthenticator } from '../../../src/protocol/auth.js';
import { signallingFor } from '../../../src/cpe/session.js';
import { fakeKernel, fakeSockets } from '../../support/fake-platform.js';

const SECRETS = { 'cpe-a': randomBytes(32), 'cpe-a2': randomBytes(32), 'cpe-b': randomBytes(32), 'cpe-c': randomBytes(32) };
type KeyId = keyof typeof SECRETS;
const keysYaml = (ids: KeyId[]) =>
  'keys:\n' + ids.map((id) => `  - { id: ${id}, secret: "hex:${SECRETS[id].toString('hex')}", cpe: ${id === 'cpe-a2' ? 'cpe-a' : id} }\n`).join('');

const DST = { address: '198.19.0.11', port: 8080 };
const mpTarget = { address: '127.0.0.1:1', format: 'mp-convert' as const, sourceIe: false, zeroRtt: false };
const rfcTarget = { ...mpTarget, format: 'rfc8803' as const };

async function counter(metrics: Metrics, reason: string): Promise<number> {
  const text = await metrics.registry.metrics();
  const m = new RegExp(`mpconvert_refused_total\\{reason="${reason}"[^}]*\\} (\\d+)`).exec(text);
  return m ? Number(m[1]) : 0;
}

/** Client: sends `data` then FIN (optionally from another loopback address); what it got and how it ended. */
async function converse(port: number, data: Buffer, localAddress?: string, hold = false) {
  const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true, ...(localAddress ? { localAddress } : {}) });
  await once(s, 'connect');
  const parts: Buffer[] = [];
  s.on('data', (d: Buffer) => parts.push(d));
  const ended = new Promise<'end' | 'reset'>((resolve) => {
    s.once('end', () => resolve('end'));
    s.once('error', () => resolve('reset'));
    s.once('close', () => resolve('reset'));
  });
  s.write(data);
  if (hold) {
    await Promise.race([once(s, 'data'), ended]);
    return { how: 'held' as const, received: Buffer.concat(parts), socket: s };
  }
  s.end();
  const how = await ended;
  s.destroy();
  return { how, received: Buffer.concat(parts), socket: s };
}

describe('CPE authentication (loopback, fake platform)', () => {
  let dir: string;
  let keysFile: string;
  let upstream: net.Server;
  let upstreamPort: number;
  let upstreamConnections = 0;
  const clock = Date.now();
  const reply = Buffer.from('server says hello');

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'mpc-auth-'));
    keysFile = join(dir, 'keys.yaml');
    await writeFile(keysFile, keysYaml(['cpe-a', 'cpe-a2', 'cpe-b']), { mode: 0o600 });
    upstream = net.createServer({ allowHalfOpen: true }, (s) => {
      upstreamConnections++;
      s.on('error', () => {});
      s.resume();
      s.on('end', () => s.end(reply));
    });
    upstream.listen(0, '127.0.0.1');
    await once(upstream, 'listening');
    upstreamPort = (upstream.address() as net.AddressInfo).port;
  });
  after(async () => {
    upstream.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function start(extra: Partial<ConcentratorConfigInput> = {}) {
    const sockets = fakeSockets({ route: () => ({ host: '127.0.0.1', port: upstreamPort }) });
    const metrics = createMetrics('concentrator');
    const config = concentratorConfigSchema.parse({ listen: ['127.0.0.1:0'], allow: ['127.0.0.0/8'], auth: { keysFile, clockSkewS: 30 }, ...extra });
    const c = new Concentrator(config, { sockets, kernel: fakeKernel(), logger: silentLogger(), metrics, now: () => clock });
    await c.start();
    return { c, sockets, metrics, port: c.addresses[0]!.port };
  }

  const sign = (keyId: KeyId | 'nobody', opts: { format?: 'mp-convert' | 'rfc8803'; dtS?: number; secret?: Buffer; nonce?: Buffer } = {}) =>
    signallingFor(opts.format === 'rfc8803' ? rfcTarget : mpTarget, DST, undefined, {
      keyId,
      secret: opts.secret ?? (keyId === 'nobody' ? randomBytes(32) : SECRETS[keyId]),
      timestamp: Math.floor(clock / 1000) + (opts.dtS ?? 0),
      nonce: opts.nonce ?? randomBytes(16),
    });

  test('a valid authenticator converts: MP_CONVERT echoes every IE (authenticator included) byte for byte; RFC 8803 confirms', async () => {
    const { c, sockets, port } = await start();
    try {
      const early = Buffer.from('GET / HTTP/1.1\r\n\r\n');
      const mp = sign('cpe-a');
      const r = await converse(port, Buffer.concat([mp, early]));
      assert.equal(r.how, 'end');
      assert.equal(r.received.toString('hex'), Buffer.concat([mp, reply]).toString('hex'));
      const rfc = await converse(port, sign('cpe-b', { format: 'rfc8803' }));
      assert.equal(rfc.received.toString('hex'), Buffer.concat([Buffer.from('01012263', 'hex'), reply]).toString('hex'));
      assert.equal(sockets.dials.length, 2);
    } finally {
      await c.stop(0);
    }
  });

  test('missing, forged, truncated, reordered, replayed, expired, future, unknown key, two authenticators: refused, counted, nothing dialled', async () => {
    const { c, sockets, metrics, port } = await start();
    try {
      const valid = sign('cpe-a');
      assert.equal((await converse(port, valid)).how, 'end', 'the original is accepted once');
      const flip = (b: Buffer, i: number) => {
        const out = Buffer.from(b);
        out[i]! ^= 0x01;
        return out;
      };
      const dest = encodeMpConvert([{ type: 0, direction: 'destination', ...DST }]);
      const authIe = valid.subarray(dest.length);
      const reordered = Buffer.concat([authIe, dest]);
      reordered[7]! &= ~1; // M = 0 on the authenticator, now first
      reordered[authIe.length + 7]! |= 1;
      const truncatedValue = encodeMpConvert([{ type: 0, direction: 'destination', ...DST }, { type: 0x81, direction: 'destination', body: encodeAuthenticator({ keyId: 'cpe-a', timestamp: Math.floor(clock / 1000), nonce: randomBytes(16) }).subarray(0, 50) }]);
      const secondAuth = Buffer.from(authIe);
      secondAuth[7]! &= ~1;
      const cases: Array<[string, Buffer, string]> = [
        ['no authenticator', dest, 'auth-missing'],
        ['replayed', valid, 'auth-replay'],
        // Key id 'cpe-a' (5 bytes): the IE's value ends one byte before the IE's 32-bit padding.
        ['MAC byte flipped', flip(sign('cpe-a'), valid.length - 2), 'auth-mac'],
        ['IE padding changed (covered by the MAC too)', flip(sign('cpe-a'), valid.length - 1), 'auth-mac'],
        ['destination port changed after signing', flip(sign('cpe-a'), 13), 'auth-mac'],
        ['timestamp changed after signing', flip(sign('cpe-a'), dest.length + 8 + 5), 'auth-mac'],
        ['signed with a wrong secret', sign('cpe-a', { secret: SECRETS['cpe-b'] }), 'auth-mac'],
        ['reordered', reordered, 'auth-mac'],
        ['truncated authenticator', truncatedValue, 'auth-malformed'],
        ['two authenticators', Buffer.concat([dest.map((x, i) => (i === 7 ? 0 : x)), secondAuth, authIe]), 'auth-malformed'],
        ['unknown key id', sign('nobody'), 'auth-unknown-key'],
        ['31 s old', sign('cpe-a', { dtS: -31 }), 'auth-clock'],
        ['31 s ahead', sign('cpe-a', { dtS: 31 }), 'auth-clock'],
      ];
      const dials = sockets.dials.length;
      const served = upstreamConnections;
      for (const [name, bytes, reason] of cases) {
        const before = await counter(metrics, reason);
        const r = await converse(port, Buffer.concat([bytes, Buffer.from('early')]));
        assert.equal(r.how, 'reset', `${name}: aborted`);
        assert.equal(r.received.length, 0, `${name}: nothing answered`);
        assert.equal(await counter(metrics, reason), before + 1, `${name}: counted as ${reason}`);
      }
      // A window of 30 s accepts 30 s of skew either way.
      for (const dtS of [-30, 30]) assert.equal((await converse(port, sign('cpe-a', { dtS }))).how, 'end', `${dtS} s of skew`);
      assert.equal(sockets.dials.length, dials + 2, 'only the two valid ones were dialled');
      assert.equal(upstreamConnections, served + 2);
    } finally {
      await c.stop(0);
    }
  });

  test('RFC 8803: missing -> Error TLV 3 with the Cookie TLV to send; forged, replayed, unknown -> Error TLV 32; nothing dialled', async () => {
    const { c, sockets, metrics, port } = await start();
    try {
      const dials = sockets.dials.length;
      const plain = encodeConvertMessage({ tlvs: [{ type: 'connect', ...DST, options: Buffer.alloc(0) }] });
      const missing = await converse(port, plain);
      assert.equal(missing.how, 'end', 'an Error TLV, then FIN');
      const now = Buffer.alloc(4);
      now.writeUInt32BE(Math.floor(clock / 1000));
      assert.equal(missing.received.toString('hex'), `01052263 1e040300 16030000 01000000 ${now.toString('hex')}`.replaceAll(' ', ''));
      const valid = sign('cpe-a', { format: 'rfc8803' });
      assert.equal((await converse(port, valid)).how, 'end');
      const forged = Buffer.from(sign('cpe-a', { format: 'rfc8803' }));
      forged[forged.length - 2]! ^= 0x40; // the MAC's last byte (one byte of Cookie TLV padding follows)
      const padded = Buffer.from(sign('cpe-a', { format: 'rfc8803' }));
      padded[padded.length - 1]! ^= 0x40;
      for (const [bytes, reason] of [[forged, 'auth-mac'], [padded, 'auth-malformed'], [valid, 'auth-replay'], [sign('nobody', { format: 'rfc8803' }), 'auth-unknown-key']] as const) {
        const before = await counter(metrics, reason);
        const r = await converse(port, bytes);
        assert.equal(r.received.toString('hex'), '010222631e012000', `${reason}: Error TLV 32 (Not Authorized)`);
        assert.equal(await counter(metrics, reason), before + 1);
      }
      assert.equal(await counter(metrics, 'auth-missing'), 1);
      assert.equal(sockets.dials.length, dials + 1, 'only the valid one was dialled');
    } finally {
      await c.stop(0);
    }
  });

  test('a full replay cache refuses new CPE connections (fail closed) instead of forgetting nonces', async () => {
    const { c, sockets, metrics, port } = await start({ auth: { keysFile, replayCacheSize: 2 } });
    try {
      for (let i = 0; i < 2; i++) assert.equal((await converse(port, sign('cpe-a'))).how, 'end');
      const dials = sockets.dials.length;
      const before = await counter(metrics, 'auth-replay-full');
      assert.equal((await converse(port, sign('cpe-b'))).how, 'reset', 'a valid authenticator, but no room to remember its nonce');
      assert.equal(await counter(metrics, 'auth-replay-full'), before + 1);
      assert.equal(sockets.dials.length, dials);
    } finally {
      await c.stop(0);
    }
  });

  test('limits go by the key: two CPEs behind one address are limited apart; one CPE on two addresses (and its rotation keys) shares its limit', async () => {
    const { c, metrics, port } = await start({ limits: { maxConnectionsPerCpe: 1 } });
    const held: net.Socket[] = [];
    try {
      const a = await converse(port, sign('cpe-a'), '127.0.0.1', true);
      assert.equal(a.how, 'held');
      held.push(a.socket);
      const b = await converse(port, sign('cpe-b'), '127.0.0.1', true);
      assert.equal(b.how, 'held', 'another key from the same address has its own limit');
      held.push(b.socket);
      const before = await counter(metrics, 'max-connections-per-cpe');
      for (const [key, from] of [['cpe-a', '127.0.0.5'], ['cpe-a2', '127.0.0.1']] as const) {
        const r = await converse(port, sign(key), from);
        assert.equal(r.how, 'reset', `${key} from ${from}: the same CPE, over its limit`);
      }
      assert.equal(await counter(metrics, 'max-connections-per-cpe'), before + 2);
    } finally {
      for (const s of held) s.destroy();
      await c.stop(0);
    }
  });

  test('the source pool pairs by key: one CPE keeps its address across source addresses, two CPEs behind one address get two (1:1)', async () => {
    const { c, sockets, port } = await start({ sourcePool: { addresses: ['127.0.0.20', '127.0.0.21'], mode: 'dedicated' } });
    const held: net.Socket[] = [];
    try {
      const external = async (key: KeyId, from: string) => {
        const r = await converse(port, sign(key), from, true);
        assert.equal(r.how, 'held', `${key} from ${from}`);
        held.push(r.socket);
        return sockets.dials.at(-1)!.localAddress;
      };
      const a1 = await external('cpe-a', '127.0.0.1');
      const a2 = await external('cpe-a', '127.0.0.5');
      const b = await external('cpe-b', '127.0.0.1');
      assert.equal(a1, a2, 'one CPE, one pool address, whatever its source address');
      assert.notEqual(a1, b, 'two CPEs behind one address: two pool addresses');
      assert.deepEqual([a1, b].sort(), ['127.0.0.20', '127.0.0.21']);
    } finally {
      for (const s of held) s.destroy();
      await c.stop(0);
    }
  });

  test('reload re-reads the keys file (rotation); a world-readable one is refused and the running keys stay', async () => {
    const { c, metrics, port } = await start();
    try {
      assert.equal((await converse(port, sign('cpe-c'))).how, 'reset', 'cpe-c is not known yet');
      await writeFile(keysFile, keysYaml(['cpe-a2', 'cpe-b', 'cpe-c']));
      await c.reload(c.config);
      assert.equal((await converse(port, sign('cpe-c'))).how, 'end', 'the new key works after the reload');
      assert.equal((await converse(port, sign('cpe-a2'))).how, 'end', 'the rotated-in key of cpe-a works');
      const before = await counter(metrics, 'auth-unknown-key');
      assert.equal((await converse(port, sign('cpe-a'))).how, 'reset', 'the rotated-out key is refused');
      assert.equal(await counter(metrics, 'auth-unknown-key'), before + 1);
      await writeFile(keysFile, keysYaml(['cpe-a']));
      await chmod(keysFile, 0o644);
      await assert.rejects(c.reload(c.config), /accessible to every user/);
      assert.equal((await converse(port, sign('cpe-c'))).how, 'end', 'the running keys are kept');
    } finally {
      await chmod(keysFile, 0o600);
      await writeFile(keysFile, keysYaml(['cpe-a', 'cpe-a2', 'cpe-b']));
      await c.stop(0);
    }
  });

  test('allow open to the whole internet without auth (or with required: false) refuses to start, naming the fix', () => {
    for (const extra of [{}, { auth: { keysFile, required: false } }]) {
      const raw = { listen: ['127.0.0.1:0'], allow: ['0.0.0.0/0', '::/0'], ...extra };
      // The configuration is refused when loaded (start and SIGHUP reload) ...
      const checked = concentratorConfigSchema.safeParse(raw);
      assert.ok(!checked.success && /whole internet/.test(checked.error.issues[0]!.message) && checked.error.issues[0]!.path[0] === 'allow');
      // ... and by the concentrator itself, for a configuration built without the schema.
      const config = { ...concentratorConfigSchema.parse({ ...raw, allow: ['198.18.0.0/15'] }), allow: raw.allow };
      assert.throws(
        () => new Concentrator(config, { sockets: fakeSockets(), kernel: fakeKernel(), logger: silentLogger(), metrics: createMetrics('concentrator') }),
        (err: Error & { code?: string }) => err.code === 'MPC_ERR_CONFIG' && /whole internet/.test(err.message) && /keysFile/.test(err.message),
      );
    }
  });

  test('fuzz: mutated, truncated, replayed, re-keyed and random authenticators against the live concentrator: 0 conversions, still serving', async () => {
    const { c, sockets, port } = await start();
    try {
      const base = sign('cpe-a');
      assert.equal((await converse(port, base)).how, 'end');
      const dials = sockets.dials.length;
      const served = upstreamConnections;
      const destLen = encodeMpConvert([{ type: 0, direction: 'destination', ...DST }]).length;
      const mutation = fc.oneof(
        // Any byte of the signalling changed (the MAC covers all of them).
        fc.record({ kind: fc.constant('flip' as const), at: fc.nat({ max: base.length - 1 }), xor: fc.integer({ min: 1, max: 255 }) }),
        // The authenticator value cut anywhere (the IE Length follows, so the signalling still parses).
        fc.record({ kind: fc.constant('cut' as const), keep: fc.nat({ max: base.length - destLen - 9 }) }),
        // Random bytes as the authenticator value, sometimes with a valid-looking header.
        fc.record({ kind: fc.constant('random' as const), body: fc.uint8Array({ minLength: 0, maxLength: 120 }), header: fc.boolean() }),
        // Well formed but wrong: unknown key, wrong secret, outside the window, the same nonce again.
        fc.record({ kind: fc.constant('resign' as const), key: fc.constantFrom('cpe-a', 'cpe-b', 'nobody'), dtS: fc.integer({ min: -100_000, max: 100_000 }) }),
        fc.constant({ kind: 'replay' as const }),
      );
      let runs = 0;
      let conversions = 0;
      await fc.assert(
        fc.asyncProperty(mutation, async (m) => {
          let bytes: Buffer;
          if (m.kind === 'flip') {
            bytes = Buffer.from(base);
            bytes[m.at]! ^= m.xor;
          } else if (m.kind === 'cut') {
            const value = base.subarray(destLen + 8, destLen + 8 + m.keep);
            bytes = encodeMpConvert([{ type: 0, direction: 'destination', ...DST }, { type: 0x81, direction: 'destination', body: value }]);
          } else if (m.kind === 'random') {
            const body = Buffer.from(m.body);
            if (m.header && body.length >= 2) {
              body[0] = 1;
              body[1] = Math.min(32, body[1]! % 33);
            }
            bytes = encodeMpConvert([{ type: 0, direction: 'destination', ...DST }, { type: 0x81, direction: 'destination', body }]);
          } else if (m.kind === 'resign') {
            // A right key with a skew inside the window would be a legitimate CPE: keep it outside.
            const dtS = m.key === 'cpe-a' && Math.abs(m.dtS) <= 30 ? 31 + Math.abs(m.dtS) : m.dtS;
            bytes = m.key === 'cpe-b' ? sign('cpe-b', { dtS, secret: SECRETS['cpe-a'] }) : sign(m.key, { dtS });
          } else {
            bytes = base;
          }
          const r = await converse(port, Buffer.concat([bytes, Buffer.from('x')]));
          runs++;
          if (r.received.length > 0) conversions++;
          return true;
        }),
        { numRuns: 3_000, interruptAfterTimeLimit: 8_000, markInterruptAsFailure: false },
      );
      assert.ok(runs >= 50, `${runs} runs`);
      assert.equal(conversions, 0, 'no forged authenticator was confirmed');
      assert.equal(sockets.dials.length, dials, 'nothing was dialled');
      assert.equal(upstreamConnections, served, 'no server got a connection');
      assert.equal((await converse(port, sign('cpe-a'))).how, 'end', 'the concentrator still serves a valid CPE');
    } finally {
      await c.stop(0);
    }
  });
});
