import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync, statSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { journaldLine, resolveLogFormat, syslogPriority } from '../../../src/log.js';

test('syslog priorities: fatal 2, error 3, warn 4, info 6, debug and trace 7', () => {
  assert.deepEqual([60, 50, 40, 30, 20, 10].map(syslogPriority), [2, 3, 4, 6, 7, 7]);
  assert.equal(journaldLine('{"level":50,"msg":"x"}\n'), '<3>{"level":50,"msg":"x"}\n');
  assert.equal(journaldLine('not json\n'), '<6>not json\n');
});

test('format: explicit wins; auto is journald only when $JOURNAL_STREAM names this stderr', () => {
  assert.equal(resolveLogFormat('json', { JOURNAL_STREAM: '1:2' }), 'json');
  assert.equal(resolveLogFormat('journald', {}), 'journald');
  assert.equal(resolveLogFormat(undefined, { MPCONVERT_LOG_FORMAT: 'journald' }), 'journald');
  assert.equal(resolveLogFormat('auto', {}), 'json');
  assert.equal(resolveLogFormat('auto', { JOURNAL_STREAM: '0:0' }), 'json');
});

test("a daemon's logger whose stderr is the stream $JOURNAL_STREAM names writes <N>-prefixed lines without a time", () => {
  const dir = mkdtempSync(join(tmpdir(), 'mpc-journal-'));
  try {
    const file = join(dir, 'stderr');
    // O_APPEND: pino's asynchronous write and fatal()'s synchronous flush may overlap; neither overwrites.
    const fd = openSync(file, 'a');
    const st = statSync(file, { bigint: true });
    const log = new URL('../../../src/log.js', import.meta.url).href;
    const script = `import { createLogger } from ${JSON.stringify(log)};
      const l = createLogger({ name: 'cpe' });
      l.info({ a: 1 }, 'started'); l.warn('careful'); l.error('broken'); l.fatal('cannot start'); l.debug('hidden');`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'ignore', fd], env: { ...process.env, JOURNAL_STREAM: `${st.dev}:${st.ino}` } });
    closeSync(fd);
    assert.equal(r.status, 0);
    const lines = readFileSync(file, 'utf8').trimEnd().split('\n');
    // By message: fatal() flushes at once, so it may land before a line still being written.
    const byMsg = Object.fromEntries(lines.map((l) => [(JSON.parse(l.slice(3)) as { msg: string }).msg, l.slice(0, 3)]));
    assert.deepEqual(byMsg, { started: '<6>', careful: '<4>', broken: '<3>', 'cannot start': '<2>' });
    for (const l of lines) assert.ok(!('time' in (JSON.parse(l.slice(3)) as object)), 'journald stamps the entries');
    assert.deepEqual(JSON.parse(lines.find((l) => l.includes('"started"'))!.slice(3)), { level: 30, name: 'cpe', a: 1, msg: 'started' });

    // The same process with another stderr (not the journal): plain JSON lines with their time.
    rmSync(file);
    const fd2 = openSync(file, 'a');
    spawnSync(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'ignore', fd2], env: { ...process.env, JOURNAL_STREAM: `${st.dev}:1` } });
    closeSync(fd2);
    const plain = readFileSync(file, 'utf8').trimEnd().split('\n');
    assert.equal(plain.length, 4);
    assert.ok(plain.every((l) => l.startsWith('{"level":') && 'time' in (JSON.parse(l) as object)));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
