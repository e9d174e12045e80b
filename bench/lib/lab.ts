/** The shared namespace testbed (src/lab), re-exported for the bench. */
export { Lab } from './devlab.js';
export type { LabHost } from './devlab.js';
