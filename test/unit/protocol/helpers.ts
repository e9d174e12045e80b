/** Shared by the protocol tests: golden vectors from test/vectors, JSON views of decoded values, splitting. */
import { readFileSync } from 'node:fs';
import assert from 'node:assert/strict';
import { ProtocolError } from '../../../src/protocol/index.js';

// dist/test/unit/protocol/*.js -> test/vectors (the JSON files are data, not compiled).
const VECTORS = new URL('../../../../test/vectors/', import.meta.url);

export interface ValidVector<E = unknown> {
  name: string;
  hex: string;
  rest?: string;
  expect: E;
  error?: unknown;
}
export interface InvalidVector {
  name: string;
  hex: string;
  code: string;
  reaction: Record<string, unknown>;
}
export interface VectorFile {
  valid?: ValidVector[];
  invalid?: InvalidVector[];
}

export function loadVectors(name: string): VectorFile {
  return JSON.parse(readFileSync(new URL(name, VECTORS), 'utf8')) as VectorFile;
}

export const hex = (s: string): Buffer => Buffer.from(s, 'hex');

/** Buffers as hex, undefined members dropped: the shape the JSON vectors use. */
export function view(x: unknown): unknown {
  if (Buffer.isBuffer(x)) return x.toString('hex');
  if (Array.isArray(x)) return x.map(view);
  if (x !== null && typeof x === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(x)) if (v !== undefined) out[k] = view(v);
    return out;
  }
  return x;
}

/** Every way to cut `buf` in two, plus one byte at a time. */
export function splits(buf: Buffer): Buffer[][] {
  const out: Buffer[][] = [[buf]];
  for (let i = 1; i < buf.length; i++) out.push([buf.subarray(0, i), buf.subarray(i)]);
  out.push([...buf].map((b) => Buffer.from([b])));
  return out;
}

/** Runs `fn`, asserts it throws a ProtocolError with this code (and reaction, when given); returns it. */
export function assertProtocolError(fn: () => unknown, code: string, reaction?: Record<string, unknown>, msg?: string): ProtocolError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof ProtocolError, `${msg ?? ''}: expected ProtocolError ${code}, got ${String(caught)}`);
  assert.equal(caught.code, code, `${msg ?? ''}: ${caught.message}`);
  if (reaction) assert.deepEqual(view(caught.reaction), reaction, msg);
  return caught;
}
