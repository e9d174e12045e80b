import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { systemdNotifier } from '../../../src/control/notify.js';
import { runDaemon, type DaemonIo, type DaemonRole } from '../../../src/control/daemon.js';
import { silentLogger } from '../../../src/log.js';

/**
 * A stand-in for systemd's notification socket: socat receives the datagrams on an AF_UNIX datagram socket
 * (a path, or an abstract name) and prints them. Every message ends with a newline, so the text splits into
 * messages at blank-line-free boundaries: we collect lines.
 */
function receiver(address: string): { proc: ChildProcess; text: () => string; waitFor: (re: RegExp) => Promise<string> } {
  const proc = spawn('socat', ['-u', address.startsWith('@') ? `ABSTRACT-RECV:${address.slice(1)}` : `UNIX-RECV:${address}`, 'STDOUT'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let text = '';
  proc.stdout!.on('data', (d: Buffer) => (text += d.toString('utf8')));
  const waitFor = async (re: RegExp): Promise<string> => {
    const deadline = Date.now() + 10_000;
    while (!re.test(text)) {
      if (Date.now() > deadline) throw new Error(`no ${re} in what the socket received: ${JSON.stringify(text)}`);
      await new Promise((r) => setTimeout(r, 10));
    }
    return text;
  };
  return { proc, text: () => text, waitFor };
}

async function until(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function fakeIo(notifier: DaemonIo['notifier']) {
  const handlers = new Map<string, Set<() => void>>();
  const io = {
    lines: [] as string[],
    exits: [] as number[],
    write: (line: string) => void io.lines.push(line),
    exit: (code: number) => void io.exits.push(code),
    on: (s: NodeJS.Signals, h: () => void) => void (handlers.get(s) ?? handlers.set(s, new Set()).get(s)!).add(h),
    off: (s: NodeJS.Signals, h: () => void) => void handlers.get(s)?.delete(h),
    signal: (s: NodeJS.Signals) => [...(handlers.get(s) ?? [])].forEach((h) => h()),
    ...(notifier ? { notifier } : {}),
  };
  return io;
}

test('sd_notify over a path socket: READY=1 once started, RELOADING=1 then READY=1 around a reload, STOPPING=1 with the stop budget', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mpc-notify-'));
  const path = join(dir, 'notify.sock');
  const r = receiver(path);
  try {
    await until(() => existsSync(path), 'socat to bind the socket');
    const notifier = systemdNotifier({ NOTIFY_SOCKET: path }, silentLogger());
    const io = fakeIo(notifier);
    let reloads = 0;
    let release!: () => void;
    const reloadGate = new Promise<void>((res) => (release = res));
    const role: DaemonRole = {
      start: async () => ({ listen: ['198.18.200.1:5000'] }),
      stop: async () => {},
      reload: async () => {
        reloads++;
        await reloadGate;
      },
      stopBudgetMs: () => 25_000,
    };
    const run = runDaemon(role, silentLogger(), io);
    const ready = await r.waitFor(/READY=1/);
    assert.match(ready, /^READY=1\nSTATUS=running \{"listen":\["198\.18\.200\.1:5000"\]\}\nMAINPID=\d+\n$/);
    assert.equal(Number(/MAINPID=(\d+)/.exec(ready)![1]), process.pid);
    assert.equal(io.lines.length, 1, 'the ready line on stdout too');

    const before = process.hrtime.bigint() / 1000n;
    io.signal('SIGHUP');
    await r.waitFor(/RELOADING=1/);
    // The reload is under way: no READY=1 yet, and a second SIGHUP is queued, not run alongside.
    io.signal('SIGHUP');
    assert.equal(r.text().match(/READY=1/g)!.length, 1);
    assert.equal(reloads, 1);
    const usec = BigInt(/MONOTONIC_USEC=(\d+)/.exec(r.text())![1]!);
    assert.ok(usec >= before && usec <= process.hrtime.bigint() / 1000n, 'MONOTONIC_USEC is CLOCK_MONOTONIC now');
    release();
    await r.waitFor(/(READY=1[\s\S]*){3}/);
    assert.equal(reloads, 2, 'the SIGHUP received during the reload ran one more reload');
    assert.equal(r.text().match(/RELOADING=1/g)!.length, 2);
    assert.match(r.text(), /STATUS=running; configuration reloaded/);

    io.signal('SIGTERM');
    await run;
    const all = await r.waitFor(/STOPPING=1/);
    assert.match(all, /STOPPING=1\nSTATUS=stopping: draining connections\nEXTEND_TIMEOUT_USEC=25000000\n$/);
    assert.deepEqual(io.exits, [0]);
  } finally {
    r.proc.kill();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('sd_notify over an abstract socket (@name); a reload that fails still ends with READY=1 and says why', async () => {
  const name = `@mpc-notify-${process.pid}-${Date.now()}`;
  const r = receiver(name);
  try {
    const notifier = systemdNotifier({ NOTIFY_SOCKET: name }, silentLogger());
    // socat binds asynchronously: send until one arrives.
    const deadline = Date.now() + 10_000;
    while (!r.text().includes('STATUS=probe') && Date.now() < deadline) {
      notifier.status('probe');
      await new Promise((res) => setTimeout(res, 20));
    }
    const io = fakeIo(notifier);
    const role: DaemonRole = {
      start: async () => ({}),
      stop: async () => {},
      reload: async () => {
        throw new Error('Invalid configuration in /etc/mpconvert/cpe.yaml');
      },
    };
    const run = runDaemon(role, silentLogger(), io);
    await r.waitFor(/READY=1/);
    io.signal('SIGHUP');
    await r.waitFor(/reload failed/);
    assert.match(r.text(), /RELOADING=1\nMONOTONIC_USEC=\d+\nSTATUS=reloading the configuration\nREADY=1\nSTATUS=running; reload failed, the previous configuration stays: Invalid configuration in \/etc\/mpconvert\/cpe\.yaml\n/);
    io.signal('SIGTERM');
    await run;
    await r.waitFor(/STOPPING=1\nSTATUS=stopping: draining connections\n$/);
  } finally {
    r.proc.kill();
  }
});

test('no NOTIFY_SOCKET: nothing is sent; an unreachable one is reported once and the daemon keeps running', async () => {
  const warnings: string[] = [];
  const logger = silentLogger();
  logger.warn = ((...args: unknown[]) => void warnings.push(String(args[1]))) as typeof logger.warn;
  const none = systemdNotifier({}, logger);
  none.ready('x');
  const gone = systemdNotifier({ NOTIFY_SOCKET: join(tmpdir(), `mpc-no-such-socket-${process.pid}`) }, logger);
  gone.ready('x');
  gone.stopping(1000);
  gone.close();
  assert.deepEqual(warnings, ['cannot notify the service manager (NOTIFY_SOCKET)']);
});
