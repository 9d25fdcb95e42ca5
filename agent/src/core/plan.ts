/**
 * The update planner: current state + verified index + policy → steps.
 *
 * Pure, so every decision (what to fetch, what to try at next boot, what to
 * delete) is a table-tested function of its inputs; the agent executes the
 * steps in order, journalling each before it starts.
 */
import { LiveupError } from '../channel/errors.js';
import { type GenerationInfo, type GenerationState, assertVersion } from './generation.js';

export interface CurrentState {
  /** The running generation, or null (e.g. an installer that is not a liveup generation). */
  readonly booted: number | null;
  /** Versions whose files are complete on the boot medium, whatever their state. */
  readonly staged: readonly number[];
  /** Every generation the journal knows, including removed ones (a removed failed one stays failed). */
  readonly generations: readonly GenerationInfo[];
  /** Highest version ever accepted: anything lower is a rollback and refused here. 0 when none. */
  readonly floor: number;
  readonly pinned: readonly number[];
  /** The generation the boot menu already tries at next boot, if any. */
  readonly tryVersion?: number | null;
}

export interface AvailableVersion {
  readonly version: number;
  readonly architecture: string;
}

/** What the verified channel index offers (only ever built from a verified index). */
export interface IndexSummary {
  readonly versions: readonly AvailableVersion[];
}

export interface UpdatePolicy {
  /** How many of the newest usable generations gc keeps, besides the protected ones. */
  readonly keep: number;
  readonly architecture: string;
}

export interface UpdateRequest {
  /** An explicit version: taken even if it failed before (the operator asked for it). */
  readonly version?: number;
}

export type Step =
  | { readonly kind: 'none'; readonly reason: string }
  | { readonly kind: 'fetch'; readonly version: number }
  | { readonly kind: 'stage'; readonly version: number }
  /** Rewrite grub.cfg with `entries` (the generations that survive gc) and start a trial of `tryVersion`. */
  | { readonly kind: 'write-menu'; readonly tryVersion: number; readonly entries: readonly number[] }
  /** Remove these generations' files; runs after the menu no longer lists them. */
  | { readonly kind: 'gc'; readonly versions: readonly number[] };

export interface GcOptions {
  readonly booted: number | null;
  readonly lastGood: number | null;
  readonly pinned: readonly number[];
  readonly keep: number;
  /** The generation on trial: never removed before it had its chance. */
  readonly trial?: number | null;
}

function assertKeep(keep: number): void {
  if (!Number.isInteger(keep) || keep < 0 || keep > 1000) {
    throw new LiveupError('INVALID_ARGUMENT', `keep must be a whole number from 0 to 1000, got ${keep}`, { keep });
  }
}

/** Newest good generation still on the medium: the boot menu's default. */
export function lastGoodOf(generations: readonly GenerationInfo[], staged: readonly number[]): number | null {
  const on = new Set(staged);
  const good = generations.filter((g) => g.state === 'good' && on.has(g.version)).map((g) => g.version);
  return good.length ? Math.max(...good) : null;
}

/**
 * Generations (on the medium) to remove, oldest first. Kept: the booted one,
 * the last good one (the boot default), the trial, pinned ones, and the `keep`
 * newest that are not failed — a failed generation is never booted
 * automatically, so it should not take a slot meant for rollback targets;
 * pin it to keep it for inspection.
 */
export function gcPlan(generations: readonly GenerationInfo[], opts: GcOptions): number[] {
  assertKeep(opts.keep);
  const protectedSet = new Set<number>(opts.pinned);
  for (const v of [opts.booted, opts.lastGood, opts.trial ?? null]) if (v !== null) protectedSet.add(v);
  const newest = generations
    .filter((g) => g.state !== 'failed')
    .map((g) => g.version)
    .sort((a, b) => b - a)
    .slice(0, opts.keep);
  for (const v of newest) protectedSet.add(v);
  return generations
    .map((g) => g.version)
    .filter((v) => !protectedSet.has(v))
    .sort((a, b) => a - b);
}

export function planUpdate(current: CurrentState, index: IndexSummary, policy: UpdatePolicy, request: UpdateRequest = {}): Step[] {
  assertKeep(policy.keep);
  const states = new Map<number, GenerationState>(current.generations.map((g) => [g.version, g.state]));
  const stateOf = (v: number): GenerationState => states.get(v) ?? 'staged';
  const staged = new Set(current.staged);
  const ours = index.versions.filter((a) => a.architecture === policy.architecture);

  let target: number;
  if (request.version !== undefined) {
    const v = request.version;
    assertVersion(v, 'requested version');
    const offered = index.versions.filter((a) => a.version === v);
    if (offered.length === 0) throw new LiveupError('NOT_FOUND', `version ${v} is not in the channel index`, { version: v });
    if (!offered.some((a) => a.architecture === policy.architecture)) {
      throw new LiveupError('WRONG_ARCHITECTURE', `version ${v} is not published for ${policy.architecture}`, { version: v, architecture: policy.architecture });
    }
    if (v < current.floor) {
      throw new LiveupError('VERSION_ROLLBACK', `version ${v} is below the floor ${current.floor}; use rollback to boot an older staged generation`, {
        version: v,
        floor: current.floor,
      });
    }
    target = v;
  } else {
    // A failed generation is never chosen on our own: retrying it would loop fail → fallback → retry.
    const candidates = ours.map((a) => a.version).filter((v) => v >= current.floor && stateOf(v) !== 'failed');
    if (candidates.length === 0) {
      const failed = ours.filter((a) => a.version >= current.floor && stateOf(a.version) === 'failed').map((a) => a.version);
      return [
        {
          kind: 'none',
          reason:
            `no version for ${policy.architecture} at or above ${current.floor} to update to` +
            (failed.length ? ` (failed before: ${failed.sort((a, b) => a - b).join(', ')})` : ''),
        },
      ];
    }
    target = Math.max(...candidates);
    if (current.booted !== null && target <= current.booted) {
      return [{ kind: 'none', reason: `up to date: booted generation ${current.booted} is the newest available` }];
    }
  }
  if (current.booted === target) return [{ kind: 'none', reason: `generation ${target} is already booted` }];
  if (staged.has(target) && current.tryVersion === target) {
    return [{ kind: 'none', reason: `generation ${target} is staged and will be tried at the next boot` }];
  }

  const steps: Step[] = [];
  if (!staged.has(target)) steps.push({ kind: 'fetch', version: target }, { kind: 'stage', version: target });
  const onMedium: GenerationInfo[] = [...new Set([...current.staged, target])].map((v) => ({ version: v, state: stateOf(v) }));
  const remove = gcPlan(onMedium, {
    booted: current.booted,
    lastGood: lastGoodOf(current.generations, current.staged),
    pinned: current.pinned,
    keep: policy.keep,
    trial: target,
  });
  const entries = onMedium
    .map((g) => g.version)
    .filter((v) => !remove.includes(v))
    .sort((a, b) => b - a);
  steps.push({ kind: 'write-menu', tryVersion: target, entries });
  if (remove.length) steps.push({ kind: 'gc', versions: remove });
  return steps;
}
