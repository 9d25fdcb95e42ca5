/**
 * Live replay, the runner: bring the running system from generation N to a
 * staged target by replaying the package changes the publisher recorded,
 * with dpkg, in order — so the machine runs the target without a reboot, and
 * the next boot gives the same package set from a clean image.
 *
 * Order of work, each a rule:
 * 1. Refuse before touching anything (LIVE_APPLY_REFUSED): the chain must
 *    start at the running generation; dpkg must be consistent (`--audit`);
 *    the installed packages must equal the running generation's list (a
 *    system someone changed by hand is not what the recorded changes were
 *    made against); every .deb is fetched and verified like any artifact;
 *    dpkg simulates the first steps.
 * 2. Journal `live-replay` started and a `live-apply-pending` marker before
 *    the first change, so a crash at any later point is known at the next
 *    start (`recoverInterruptedApply`).
 * 3. dpkg runs, in the recorded order.
 * 4. Restart the services whose processes map a file the changed packages
 *    own; list what only a reboot renews.
 * 5. Convergence: the installed set must equal the target's package list;
 *    drift is a failure (LIVE_APPLY_FAILED), never reported as success.
 * On any failure after step 2 the machine is marked "needs reboot into
 * <target>" (the target is staged as the next boot's default).
 */
import type { ArtifactRef } from './channel/schema.js';
import { LiveupError, toLiveupError } from './channel/errors.js';
import type { VerifiedArtifact, VerifiedManifest } from './channel/verify.js';
import type { Dpkg } from './adapters/dpkg.js';
import { describeDrift, packageDrift } from './adapters/dpkg.js';
import type { Journal } from './adapters/journal.js';
import type { JobResult, Systemd } from './adapters/systemd.js';
import { chainProblem, replaySteps, restartPlan, type ProcessInfo, type ReplayLink, type RestartPlan } from './core/liveapply.js';
import type { Logger } from './util/log.js';

export const SETTING_PENDING = 'live-apply-pending';
export const SETTING_LIVE_VERSION = 'live-version';
export const SETTING_NEEDS_REBOOT = 'needs-reboot';

export interface LiveApplyDeps {
  readonly dpkg: Dpkg;
  readonly journal: Journal;
  /** Download and verify one .deb of generation `version` (resumable, like any artifact). */
  fetchDeb(version: number, ref: ArtifactRef): Promise<VerifiedArtifact>;
  /** A generation's package list (name → version) from its verified packages.json, or null when it has none. */
  packageList(version: number): Promise<Readonly<Record<string, string>> | null>;
  processes(): Promise<ProcessInfo[]>;
  /** null: restart nothing (a test root, where no process runs from the replayed files). */
  readonly systemd: Pick<Systemd, 'restartUnits'> | null;
  /** The agent's own unit: restarted by systemd after the transaction, never in the middle of it. */
  readonly selfUnit: string;
  /** This boot's id (/proc/sys/kernel/random/boot_id): a live version holds until the next boot. */
  readonly bootId: string;
  readonly log: Logger;
  onProgress?(step: string, done: number, total: number): void;
}

export interface LiveApplyResult {
  readonly version: number;
  readonly chain: readonly number[];
  readonly installed: number;
  readonly removed: number;
  readonly restarted: readonly JobResult[];
  readonly needsReboot: readonly string[];
  readonly restartSelf: boolean;
}

/**
 * The marker written before the first dpkg run. `kind` 'rollback': a live
 * rollback to the booted generation `target` (absent in markers of older agents: a replay).
 */
export interface Pending { readonly target: number; readonly chain: readonly number[]; readonly bootId: string; readonly started: string; readonly kind?: 'replay' | 'rollback' }

/** The generation this boot runs: the booted one, or a newer one a live replay converged to in this boot. */
export function runningVersion(journal: Journal, booted: number | null, bootId: string): number | null {
  const raw = journal.getSetting(SETTING_LIVE_VERSION);
  if (!raw) return booted;
  const live = JSON.parse(raw) as { version: number; bootId: string };
  if (live.bootId !== bootId) return booted;
  return booted === null ? live.version : Math.max(booted, live.version);
}

/** Needs a reboot into a generation, after a failed or interrupted replay in this boot. */
export function needsReboot(journal: Journal, bootId: string): { version: number; reason: string } | null {
  const raw = journal.getSetting(SETTING_NEEDS_REBOOT);
  if (!raw) return null;
  const n = JSON.parse(raw) as { version: number; reason: string; bootId: string };
  return n.bootId === bootId ? { version: n.version, reason: n.reason } : null;
}

/**
 * Restart the services whose processes map one of `changedFiles` (the files
 * the changed packages own, before and after), through systemd; what a
 * restart cannot renew is in `plan.needsReboot`. Shared by the replay and the
 * live rollback.
 */
export async function restartAffected(changedFiles: ReadonlySet<string>, deps: Pick<LiveApplyDeps, 'processes' | 'systemd' | 'selfUnit'>): Promise<{
  plan: RestartPlan; restarted: JobResult[]; failedRestarts: JobResult[];
}> {
  const plan = restartPlan(await deps.processes(), changedFiles, deps.selfUnit);
  const restarted = deps.systemd && plan.restart.length ? await deps.systemd.restartUnits(plan.restart) : [];
  return { plan, restarted, failedRestarts: restarted.filter((r) => r.result !== 'done') };
}

async function readyDebs(chain: readonly VerifiedManifest[], deps: LiveApplyDeps): Promise<Map<string, string>> {
  const refs = chain.flatMap((vm) => vm.manifest.changes.flatMap((c) => (c.action === 'remove' ? [] : [{ v: vm.manifest.version, ref: c.deb }])));
  const total = refs.reduce((n, r) => n + r.ref.length, 0);
  const paths = new Map<string, string>();
  let done = 0;
  for (const { v, ref } of refs) {
    const a = await deps.fetchDeb(v, ref);
    paths.set(`${v}/${ref.path}`, a.path);
    done += ref.length;
    deps.onProgress?.('download', done, total);
  }
  return paths;
}

export async function liveApply(running: number | null, chain: readonly VerifiedManifest[], deps: LiveApplyDeps): Promise<LiveApplyResult> {
  const { dpkg, journal, log } = deps;
  const links: ReplayLink[] = chain.map((vm) => ({ version: vm.manifest.version, parent: vm.manifest.parent, changes: vm.manifest.changes }));
  const refuse = (msg: string, details: Record<string, string | number | boolean> = {}): never => {
    throw new LiveupError('LIVE_APPLY_REFUSED', `live replay refused, nothing was changed: ${msg}`, details);
  };
  const problem = chainProblem(running, links);
  if (problem) refuse(problem);
  const unsafe = chain.filter((vm) => vm.manifest.rebootRequired.required);
  if (unsafe.length) refuse(`generation ${unsafe.map((u) => `${u.manifest.version} needs a reboot (${u.manifest.rebootRequired.reasons.join(', ')})`).join('; ')}`);
  const target = links[links.length - 1]!.version;
  const versions = links.map((l) => l.version);

  // 1. Before any change.
  const audit = await dpkg.audit();
  if (audit) refuse(`dpkg reports unfinished packages (${audit.split('\n')[0]}); run \`dpkg --configure -a\` or reboot`);
  const before = await dpkg.installed();
  const runningList = await deps.packageList(running!);
  if (runningList) {
    const drift = describeDrift(packageDrift(before, runningList));
    if (drift) refuse(`the running system differs from generation ${running}'s package list (${drift})`);
  }
  const targetList = await deps.packageList(target);
  const debs = await readyDebs(chain, deps);
  const steps = replaySteps(links);
  const debPaths = (s: Extract<(typeof steps)[number], { kind: 'install' }>) => s.changes.map((c) => debs.get(`${s.version}/${c.deb.path}`)!);
  // dpkg simulates against the installed state, so only the first step is
  // exact; the later ones are checked by dpkg itself as they run.
  const first = steps[0]!;
  try {
    if (first.kind === 'install') await dpkg.simulateInstall(debPaths(first));
    else await dpkg.simulateRemove(first.packages);
  } catch (e) {
    refuse(toLiveupError(e).message);
  }
  // Files of the packages to be removed are known only before removal.
  const changedFiles = new Set<string>();
  for (const s of steps) if (s.kind === 'remove') for (const p of s.packages) for (const f of await dpkg.files(p)) changedFiles.add(f);

  // 2. The marker, then 3. the changes.
  const pending: Pending = { target, chain: versions, bootId: deps.bootId, started: new Date().toISOString() };
  journal.setSetting(SETTING_PENDING, JSON.stringify(pending));
  const id = journal.beginStep('live-replay', target, { chain: versions, steps: steps.length });
  log.info({ target, chain: versions, steps: steps.length }, 'live replay started');
  let installed = 0;
  let removed = 0;
  try {
    for (const [i, s] of steps.entries()) {
      deps.onProgress?.('live-replay', i, steps.length);
      if (s.kind === 'install') {
        await dpkg.install(debPaths(s));
        installed += s.changes.length;
        for (const c of s.changes) for (const f of await dpkg.files(c.package)) changedFiles.add(f);
      } else {
        await dpkg.remove(s.packages);
        removed += s.packages.length;
      }
    }
    deps.onProgress?.('live-replay', steps.length, steps.length);

    // 4. Restarts.
    const { plan, restarted, failedRestarts } = await restartAffected(changedFiles, deps);

    // 5. Convergence.
    if (targetList) {
      const drift = describeDrift(packageDrift(await dpkg.installed(), targetList));
      if (drift) throw new LiveupError('LIVE_APPLY_FAILED', `the system did not converge to generation ${target}: ${drift}`, { version: target });
    }
    const needs = [...plan.needsReboot, ...failedRestarts.map((r) => `${r.unit} did not restart (${r.result})`)];
    journal.setSetting(SETTING_LIVE_VERSION, JSON.stringify({ version: target, bootId: deps.bootId }));
    journal.setSetting(SETTING_PENDING, null);
    const msg = `applied live: ${versions.join(' → ')} (${installed} installed or upgraded, ${removed} removed)` +
      (restarted.length ? `; restarted ${restarted.map((r) => r.unit).join(', ')}` : '') +
      (needs.length ? `; a reboot is still needed for: ${needs.join('; ')}` : '');
    journal.endStep(id, 'ok', null, msg, { restarted: restarted.map((r) => r.unit), needsReboot: needs });
    log.info({ target, restarted: restarted.map((r) => r.unit), needsReboot: needs }, 'live replay done');
    return { version: target, chain: versions, installed, removed, restarted, needsReboot: needs, restartSelf: plan.restartSelf };
  } catch (e) {
    const err = e instanceof LiveupError && e.code === 'LIVE_APPLY_FAILED' ? e
      : new LiveupError('LIVE_APPLY_FAILED', `live replay to ${target} failed after changing the system: ${toLiveupError(e).message}; reboot into generation ${target}`, { version: target }, { cause: e });
    journal.setSetting(SETTING_NEEDS_REBOOT, JSON.stringify({ version: target, reason: err.message, bootId: deps.bootId }));
    journal.setSetting(SETTING_PENDING, null);
    journal.endStep(id, 'failed', err.code, err.message);
    throw err;
  }
}

/**
 * At start: a replay that was running when the agent died (kill -9, power)
 * is journalled as interrupted, dpkg is asked to finish what it unpacked,
 * and the machine is marked as needing a reboot into the target — nothing
 * claims the replay succeeded. Returns what it found, or null.
 */
export async function recoverInterruptedApply(deps: Pick<LiveApplyDeps, 'dpkg' | 'journal' | 'log' | 'bootId'>): Promise<{ target: number; configured: boolean; message: string } | null> {
  const raw = deps.journal.getSetting(SETTING_PENDING);
  if (!raw) return null;
  const p = JSON.parse(raw) as Pending;
  let configured = true;
  let detail = '';
  if (p.bootId === deps.bootId) {
    try {
      await deps.dpkg.configurePending();
    } catch (e) {
      configured = false;
      detail = `; dpkg --configure -a failed: ${toLiveupError(e).message}`;
    }
  } else {
    detail = '; the machine rebooted since, so it runs a clean image';
  }
  const message = `live ${p.kind === 'rollback' ? 'rollback' : 'replay'} to ${p.target} (started ${p.started}) was interrupted${detail}`;
  if (p.bootId === deps.bootId) {
    deps.journal.setSetting(SETTING_NEEDS_REBOOT, JSON.stringify({ version: p.target, reason: message, bootId: deps.bootId }));
  }
  deps.journal.event({ kind: 'reconciled', version: p.target, status: 'failed', errorCode: 'LIVE_APPLY_FAILED', message });
  deps.journal.setSetting(SETTING_PENDING, null);
  deps.log.warn({ target: p.target, configured }, 'interrupted live replay recovered');
  return { target: p.target, configured, message };
}
