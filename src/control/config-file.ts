/**
 * Loads a YAML config file and validates it with a zod schema. An invalid file gives one error naming every
 * bad key and its problem ("limits.maxConnectionsPerCpe: Too small: expected number to be >=1").
 */
import { readFile } from 'node:fs/promises';
import { parse } from 'yaml';
import type { z } from 'zod';
import { MpconvertError } from '../errors.js';

export class ConfigError extends MpconvertError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MPC_ERR_CONFIG', message, options);
  }
}

export function formatIssues(error: z.ZodError): string {
  return error.issues.map((i) => `  ${i.path.length ? i.path.join('.') : '(top level)'}: ${i.message}`).join('\n');
}

export function validateConfig<S extends z.ZodType>(schema: S, raw: unknown, source: string): z.output<S> {
  const result = schema.safeParse(raw ?? {});
  if (!result.success) throw new ConfigError(`Invalid configuration in ${source}:\n${formatIssues(result.error)}`);
  return result.data;
}

export async function loadYaml(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`Cannot read config file ${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    return parse(text) as unknown;
  } catch (err) {
    throw new ConfigError(`Cannot parse config file ${path}: ${(err as Error).message}`, { cause: err });
  }
}
