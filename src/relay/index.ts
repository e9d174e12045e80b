export { Relay, RESET_ON_CLOSE, type RelayOptions, type RelayOutcome, type RelaySockets, type RelayStats } from './relay.js';
export { SpliceRelay, createRelay, type RelayHandle } from './splice-relay.js';
