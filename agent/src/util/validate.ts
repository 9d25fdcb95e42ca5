/**
 * A small strict reader for untrusted JSON (manifests, indexes, config, fleet
 * reports). We do not pull in a schema library: the card fixes our
 * dependencies, and the reader below is all the schemas need — every field is
 * typed, unknown keys are errors, and every error names the file and the key.
 */
import { LiveupError, type ErrorCode } from '../channel/errors.js';

export class Reader {
  constructor(
    /** What is being read, e.g. `manifest.json` or `/etc/liveup/agent.json`. */
    readonly source: string,
    readonly code: ErrorCode,
  ) {}

  fail(path: string, problem: string): never {
    const where = path ? `${path}: ` : '';
    throw new LiveupError(this.code, `${this.source}: ${where}${problem}`, { file: this.source, key: path });
  }

  object(v: unknown, path: string, allowed?: readonly string[]): Record<string, unknown> {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) this.fail(path, `expected an object, got ${describe(v)}`);
    const o = v as Record<string, unknown>;
    if (allowed) {
      for (const k of Object.keys(o)) {
        if (!allowed.includes(k)) {
          this.fail(join(path, k), `unknown key "${k}" (allowed: ${allowed.join(', ')})`);
        }
      }
    }
    return o;
  }

  string(o: Record<string, unknown>, key: string, path: string, opts: { pattern?: RegExp; what?: string; max?: number } = {}): string {
    const v = o[key];
    const p = join(path, key);
    if (typeof v !== 'string') this.fail(p, `expected a string, got ${describe(v)}`);
    if (opts.max !== undefined && v.length > opts.max) this.fail(p, `longer than ${opts.max} characters`);
    if (opts.pattern && !opts.pattern.test(v)) this.fail(p, `"${v}" is not ${opts.what ?? `matching ${opts.pattern}`}`);
    return v;
  }

  optString(o: Record<string, unknown>, key: string, path: string, opts: { pattern?: RegExp; what?: string; max?: number } = {}): string | undefined {
    return o[key] === undefined ? undefined : this.string(o, key, path, opts);
  }

  int(o: Record<string, unknown>, key: string, path: string, opts: { min?: number; max?: number } = {}): number {
    const v = o[key];
    const p = join(path, key);
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) this.fail(p, `expected an integer, got ${describe(v)}`);
    if (opts.min !== undefined && v < opts.min) this.fail(p, `${v} is below the minimum ${opts.min}`);
    if (opts.max !== undefined && v > opts.max) this.fail(p, `${v} is above the maximum ${opts.max}`);
    return v;
  }

  optInt(o: Record<string, unknown>, key: string, path: string, opts: { min?: number; max?: number } = {}): number | undefined {
    return o[key] === undefined ? undefined : this.int(o, key, path, opts);
  }

  bool(o: Record<string, unknown>, key: string, path: string): boolean {
    const v = o[key];
    if (typeof v !== 'boolean') this.fail(join(path, key), `expected true or false, got ${describe(v)}`);
    return v;
  }

  optBool(o: Record<string, unknown>, key: string, path: string): boolean | undefined {
    return o[key] === undefined ? undefined : this.bool(o, key, path);
  }

  array(o: Record<string, unknown>, key: string, path: string, opts: { max?: number } = {}): unknown[] {
    const v = o[key];
    const p = join(path, key);
    if (!Array.isArray(v)) this.fail(p, `expected a list, got ${describe(v)}`);
    if (opts.max !== undefined && v.length > opts.max) this.fail(p, `more than ${opts.max} entries`);
    return v;
  }

  oneOf<T extends string>(o: Record<string, unknown>, key: string, path: string, values: readonly T[]): T {
    const v = o[key];
    if (typeof v !== 'string' || !(values as readonly string[]).includes(v)) {
      this.fail(join(path, key), `expected one of ${values.map((x) => `"${x}"`).join(', ')}, got ${describe(v)}`);
    }
    return v as T;
  }

  /** An ISO-8601 UTC timestamp, returned as the canonical string. */
  timestamp(o: Record<string, unknown>, key: string, path: string): string {
    const s = this.string(o, key, path, { pattern: ISO_UTC, what: 'an ISO-8601 UTC timestamp (YYYY-MM-DDTHH:MM:SSZ)' });
    if (Number.isNaN(Date.parse(s))) this.fail(join(path, key), `"${s}" is not a valid date`);
    return s;
  }
}

export const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$/;

export function join(path: string, key: string | number): string {
  if (typeof key === 'number') return `${path}[${key}]`;
  return path ? `${path}.${key}` : key;
}

function describe(v: unknown): string {
  if (v === undefined) return 'nothing (missing)';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'string') return `the string "${v.length > 40 ? v.slice(0, 40) + '…' : v}"`;
  return `${typeof v} ${typeof v === 'object' ? '' : String(v)}`.trim();
}

/** Parse JSON, turning a syntax error into a typed error naming the source. */
export function parseJson(text: string, source: string, code: ErrorCode): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new LiveupError(code, `${source}: not valid JSON (${(e as Error).message})`, { file: source });
  }
}
