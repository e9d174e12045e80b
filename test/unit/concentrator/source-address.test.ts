/**
 * Source-address modes through the Concentrator on the fake platform: the configuration (backward compatible
 * with `sourcePool`), the server dial's local address and IP_TRANSPARENT, the spoof refusal (counted, nothing
 * dialled), and the return path installed at start and removed at stop.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { Concentrator } from '../../../src/concentrator/concentrator.js';
import { concentratorConfigSchema, sourceAddressMode, type ConcentratorConfigInput } from '../../../src/concentrator/config.js';
import { nptv6Mapping, translate } from '../../../src/policy/nptv6.js';
import { returnPathRuleset } from '../../../src/concentrator/return-path.js';
import { createMetrics } from '../../../src/control/metrics.js';
import { silentLogger } from '../../../src/log.js';
import { encodeMpConvert } from '../../../src/protocol/index.js';
import { fakeKernel, fakeSockets } from '../../support/fake-platform.js';

const base = { listen: ['127.0.0.1:0'], allow: ['127.0.0.0/8'] };
const parse = (extra: Partial<ConcentratorConfigInput>) => concentratorConfigSchema.safeParse({ ...base, ...extra });

test('config: no sourceAddress keeps the sourcePool behaviour; explicit modes are checked', () => {
  const none = concentratorConfigSchema.parse(base);
  assert.equal(sourceAddressMode(none), 'kernel');
  assert.equal(sourceAddressMode(concentratorConfigSchema.parse({ ...base, sourcePool: { addresses: ['198.19.0.128'] } })), 'pool');
  const t = concentratorConfigSchema.parse({ ...base, sourceAddress: { mode: 'transparent' } });
  assert.equal(sourceAddressMode(t), 'transparent');
  assert.equal(t.sourceAddress?.ipv4, 'cpe');
  assert.equal(t.sourceAddress?.ipv6, 'host');
  const pool = parse({ sourceAddress: { mode: 'pool' } });
  assert.ok(!pool.success && /sourcePool\.addresses/.test(pool.error.message));
  const npt = parse({ sourceAddress: { mode: 'nptv6' } });
  assert.ok(!npt.success && /nptv6\.prefixes/.test(npt.error.message));
  const short = parse({ sourceAddress: { mode: 'nptv6', customers: [{ cpe: '127.0.0.0/8', prefixes: ['2001:db8::/64', '2001:db8:1::/64'] }], nptv6: { prefixes: ['2001:db8:300::/64'] } } });
  assert.ok(!short.success && /no external \/64 left .*2001:db8:1::\/64/.test(short.error.message), 'a customer prefix without an external one is a config error');
  assert.ok(!parse({ sourceAddress: { mode: 'transparent', prefixHost: '198.18.0.1' } }).success, 'prefixHost is IPv6');
  assert.ok(!parse({ sourceAddress: { mode: 'transparent', customers: [{ cpe: 'x', prefixes: ['198.18.0.0/24'] }] } }).success);
});

test('return path ruleset: only packets of transparent sockets are marked, other marks kept', () => {
  const text = returnPathRuleset(0x6d70);
  assert.match(text, /type filter hook prerouting priority mangle/);
  assert.match(text, /meta l4proto tcp socket transparent 1 meta mark set meta mark \| 0x6d70 accept/);
});

async function run(sourceAddress: ConcentratorConfigInput['sourceAddress'], signalling: Buffer) {
  const upstream = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => {});
    s.resume();
    s.on('end', () => s.end('pong'));
  });
  upstream.listen(0, '127.0.0.1');
  await once(upstream, 'listening');
  const port = (upstream.address() as net.AddressInfo).port;
  const sockets = fakeSockets({ route: () => ({ host: '127.0.0.1', port }) });
  const kernel = fakeKernel();
  const metrics = createMetrics('concentrator');
  const config = concentratorConfigSchema.parse({ ...base, sourceAddress });
  const c = new Concentrator(config, { sockets, kernel, logger: silentLogger(), metrics });
  await c.start();
  const installed = [...kernel.calls];
  try {
    const s = net.connect({ port: c.addresses[0]!.port, host: '127.0.0.1', allowHalfOpen: true });
    await once(s, 'connect');
    const parts: Buffer[] = [];
    s.on('data', (d: Buffer) => parts.push(d));
    const how = new Promise<string>((resolve) => {
      s.once('end', () => resolve('end'));
      s.once('error', () => resolve('reset'));
    });
    s.end(signalling);
    const outcome = await how;
    s.destroy();
    return { outcome, received: Buffer.concat(parts), dials: sockets.dials, metrics: await metrics.registry.metrics(), installed, kernel, c };
  } finally {
    await c.stop(0);
    upstream.close();
  }
}

const ie = (dest: string, src?: string) =>
  encodeMpConvert([{ type: 0, direction: 'destination', address: dest, port: 80 }, ...(src ? [{ type: 0 as const, direction: 'source' as const, address: src, port: 4000 }] : [])]);
const customers = [{ cpe: '127.0.0.0/8', prefixes: ['198.18.0.0/24', '2001:db8::/64'] }];

test('transparent, ipv4 host: the server leg is bound to the source IE address with IP_TRANSPARENT; the return path comes and goes', async () => {
  const r = await run({ mode: 'transparent', ipv4: 'host', customers }, ie('198.19.0.11', '198.18.0.2'));
  assert.equal(r.outcome, 'end');
  assert.ok(r.received.toString().endsWith('pong'));
  assert.equal(r.dials.length, 1);
  assert.equal(r.dials[0]!.localAddress, '198.18.0.2');
  assert.equal(r.dials[0]!.transparent, true);
  assert.ok(r.installed.some((l) => l.startsWith('nft.applyTable ["inet","mpconvert_conc_return"')), r.installed.join('\n'));
  assert.equal(r.installed.filter((l) => l.startsWith('routes.addRule')).length, 2, 'one fwmark rule per family');
  assert.equal(r.installed.filter((l) => l.startsWith('routes.addRoute') && l.includes('"type":"local"')).length, 2);
  const removed = r.kernel.calls.slice(r.installed.length);
  assert.ok(removed.some((l) => l.startsWith('nft.deleteTable ["inet","mpconvert_conc_return"]')), 'the table is removed at stop');
  assert.equal(removed.filter((l) => l.startsWith('routes.deleteRoute')).length, 2);
});

test('transparent, ipv4 cpe: the CPE\'s own address (the connection\'s source), whatever the IE says', async () => {
  const r = await run({ mode: 'transparent', customers }, ie('198.19.0.11', '198.18.0.2'));
  assert.equal(r.dials[0]!.localAddress, '127.0.0.1');
  assert.equal(r.dials[0]!.transparent, true);
});

test('transparent: a source IE outside the CPE\'s prefixes is refused (source-spoofed), nothing is dialled', async () => {
  const r = await run({ mode: 'transparent', ipv4: 'host', customers }, ie('198.19.0.11', '198.18.7.7'));
  assert.equal(r.outcome, 'reset');
  assert.equal(r.dials.length, 0);
  assert.match(r.metrics, /mpconvert_refused_total\{reason="source-spoofed"[^}]*\} 1/);
});

test('nptv6: an IPv6 source IE is translated into the external prefix; an IPv4 destination keeps the kernel source', async () => {
  const r = await run({ mode: 'nptv6', customers, nptv6: { prefixes: ['2001:db8:300::/64'] } }, ie('2001:db8:100::11', '2001:db8::2'));
  assert.equal(r.dials.length, 1);
  assert.equal(r.dials[0]!.localAddress, translate(nptv6Mapping('2001:db8::/64', '2001:db8:300::/64'), '2001:db8::2'));
  assert.equal(r.dials[0]!.transparent, true);
  const v4 = await run({ mode: 'nptv6', customers, nptv6: { prefixes: ['2001:db8:300::/64'] } }, ie('198.19.0.11', '198.18.0.2'));
  assert.equal(v4.dials[0]!.localAddress, undefined);
  assert.notEqual(v4.dials[0]!.transparent, true);
});

test('kernel and pool modes install no return path and never dial transparently', async () => {
  const r = await run(undefined, ie('198.19.0.11', '198.18.7.7'));
  assert.equal(r.dials.length, 1, 'the source IE is not checked against customer prefixes without a transparent mode');
  assert.notEqual(r.dials[0]!.transparent, true);
  assert.ok(!r.installed.some((l) => l.includes('mpconvert_conc_return')));
});

test('reload: to a transparent mode installs the return path; back to kernel keeps it (relayed connections need it) until stop', async () => {
  const kernel = fakeKernel();
  const c = new Concentrator(concentratorConfigSchema.parse(base), { sockets: fakeSockets(), kernel, logger: silentLogger(), metrics: createMetrics('concentrator') });
  await c.start();
  try {
    const applied = () => kernel.calls.filter((l) => l.startsWith('nft.applyTable ["inet","mpconvert_conc_return"')).length;
    const deleted = () => kernel.calls.filter((l) => l.startsWith('nft.deleteTable ["inet","mpconvert_conc_return"')).length;
    assert.equal(applied(), 0);
    await c.reload(concentratorConfigSchema.parse({ ...base, sourceAddress: { mode: 'transparent', customers } }));
    assert.equal(applied(), 1);
    await c.reload(concentratorConfigSchema.parse({ ...base, sourceAddress: { mode: 'transparent', ipv4: 'host', customers } }));
    assert.equal(applied(), 1, 'another transparent setting keeps the installed return path');
    await c.reload(concentratorConfigSchema.parse(base));
    assert.equal(deleted(), 0);
    assert.equal(c.status().returnPath, true);
    await c.stop(0);
    assert.equal(deleted(), 1, 'removed at stop');
  } finally {
    await c.stop(0);
  }
});

test('nptv6: a destination inside the external prefixes is the concentrator\'s own, refused like a denied prefix', async () => {
  const r = await run({ mode: 'nptv6', customers, nptv6: { prefixes: ['2001:db8:300::/64'] } }, ie('2001:db8:300::5', '2001:db8::2'));
  assert.equal(r.outcome, 'reset');
  assert.equal(r.dials.length, 0);
  assert.match(r.metrics, /mpconvert_refused_total\{reason="destination"[^}]*\} 1/);
});

test('reload: a return path that cannot be installed leaves the running configuration (strategy and all)', async () => {
  const kernel = fakeKernel();
  // Only the return path's table fails to apply (the listeners' own table applies as usual).
  const failing = {
    ...kernel,
    nft: {
      ...kernel.nft,
      applyTable: async (...args: Parameters<typeof kernel.nft.applyTable>) =>
        String(args[1]).includes('mpconvert_conc_return') ? Promise.reject(new Error('nft: no socket expression')) : kernel.nft.applyTable(...args),
    },
  };
  const c = new Concentrator(concentratorConfigSchema.parse(base), { sockets: fakeSockets(), kernel: failing as typeof kernel, logger: silentLogger(), metrics: createMetrics('concentrator') });
  try {
    await c.start();
    await assert.rejects(c.reload(concentratorConfigSchema.parse({ ...base, deny: ['198.19.255.0/24'], sourceAddress: { mode: 'transparent', customers } })), /socket expression/);
    assert.equal(c.status().sourceAddress, 'kernel');
    assert.equal(c.status().returnPath, false);
    assert.deepEqual(c.config.deny, [], 'nothing of the new configuration applied');
  } finally {
    await c.stop(0);
  }
});
