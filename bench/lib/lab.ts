/** The shared namespace testbed (src/lab), as the bench uses it. */
import { Lab } from '../../src/lab/index.js';
export { Lab };
export type { LabHost } from '../../src/lab/index.js';

export interface LabOptions {
  uplinks: Array<{ rate: string | 0; rttMs?: number }>;
  servers?: number;
  mptcpRouting?: boolean;
}

export const labImplementation = 'src/lab';

export function labUp(o: LabOptions): Promise<Lab> {
  return Lab.up(o);
}
