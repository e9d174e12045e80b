/**
 * One error base for the whole project (after undici's UND_ERR_* codes): every error that crosses a module
 * boundary carries a stable `code` that logs, metrics and tests can rely on.
 */
export class MpconvertError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** Narrow an unknown caught value to an Error with a message. */
export function toError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}
