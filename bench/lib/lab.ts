/**
 * The namespace testbed for the bench: the shared one (src/lab) when it is built, else the bench's minimal lab
 * with the same API and addressing (minilab.ts).
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Lab as MiniLab } from './minilab.js';
export type { LabHost } from './minilab.js';

export interface LabOptions {
  uplinks: Array<{ rate: string | 0 }>;
  servers?: number;
  mptcpRouting?: boolean;
}
export type Lab = Pick<MiniLab, 'hosts' | 'uplinkDown' | 'uplinkUp' | 'down'>;

const SHARED = new URL('../../src/lab/index.js', import.meta.url);
export let labImplementation = 'bench/lib/minilab.ts';

export async function labUp(o: LabOptions): Promise<Lab> {
  if (existsSync(fileURLToPath(SHARED))) {
    const mod = (await import(SHARED.href)) as { Lab: { up(o: LabOptions): Promise<Lab> } };
    labImplementation = 'src/lab';
    return mod.Lab.up(o);
  }
  return MiniLab.up(o);
}
