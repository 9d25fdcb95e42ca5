/**
 * The endpoint's rollout control: a live cap on how far a channel's rollout
 * goes, and the automatic pause when too many machines of the current wave
 * fail their boot check. It can only narrow what the signed channel index
 * allows (the agent applies the smaller of the two, agent/src/core/rollout.ts):
 * an endpoint is not trusted to push a generation, only to hold one back.
 * Pure: the stores keep the rows, this decides.
 */
import { LiveupError } from '../../agent/src/channel/errors.js';

export interface FleetRollout {
  readonly channel: string;
  /** The generation being rolled out. */
  readonly version: number;
  /** Share of machines (0-100) that may take it. */
  readonly percent: number;
  readonly paused: boolean;
  /** Why it is paused (by whom, or the automatic pause's count), or null. */
  readonly reason: string | null;
  /** Pause by itself when this share (0-1) of the wave failed its boot check; 0 = never. */
  readonly autoPauseRatio: number;
  /** …counted only once this many machines tried the version (a small wave says little). */
  readonly autoPauseMin: number;
  readonly updatedAt: string;
}

export interface RolloutChange {
  readonly version?: number;
  readonly percent?: number;
  readonly paused?: boolean;
  readonly reason?: string | null;
  readonly autoPauseRatio?: number;
  readonly autoPauseMin?: number;
}

/** How the current wave is doing: machines that tried the version, and those whose boot check failed. */
export interface WaveStats {
  readonly attempted: number;
  readonly failed: number;
}

export const DEFAULT_AUTO_PAUSE_RATIO = 0.2;
export const DEFAULT_AUTO_PAUSE_MIN = 5;

export const CHANNEL_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/** The row after `change`, or an error naming what is missing or wrong. */
export function applyRolloutChange(channel: string, old: FleetRollout | null, change: RolloutChange, now: Date): FleetRollout {
  if (!CHANNEL_RE.test(channel)) throw new LiveupError('INVALID_ARGUMENT', `channel "${channel}": lower-case letters, digits, ".", "_", "-"`);
  if (change.percent !== undefined && !(change.percent >= 0 && change.percent <= 100)) throw new LiveupError('INVALID_ARGUMENT', `percent ${change.percent}: expected 0 to 100`);
  if (change.autoPauseRatio !== undefined && !(change.autoPauseRatio >= 0 && change.autoPauseRatio <= 1)) throw new LiveupError('INVALID_ARGUMENT', `auto-pause ratio ${change.autoPauseRatio}: expected 0 to 1`);
  if (change.autoPauseMin !== undefined && !(Number.isInteger(change.autoPauseMin) && change.autoPauseMin >= 1)) throw new LiveupError('INVALID_ARGUMENT', `auto-pause minimum ${change.autoPauseMin}: expected a whole number >= 1`);
  if (change.version !== undefined && !(Number.isInteger(change.version) && change.version >= 1)) throw new LiveupError('INVALID_ARGUMENT', `version ${change.version}: expected a whole number >= 1`);
  const version = change.version ?? old?.version;
  if (version === undefined) throw new LiveupError('NOT_FOUND', `channel "${channel}" has no rollout yet: name the version (--version N)`);
  // A new version starts a new rollout: nothing of the old one's state carries over but its policy.
  const fresh = old === null || old.version !== version;
  const paused = change.paused ?? (fresh ? false : old.paused);
  return {
    channel,
    version,
    percent: change.percent ?? (fresh ? 0 : old.percent),
    paused,
    reason: paused ? (change.reason ?? (fresh ? null : old.reason)) : null,
    autoPauseRatio: change.autoPauseRatio ?? old?.autoPauseRatio ?? DEFAULT_AUTO_PAUSE_RATIO,
    autoPauseMin: change.autoPauseMin ?? old?.autoPauseMin ?? DEFAULT_AUTO_PAUSE_MIN,
    updatedAt: now.toISOString(),
  };
}

/** The reason to pause `r` now, or null: an active rollout whose wave fails too often. */
export function autoPauseReason(r: FleetRollout, wave: WaveStats): string | null {
  if (r.paused || r.autoPauseRatio <= 0 || wave.attempted < r.autoPauseMin || wave.attempted === 0) return null;
  if (wave.failed / wave.attempted < r.autoPauseRatio) return null;
  return `paused automatically: ${wave.failed} of ${wave.attempted} machines failed the boot check of ${r.version} (threshold ${Math.round(r.autoPauseRatio * 100)}%)`;
}
