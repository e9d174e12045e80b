export { Relay, type RelayOptions, type RelayOutcome, type RelayStats } from './relay.js';
export { SpliceRelay, createRelay, type RelayHandle } from './splice-relay.js';
