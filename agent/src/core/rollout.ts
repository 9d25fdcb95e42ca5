/**
 * Rollout waves, decided on each machine: no server has to track who went
 * first. A machine's bucket for a version is a stable hash of its id and the
 * version (so each rollout picks a different first wave), and it takes the
 * version once the rollout's percentage passes its bucket. Pure.
 */
import { createHash } from 'node:crypto';
import type { Rollout } from '../channel/schema.js';

/** 0 ≤ bucket < 100, uniform over machine ids, stable for (id, version). */
export function rolloutBucket(machineId: string, version: number): number {
  const h = createHash('sha256').update(`${machineId}:${version}`).digest();
  return (h.readUInt32BE(0) / 2 ** 32) * 100;
}

/**
 * The share of machines (0-100) that may take the rollout's version at `now`.
 * (Pausing a timed rollout writes the percentage reached as `percent`.)
 */
export function rolloutPercent(r: Rollout, now: Date): number {
  if (r.percent !== undefined) return r.percent;
  const elapsed = (now.getTime() - Date.parse(r.start)) / 1000;
  return Math.max(0, Math.min(100, (elapsed / r.durationSeconds!) * 100));
}

export interface RolloutTurn {
  readonly allowed: boolean;
  readonly bucket: number;
  readonly percent: number;
  readonly reason: string;
}

/**
 * May this machine take `version` now? Versions other than the rollout's are
 * not held back. `limit` is a further cap from the fleet endpoint (its
 * `liveup fleet rollout` control or automatic pause), when there is one.
 */
export function rolloutTurn(r: Rollout | undefined, machineId: string, version: number, now: Date, limit?: { percent: number; paused: boolean }): RolloutTurn {
  if (!r || r.version !== version) {
    if (!limit) return { allowed: true, bucket: 0, percent: 100, reason: 'no rollout' };
  }
  const bucket = rolloutBucket(machineId, version);
  let percent = r && r.version === version ? rolloutPercent(r, now) : 100;
  let why = r && r.version === version ? `rollout of ${version} at ${percent.toFixed(1)}%` : `rollout of ${version}`;
  if (limit) {
    if (limit.percent < percent) { percent = limit.percent; why = `fleet limits the rollout of ${version} to ${percent}%`; }
    if (limit.paused && bucket >= percent) return { allowed: false, bucket, percent, reason: `the rollout of ${version} is paused at ${percent.toFixed(1)}% (this machine's bucket ${bucket.toFixed(1)})` };
  }
  if (r?.paused && r.version === version && bucket >= percent) {
    return { allowed: false, bucket, percent, reason: `the rollout of ${version} is paused at ${percent.toFixed(1)}% (this machine's bucket ${bucket.toFixed(1)})` };
  }
  return bucket < percent
    ? { allowed: true, bucket, percent, reason: `${why}: this machine's bucket ${bucket.toFixed(1)} is in` }
    : { allowed: false, bucket, percent, reason: `${why}: not this machine's turn yet (bucket ${bucket.toFixed(1)})` };
}
