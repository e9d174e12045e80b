/** Pure wire codecs shared by the CPE and the concentrator (no I/O). docs/protocol.md describes the formats. */
export * from './errors.js';
export * from './address.js';
export * from './mp-convert.js';
export * from './convert.js';
export * from './signalling.js';
export * from './udp-frame.js';
export * from './proxy-v2.js';
export * from './dhcp-mcp.js';
