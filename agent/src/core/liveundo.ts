/**
 * Live undo, the pure half: what takes the running system back to the
 * generation it booted (`agentctl rollback --live`), and when that is refused.
 * The runner (agent/src/liverollback.ts) does the IO.
 *
 * The inverse is computed from what is installed now against the booted
 * image's package list, not from the replayed manifests: the goal is exactly
 * the set a reboot into the booted image would give, whatever happened in
 * between (a chain of replays, a replay that failed half-way).
 */

/** How one package differs from the booted image, and what undoes it. */
export interface Reinstall {
  readonly package: string;
  /** The booted image's version: repacked from the overlay's lower layer and installed. */
  readonly version: string;
  /** `null`: not installed now (the replay removed it). */
  readonly installed: string | null;
}

export interface InverseChanges {
  /** Installed now, not in the booted image: removed (`dpkg --remove`), sorted. */
  readonly remove: readonly string[];
  /** Another version installed now, or removed since boot: the booted version goes back, sorted by name. */
  readonly reinstall: readonly Reinstall[];
}

/**
 * `booted`: the booted generation's packages.json (name → version);
 * `installed`: what dpkg reports installed now (name → version, config-files
 * leftovers excluded by the caller).
 */
export function inverseChanges(booted: Readonly<Record<string, string>>, installed: Readonly<Record<string, string>>): InverseChanges {
  const remove = Object.keys(installed).filter((n) => !Object.hasOwn(booted, n)).sort();
  const reinstall = Object.entries(booted)
    .filter(([n, v]) => installed[n] !== v)
    .map(([n, v]) => ({ package: n, version: v, installed: Object.hasOwn(installed, n) ? installed[n]! : null }))
    .sort((a, b) => (a.package < b.package ? -1 : a.package > b.package ? 1 : 0));
  return { remove, reinstall };
}

export const isEmpty = (c: InverseChanges): boolean => c.remove.length === 0 && c.reinstall.length === 0;

export interface LiveRollbackSituation {
  /** The generation the machine booted (the overlay's lower layer). */
  readonly booted: number | null;
  /** The generation it runs: higher than `booted` after a live replay in this boot. */
  readonly running: number | null;
  /** A replay in this boot failed or was interrupted: the system is somewhere between booted and a target. */
  readonly failedReplay: number | null;
  /** The version asked for, or null for "the booted one". */
  readonly requested: number | null;
}

/**
 * Why `rollback --live` cannot run, or null. Only the booted generation can
 * be reached live: its files are the overlay's lower layer, so its packages
 * can be repacked from there. Any other generation needs a reboot.
 */
export function liveRollbackRefusal(s: LiveRollbackSituation): string | null {
  const reboot = (v: number | null) => `use \`agentctl rollback${v === null ? '' : ` ${v}`}\` to roll back with a reboot`;
  if (s.booted === null) return 'the running system is not a liveup generation: nothing to roll back from';
  if (s.requested !== null && s.requested !== s.booted) {
    return `a live rollback goes back only to the booted generation ${s.booted}, not ${s.requested}; ${reboot(s.requested)}`;
  }
  if ((s.running === null || s.running <= s.booted) && s.failedReplay === null) {
    return `nothing was applied live in this boot: the system runs the booted generation ${s.booted}; ${reboot(s.requested)}`;
  }
  return null;
}
