export { Relay, type RelayOptions, type RelayOutcome, type RelayStats } from './relay.js';
