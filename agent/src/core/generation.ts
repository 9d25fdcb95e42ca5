/**
 * What the pure core knows about a generation. The journal owns the truth;
 * these are the plain values it hands to the planner, the boot menu and
 * rollback so those can be tested without a database.
 */
import { LiveupError } from '../channel/errors.js';

/**
 * - `staged`: on the boot medium, never booted.
 * - `booted`: booted at least once, boot check not passed yet (a trial in progress).
 * - `good`: passed its boot check; may be the default boot entry.
 * - `failed`: failed its boot check or ran out of boot attempts; never chosen automatically again.
 *
 * Whether a generation's files are still on the medium is a separate fact (the
 * `staged` version lists of the callers): a gc'd generation keeps its state in the
 * journal, so a failed one stays failed and is not fetched again.
 */
export const GENERATION_STATES = ['staged', 'booted', 'good', 'failed'] as const;
export type GenerationState = (typeof GENERATION_STATES)[number];

export interface GenerationInfo {
  readonly version: number;
  readonly state: GenerationState;
}

export function isVersion(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 1;
}

export function assertVersion(v: unknown, what: string): asserts v is number {
  if (!isVersion(v)) throw new LiveupError('INVALID_ARGUMENT', `${what} must be a positive integer generation version, got ${String(v)}`, { what });
}

/** Newest first: the order of the boot menu and of `agentctl list`. */
export function byVersionDesc<T extends { readonly version: number }>(a: T, b: T): number {
  return b.version - a.version;
}
