/**
 * The lab's topology and addressing in one place (other modules, tests, the bench and docs/lab.md code against
 * it). Only documentation/benchmark ranges: 198.18.0.0/15 and 2001:db8::/32.
 *
 *   client(lan0) -- lan0(CPE) up1..upN ==== acc1..accN(concentrator) inet0 -- [bridge br0 in inet] -- eth0(srvK)
 */

export const LAB = {
  /** Every lab namespace starts with this, followed by the per-run suffix (the test runner's leak check). */
  namePrefix: 'mpc',
  maxUplinks: 8,
  maxServers: 16,
  /** Policy-routing table of uplink i is tableBase + i (with `mptcpRouting`). */
  tableBase: 100,
  /** Metric of uplink i's default route in the CPE's main table is metricStep * i (as a DHCP client would). */
  metricStep: 100,
  /** nft table (inet family, in the CPE namespace) that holds the injected random loss. */
  lossTable: 'mpconvert_lab_loss',
  roles: ['client', 'cpe', 'conc', 'inet'] as const,
  lan: {
    client: { dev: 'lan0', v4: '198.18.0.2', v6: '2001:db8::2' },
    cpe: { dev: 'lan0', v4: '198.18.0.1', v6: '2001:db8::1' },
    v4Prefix: '198.18.0.0/24',
    v6Prefix: '2001:db8::/64',
    v4Len: 24,
    v6Len: 64,
  },
  uplink: { cpeDev: 'up', concDev: 'acc', v4Len: 24, v6Len: 64 },
  concentrator: {
    /** The service address CPEs send MPTCP to (on lo in the concentrator namespace). */
    v4: '198.18.200.1',
    v6: '2001:db8:200::1',
    inetDev: 'inet0',
    inetV4: '198.19.0.1',
    inetV6: '2001:db8:100::1',
  },
  inet: {
    bridge: 'br0',
    /** Port names inside the inet namespace: `conc` and `srv{k}`. */
    concPort: 'conc',
    serverPortPrefix: 'srv',
    v4Prefix: '198.19.0.0/24',
    v6Prefix: '2001:db8:100::/64',
    v4Len: 24,
    v6Len: 64,
    serverDev: 'eth0',
  },
  /** The concentrator's outgoing source-address pool, added on request (`lab.addPoolAddresses(n)`). */
  pool: {
    v4Prefix: '198.19.0.128/25',
    v6Prefix: '2001:db8:100::8000/113',
    /** 198.19.0.128 .. 198.19.0.254 (.255 is the segment's broadcast address). */
    max: 127,
  },
} as const;

export type LabRole = 'client' | 'cpe' | 'concentrator' | 'inet' | `srv${number}`;

export function namespaceName(prefix: string, role: 'client' | 'cpe' | 'conc' | 'inet' | `srv${number}` | `dl${number}` | `isp${number}` | `cpe${number}` | `cli${number}`): string {
  return `${prefix}-${role}`;
}

export function serverNamespace(prefix: string, k: number): string {
  return `${prefix}-srv${k}`;
}

/** Uplink i (1-based): CPE side `up{i}` 198.18.i.2, concentrator side `acc{i}` 198.18.i.1. */
export function uplinkAddressing(i: number) {
  checkIndex(i, LAB.maxUplinks, 'uplink');
  return {
    index: i,
    cpeDev: `${LAB.uplink.cpeDev}${i}`,
    concDev: `${LAB.uplink.concDev}${i}`,
    cpeV4: `198.18.${i}.2`,
    cpeV6: `2001:db8:${i}::2`,
    concV4: `198.18.${i}.1`,
    concV6: `2001:db8:${i}::1`,
    v4Prefix: `198.18.${i}.0/24`,
    v6Prefix: `2001:db8:${i}::/64`,
    table: LAB.tableBase + i,
    metric: LAB.metricStep * i,
  } as const;
}

/** Server k (1-based) on the internet segment: eth0 198.19.0.(10+k), 2001:db8:100::(10+k) (decimal digits as hex text). */
export function serverAddressing(k: number) {
  checkIndex(k, LAB.maxServers, 'server');
  return {
    index: k,
    dev: LAB.inet.serverDev,
    bridgePort: `${LAB.inet.serverPortPrefix}${k}`,
    v4: `198.19.0.${10 + k}`,
    v6: `2001:db8:100::${10 + k}`,
  } as const;
}

/** Pool address j (0-based): 198.19.0.(128+j), 2001:db8:100::(8000+j hex). */
export function poolAddress(j: number): { v4: string; v6: string } {
  if (!Number.isInteger(j) || j < 0 || j >= LAB.pool.max) throw new RangeError(`pool address index ${j} out of 0..${LAB.pool.max - 1}`);
  return { v4: `198.19.0.${128 + j}`, v6: `2001:db8:100::${(0x8000 + j).toString(16)}` };
}

function checkIndex(i: number, max: number, what: string): void {
  if (!Number.isInteger(i) || i < 1 || i > max) throw new RangeError(`${what} index ${i} out of 1..${max}`);
}

/** A prefix given by the user: `mpc` + 1..9 lower-case letters/digits (no dash: it separates the role). */
export const PREFIX_RE = /^mpc[a-z0-9]{1,9}$/;
/** Namespace names a lab makes. */
export const LAB_NAMESPACE_RE = /^(mpc[a-z0-9]{1,9})-(client|cpe|conc|inet|srv\d{1,2}|dl\d{1,2}|isp\d{1,2}|cpe\d{1,2}|cli\d{1,2})$/;

/** The delay line's interfaces in its namespace `${prefix}-dl{i}`: towards the CPE, towards the concentrator. */
export const DELAY_LINE = { cpeSide: 'tocpe', concSide: 'toconc', maxRttMs: 2_000 } as const;

/**
 * The field topology (`LabSpec.topology: 'field'`, docs/lab.md "The field topology"): IPv4 only, as the access
 * networks of a DSL and an LTE ISP look to a home router.
 *
 *   client(lan0) -- lan0(CPE) up{i} -- acc{i}(ISP i: dnsmasq, [CGN]) core -- [br0 in inet] -- inet0(concentrator)
 *                                                                                         \-- eth0(srvK)
 *
 * The LAN 198.18.0.0/24 is private: nothing outside the CPE routes it. Access network i is 198.18.i.0/24; the
 * ISP router is .1 on it and leases .100-.199 by DHCP (.200-.249 after `renumber(i)`). A public access
 * network's prefix is routed to its ISP on the internet segment; a CGN access network's is not: ISP i
 * masquerades it to its own core address, as a carrier-grade NAT does.
 */
export const FIELD = {
  /** ISP i's router side of the access link, and its uplink (internet) side. */
  ispAccessDev: 'acc',
  ispCoreDev: 'core',
  /** Port of ISP i in the inet namespace: `isp{i}`. */
  ispPortPrefix: 'isp',
  /** The concentrator's public address (on inet0), where CPEs send MPTCP. */
  concentrator: { dev: 'inet0', v4: '198.19.0.1' },
  /** The CGN's nft table in an ISP namespace. */
  cgnTable: 'mpconvert_lab_cgn',
  /** DHCP lease time handed out by the access networks' dnsmasq (seconds). */
  leaseS: 600,
} as const;

/** Access network i (1-based) of the field topology. */
export function fieldAccess(i: number) {
  checkIndex(i, LAB.maxUplinks, 'access network');
  return {
    index: i,
    cpeDev: `${LAB.uplink.cpeDev}${i}`,
    ispDev: `${FIELD.ispAccessDev}${i}`,
    ispPort: `${FIELD.ispPortPrefix}${i}`,
    /** The ISP router on the access network (the DHCP server and the CPE's gateway). */
    gatewayV4: `198.18.${i}.1`,
    v4Prefix: `198.18.${i}.0/24`,
    v4Len: 24,
    /** The DHCP pool, and the one `renumber(i)` switches to. */
    pool: [`198.18.${i}.100`, `198.18.${i}.199`] as const,
    renumberedPool: [`198.18.${i}.200`, `198.18.${i}.249`] as const,
    /** DHCPv6 on the access link (only with `Lab.dhcpServer(i, { v6 })`): the ISP's address and its pool. */
    gatewayV6: `2001:db8:${i}::1`,
    v6Len: 64,
    pool6: [`2001:db8:${i}::100`, `2001:db8:${i}::1ff`] as const,
    /** ISP i's address on the internet segment (its CGN address, when it has one). */
    coreV4: `198.19.0.${30 + i}`,
    /** Metric the CPE's DHCP client gives uplink i's default route (IF_METRIC). */
    metric: LAB.metricStep * i,
  } as const;
}

/**
 * The many-CPE topology (`LabSpec.topology: 'many'`, docs/lab.md "The many-CPE topology"): IPv4 only, N CPEs
 * each with its own LAN client, one concentrator, one server behind a shared (shaped) server link.
 *
 *   cli{c}(lan0) -- lan0(cpe{c}) up{u} ==== c{c}u{u}(concentrator) inet0 --[shared link, tbf]-- eth0(srv1)
 *
 * CPE c's uplink u is 198.18.c.(4u-4)/30 (concentrator .4u-3, CPE .4u-2); its LAN is 198.18.(100+c).0/24 (CPE
 * .1, client .2). The concentrator's service address (on lo) and the server side are the classic ones:
 * 198.18.200.1, inet0 198.19.0.1/24, srv1 198.19.0.11.
 */
export const MANY = {
  maxCpes: 99,
  maxUplinks: 8,
  /** Name of the shared server link at both ends. */
  concDev: 'inet0',
  serverDev: 'eth0',
} as const;

/** CPE c (1-based) of the many-CPE topology and its uplink u (1-based). */
export function manyCpeAddressing(c: number) {
  checkIndex(c, MANY.maxCpes, 'CPE');
  const uplink = (u: number) => {
    checkIndex(u, MANY.maxUplinks, 'uplink');
    return {
      index: u,
      cpeDev: `${LAB.uplink.cpeDev}${u}`,
      concDev: `c${c}u${u}`,
      concV4: `198.18.${c}.${4 * u - 3}`,
      cpeV4: `198.18.${c}.${4 * u - 2}`,
      v4Len: 30,
      metric: LAB.metricStep * u,
    } as const;
  };
  return {
    index: c,
    lanDev: LAB.lan.cpe.dev,
    lanV4: `198.18.${100 + c}.1`,
    clientV4: `198.18.${100 + c}.2`,
    lanPrefix: `198.18.${100 + c}.0/24`,
    lanLen: 24,
    uplink,
  } as const;
}
