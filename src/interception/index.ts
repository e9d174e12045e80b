/** Interception, role-agnostic: nft statement builders, local delivery of marked packets, the undo ledger. */
export * from './ledger.js';
export * from './local-delivery.js';
export * from './nft.js';
