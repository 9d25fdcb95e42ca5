/**
 * Choosing a rollback target. Pure; the agent then writes the boot menu (or a
 * one-shot next entry) and reboots or kexecs.
 *
 * A rollback only ever picks a generation already on the boot medium: it is the
 * local, explicit way below the version floor, so it must not need the network.
 */
import { LiveupError } from '../channel/errors.js';
import { type GenerationInfo, type GenerationState, assertVersion } from './generation.js';

export interface RollbackInput {
  readonly generations: readonly GenerationInfo[];
  /** Versions whose files are on the boot medium. */
  readonly staged: readonly number[];
  readonly booted: number;
}

export interface RollbackRequest {
  /** A named target; default: the newest good generation older than the booted one. */
  readonly version?: number;
  /** Allow a named generation that is marked failed. */
  readonly force?: boolean;
}

export interface RollbackTarget {
  readonly version: number;
  readonly state: GenerationState;
}

export function chooseRollbackTarget(input: RollbackInput, request: RollbackRequest = {}): RollbackTarget {
  const onMedium = new Set(input.staged);
  const states = new Map<number, GenerationState>(input.generations.map((g) => [g.version, g.state]));

  if (request.version === undefined) {
    const candidates = input.generations
      .filter((g) => g.state === 'good' && g.version < input.booted && onMedium.has(g.version))
      .sort((a, b) => b.version - a.version);
    const best = candidates[0];
    if (!best) {
      throw new LiveupError(
        'UNKNOWN_GENERATION',
        `no good generation older than the booted ${input.booted} is on the boot medium; name one with --version (on the medium: ${
          [...onMedium].sort((a, b) => a - b).join(', ') || 'none'
        })`,
        { booted: input.booted },
      );
    }
    return { version: best.version, state: best.state };
  }

  const v = request.version;
  assertVersion(v, 'rollback version');
  if (v === input.booted) throw new LiveupError('INVALID_ARGUMENT', `generation ${v} is the one booted; nothing to roll back to`, { version: v });
  const state = states.get(v);
  if (!onMedium.has(v)) {
    throw new LiveupError(
      'UNKNOWN_GENERATION',
      state === undefined ? `generation ${v} is unknown on this machine` : `generation ${v} was removed from the boot medium; it can only come back by update --version ${v}`,
      { version: v },
    );
  }
  // Files on the medium without a journal row: staged but never booted.
  const s = state ?? 'staged';
  if (s === 'failed' && !request.force) {
    throw new LiveupError('INVALID_ARGUMENT', `generation ${v} is marked failed; pass --force to boot it anyway`, { version: v, state: s });
  }
  return { version: v, state: s };
}
