/**
 * RADIUS client, authorizer and accounting (src/concentrator/radius-*.ts) against a scripted RADIUS server on
 * loopback UDP: a forged Access-Accept is dropped (and counted) while the real answer is waited for; concurrent
 * connections of one CPE make one request; answers are cached for Session-Timeout; the wait is bounded and the
 * late answer still cached; failover to the next server; accounting Start / Interim / Stop with byte counts.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { once } from 'node:events';
import {
  AcctStatusType,
  RadiusAttr,
  RadiusCode,
  attrAddress,
  attrUint32,
  decodePacket,
  encodeAccessRequest,
  encodeResponse,
  findAttr,
  readUint32,
  type RadiusAttribute,
  type RadiusPacket,
} from '../../../src/protocol/radius.js';
import { RadiusClient, type RadiusServer } from '../../../src/concentrator/radius-client.js';
import { RadiusAuthorizer, type RadiusAuthorizerSettings } from '../../../src/concentrator/radius-authorizer.js';
import { RadiusAccounting } from '../../../src/concentrator/radius-accounting.js';
import { radiusGate } from '../../../src/policy/radius.js';
import { radiusConfigSchema } from '../../../src/concentrator/radius-config.js';
import { createLogger } from '../../../src/log.js';

const SECRET = Buffer.from('lab-radius-secret-1');
const logger = createLogger({ level: 'silent' });

type Reply = (req: RadiusPacket, raw: Buffer, send: (b: Buffer) => void) => void;

/** A RADIUS server that hands each request to `reply` (which may answer, forge, delay or stay silent). */
async function fakeServer(reply: Reply): Promise<{ port: number; requests: RadiusPacket[]; socket: Socket; set(r: Reply): void }> {
  const socket = createSocket('udp4');
  const requests: RadiusPacket[] = [];
  let current = reply;
  socket.on('message', (msg: Buffer, rinfo: RemoteInfo) => {
    const p = decodePacket(msg);
    requests.push(p);
    current(p, msg, (b) => socket.send(b, rinfo.port, rinfo.address));
  });
  socket.bind(0, '127.0.0.1');
  await once(socket, 'listening');
  servers.push(socket);
  return { port: socket.address().port, requests, socket, set: (r) => (current = r) };
}
const servers: Socket[] = [];
after(() => {
  for (const s of servers) s.close();
});

const answer = (code: number, attributes: RadiusAttribute[] = [], secret = SECRET): Reply => (req, _raw, send) =>
  send(encodeResponse({ code, identifier: req.identifier, attributes, messageAuthenticator: true }, req.authenticator, secret));

const server = (port: number): RadiusServer => ({ host: '127.0.0.1', authPort: port, acctPort: port, secret: SECRET });

function setup(ports: number[], over: Partial<RadiusAuthorizerSettings> = {}, clock = { t: 1_000_000 }) {
  const results: string[] = [];
  const client = new RadiusClient({
    servers: ports.map(server),
    timeoutMs: 150,
    retries: 1,
    requireMessageAuthenticator: false,
    logger,
    onResult: (kind, _s, r) => results.push(`${kind}:${r}`),
  });
  const settings: RadiusAuthorizerSettings = {
    password: 'mpconvert',
    nasIdentifier: 'mpconvert-test',
    maxWaitMs: 2_000,
    cacheTtlS: 300,
    rejectTtlS: 60,
    failTtlS: 10,
    cacheSize: 100,
    concentratorAttributes: { ipv4Type: 192, ipv6Type: 193, hint: true },
    ...over,
  };
  const authorizer = new RadiusAuthorizer(settings, { client, now: () => clock.t });
  return { client, authorizer, results, clock };
}

const cpe = (address: string) => ({ identity: address, cpe: address, local: '198.18.200.1' });

test('a forged Access-Accept (wrong secret) is dropped and counted; the genuine Access-Reject that follows decides', async () => {
  const s = await fakeServer((req, _raw, send) => {
    send(encodeResponse({ code: RadiusCode.AccessAccept, identifier: req.identifier, attributes: [] }, req.authenticator, Buffer.from('guessed')));
    setTimeout(() => answer(RadiusCode.AccessReject)(req, _raw, send), 30);
  });
  const { authorizer, results, client } = setup([s.port]);
  const a = await authorizer.authorize(cpe('198.18.0.2'));
  assert.deepEqual(a.verdict, { kind: 'reject' });
  assert.ok(results.includes('auth:invalid:authenticator'), results.join());
  assert.equal(s.requests.length, 1);
  assert.equal(radiusGate(a.verdict, '198.18.200.1', { failMode: 'open', enforceConcentrators: false })?.code, 'radius-reject');
  // Only forgeries: no answer at all, which is the fail behaviour, never an accept.
  s.set((req, _raw, send) => send(encodeResponse({ code: RadiusCode.AccessAccept, identifier: req.identifier, attributes: [] }, req.authenticator, Buffer.from('guessed'))));
  const b = await authorizer.authorize(cpe('198.18.0.3'));
  assert.deepEqual(b.verdict, { kind: 'unavailable', why: 'no-answer' });
  client.close();
});

test('the Access-Request: User-Name, hidden password, Message-Authenticator, Calling-Station-Id, the concentrator hint', async () => {
  const s = await fakeServer(answer(RadiusCode.AccessAccept));
  const { authorizer, client } = setup([s.port]);
  await authorizer.authorize({ identity: 'key:cpe-7', cpe: '198.18.0.2', keyId: 'cpe-7', local: '198.18.200.1' });
  const r = s.requests[0] as RadiusPacket;
  assert.equal(r.code, RadiusCode.AccessRequest);
  assert.equal(r.attributes[0]?.type, RadiusAttr.MessageAuthenticator);
  assert.equal(findAttr(r, RadiusAttr.UserName)?.toString(), 'cpe-7', 'with authentication on, the key id');
  assert.equal(findAttr(r, RadiusAttr.CallingStationId)?.toString(), '198.18.0.2');
  assert.equal(findAttr(r, RadiusAttr.UserPassword)?.length, 16);
  assert.deepEqual(findAttr(r, 192), Buffer.from([198, 18, 200, 1]));
  client.close();
});

test('concurrent connections of one CPE wait for one request; the answer is cached for its Session-Timeout', async () => {
  const s = await fakeServer((req, raw, send) => setTimeout(() => answer(RadiusCode.AccessAccept, [attrUint32(RadiusAttr.SessionTimeout, 30)])(req, raw, send), 50));
  const { authorizer, clock, client } = setup([s.port]);
  const all = await Promise.all(Array.from({ length: 5 }, () => authorizer.authorize(cpe('198.18.0.2'))));
  assert.equal(s.requests.length, 1, 'one Access-Request for five connections');
  for (const a of all) assert.deepEqual(a.verdict, { kind: 'accept', concentrators: [] });
  assert.equal((await authorizer.authorize(cpe('198.18.0.2'))).source, 'cache');
  clock.t += 29_000;
  assert.equal((await authorizer.authorize(cpe('198.18.0.2'))).source, 'cache');
  clock.t += 2_000;
  assert.equal((await authorizer.authorize(cpe('198.18.0.2'))).source, 'answer', 'Session-Timeout over: asked again');
  assert.equal(s.requests.length, 2);
  client.close();
});

test('no connection waits past maxWaitMs; the late answer is cached for the next ones', async () => {
  const s = await fakeServer((req, raw, send) => setTimeout(() => answer(RadiusCode.AccessAccept)(req, raw, send), 200));
  const { authorizer, client } = setup([s.port], { maxWaitMs: 100 });
  const t0 = performance.now();
  const a = await authorizer.authorize(cpe('198.18.0.2'));
  const waited = performance.now() - t0;
  assert.deepEqual(a.verdict, { kind: 'unavailable', why: 'timeout' });
  assert.equal(a.source, 'wait-bound');
  assert.ok(waited < 300, `waited ${waited} ms`);
  assert.equal(radiusGate(a.verdict, 'x', { failMode: 'closed', enforceConcentrators: false })?.code, 'radius-unavailable');
  assert.equal(radiusGate(a.verdict, 'x', { failMode: 'open', enforceConcentrators: false }), undefined);
  // Poll until the late answer is in the cache.
  for (let i = 0; i < 100 && authorizer.cached === 0; i++) await new Promise((r) => setTimeout(r, 20));
  const b = await authorizer.authorize(cpe('198.18.0.2'));
  assert.equal(b.source, 'cache');
  assert.equal(b.verdict.kind, 'accept');
  assert.equal(s.requests.length, 2, 'the first try, then its retransmission (150 ms), answered by the reply to the first');
  client.close();
});

test('failover: a silent first server is retried, then the second answers and is asked first from then on', async () => {
  const dead = await fakeServer(() => {});
  const alive = await fakeServer(answer(RadiusCode.AccessAccept, [attrAddress(192, '198.18.200.1'), attrAddress(192, '198.18.201.1')]));
  const { authorizer, client, results } = setup([dead.port, alive.port], { cacheTtlS: 1 });
  const a = await authorizer.authorize(cpe('198.18.0.2'));
  assert.deepEqual(a.verdict, { kind: 'accept', concentrators: ['198.18.200.1', '198.18.201.1'] });
  assert.equal(dead.requests.length, 2, 'the first try and one retry');
  assert.deepEqual(dead.requests[0]?.authenticator, dead.requests[1]?.authenticator, 'a retry is the same packet');
  assert.equal(results.filter((r) => r === 'auth:timeout').length, 2);
  await authorizer.authorize(cpe('198.18.0.9'));
  assert.equal(dead.requests.length, 2, 'the server that answered is asked first');
  assert.equal(radiusGate(a.verdict, '198.18.202.1', { failMode: 'open', enforceConcentrators: true })?.code, 'radius-other-concentrator');
  assert.equal(radiusGate(a.verdict, '198.18.201.1', { failMode: 'open', enforceConcentrators: true }), undefined);
  client.close();
});

test('accounting: Start, Interim-Update and Stop with the session bytes (Gigawords above 2^32) and connection count', async () => {
  const s = await fakeServer((req, _raw, send) => send(encodeResponse({ code: RadiusCode.AccountingResponse, identifier: req.identifier, attributes: [] }, req.authenticator, SECRET)));
  const client = new RadiusClient({ servers: [server(s.port)], timeoutMs: 200, retries: 1, requireMessageAuthenticator: false, logger });
  const live = { up: 0, down: 0 };
  const records: string[] = [];
  const acct = new RadiusAccounting(
    { interimS: 1, stopAfterIdleS: 0, nasIdentifier: 'mpconvert-test' },
    { client, now: Date.now, liveBytes: () => live, onRecord: (status, ok) => records.push(`${status}:${ok}`) },
  );
  acct.opened('198.18.0.2', '198.18.0.2', '198.18.0.2', [Buffer.from('class-1')]);
  acct.opened('198.18.0.2', '198.18.0.2', '198.18.0.2', [Buffer.from('class-1')]);
  live.up = 5 * 2 ** 32 + 7;
  live.down = 1234;
  const status = (p: RadiusPacket) => readUint32(findAttr(p, RadiusAttr.AcctStatusType) as Buffer);
  for (let i = 0; i < 200 && !s.requests.some((p) => status(p) === AcctStatusType.InterimUpdate); i++) await new Promise((r) => setTimeout(r, 20));
  const interim = s.requests.find((p) => status(p) === AcctStatusType.InterimUpdate) as RadiusPacket;
  assert.equal(readUint32(findAttr(interim, RadiusAttr.AcctInputOctets) as Buffer), 7);
  assert.equal(readUint32(findAttr(interim, RadiusAttr.AcctInputGigawords) as Buffer), 5);
  assert.equal(readUint32(findAttr(interim, RadiusAttr.AcctOutputOctets) as Buffer), 1234);
  live.up = 0;
  live.down = 0;
  acct.closed('198.18.0.2', 100, 200);
  acct.closed('198.18.0.2', 1000, 2000);
  for (let i = 0; i < 200 && !s.requests.some((p) => status(p) === AcctStatusType.Stop); i++) await new Promise((r) => setTimeout(r, 20));
  const start = s.requests[0] as RadiusPacket;
  assert.equal(status(start), AcctStatusType.Start);
  assert.equal(findAttr(start, RadiusAttr.Class)?.toString(), 'class-1', 'the Class of the Access-Accept is echoed');
  const stop = s.requests.find((p) => status(p) === AcctStatusType.Stop) as RadiusPacket;
  assert.equal(readUint32(findAttr(stop, RadiusAttr.AcctInputOctets) as Buffer), 1100);
  assert.equal(readUint32(findAttr(stop, RadiusAttr.AcctOutputOctets) as Buffer), 2200);
  assert.equal(readUint32(findAttr(stop, RadiusAttr.AcctLinkCount) as Buffer), 2);
  assert.equal(findAttr(stop, RadiusAttr.AcctSessionId)?.toString(), findAttr(start, RadiusAttr.AcctSessionId)?.toString());
  await acct.stop();
  assert.ok(records.includes('start:true') && records.includes('stop:true'), records.join());
  client.close();
});

test('close() ends a request waiting on a silent server at once (a stopping concentrator does not wait out the tries)', async () => {
  const dead = await fakeServer(() => {});
  const client = new RadiusClient({ servers: [server(dead.port)], timeoutMs: 5_000, retries: 3, requireMessageAuthenticator: false, logger });
  const t0 = performance.now();
  const pending = client.request('auth', (identifier) => ({ packet: encodeAccessRequest({ identifier, authenticator: Buffer.alloc(16), attributes: [] }, SECRET), authenticator: Buffer.alloc(16) }));
  for (let i = 0; i < 100 && dead.requests.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
  client.close();
  assert.equal(await pending, undefined);
  assert.ok(performance.now() - t0 < 2_000);
});

test('the radius settings: defaults, and what the schema refuses', () => {
  const c = radiusConfigSchema.parse({ servers: [{ host: '198.19.0.12', secretFile: '/etc/mpconvert/radius.secret' }] });
  assert.equal(c.servers[0]?.authPort, 1812);
  assert.equal(c.servers[0]?.acctPort, 1813);
  assert.equal(c.failMode, 'closed');
  assert.equal(c.maxWaitMs, 3_000);
  assert.deepEqual(c.accounting, { enabled: true, interimS: 300, stopAfterIdleS: 60 });
  assert.deepEqual(c.concentratorAttributes, { ipv4Type: 192, ipv6Type: 193, hint: false, enforce: false });
  assert.equal(radiusConfigSchema.safeParse({ servers: [] }).success, false, 'at least one server');
  assert.equal(radiusConfigSchema.safeParse({ servers: [{ host: 'radius.example', secretFile: 'x' }] }).success, false, 'an address, not a name');
  assert.equal(radiusConfigSchema.safeParse({ servers: [{ host: '198.19.0.12', secretFile: 'x' }], failMode: 'maybe' }).success, false);
});

test('sourceAddress: requests leave from the configured address', async () => {
  const from: string[] = [];
  const s = await fakeServer((req, raw, send) => answer(RadiusCode.AccessAccept)(req, raw, send));
  s.socket.on('message', (_m, rinfo) => from.push(rinfo.address));
  const client = new RadiusClient({ servers: [server(s.port)], timeoutMs: 300, retries: 0, requireMessageAuthenticator: false, logger, sourceAddress: '127.0.0.2' });
  const authorizer = new RadiusAuthorizer(
    { password: 'p', nasIdentifier: 'n', maxWaitMs: 1_000, cacheTtlS: 1, rejectTtlS: 1, failTtlS: 1, cacheSize: 10, concentratorAttributes: { ipv4Type: 192, ipv6Type: 193, hint: false } },
    { client, now: Date.now },
  );
  assert.equal((await authorizer.authorize(cpe('198.18.0.2'))).verdict.kind, 'accept');
  assert.deepEqual(from, ['127.0.0.2']);
  client.close();
});

test('a request that cannot be built (a User-Name over 253 octets) is no answer, not a crash, and the next one is asked afresh later', async () => {
  const s = await fakeServer(answer(RadiusCode.AccessAccept));
  const { authorizer, client } = setup([s.port], { failTtlS: 1 });
  const long = 'k'.repeat(300);
  const a = await authorizer.authorize({ identity: `key:${long}`, cpe: '198.18.0.2', keyId: long, local: '198.18.200.1' });
  assert.deepEqual(a.verdict, { kind: 'unavailable', why: 'no-answer' });
  assert.equal(authorizer.inflight, 0, 'nothing left in flight');
  assert.equal(s.requests.length, 0);
  client.close();
});
