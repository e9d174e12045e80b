/**
 * The undo list of the kernel changes one owner made (nft tables, sysctls, policy routing): each change is
 * recorded with the call that takes it back, and `undoAll` takes them back in reverse order. An entry whose
 * undo fails stays recorded for the next call; the failures are returned, so each owner logs and reports them
 * in its own words (the CPE's interception throws, the concentrator's return path only warns).
 */
import type { KernelConfig, NftFamily } from '../platform/types.js';

export interface UndoFailure {
  what: string;
  err: unknown;
}

interface Entry {
  what: string;
  undo: () => Promise<void>;
}

export class KernelLedger {
  readonly #kernel: KernelConfig;
  #entries: Entry[] = [];

  constructor(kernel: KernelConfig) {
    this.#kernel = kernel;
  }

  get kernel(): KernelConfig {
    return this.#kernel;
  }

  /** What is recorded, in the order it was made (for status and tests). */
  entries(): string[] {
    return this.#entries.map((e) => e.what);
  }

  get empty(): boolean {
    return this.#entries.length === 0;
  }

  /** Records a change already made. */
  add(what: string, undo: () => Promise<void>): void {
    this.#entries.push({ what, undo });
  }

  /** Applies a whole nft table (one transaction) and records its deletion. */
  async applyTable(family: NftFamily, name: string, text: string): Promise<void> {
    const nft = this.#kernel.nft;
    await nft.applyTable(family, name, text);
    this.add(`nft table ${family} ${name}`, () => nft.deleteTable(family, name));
  }

  /** Sets a sysctl when it differs and records the previous value for the undo; nothing when equal. */
  async setSysctl(name: string, value: string): Promise<void> {
    const sysctl = this.#kernel.sysctl;
    const previous = await sysctl.get(name);
    if (previous === value) return;
    await sysctl.set(name, value);
    this.add(`sysctl ${name}=${value} (was ${previous})`, () => sysctl.set(name, previous));
  }

  /** Undoes every entry, newest first; what fails to go stays recorded (in its order) and is returned. */
  async undoAll(): Promise<UndoFailure[]> {
    const kept: Entry[] = [];
    const failures: UndoFailure[] = [];
    for (const entry of [...this.#entries].reverse()) {
      try {
        await entry.undo();
      } catch (err) {
        kept.unshift(entry);
        failures.push({ what: entry.what, err });
      }
    }
    this.#entries = kept;
    return failures;
  }
}
