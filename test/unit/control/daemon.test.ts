import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runDaemon, type DaemonIo, type DaemonRole } from '../../../src/control/daemon.js';
import { silentLogger } from '../../../src/log.js';

/** A process stand-in: signal handlers, the ready line and the exit code. */
function fakeIo() {
  const handlers = new Map<string, Set<() => void>>();
  const io = {
    lines: [] as string[],
    exits: [] as number[],
    write: (line: string) => void io.lines.push(line),
    exit: (code: number) => void io.exits.push(code),
    on: (s: NodeJS.Signals, h: () => void) => void (handlers.get(s) ?? handlers.set(s, new Set()).get(s)!).add(h),
    off: (s: NodeJS.Signals, h: () => void) => void handlers.get(s)?.delete(h),
    signal(s: NodeJS.Signals): boolean {
      const hs = [...(handlers.get(s) ?? [])];
      for (const h of hs) h();
      return hs.length > 0;
    },
  };
  return io satisfies DaemonIo;
}

function deferred() {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

test('a stop signal during start-up is handled: the start finishes, the role stops, no ready line, exit 0', async () => {
  const io = fakeIo();
  const started = deferred();
  const calls: string[] = [];
  const role: DaemonRole = {
    start: async () => {
      calls.push('start');
      await started.promise;
      calls.push('started');
      return { port: 1 };
    },
    stop: async (reason) => void calls.push(`stop ${reason}`),
  };
  const run = runDaemon(role, silentLogger(), io);
  assert.ok(io.signal('SIGTERM'), 'SIGTERM is handled from the first instant');
  started.resolve();
  await run;
  assert.deepEqual(calls, ['start', 'started', 'stop SIGTERM']);
  assert.deepEqual(io.lines, []);
  assert.deepEqual(io.exits, [0]);
});

test('ready line once started; SIGTERM stops once, a second signal while stopping is ignored', async () => {
  const io = fakeIo();
  const stopping = deferred();
  let stops = 0;
  const role: DaemonRole = {
    start: async () => ({ listen: ['198.18.200.1:5000'] }),
    stop: async () => {
      stops++;
      await stopping.promise;
    },
  };
  const run = runDaemon(role, silentLogger(), io);
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(io.lines, ['ready {"listen":["198.18.200.1:5000"]}\n']);
  io.signal('SIGTERM');
  assert.ok(io.signal('SIGINT'), 'a second signal is still caught (the default action would skip the cleanup)');
  stopping.resolve();
  await run;
  assert.equal(stops, 1);
  assert.deepEqual(io.exits, [0]);
  assert.equal(io.signal('SIGTERM'), false, 'handlers removed after the stop');
});

test('a failed start removes what was set up and exits 1', async () => {
  const io = fakeIo();
  const calls: string[] = [];
  const role: DaemonRole = {
    start: async () => {
      throw new Error('no such interface: up9');
    },
    stop: async (reason) => void calls.push(`stop ${reason}`),
  };
  await runDaemon(role, silentLogger(), io);
  assert.deepEqual(calls, ['stop start failed']);
  assert.deepEqual(io.exits, [1]);
  assert.deepEqual(io.lines, []);
});

test('SIGHUP: reload when the role has one, else logged; never the default action', async () => {
  const io = fakeIo();
  let reloads = 0;
  const run = runDaemon({ start: async () => ({}), stop: async () => {}, reload: async () => void reloads++ }, silentLogger(), io);
  await new Promise((r) => setImmediate(r));
  assert.ok(io.signal('SIGHUP'));
  assert.equal(reloads, 1);
  io.signal('SIGTERM');
  await run;

  const io2 = fakeIo();
  const run2 = runDaemon({ start: async () => ({}), stop: async () => {} }, silentLogger(), io2);
  assert.ok(io2.signal('SIGHUP'), 'SIGHUP during start-up is caught');
  await new Promise((r) => setImmediate(r));
  assert.ok(io2.signal('SIGHUP'), 'SIGHUP without a reload is caught');
  io2.signal('SIGTERM');
  await run2;
  assert.deepEqual(io2.exits, [0]);
});

test('a stop that throws is logged and exits 1', async () => {
  const io = fakeIo();
  const run = runDaemon({ start: async () => ({}), stop: async () => { throw new Error('nft: busy'); } }, silentLogger(), io);
  await new Promise((r) => setImmediate(r));
  io.signal('SIGTERM');
  await run;
  assert.deepEqual(io.exits, [1]);
});

test('a known start failure is logged as one line naming the problem, without a stack trace; a program error keeps its stack', async () => {
  const { pino } = await import('pino');
  const { ConfigError } = await import('../../../src/control/config-file.js');
  for (const [err, wantStack] of [
    [new ConfigError('listen 198.18.250.1:5000: the address is not an address of this host (EADDRNOTAVAIL)'), false],
    [new TypeError('x is undefined'), true],
  ] as const) {
    const lines: string[] = [];
    const logger = pino({ level: 'info' }, { write: (l: string) => void lines.push(l) });
    const io = fakeIo();
    await runDaemon({ start: async () => Promise.reject(err), stop: async () => {} }, logger, io);
    assert.deepEqual(io.exits, [1]);
    const fatal = lines.map((l) => JSON.parse(l) as { level: number; msg: string }).find((l) => l.level === 60);
    assert.ok(fatal, `a fatal line: ${lines.join('')}`);
    assert.ok(JSON.stringify(fatal).includes(err.message), JSON.stringify(fatal));
    if (!wantStack) assert.ok(fatal.msg.includes(err.message), `the message itself names the problem: ${fatal.msg}`);
    assert.equal(JSON.stringify(fatal).includes('    at '), wantStack, JSON.stringify(fatal));
  }
});
