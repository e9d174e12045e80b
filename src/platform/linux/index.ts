/**
 * The Linux backend of the platform layer. Only composition roots (CLIs, lab tools) import this; roles take
 * the `Sockets` / `KernelConfig` interfaces from ../types.ts.
 */
import type { Platform } from '../types.js';
import { createLinuxKernelConfig } from './kernel.js';
import { LinuxSockets } from './sockets.js';
import { LinuxSpliceEngine } from './splice.js';
import { linuxProcessResources } from './resources.js';
import { linuxTransparentUdp } from './transparent-udp.js';

export interface LinuxPlatformOptions {
  /** Network namespace for the kernel configuration (sockets always live in the process's own). */
  netns?: string;
}

export function createLinuxPlatform(opts: LinuxPlatformOptions = {}): Platform {
  return {
    sockets: new LinuxSockets(),
    kernel: createLinuxKernelConfig(opts.netns !== undefined ? { netns: opts.netns } : {}),
    resources: linuxProcessResources,
    // Its thread starts at the first spliced pair.
    splice: new LinuxSpliceEngine(),
    transparentUdp: linuxTransparentUdp,
  };
}

export { linuxProcessResources } from './resources.js';
export { LinuxSockets, applySocketOptions, fdOf } from './sockets.js';
export { LinuxSpliceEngine } from './splice.js';
export { createLinuxKernelConfig, nftReplaceScript, parseMptcpLimits, parseEndpoints } from './kernel.js';
export { PlatformError, errnoName } from '../errors.js';
