/**
 * The CPE's kernel-facing parts in the shared lab (2 uplinks, 2 servers; the CPE starts with only addresses
 * and default routes with metrics, as DHCP leaves them):
 * - UplinkManager: endpoints, per-uplink tables and source rules read back with `ip -j`; a plain MPTCP client
 *   moves bytes intact with a second subflow that leaves through the second uplink; an address change and a
 *   link flap fire 'change' and re-create the endpoint; a foreign endpoint survives; stop leaves nothing.
 * - Interception: a transparent listener on 127.0.0.1/[::1] receives a LAN client's connection with the
 *   original destination as its local address and the client's DSCP in SO_MARK; native MPTCP, excluded
 *   prefixes and the CPE's own address are not intercepted ('intercept' mode takes native MPTCP too); stop
 *   leaves nothing.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { labCapabilityMissing, requireLab, requireTool } from '../support/capabilities.js';
import { Lab, type LabHost } from '../../src/lab/index.js';
import { createLinuxKernelConfig } from '../../src/platform/linux/kernel.js';
import { silentLogger } from '../../src/log.js';
import { UplinkManager, type UplinkChange } from '../../src/cpe/uplinks.js';
import { Interception, type InterceptionOptions } from '../../src/cpe/interception.js';
import { RULE_COMMENTS } from '../../src/cpe/ruleset.js';

const PY = 'python3';

/** MPTCP sink: answers each connection with the sha256 of what it received. */
const MPTCP_SINK = `
import socket,sys,hashlib,json
s=socket.socket(socket.AF_INET,socket.SOCK_STREAM,262)
s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
s.bind((sys.argv[1],int(sys.argv[2]))); s.listen(16)
print(json.dumps({"ready":True}),flush=True)
while True:
  c,a=s.accept(); h=hashlib.sha256(); n=0
  while True:
    d=c.recv(65536)
    if not d: break
    h.update(d); n+=len(d)
  c.sendall(h.hexdigest().encode()); c.close()
  print(json.dumps({"peer":a[0],"bytes":n}),flush=True)
`;

/** MPTCP client: waits (polling MPTCP_INFO) for a second subflow, sends N random bytes, prints both hashes. */
const MPTCP_CLIENT = `
import socket,sys,hashlib,json,os,time
s=socket.socket(socket.AF_INET,socket.SOCK_STREAM,262); s.settimeout(10)
s.connect((sys.argv[1],int(sys.argv[2])))
data=os.urandom(int(sys.argv[3]))
# The first bytes make the connection fully established (the server's DSS ack), which is when the PM adds subflows.
s.sendall(data[:1000])
deadline=time.time()+5; sub=0
while time.time()<deadline:
  sub=s.getsockopt(284,1,64)[0]
  if sub>=1: break
  time.sleep(0.02)
s.sendall(data[1000:]); s.shutdown(socket.SHUT_WR); r=b''
while True:
  d=s.recv(4096)
  if not d: break
  r+=d
print(json.dumps({"subflows":sub,"sent":hashlib.sha256(data).hexdigest(),"got":r.decode()}))
`;

/** Transparent listeners on 127.0.0.1 and [::1] (IP_TRANSPARENT 19, IPV6_TRANSPARENT 75): report each accept. */
const TPROXY_LISTENER = `
import socket,sys,json,select
port=int(sys.argv[1]); socks=[]
for fam,host,lvl,opt in ((socket.AF_INET,'127.0.0.1',0,19),(socket.AF_INET6,'::1',41,75)):
  s=socket.socket(fam,socket.SOCK_STREAM); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
  s.setsockopt(lvl,opt,1); s.bind((host,port)); s.listen(64); socks.append(s)
print(json.dumps({"ready":True}),flush=True)
while True:
  r,_,_=select.select(socks,[],[])
  for s in r:
    c,a=s.accept(); l=c.getsockname()
    print(json.dumps({"local":l[0],"localPort":l[1],"peer":a[0],"mark":c.getsockopt(socket.SOL_SOCKET,36)}),flush=True)
    c.sendall(b"tproxy"); c.close()
`;

/** Server: MPTCP listener (plain TCP falls back) on port 80 of all addresses, answers "server". */
const SERVER = `
import socket,json
s=socket.socket(socket.AF_INET6,socket.SOCK_STREAM,262); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
s.setsockopt(41,26,0); s.bind(('::',80)); s.listen(64)
print(json.dumps({"ready":True}),flush=True)
while True:
  c,a=s.accept(); c.sendall(b"server"); c.close()
`;

/** LAN client: connect (MPTCP or TCP, optional TOS/TCLASS), print the reply or the error. */
const LAN_CLIENT = `
import socket,sys,json
host,port,mptcp,tos=sys.argv[1],int(sys.argv[2]),sys.argv[3]=='1',int(sys.argv[4])
fam=socket.AF_INET6 if ':' in host else socket.AF_INET
s=socket.socket(fam,socket.SOCK_STREAM,262 if mptcp else 0); s.settimeout(5)
if tos: s.setsockopt(0,1,tos) if fam==socket.AF_INET else s.setsockopt(41,67,tos)
try:
  s.connect((host,port)); r=b''
  while True:
    d=s.recv(100)
    if not d: break
    r+=d
  print(json.dumps({"reply":r.decode()}))
except OSError as e:
  print(json.dumps({"error":type(e).__name__}))
`;

class LineProc {
  readonly lines: Array<Record<string, unknown>> = [];
  #buf = '';
  stderr = '';
  constructor(readonly child: ChildProcess) {
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (d: string) => {
      this.#buf += d;
      let i: number;
      while ((i = this.#buf.indexOf('\n')) >= 0) {
        const line = this.#buf.slice(0, i).trim();
        this.#buf = this.#buf.slice(i + 1);
        if (line) this.lines.push(JSON.parse(line) as Record<string, unknown>);
      }
    });
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (d: string) => (this.stderr += d));
  }
  async ready(): Promise<void> {
    await waitFor(() => this.lines.some((l) => l['ready'] === true), 5_000, () => `process not ready: ${this.stderr}`);
  }
  stop(): void {
    if (this.child.exitCode === null) this.child.kill('SIGKILL');
  }
}

async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs: number, what: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > deadline) throw new Error(`timed out: ${what()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function py(host: LabHost, code: string, args: Array<string | number>): Promise<Record<string, unknown>> {
  const r = await host.exec(PY, ['-c', code, ...args.map(String)], { timeoutMs: 20_000 });
  return JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as Record<string, unknown>;
}

async function json<T>(host: LabHost, args: string[]): Promise<T> {
  const r = await host.exec(args[0] as string, args.slice(1));
  return (r.stdout.trim() === '' ? [] : JSON.parse(r.stdout)) as T;
}

async function nstat(host: LabHost, counter: string): Promise<number> {
  const r = await json<{ kernel?: Record<string, number> }>(host, ['nstat', '-azj', counter]);
  return r.kernel?.[counter] ?? 0;
}

type Rule = { priority: number; src?: string; table?: string; iif?: string; fwmark?: string; fwmask?: string };
type Route = { dst: string; gateway?: string; dev?: string; type?: string };
type Endpoint = { address: string; id: number; dev?: string; subflow?: boolean; backup?: boolean };

describe('CPE kernel parts in the lab', () => {
  let lab: Lab | undefined;
  before(async () => {
    if (labCapabilityMissing() === null) lab = await Lab.up({ uplinks: [{ rate: 0 }, { rate: 0 }], servers: 2 });
  });
  after(async () => {
    await lab?.down();
  });

  it('UplinkManager: endpoints, tables and rules; a second subflow through uplink 2; changes re-create; stop leaves nothing', async (t) => {
    if (!requireLab(t) || !requireTool(t, PY) || !lab) return;
    const { cpe, concentrator } = lab.hosts;
    const kernel = createLinuxKernelConfig({ netns: cpe.name });
    // A foreign endpoint that must survive (never flush what we did not add).
    await cpe.exec('ip', ['mptcp', 'endpoint', 'add', '198.18.9.9', 'id', '77', 'signal']);
    const limitsBefore = await kernel.mptcp.limits();
    const mgr = new UplinkManager(
      { kernel, logger: silentLogger() },
      {
        uplinks: [
          { interface: 'up1', mode: 'subflow' },
          { interface: 'up2', mode: 'subflow' },
        ],
        tableBase: 200,
        rulePriorityBase: 10_000,
        pollIntervalMs: 200,
        limits: { subflows: 4, addAddrAccepted: 4 },
      },
    );
    const changes: UplinkChange[] = [];
    mgr.on('change', (c) => changes.push(c));
    let sink: LineProc | undefined;
    try {
      await mgr.start();
      const eps = await json<Endpoint[]>(cpe, ['ip', '-j', 'mptcp', 'endpoint', 'show']);
      const byAddr = new Map(eps.map((e) => [e.address, e]));
      for (const [addr, dev] of [
        ['198.18.1.2', 'up1'],
        ['198.18.2.2', 'up2'],
        ['2001:db8:1::2', 'up1'],
        ['2001:db8:2::2', 'up2'],
      ] as const) {
        assert.equal(byAddr.get(addr)?.dev, dev, `endpoint ${addr}`);
        assert.equal(byAddr.get(addr)?.subflow, true);
      }
      assert.equal(byAddr.get('198.18.9.9')?.id, 77);
      assert.deepEqual(await kernel.mptcp.limits(), { subflows: 4, addAddrAccepted: 4 });
      const rules4 = await json<Rule[]>(cpe, ['ip', '-j', '-4', 'rule', 'show']);
      assert.deepEqual(
        rules4.filter((r) => r.priority >= 10_000 && r.priority < 10_010).map((r) => [r.priority, r.src, r.table]),
        [
          [10_000, '198.18.1.2', '200'],
          [10_001, '198.18.2.2', '201'],
        ],
      );
      const rules6 = await json<Rule[]>(cpe, ['ip', '-j', '-6', 'rule', 'show']);
      assert.deepEqual(rules6.filter((r) => r.priority === 10_001).map((r) => [r.src, r.table]), [['2001:db8:2::2', '201']]);
      const t201 = await json<Route[]>(cpe, ['ip', '-j', '-4', 'route', 'show', 'table', '201']);
      assert.deepEqual(t201.map((r) => [r.dst, r.gateway, r.dev]), [['default', '198.18.2.1', 'up2']]);
      const t201v6 = await json<Route[]>(cpe, ['ip', '-j', '-6', 'route', 'show', 'table', '201']);
      assert.deepEqual(t201v6.map((r) => [r.dst, r.gateway, r.dev]), [['default', '2001:db8:2::1', 'up2']]);
      // Without the rule the main table (lowest metric: up1) would win; with it, uplink 2's address leaves via up2.
      const got = await json<Route[]>(cpe, ['ip', '-j', 'route', 'get', '198.18.200.1', 'from', '198.18.2.2']);
      assert.deepEqual([got[0]?.dev, got[0]?.gateway], ['up2', '198.18.2.1']);
      const snap = mgr.snapshot();
      assert.deepEqual(
        snap.map((s) => [s.interface, s.up, s.ipv4?.address, s.ipv4?.gateway, s.ipv4?.routed, s.ipv6?.address, s.ipv6?.gateway]),
        [
          ['up1', true, '198.18.1.2', '198.18.1.1', true, '2001:db8:1::2', '2001:db8:1::1'],
          ['up2', true, '198.18.2.2', '198.18.2.1', true, '2001:db8:2::2', '2001:db8:2::1'],
        ],
      );
      assert.equal(snap[1]?.ipv4?.endpointId, byAddr.get('198.18.2.2')?.id);

      // A plain MPTCP client: bytes intact, and a join that arrives from uplink 2's address.
      sink = new LineProc(concentrator.spawn(PY, ['-c', MPTCP_SINK, '198.18.200.1', '5001']));
      await sink.ready();
      const joinsBefore = await nstat(concentrator, 'MPTcpExtMPJoinAckRx');
      const r = await py(cpe, MPTCP_CLIENT, ['198.18.200.1', 5001, 1_000_000]);
      assert.equal(r['got'], r['sent'], 'bytes arrive intact');
      assert.equal(r['subflows'], 1, 'one additional subflow');
      assert.equal((await nstat(concentrator, 'MPTcpExtMPJoinAckRx')) - joinsBefore, 1);
      await waitFor(() => sink!.lines.some((l) => l['bytes'] === 1_000_000), 5_000, () => 'sink report');

      // Address change (a DHCP renewal with a new lease): 'change', new endpoint, rule follows the address.
      const oldId = snap[1]?.ipv4?.endpointId;
      await cpe.exec('ip', ['addr', 'del', '198.18.2.2/24', 'dev', 'up2']);
      await cpe.exec('ip', ['addr', 'add', '198.18.2.3/24', 'dev', 'up2']);
      await cpe.exec('ip', ['route', 'replace', 'default', 'via', '198.18.2.1', 'dev', 'up2', 'metric', '200']);
      await waitFor(() => changes.some((c) => c.interface === 'up2' && c.after.ipv4 === '198.18.2.3'), 5_000, () => JSON.stringify(changes));
      assert.deepEqual(changes[0]?.before, { up: true, ipv4: '198.18.2.2', ipv6: '2001:db8:2::2' });
      await waitFor(() => mgr.snapshot()[1]?.ipv4?.routed === true, 5_000, () => JSON.stringify(mgr.snapshot()));
      const eps2 = await json<Endpoint[]>(cpe, ['ip', '-j', 'mptcp', 'endpoint', 'show']);
      assert.equal(eps2.some((e) => e.address === '198.18.2.2'), false, 'old endpoint removed');
      const fresh = eps2.find((e) => e.address === '198.18.2.3');
      assert.equal(fresh?.dev, 'up2');
      assert.equal(mgr.snapshot()[1]?.ipv4?.endpointId, fresh?.id);
      assert.notEqual(fresh?.id, oldId);
      const rules4b = await json<Rule[]>(cpe, ['ip', '-j', '-4', 'rule', 'show']);
      assert.deepEqual(rules4b.filter((x) => x.priority === 10_001).map((x) => x.src), ['198.18.2.3']);
      const r2 = await py(cpe, MPTCP_CLIENT, ['198.18.200.1', 5001, 100_000]);
      assert.equal(r2['got'], r2['sent']);
      assert.equal(r2['subflows'], 1, 'a subflow from the new address');

      // Link flap: down removes the endpoints of the uplink, up re-creates them.
      changes.length = 0;
      await lab.uplinkDown(1);
      await waitFor(() => changes.some((c) => c.interface === 'up1' && !c.after.up), 5_000, () => JSON.stringify(changes));
      await waitFor(() => mgr.snapshot()[0]?.ipv4 === null, 5_000, () => JSON.stringify(mgr.snapshot()));
      const eps3 = await json<Endpoint[]>(cpe, ['ip', '-j', 'mptcp', 'endpoint', 'show']);
      assert.equal(eps3.some((e) => e.address === '198.18.1.2'), false);
      await lab.uplinkUp(1);
      await waitFor(() => mgr.snapshot()[0]?.ipv4?.routed === true && mgr.snapshot()[0]?.ipv6?.routed === true, 5_000, () => JSON.stringify(mgr.snapshot()));
      assert.ok(changes.some((c) => c.interface === 'up1' && c.after.up));
      const t200 = await json<Route[]>(cpe, ['ip', '-j', '-4', 'route', 'show', 'table', '200']);
      assert.deepEqual(t200.map((x) => [x.dst, x.gateway, x.dev]), [['default', '198.18.1.1', 'up1']]);
    } finally {
      sink?.stop();
      await mgr.stop();
    }
    await mgr.stop(); // idempotent
    const left = await json<Endpoint[]>(cpe, ['ip', '-j', 'mptcp', 'endpoint', 'show']);
    assert.deepEqual(left.map((e) => [e.address, e.id]), [['198.18.9.9', 77]], 'only the foreign endpoint remains');
    for (const fam of ['-4', '-6']) {
      const rules = await json<Rule[]>(cpe, ['ip', '-j', fam, 'rule', 'show']);
      assert.deepEqual(rules.filter((x) => x.priority >= 10_000 && x.priority < 10_010), [], `no rules left (${fam})`);
      for (const table of ['200', '201']) assert.deepEqual(await json<Route[]>(cpe, ['ip', '-j', fam, 'route', 'show', 'table', table]), [], `table ${table} empty (${fam})`);
    }
    assert.deepEqual(await kernel.mptcp.limits(), limitsBefore, 'limits restored');
    await cpe.exec('ip', ['mptcp', 'endpoint', 'delete', 'id', '77']);
  });

  it('Interception: TPROXY with original destination and DSCP mark; native MPTCP, excluded and own addresses pass; stop leaves nothing', async (t) => {
    if (!requireLab(t) || !requireTool(t, PY) || !lab) return;
    const { cpe, client } = lab.hosts;
    const [srv1, srv2] = lab.hosts.servers as [LabHost, LabHost];
    const kernel = createLinuxKernelConfig({ netns: cpe.name });
    const fwmarkAcceptBefore = await kernel.sysctl.get('net.ipv4.tcp_fwmark_accept');
    const base: InterceptionOptions = {
      instance: 'labtest',
      lanInterfaces: ['lan0'],
      tproxyPort: 15_001,
      mark: 0x1,
      include: [{ prefix: '0.0.0.0/0' }, { prefix: '::/0' }],
      exclude: [{ prefix: srv2.v4 }],
      nativeMptcp: 'passthrough',
      dscpToMark: true,
      mssClamp: 'pmtu',
      table: 100,
      rulePriority: 9_000,
    };
    const procs: LineProc[] = [];
    let icpt: Interception | undefined;
    const counters = async (): Promise<Map<string, number>> => {
      const m = new Map<string, number>();
      for (const e of (await kernel.nft.getTable('inet', 'mpconvert_cpe_labtest')) ?? []) {
        const rule = (e as { rule?: { comment?: string; expr: Array<{ counter?: { packets: number } }> } }).rule;
        if (!rule?.comment) continue;
        const n = rule.expr.find((x) => x.counter)?.counter?.packets ?? 0;
        m.set(rule.comment, (m.get(rule.comment) ?? 0) + n);
      }
      return m;
    };
    try {
      const listener = new LineProc(cpe.spawn(PY, ['-c', TPROXY_LISTENER, '15001']));
      procs.push(listener);
      for (const s of [srv1, srv2]) procs.push(new LineProc(s.spawn(PY, ['-c', SERVER])));
      for (const p of procs) await p.ready();
      // Before interception: the client reaches the real server.
      assert.deepEqual(await py(client, LAN_CLIENT, [srv1.v4, 80, 0, 0]), { reply: 'server' });

      icpt = new Interception({ kernel, logger: silentLogger() }, base);
      await icpt.start();
      const rules = await json<Rule[]>(cpe, ['ip', '-j', '-4', 'rule', 'show']);
      assert.deepEqual(rules.filter((r) => r.priority === 9_000).map((r) => [r.iif, r.fwmark, r.fwmask, r.table]), [['lan0', '0x1', '0x1', '100']]);
      assert.deepEqual((await json<Route[]>(cpe, ['ip', '-j', '-6', 'route', 'show', 'table', '100'])).map((r) => [r.type, r.dst, r.dev]), [['local', 'default', 'lo']]);
      assert.equal(await kernel.sysctl.get('net.ipv4.tcp_fwmark_accept'), '1');

      // Plain TCP with DSCP EF (46): intercepted, original destination, DSCP in the mark.
      assert.deepEqual(await py(client, LAN_CLIENT, [srv1.v4, 80, 0, 46 << 2]), { reply: 'tproxy' });
      assert.deepEqual(listener.lines.at(-1), { local: srv1.v4, localPort: 80, peer: '198.18.0.2', mark: (46 << 8) | 1 });
      assert.deepEqual(await py(client, LAN_CLIENT, [srv1.v4, 443, 0, 10 << 2]), { reply: 'tproxy' });
      assert.deepEqual(listener.lines.at(-1), { local: srv1.v4, localPort: 443, peer: '198.18.0.2', mark: (10 << 8) | 1 });
      // IPv6, no DSCP: the mark bit alone.
      assert.deepEqual(await py(client, LAN_CLIENT, [srv1.v6, 8080, 0, 0]), { reply: 'tproxy' });
      assert.deepEqual(listener.lines.at(-1), { local: srv1.v6, localPort: 8080, peer: '2001:db8::2', mark: 1 });
      assert.deepEqual(await py(client, LAN_CLIENT, [srv1.v6, 8080, 0, 34 << 2]), { reply: 'tproxy' });
      assert.equal(listener.lines.at(-1)?.['mark'], (34 << 8) | 1);
      const intercepted = listener.lines.length;

      // Native MPTCP passes through to the real server, end to end.
      const capBefore = await nstat(srv1, 'MPTcpExtMPCapableSYNRX');
      assert.deepEqual(await py(client, LAN_CLIENT, [srv1.v4, 80, 1, 0]), { reply: 'server' });
      assert.equal((await nstat(srv1, 'MPTcpExtMPCapableSYNRX')) - capBefore, 1);
      // Excluded prefix and the CPE's own address: not intercepted.
      assert.deepEqual(await py(client, LAN_CLIENT, [srv2.v4, 80, 0, 0]), { reply: 'server' });
      assert.deepEqual(await py(client, LAN_CLIENT, ['198.18.0.1', 80, 0, 0]), { error: 'ConnectionRefusedError' });
      assert.equal(listener.lines.length, intercepted, 'nothing else reached the transparent listener');
      const c = await counters();
      assert.equal(c.get(RULE_COMMENTS.nativeMptcp), 1);
      assert.equal(c.get(RULE_COMMENTS.exclude), 1);
      assert.equal(c.get(RULE_COMMENTS.local), 1);
      assert.equal(c.get(RULE_COMMENTS.intercept), 4);
      assert.ok((c.get(RULE_COMMENTS.established) ?? 0) >= 4, 'later packets took the established rule');
      assert.ok((c.get(RULE_COMMENTS.mssClamp) ?? 0) >= 4, 'SYN and SYN/ACK of the forwarded flows were clamped');

      // 'intercept': native MPTCP SYNs are taken too (the client falls back to TCP with the CPE).
      await icpt.stop();
      icpt = new Interception({ kernel, logger: silentLogger() }, { ...base, nativeMptcp: 'intercept' });
      await icpt.start();
      assert.deepEqual(await py(client, LAN_CLIENT, [srv1.v4, 80, 1, 0]), { reply: 'tproxy' });
      assert.equal(listener.lines.at(-1)?.['local'], srv1.v4);
      await icpt.stop();
      await icpt.stop(); // idempotent
      assert.deepEqual((await kernel.nft.listTables()).filter((x) => x.name.startsWith('mpconvert_cpe')), []);
      for (const fam of ['-4', '-6']) {
        assert.deepEqual((await json<Rule[]>(cpe, ['ip', '-j', fam, 'rule', 'show'])).filter((r) => r.priority === 9_000), []);
        assert.deepEqual(await json<Route[]>(cpe, ['ip', '-j', fam, 'route', 'show', 'table', '100']), []);
      }
      assert.equal(await kernel.sysctl.get('net.ipv4.tcp_fwmark_accept'), fwmarkAcceptBefore);
      // Forwarding works again without the CPE.
      assert.deepEqual(await py(client, LAN_CLIENT, [srv1.v4, 80, 0, 0]), { reply: 'server' });
    } finally {
      for (const p of procs) p.stop();
      await icpt?.stop();
    }
  });
});
