/**
 * The session log: destinations left out unless configured (RFC 6888 REQ-12), per-connection lines off by
 * default with port blocks, the file sink reopened after a move (rotation), the syslog framing, the config keys.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, renameSync, rmSync, existsSync, statSync, writeFileSync } from 'node:fs';
import { ConfigError } from '../../../src/control/config-file.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { concentratorConfigSchema } from '../../../src/concentrator/config.js';
import { spawn } from 'node:child_process';
import { closeFd, sendToUnix, unixDatagramSocket } from '../../../src/platform/linux/ffi.js';
import { requireTool } from '../../support/capabilities.js';
import { SessionLog, createSessionLog, fileSink, redact, syslogMessage, syslogSink, wanted, type SessionLine, type SessionLogSink } from '../../../src/concentrator/session-log.js';
import { silentLogger } from '../../../src/log.js';

const base = { listen: ['127.0.0.1:0'], allow: ['127.0.0.0/8'] };
const settings = (extra: Record<string, unknown> = {}) => concentratorConfigSchema.parse({ ...base, ...extra });
const open: SessionLine = { event: 'open', session: 1, cpe: '198.18.1.2', external: '198.19.0.128:2001', destination: '198.19.0.11:8080' };

test('config: defaults (stderr, no destinations) and the checks', () => {
  const c = settings();
  assert.equal(c.sessionLogging.sink, 'stderr');
  assert.equal(c.sessionLogging.destinations, false);
  assert.equal(c.portBlocks, undefined);
  const bad = concentratorConfigSchema.safeParse({ ...base, sessionLogging: { sink: 'file' } });
  assert.ok(!bad.success && /sessionLogging\.file/.test(bad.error.message));
  const noPool = concentratorConfigSchema.safeParse({ ...base, portBlocks: {} });
  assert.ok(!noPool.success && /pool source-address mode/.test(noPool.error.message));
  const pb = settings({ sourcePool: { addresses: ['198.19.0.128'] }, portBlocks: {} }).portBlocks;
  assert.deepEqual(pb, { size: 256, maxBlocksPerCpe: 4, first: 1024, last: 65535, releaseAfterS: 120 });
  const big = concentratorConfigSchema.safeParse({ ...base, sourcePool: { addresses: ['198.19.0.128'] }, portBlocks: { first: 2000, last: 2010, size: 16 } });
  assert.ok(!big.success && /does not fit/.test(big.error.message));
});

test('destinations are left out unless configured (RFC 6888 REQ-12)', () => {
  assert.equal('destination' in redact(open, settings()), false);
  assert.deepEqual(redact(open, settings({ sessionLogging: { destinations: true } })), open);
  const refused = { event: 'refused', reason: 'dial:ECONNREFUSED', destination: '198.19.0.11:8080' };
  assert.deepEqual(redact(refused, settings()), { event: 'refused', reason: 'dial:ECONNREFUSED' });
});

test('per-connection lines: on without port blocks, off with them unless asked; block lines always', () => {
  const pool = { sourcePool: { addresses: ['198.19.0.128'] } };
  const block = { event: 'block-allocate', cpe: '198.18.1.2', external: '198.19.0.128', ports: '2048-2303', blocks: 1 };
  assert.equal(wanted(open, settings()), true);
  assert.equal(wanted(open, settings({ ...pool, portBlocks: {} })), false);
  assert.equal(wanted({ ...open, event: 'close' }, settings({ ...pool, portBlocks: {} })), false);
  assert.equal(wanted(block, settings({ ...pool, portBlocks: {} })), true);
  assert.equal(wanted({ event: 'refused' }, settings({ ...pool, portBlocks: {} })), true);
  assert.equal(wanted(open, settings({ ...pool, portBlocks: {}, sessionLogging: { connections: true } })), true);
  const lines: SessionLine[] = [];
  const sink: SessionLogSink = { write: (l) => lines.push(l), reopen: () => {}, close: async () => {} };
  const log = new SessionLog(sink, () => settings({ ...pool, portBlocks: {} }));
  log.info(open);
  log.info(block);
  assert.deepEqual(lines, [block]);
});

test('file sink: JSON lines with an ISO time; after a move and reopen() the next lines go to a new file', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mpc-sesslog-'));
  try {
    const file = join(dir, 'sub', 'sessions.log');
    const sink = fileSink(file, silentLogger());
    sink.write({ event: 'block-allocate', ports: '2048-2303' });
    const until = async (f: () => boolean) => {
      for (const deadline = Date.now() + 5_000; !f(); ) {
        assert.ok(Date.now() < deadline, 'timed out');
        await new Promise((r) => setTimeout(r, 10));
      }
    };
    await until(() => existsSync(file) && readFileSync(file, 'utf8').includes('2048-2303'));
    const first = JSON.parse(readFileSync(file, 'utf8').trim()) as Record<string, unknown>;
    assert.match(String(first['time']), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.equal(first['log'], 'session');
    assert.equal(first['level'], undefined, 'no pino level in the file');
    renameSync(file, `${file}.1`);
    sink.reopen();
    sink.write({ event: 'block-release', ports: '2048-2303' });
    await until(() => existsSync(file) && readFileSync(file, 'utf8').includes('block-release'));
    await sink.close();
    assert.equal(readFileSync(`${file}.1`, 'utf8').trim().split('\n').length, 1, 'the moved file kept its line and got no more');
    assert.equal(readFileSync(file, 'utf8').trim().split('\n').length, 1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('file sink: a path that cannot be opened for appending is a configuration error at start, with the path', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mpc-sesslog-'));
  try {
    const file = join(dir, 'plain');
    writeFileSync(file, '');
    assert.throws(() => fileSink(join(file, 'sessions.log'), silentLogger()), (err: unknown) => err instanceof ConfigError && err.message.includes(join(file, 'sessions.log')));
    const ok = join(dir, 'sessions.log');
    await fileSink(ok, silentLogger()).close();
    assert.equal(statSync(ok).mode & 0o777 & ~0o640, 0, 'created no wider than 0640');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('syslog: RFC 3164 framing with facility and tag; a refused send is dropped, not thrown', () => {
  const msg = syslogMessage({ facility: 'local0', tag: 'mpconvert', pid: 42, host: 'conc', time: new Date(2026, 11, 7, 9, 5, 3), msg: '{"a":1}' });
  assert.equal(msg, '<134>Dec  7 09:05:03 conc mpconvert[42]: {"a":1}');
  const sent: Array<[string, string]> = [];
  const sink = syslogSink({ socket: '/dev/log', facility: 'daemon', tag: 't' }, (p, d) => sent.push([p, d.toString()]), silentLogger(), () => Date.UTC(2026, 11, 7));
  sink.write({ event: 'block-allocate' });
  assert.equal(sent[0]![0], '/dev/log');
  assert.match(sent[0]![1], /^<30>Dec {2}7 \d\d:00:00 \S+ t\[\d+\]: \{"time":"2026-12-07T00:00:00.000Z","log":"session","event":"block-allocate"\}$/);
  const failing = syslogSink({ socket: '/nonexistent', facility: 'daemon', tag: 't' }, () => {
    throw new Error('ENOENT');
  }, silentLogger());
  failing.write({ event: 'x' });
});

test('syslog sink over a real AF_UNIX datagram socket (socat as the syslog daemon): one datagram per line', async (t) => {
  if (!requireTool(t, 'socat')) return;
  const dir = mkdtempSync(join(tmpdir(), 'mpc-syslog-'));
  const socket = join(dir, 'log');
  const socat = spawn('socat', ['-u', `UNIX-RECV:${socket}`, 'STDOUT'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  socat.stdout.on('data', (d: Buffer) => (out += d.toString()));
  let fd: number | undefined;
  try {
    const until = async (f: () => boolean, what: string) => {
      for (const deadline = Date.now() + 5_000; !f(); ) {
        assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    };
    await until(() => existsSync(socket), 'socat to bind its socket');
    const config = concentratorConfigSchema.parse({ ...base, sessionLogging: { sink: 'syslog', syslog: { socket, facility: 'local3', tag: 'mpc-test' } } });
    const log = createSessionLog(config, { logger: silentLogger(), settings: () => config, sendDatagram: (p, d) => sendToUnix((fd ??= unixDatagramSocket()), p, d) });
    assert.ok(log);
    log.info(open);
    log.info({ event: 'close', session: 1 });
    // socat writes each datagram as it came, without a separator.
    const messages = () => out.split(/(?=<158>)/).filter((m) => m.length > 0);
    await until(() => messages().length === 2, 'two datagrams');
    const [first, second] = messages() as [string, string];
    assert.match(first, /^<158>\w{3} [ \d]\d \d\d:\d\d:\d\d \S+ mpc-test\[\d+\]: \{"time":"[^"]+","log":"session","event":"open"/, 'local3.info = 19 * 8 + 6');
    assert.ok(!first.includes('198.19.0.11'), 'no destination');
    assert.match(second, /"event":"close"/);
  } finally {
    if (fd !== undefined) closeFd(fd);
    socat.kill();
    rmSync(dir, { recursive: true, force: true });
  }
});
