/**
 * The file behind the CPE's endpoint ledger (see EndpointLedger in ./uplinks.ts): a small JSON file under
 * the state directory (default /run/mpconvert, emptied at boot like the endpoints themselves), one per CPE
 * instance and network namespace. Written atomically (temporary file + rename); removed when empty.
 */
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import type { EndpointLedger, OwnedEndpoint } from './uplinks.js';

/** The network namespace this process runs in, as an inode number ('' when /proc is not there). */
function netnsId(): string {
  try {
    return String(statSync('/proc/self/ns/net').ino);
  } catch {
    return '';
  }
}

export class FileEndpointLedger implements EndpointLedger {
  readonly path: string;

  constructor(stateDir: string, instance: string) {
    const ns = netnsId();
    this.path = join(stateDir, `cpe-${instance}${ns ? `-netns${ns}` : ''}.endpoints.json`);
  }

  async load(): Promise<OwnedEndpoint[]> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const data = JSON.parse(text) as { endpoints?: unknown };
    if (!Array.isArray(data.endpoints)) return [];
    return data.endpoints.filter(
      (e): e is OwnedEndpoint => typeof e === 'object' && e !== null && Number.isInteger((e as OwnedEndpoint).id) && typeof (e as OwnedEndpoint).address === 'string',
    );
  }

  async save(owned: OwnedEndpoint[]): Promise<void> {
    if (owned.length === 0) {
      await rm(this.path, { force: true });
      return;
    }
    const dir = join(this.path, '..');
    await mkdir(dir, { recursive: true, mode: 0o755 });
    const tmp = `${this.path}.${process.pid}.tmp`;
    await writeFile(tmp, JSON.stringify({ pid: process.pid, endpoints: owned }) + '\n', { mode: 0o644 });
    await rename(tmp, this.path);
  }
}
