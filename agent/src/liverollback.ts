/**
 * Live rollback, the runner (`agentctl rollback --live`): take the running
 * system back to the generation it booted, without a reboot, after one or
 * more live replays in this boot. The booted image is the overlay's lower
 * layer, so every package it had can be repacked from there
 * (adapters/repack.ts): no network, no stored .debs.
 *
 * The same rules as the forward replay (liveapply.ts), in the same order:
 * 1. Refuse before any change (LIVE_APPLY_REFUSED): dpkg consistent
 *    (`--audit`); the lower layer is the booted image (its installed set is
 *    the booted packages.json); every package to reinstall repacked; none of their files
 *    owned now by a package that stays (a file the replay moved to a package
 *    the rollback removes is taken over — `--force-overwrite`, and unpacked
 *    again after that package's removal deleted it); dpkg simulates the
 *    unpack. The boot side is then made consistent (`armBoot`: the booted
 *    generation boots next, the rolled-back-from one is held back), so from
 *    here on a reboot gives the booted generation whatever happens.
 * 2. A `live-rollback` step and the `live-apply-pending` marker (kind
 *    `rollback`) before the first change.
 * 3. dpkg in three runs: `--unpack` the repacked booted versions,
 *    `--remove` what the booted image did not have, `--configure -a`. Neither "install, then remove" nor "remove, then
 *    install" works for every replay: an upgrade that brought a new
 *    dependency needs the old version in place before the dependency can
 *    go; a new package that Breaks the old version must be gone before the
 *    old version can be configured. Unpack, remove, configure serves both.
 *    (A new package that *Conflicts* with a booted one is refused by the
 *    simulation: that needs a reboot.)
 * 4. Restart the services that map a changed file (shared with the replay).
 * 5. Converge: the installed set must equal the booted generation's
 *    packages.json and every file of the reinstalled packages must be there,
 *    else LIVE_APPLY_FAILED and "needs reboot into <booted>".
 */
import { LiveupError, toLiveupError } from './channel/errors.js';
import type { Dpkg } from './adapters/dpkg.js';
import { describeDrift, isInstalled, packageDrift } from './adapters/dpkg.js';
import type { Journal } from './adapters/journal.js';
import type { JobResult } from './adapters/systemd.js';
import { inverseChanges, ownershipClashes, unresolvableClashes, type InverseChanges, type Reinstall } from './core/liveundo.js';
import type { Repacked } from './adapters/repack.js';
import {
  SETTING_LIVE_VERSION, SETTING_NEEDS_REBOOT, SETTING_PENDING, restartAffected, type LiveApplyDeps, type Pending,
} from './liveapply.js';

export interface LiveRollbackDeps extends Pick<LiveApplyDeps, 'processes' | 'systemd' | 'selfUnit' | 'bootId' | 'log' | 'onProgress'> {
  readonly dpkg: Dpkg;
  readonly journal: Journal;
  /** The booted generation's packages.json (name → version). */
  readonly bootedList: Readonly<Record<string, string>>;
  /** What the booted image (the overlay's lower layer) has installed, or null when it has no dpkg status. */
  imageList(): Promise<Readonly<Record<string, string>> | null>;
  /** Repack the booted versions from the booted image: package → .deb and its files. Throws LIVE_APPLY_REFUSED when one cannot be. */
  repack(pkgs: readonly Reinstall[]): Promise<Map<string, Repacked>>;
  /** path → owning packages, on the running system (`now`) and in the booted image (`booted`), for these paths. */
  fileOwners(paths: ReadonlySet<string>): Promise<{ now: Map<string, string[]>; booted: Map<string, string[]> }>;
  /** Which of these paths do not exist on the running system. */
  missing(paths: readonly string[]): Promise<string[]>;
  /** Make the booted generation the next boot and hold newer ones back; runs after the checks, before the first change. */
  armBoot(): Promise<void>;
}

export interface LiveRollbackResult {
  readonly version: number;
  readonly from: number;
  readonly changes: InverseChanges;
  readonly restarted: readonly JobResult[];
  readonly needsReboot: readonly string[];
  readonly restartSelf: boolean;
}

/** Run with `booted` the generation to go back to and `from` what runs now (for the journal and messages). */
export async function liveRollback(booted: number, from: number, deps: LiveRollbackDeps): Promise<LiveRollbackResult> {
  const { dpkg, journal, log } = deps;
  const refuse = (msg: string): never => {
    throw new LiveupError('LIVE_APPLY_REFUSED', `live rollback refused, nothing was changed: ${msg}`, { version: booted });
  };

  // 1. Before any change.
  const audit = await dpkg.audit();
  if (audit) refuse(`dpkg reports unfinished packages (${audit.split('\n')[0]}); reboot into ${booted} (\`agentctl rollback ${booted} --now\`)`);
  const installed = Object.fromEntries((await dpkg.installed()).filter(isInstalled).map((p) => [p.name, p.version]));
  const changes = inverseChanges(deps.bootedList, installed);
  const reboot = `a reboot is needed: \`agentctl rollback ${booted} --now\``;
  // The packages come from the lower layer: it must be the booted generation's image (after a soft-reboot, say, it may not be).
  const image = await deps.imageList();
  const notImage = image === null ? 'it has no dpkg status file' : describeDrift(packageDrift(Object.entries(image).map(([name, version]) => ({ name, version, status: 'ii' })), deps.bootedList));
  if (notImage) refuse(`the booted image (liveLowerDir) is not generation ${booted}'s: ${notImage}; ${reboot}`);
  let repacked = new Map<string, Repacked>();
  try {
    repacked = await deps.repack(changes.reinstall);
  } catch (e) {
    refuse(`${toLiveupError(e).message}; ${reboot}`);
  }
  const debPaths = changes.reinstall.map((r) => repacked.get(r.package)!.deb);
  // dpkg --simulate does not look at files: a file the replay moved to another package is found here.
  const files = new Map([...repacked].map(([p, r]) => [p, r.files]));
  const owners = await deps.fileOwners(new Set([...files.values()].flat()));
  const clashes = ownershipClashes(files, owners.now, owners.booted);
  const stuck = unresolvableClashes(clashes, changes);
  if (stuck.length) {
    refuse(`${stuck.slice(0, 5).map((c) => `${c.path} of ${c.package} belongs to ${c.owners.join(', ')} now`).join('; ')}${stuck.length > 5 ? ` (and ${stuck.length - 5} more)` : ''}; ${reboot}`);
  }
  const unpack = { unpackOnly: true, forceOverwrite: clashes.length > 0 };
  try {
    if (debPaths.length) await dpkg.simulateInstall(debPaths, unpack);
    else if (changes.remove.length) await dpkg.simulateRemove(changes.remove);
  } catch (e) {
    refuse(`${toLiveupError(e).message}; ${reboot}`);
  }
  // Files of what is replaced or removed are known only before.
  const changedFiles = new Set<string>();
  for (const p of [...changes.remove, ...changes.reinstall.filter((r) => r.installed !== null).map((r) => r.package)]) {
    for (const f of await dpkg.files(p)) changedFiles.add(f);
  }
  await deps.armBoot();

  // 2. The marker, then 3. the changes.
  const pending: Pending = { target: booted, chain: [from, booted], bootId: deps.bootId, started: new Date().toISOString(), kind: 'rollback' };
  journal.setSetting(SETTING_PENDING, JSON.stringify(pending));
  const id = journal.beginStep('live-rollback', booted, {
    from, remove: [...changes.remove], takenOver: clashes.map((c) => `${c.path}: ${c.owners.join(', ')} → ${c.package}`), reinstall: changes.reinstall.map((r) => `${r.package} ${r.installed ?? '(removed)'} → ${r.version}`),
  });
  log.info({ booted, from, remove: changes.remove, reinstall: changes.reinstall.length }, 'live rollback started');
  const total = 3;
  try {
    deps.onProgress?.('live-rollback', 0, total);
    if (debPaths.length) await dpkg.install(debPaths, unpack);
    deps.onProgress?.('live-rollback', 1, total);
    if (changes.remove.length) await dpkg.remove(changes.remove);
    // A taken-over file is still in the removed package's list too, so its
    // removal deleted it: unpacking the booted package once more puts it back.
    const takeBack = [...new Set(clashes.map((c) => c.package))];
    if (takeBack.length) await dpkg.install(takeBack.map((p) => repacked.get(p)!.deb), { unpackOnly: true });
    deps.onProgress?.('live-rollback', 2, total);
    if (debPaths.length) await dpkg.configurePending();
    deps.onProgress?.('live-rollback', total, total);
    for (const r of changes.reinstall) for (const f of await dpkg.files(r.package)) changedFiles.add(f);

    // 4. Restarts.
    const { plan, restarted, failedRestarts } = await restartAffected(changedFiles, deps);

    // 5. Convergence.
    // The package set alone does not show a file dpkg removed with another package: the reinstalled files are checked too.
    const gone = await deps.missing([...files.values()].flat());
    const drift = describeDrift(packageDrift(await dpkg.installed(), deps.bootedList)) ??
      (gone.length ? `files of the booted image missing: ${gone.slice(0, 5).join(', ')}${gone.length > 5 ? ` (and ${gone.length - 5} more)` : ''}` : null);
    if (drift) throw new LiveupError('LIVE_APPLY_FAILED', `the system did not converge back to generation ${booted}: ${drift}; reboot into generation ${booted}`, { version: booted, converge: true });
    const needs = [...plan.needsReboot, ...failedRestarts.map((r) => `${r.unit} did not restart (${r.result})`)];
    // The running generation is the booted one again; an earlier failure in this boot is undone too.
    journal.setSetting(SETTING_LIVE_VERSION, null);
    journal.setSetting(SETTING_NEEDS_REBOOT, null);
    journal.setSetting(SETTING_PENDING, null);
    const msg = `rolled back live: ${from} → ${booted} (${changes.reinstall.length} reinstalled from the booted image, ${changes.remove.length} removed)` +
      (restarted.length ? `; restarted ${restarted.map((r) => r.unit).join(', ')}` : '') +
      (needs.length ? `; a reboot is still needed for: ${needs.join('; ')}` : '');
    journal.endStep(id, 'ok', null, msg, { restarted: restarted.map((r) => r.unit), needsReboot: needs });
    log.info({ booted, restarted: restarted.map((r) => r.unit), needsReboot: needs }, 'live rollback done');
    return { version: booted, from, changes, restarted, needsReboot: needs, restartSelf: plan.restartSelf };
  } catch (e) {
    const err = e instanceof LiveupError && e.details.converge === true ? e
      : new LiveupError('LIVE_APPLY_FAILED', `live rollback to ${booted} failed after changing the system: ${toLiveupError(e).message}; reboot into generation ${booted}`, { version: booted }, { cause: e });
    journal.setSetting(SETTING_NEEDS_REBOOT, JSON.stringify({ version: booted, reason: err.message, bootId: deps.bootId }));
    journal.setSetting(SETTING_PENDING, null);
    journal.endStep(id, 'failed', err.code, err.message);
    throw err;
  }
}
