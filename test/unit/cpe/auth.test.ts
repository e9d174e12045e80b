/**
 * The CPE's side of authentication, end to end on loopback: CPE session (credentials read from its secret
 * file) -> real Concentrator with auth on -> upstream. The authenticator rides in the SYN data with 0-RTT,
 * the echo (authenticator IE included) verifies, and a CPE with a wrong secret is refused without any dial.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { Concentrator } from '../../../src/concentrator/concentrator.js';
import { concentratorConfigSchema } from '../../../src/concentrator/config.js';
import { cpeConfigSchema, loadCredentials } from '../../../src/cpe/config.js';
import { ConcentratorSelector } from '../../../src/cpe/concentrators.js';
import { handleClient } from '../../../src/cpe/session.js';
import { ServerMptcpCache } from '../../../src/cpe/server-mptcp.js';
import { createMetrics } from '../../../src/control/metrics.js';
import { silentLogger } from '../../../src/log.js';
import { decodeMpConvert } from '../../../src/protocol/index.js';
import { IE_TYPE_AUTHENTICATOR } from '../../../src/protocol/auth.js';
import { fakeKernel, fakeSockets } from '../../support/fake-platform.js';
import { exchange } from '../../support/loopback.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('CPE authentication (loopback)', () => {
  let dir: string;
  let upstream: net.Server;
  let conc: Concentrator;
  let concPort: number;
  const concSockets = fakeSockets({ route: () => ({ host: '127.0.0.1', port: (upstream.address() as net.AddressInfo).port }) });
  const concMetrics = createMetrics('concentrator');
  const reply = randomBytes(50_000);
  const secret = randomBytes(32);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'mpc-cpe-auth-'));
    await writeFile(join(dir, 'keys.yaml'), `keys:\n  - { id: site-7, secret: "base64:${secret.toString('base64')}" }\n`, { mode: 0o600 });
    await writeFile(join(dir, 'good.secret'), `base64:${secret.toString('base64')}\n`, { mode: 0o600 });
    await writeFile(join(dir, 'wrong.secret'), `hex:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    upstream = net.createServer({ allowHalfOpen: true }, (s) => {
      const parts: Buffer[] = [];
      s.on('data', (d: Buffer) => parts.push(d));
      s.on('end', () => s.end(Buffer.concat([Buffer.from(sha(Buffer.concat(parts)), 'hex'), reply])));
      s.on('error', () => {});
    });
    upstream.listen(0, '127.0.0.1');
    await once(upstream, 'listening');
    const config = concentratorConfigSchema.parse({ listen: ['127.0.0.1:0'], allow: ['127.0.0.0/8'], auth: { keysFile: join(dir, 'keys.yaml') } });
    conc = new Concentrator(config, { sockets: concSockets, kernel: fakeKernel(), logger: silentLogger(), metrics: concMetrics });
    await conc.start();
    concPort = conc.addresses[0]!.port;
  });

  after(async () => {
    await conc.stop(0);
    upstream.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function convert(secretFile: string, format: 'mp-convert' | 'rfc8803', request: Buffer, serverMptcp: 'maintain' | 'direct' = 'maintain') {
    const config = cpeConfigSchema.parse({
      lan: ['lan0'],
      uplinks: [{ interface: 'up1' }],
      firstDataWaitMs: 1000,
      fallback: 'refuse',
      serverMptcp: { mode: serverMptcp },
      concentrators: [{ address: `127.0.0.1:${concPort}`, format, zeroRtt: true, keyId: 'site-7', secretFile: join(dir, secretFile) }],
    });
    const credentials = await loadCredentials(config.concentrators);
    const sockets = fakeSockets();
    const selector = new ConcentratorSelector(config.concentrators, { capabilityTtlMs: 60_000, unreachableHoldMs: 60_000 });
    const metrics = createMetrics('cpe');
    const front = net.createServer({ allowHalfOpen: true }, (client) => {
      // As the daemon does (src/cpe/cpe.ts): an unexpected error resets the client.
      handleClient(client, {
        sockets,
        logger: silentLogger(),
        metrics,
        selector,
        config: () => config,
        track: () => {},
        originalDestination: () => ({ address: '198.19.0.11', port: 8080 }),
        credentials: (t) => credentials.get(t.address),
        serverMptcp: new ServerMptcpCache(config.serverMptcp),
      }).catch(() => client.resetAndDestroy());
    });
    front.listen(0, '127.0.0.1');
    await once(front, 'listening');
    try {
      const r = await exchange((front.address() as net.AddressInfo).port, request);
      return { ...r, dial: sockets.dials[0], metrics };
    } finally {
      front.close();
    }
  }

  test('MP_CONVERT with 0-RTT: the destination and authenticator IEs lead the SYN data; the echo verifies; bytes exact', async () => {
    const request = randomBytes(3_000);
    const dials = concSockets.dials.length;
    const r = await convert('good.secret', 'mp-convert', request);
    assert.equal(r.how, 'end');
    assert.equal(r.received.toString('hex'), Buffer.concat([Buffer.from(sha(request), 'hex'), reply]).toString('hex'));
    assert.equal(r.dial!.fastOpen, 'no-cookie');
    const syn = r.dial!.data!;
    const sigLen = 16 + 4 + Math.ceil((4 + 22 + 'site-7'.length + 32) / 4) * 4;
    const ies = decodeMpConvert(syn.subarray(0, sigLen)).ies.map((ie) => ie.type);
    assert.deepEqual(ies, [0, IE_TYPE_AUTHENTICATOR], 'the destination, then the authenticator');
    assert.equal(syn.subarray(sigLen).toString('hex'), request.subarray(0, syn.length - sigLen).toString('hex'), 'the client bytes follow in the SYN');
    assert.equal(concSockets.dials.length, dials + 1);
  });

  test('direct mode: the server MPTCP query is signed with the rest; the concentrator accepts it and answers in the echo', async () => {
    const request = randomBytes(3_000);
    const r = await convert('good.secret', 'mp-convert', request, 'direct');
    assert.equal(r.how, 'end');
    assert.equal(r.received.toString('hex'), Buffer.concat([Buffer.from(sha(request), 'hex'), reply]).toString('hex'));
    const sigLen = 12 + 16 + 4 + Math.ceil((4 + 22 + 'site-7'.length + 32) / 4) * 4;
    assert.deepEqual(decodeMpConvert(r.dial!.data!.subarray(0, sigLen)).ies.map((ie) => ie.type), [0x85, 0, IE_TYPE_AUTHENTICATOR]);
    assert.match(await r.metrics.registry.metrics(), /mpconvert_server_mptcp_total\{event="learned"[^}]*\} 1/, 'the answer (1: the fake server leg is MPTCP) verified and learnt');
  });

  test('RFC 8803 with the Cookie TLV: converted', async () => {
    const request = Buffer.from('hello');
    const r = await convert('good.secret', 'rfc8803', request);
    assert.equal(r.how, 'end');
    assert.equal(r.received.toString('hex'), Buffer.concat([Buffer.from(sha(request), 'hex'), reply]).toString('hex'));
  });

  test('a CPE with the wrong secret: refused by the concentrator (auth-mac), the client reset, nothing dialled', async () => {
    for (const format of ['mp-convert', 'rfc8803'] as const) {
      const dials = concSockets.dials.length;
      const r = await convert('wrong.secret', format, Buffer.from('hello'));
      assert.equal(r.how, 'reset', format);
      assert.equal(r.received.length, 0);
      assert.match(await r.metrics.registry.metrics(), /mpconvert_refused_total\{reason="concentrator-refused"[^}]*\} 1/);
      assert.equal(concSockets.dials.length, dials, `${format}: the concentrator dialled nothing`);
    }
    assert.match(await concMetrics.registry.metrics(), /mpconvert_refused_total\{reason="auth-mac"[^}]*\} 2/);
  });

  test('config: keyId and secretFile go together; a secret file readable by everyone, or not a secret, is refused', async () => {
    const base = { lan: ['lan0'], uplinks: [{ interface: 'up1' }] };
    assert.equal(cpeConfigSchema.safeParse({ ...base, concentrators: [{ address: '198.18.0.1:443', keyId: 'a' }] }).success, false);
    assert.equal(cpeConfigSchema.safeParse({ ...base, concentrators: [{ address: '198.18.0.1:443', keyId: 'a b', secretFile: '/x' }] }).success, false);
    const loose = join(dir, 'loose.secret');
    await writeFile(loose, `hex:${randomBytes(32).toString('hex')}\n`);
    await chmod(loose, 0o644);
    const c = cpeConfigSchema.parse({ ...base, concentrators: [{ address: '198.18.0.1:443', keyId: 'a', secretFile: loose }] });
    await assert.rejects(loadCredentials(c.concentrators), /accessible to every user.*chmod 600/);
    await chmod(loose, 0o600);
    await writeFile(loose, 'my-password\n');
    await assert.rejects(loadCredentials(c.concentrators), /secret file .*hex:/);
  });
});
