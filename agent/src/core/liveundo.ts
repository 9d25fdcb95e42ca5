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

/** A file a repacked booted package ships that another package owns now (a package split, a file moved by the replay). */
export interface Clash {
  readonly path: string;
  /** The reinstalled package that ships it in the booted image. */
  readonly package: string;
  /** Who owns it now and did not in the booted image. */
  readonly owners: readonly string[];
}

/**
 * `files`: per reinstalled package, the non-directory paths it has in the
 * booted image; `ownersNow` / `ownersBooted`: path → packages listing it,
 * on the running system and in the booted image. dpkg refuses to unpack a
 * file another package owns, so these must be known before the first change.
 */
export function ownershipClashes(
  files: ReadonlyMap<string, readonly string[]>,
  ownersNow: ReadonlyMap<string, readonly string[]>,
  ownersBooted: ReadonlyMap<string, readonly string[]>,
): Clash[] {
  const out: Clash[] = [];
  for (const [pkg, paths] of files) {
    for (const path of paths) {
      const before = new Set(ownersBooted.get(path) ?? []);
      const owners = (ownersNow.get(path) ?? []).filter((o) => o !== pkg && !before.has(o));
      if (owners.length) out.push({ path, package: pkg, owners: [...new Set(owners)].sort() });
    }
  }
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/**
 * Clashes with packages the rollback removes anyway are resolved: the booted
 * package takes the file over (`--force-overwrite`; dpkg then lists it in
 * both packages, so the removal deletes it and the runner unpacks the booted
 * package once more). A clash with a package that stays cannot be: refused.
 */
export function unresolvableClashes(clashes: readonly Clash[], changes: InverseChanges): Clash[] {
  const removed = new Set(changes.remove);
  return clashes.filter((c) => c.owners.some((o) => !removed.has(o)));
}
