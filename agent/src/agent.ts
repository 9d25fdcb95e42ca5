/**
 * The agent: what `liveup-agentd` does, as one object the D-Bus service, the
 * scheduler and the inbox call. It owns no policy of its own — the planner,
 * the boot menu and rollback are pure functions in core/ — and no IO of its
 * own — each external system is an adapter. What it does is the order of
 * things and the journal: a row marks each step before it starts, so a crash
 * at any point is visible and reconciled at the next start.
 */
import { lstat, mkdir, readFile, readdir, rename, rm, stat, statfs } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fetchVerifiedIndex, fetchVerifiedManifest } from './channel/client.js';
import { LiveupError, toLiveupError, type ErrorCode } from './channel/errors.js';
import { artifactPath } from './channel/layout.js';
import { loadKeyring, type PinnedKeyring } from './channel/signature.js';
import { openSource, type RepoSource } from './channel/source.js';
import { verifyArtifactFile, verifyManifest, type VerifiedArtifact, type VerifiedIndex, type VerifiedManifest } from './channel/verify.js';
import type { HttpCredentials } from './adapters/http.js';
import { fetchArtifact } from './adapters/fetch.js';
import type { GrubEnv } from './adapters/grubenv.js';
import type { Generation as JournalGeneration, Journal } from './adapters/journal.js';
import { ensureSha512Sums, listStaged, reconcileStaging, removeGeneration, stageGeneration } from './adapters/stage.js';
import type { AgentConfig } from './config.js';
import { ENV_TRIES_LEFT, ENV_TRY_VERSION, ENV_NEXT_ENTRY, VERIFY_SETTING, renderBootMenu, trialEnv } from './core/bootmenu.js';
import { signedBootEnv } from './core/signedboot.js';
import { writeSignedBootChoice } from './adapters/signedbootenv.js';
import type { GenerationInfo as CoreGeneration, GenerationState as CoreState } from './core/generation.js';
import { gcPlan, lastGoodOf, planUpdate, type CurrentState } from './core/plan.js';
import { chooseRollbackTarget } from './core/rollback.js';
import {
  AgentEventHub, type AgentApi, type AgentProperties, type AgentStateName, type AgentStatus, type CheckResult,
  type GcResult, type GenerationInfo, type ReportResult, type HistoryEntry, type HistoryKind, type RollbackOptions, type UpdateOptions, type UpdateResult,
} from './dbus/api.js';
import type { Logger } from './util/log.js';
import { AGENT_VERSION } from './version.js';
import { decide, switchAhead, type Decision, type PendingGeneration } from './core/decide.js';
import { windowState } from './core/window.js';
import { rolloutTurn } from './core/rollout.js';
import type { RebootStrategy } from './config.js';
import { liveApply, needsReboot, recoverInterruptedApply, runningVersion } from './liveapply.js';
import { liveRollback } from './liverollback.js';
import { liveRollbackRefusal } from './core/liveundo.js';
import { fileOwners, installedIn, repackFromRoot, type Repacked } from './adapters/repack.js';
import { createDpkg } from './adapters/dpkg.js';
import { scanProcesses } from './adapters/procs.js';
import { createSystemd } from './adapters/systemd.js';
import * as hostFacts from './adapters/host.js';
import type { FleetReporter } from './adapters/fleet.js';
import type { JsonObject } from './adapters/journal.js';
import { hostname, uptime } from 'node:os';
import { ensureKexecLoaded, kexecImageBytes, runningParamsToKeep, unloadKexec } from './adapters/kexec.js';
import { handOverToNextRoot, prepareNextRoot, teardownNextRoot } from './adapters/nextroot.js';
import { dropWarm, prewarm, residentFiles, warmList } from './adapters/prewarm.js';
import { phaseTimer, type PhaseTimer } from './util/phases.js';
import { mountImage } from './adapters/imagemount.js';
import { writeFileAtomic, ensureDir } from './util/fsatomic.js';

export interface AgentDeps {
  readonly config: AgentConfig;
  readonly journal: Journal;
  readonly grubenv: GrubEnv;
  readonly log: Logger;
  /** The version running now (from the initramfs hook's record or the kernel command line). */
  readonly bootedVersion: () => Promise<number | null>;
  /** When the scheduler runs next, for `status`. */
  readonly nextCheck?: () => Date | null;
  readonly now?: () => Date;
  /** Facts the decision engine weighs (default: this host's, adapters/host.ts). */
  readonly host?: HostFacts;
  /** kexec / soft-reboot / reboot (default: this machine's, through systemd). */
  readonly actions?: SwitchActions;
  /**
   * A `wait` decision names when to decide again (a window opens, people may
   * have logged out): the daemon runs the scheduled update then, instead of
   * missing a two-hour window between two four-hourly checks.
   */
  readonly wakeAt?: (at: Date) => void;
  /** The fleet outbox and sender (the daemon makes one); absent, `report` says no endpoint is configured. */
  readonly reporter?: FleetReporter;
}

export interface HostFacts {
  bootId(): Promise<string>;
  kexecUnavailable(): Promise<string | null>;
  softRebootUnavailable(): Promise<string | null>;
  sessions(): Promise<hostFacts.Sessions>;
}

/**
 * The switches that take the machine down. Real only on a machine
 * (`liveRoot` = /); the agent refuses them on a test root.
 */
export interface SwitchActions {
  kexec(t: { bootDir: string; version: number; cmdline: string }, hooks?: SwitchHooks): Promise<void>;
  softReboot(t: { version: number; squashfs: string; persistent: readonly string[] }, hooks?: SwitchHooks): Promise<void>;
  reboot(): Promise<void>;
}

export interface SwitchHooks {
  /** Close the phase running since the previous mark (util/phases.ts). */
  mark(phase: string): void;
  /** Called just before the target is started: the last moment this userspace surely has. */
  beforeStart(): void;
}

const NO_HOOKS: SwitchHooks = { mark: () => {}, beforeStart: () => {} };

const THIS_MACHINE: SwitchActions = {
  async kexec(t, hooks = NO_HOOKS) {
    // Loaded when the generation was staged for this switch (the agent's preload), or now.
    const { preloaded } = await ensureKexecLoaded({ ...t, keep: await runningParamsToKeep() });
    hooks.mark(preloaded ? 'kexec-preloaded' : 'kexec-load');
    hooks.beforeStart();
    await createSystemd('system').startTarget('kexec.target');
    hooks.mark('start-kexec.target');
  },
  async softReboot(t, hooks = NO_HOOKS) {
    const mounts = await prepareNextRoot({ squashfs: t.squashfs, persistent: t.persistent });
    hooks.mark('nextroot');
    let undo: (() => Promise<void>) | null = null;
    try {
      undo = await handOverToNextRoot({ runDir: '/run/liveup', version: t.version });
      hooks.mark('hand-over');
      hooks.beforeStart();
      await createSystemd('system').startTarget('soft-reboot.target');
      hooks.mark('start-soft-reboot.target');
    } catch (e) {
      // Not switched: this userspace stays what it was, with no new root left mounted.
      await undo?.();
      await teardownNextRoot(mounts);
      throw e;
    }
  },
  reboot: () => createSystemd('system').startTarget('reboot.target'),
};

const THIS_HOST: HostFacts = {
  bootId: () => hostFacts.bootId(),
  kexecUnavailable: () => hostFacts.kexecUnavailable(),
  softRebootUnavailable: () => hostFacts.softRebootUnavailable(),
  sessions: () => hostFacts.sessions(),
};

/** The unit the daemon runs as: never restarted in the middle of its own transaction. */
const SELF_UNIT = 'liveup-agent.service';

interface Target {
  readonly source: RepoSource;
  readonly manifest: VerifiedManifest;
}

/** Left free on the state file system while downloading: the journal must still be writable. */
const DOWNLOAD_RESERVE_BYTES = 32 << 20;

/** The journal's lifecycle, seen by the pure core (which does not know downloads). */
function coreState(g: JournalGeneration): CoreState | null {
  switch (g.state) {
    case 'staged':
    case 'booted':
    case 'good':
    case 'failed':
      return g.state;
    case 'removed':
      // Removed from the medium; what it was still matters (a failed one stays failed).
      return g.failedAt ? 'failed' : g.goodAt ? 'good' : 'staged';
    default:
      return null; // available / downloading: not on the medium, nothing to plan around
  }
}

const BOOT_TRIES = 1;

export class Agent implements AgentApi {
  readonly events = new AgentEventHub();
  #config: AgentConfig;
  #keyring: PinnedKeyring | null = null;
  #state: AgentStateName = 'idle';
  #booted: number | null = null;
  #lastCheck: AgentStatus['lastCheck'] = null;
  #pending: number | null = null;
  #transaction: AgentStatus['transaction'] = null;
  #bootId = 'unknown';
  #decision: (Decision & { at: string }) | null = null;
  readonly #journal: Journal;
  readonly #grubenv: GrubEnv;
  readonly #log: Logger;
  readonly #now: () => Date;

  constructor(private readonly deps: AgentDeps) {
    this.#config = deps.config;
    this.#journal = deps.journal;
    this.#grubenv = deps.grubenv;
    this.#log = deps.log;
    this.#now = deps.now ?? (() => new Date());
  }

  get config(): AgentConfig {
    return this.#config;
  }

  /** A new configuration (chokidar reload): the keyring is re-read on next use. */
  setConfig(config: AgentConfig): void {
    this.#config = config;
    this.#keyring = null;
  }

  get #paths() {
    const c = this.#config;
    return {
      grubCfg: join(c.bootDir, 'grub', 'grub.cfg'),
      grubenv: join(c.bootDir, 'grub', 'grubenv'),
      downloads: join(c.stateDir, 'downloads'),
    };
  }

  // ---------------------------------------------------------------- start-up

  /**
   * Reconcile what a crash left: steps started and never ended are closed as
   * failed (`interrupted`), half-staged directories removed, downloads whose
   * generation is no longer wanted deleted (the others resume from `.part`).
   */
  async start(): Promise<void> {
    this.#booted = await this.deps.bootedVersion();
    for (const step of this.#journal.inProgress()) {
      // A switch (kexec, soft-reboot, reboot) ends with this userspace going down, often before its
      // step is closed: when its target is what booted, it did what it was for.
      if ((step.kind === 'kexec' || step.kind === 'reboot') && step.version !== null && step.version === this.#booted) {
        const timeline = typeof step.details.timeline === 'string' ? ` [${step.details.timeline}]` : '';
        this.#journal.endStep(step.id, 'ok', null, `${step.kind} into ${step.version} landed: generation ${step.version} is booted${timeline}`);
        continue;
      }
      this.#journal.endStep(step.id, 'failed', 'INTERNAL', 'interrupted: the agent stopped before this step ended');
      this.#log.warn({ step: step.kind, version: step.version, id: step.id }, 'step interrupted by a previous stop');
      if (step.version !== null && step.kind === 'fetch') {
        const g = this.#journal.getGeneration(step.version);
        if (g?.state === 'downloading') this.#journal.setState(step.version, 'available');
      }
    }
    const removed = await reconcileStaging(this.#config.bootDir);
    for (const r of removed) this.#log.warn({ path: r }, 'removed a half-staged generation');
    if (removed.length) this.#journal.event({ kind: 'reconciled', message: `removed half-staged ${removed.join(', ')}` });
    if (this.#booted !== null) await this.#recordBoot(this.#booted);
    // What was prepared for a switch to what now runs or older (a warm mount, a loaded kexec image:
    // a soft-reboot keeps both), left by an agent stopped before its switch, is done with.
    const booted = this.#booted;
    if (booted !== null) await this.#dropAhead((w) => w <= booted);
    this.#bootId = await this.#host.bootId();
    await recoverInterruptedApply({ dpkg: this.#dpkg(), journal: this.#journal, log: this.#log, bootId: this.#bootId });
  }

  get #host(): HostFacts {
    return this.deps.host ?? THIS_HOST;
  }

  /** /etc/machine-id (or the configured file), '' when unreadable: fleet reports, reboot slots, rollout buckets. */
  async #machineId(): Promise<string> {
    return (await readFile(this.#config.machineIdFile, 'utf8').catch(() => '')).trim();
  }

  #dpkg() {
    return createDpkg({ root: this.#config.liveRoot });
  }

  /** The generation this boot runs: booted, or converged to by a live replay since. */
  #running(): number | null {
    return runningVersion(this.#journal, this.#booted, this.#bootId);
  }

  /** The running generation in the journal: known (from its staged manifest) and marked booted. */
  async #recordBoot(version: number): Promise<void> {
    const g = this.#journal.getGeneration(version);
    if (!g) {
      const m = await readFile(join(this.#config.bootDir, 'live', String(version), 'manifest.json'), 'utf8')
        .then((t) => JSON.parse(t) as { name?: string; kernel?: { version?: string; cmdline?: string }; parent?: number | null })
        .catch(() => null);
      this.#journal.upsertGeneration({
        version,
        name: m?.name ?? `generation-${version}`,
        channel: this.#config.channel,
        state: 'booted',
        kernelVersion: m?.kernel?.version ?? null,
        cmdline: m?.kernel?.cmdline ?? null,
        parent: m?.parent ?? null,
      });
    } else if (g.state === 'staged') {
      this.#journal.setState(version, 'booted');
    }
    // A booted generation is trusted: nothing lower may be installed behind it.
    this.#journal.raiseFloor({ version });
  }

  // ---------------------------------------------------------------- state

  properties(): AgentProperties {
    return { state: this.#state, bootedVersion: this.#booted, stagedVersion: this.#stagedNext() };
  }

  #setState(s: AgentStateName): void {
    if (this.#state === s) return;
    this.#state = s;
    this.events.emitStateChanged(this.properties());
  }

  /**
   * The newest staged generation that is neither booted nor failed: what the
   * next boot tries, and what a live replay would bring. One a rollback held
   * back (`rollback-hold`, cleared by an explicit `agentctl update`) is
   * not: after `rollback --live` the rolled-back-from generation is still
   * `staged` in the journal, and must neither boot next nor be replayed again
   * by the next scheduled check.
   */
  #stagedNext(): number | null {
    const hold = Number(this.#journal.getSetting('rollback-hold') ?? 0);
    const gens = this.#journal.listGenerations().filter((g) => g.state === 'staged' && g.version !== this.#booted && g.version > hold);
    return gens.length ? Math.max(...gens.map((g) => g.version)) : null;
  }

  async #current(): Promise<CurrentState & { present: number[] }> {
    const present = await listStaged(this.#config.bootDir);
    const generations = this.#journal
      .listGenerations()
      .map((g) => ({ version: g.version, state: coreState(g) }))
      .filter((g): g is CoreGeneration => g.state !== null);
    const env = await this.#grubenv.read(this.#paths.grubenv).catch(() => ({}) as Record<string, string>);
    const tryVersion = Number(env[ENV_TRY_VERSION] ?? '') || null;
    return {
      booted: this.#booted,
      staged: present,
      present,
      generations,
      floor: this.#journal.floor().version,
      pinned: this.#journal.listGenerations().filter((g) => g.pinned).map((g) => g.version),
      tryVersion,
    };
  }

  async #trust(): Promise<PinnedKeyring> {
    this.#keyring ??= await loadKeyring(this.#config.keyring);
    return this.#keyring;
  }

  async #credentials(): Promise<HttpCredentials | undefined> {
    const c = this.#config.credentials;
    if (!c) return undefined;
    const read = (p?: string) => (p ? readFile(p, 'utf8') : Promise.resolve(undefined));
    return {
      bearerToken: c.bearerToken ?? (await read(c.bearerTokenFile))?.trim(),
      clientCert: await read(c.clientCert),
      clientKey: await read(c.clientKey),
      ca: await read(c.ca),
    };
  }

  /** Run a journalled step: a row before it starts, closed with its outcome. */
  async #step<T>(kind: Parameters<Journal['beginStep']>[0], version: number | null, fn: (stepId: number) => Promise<T>, okMessage?: (r: T) => string): Promise<T> {
    const id = this.#journal.beginStep(kind, version);
    try {
      const r = await fn(id);
      this.#journal.endStep(id, 'ok', null, okMessage?.(r) ?? null);
      return r;
    } catch (e) {
      const err = toLiveupError(e);
      this.#journal.endStep(id, 'failed', err.code, err.message);
      throw err;
    }
  }

  // ---------------------------------------------------------------- check

  /**
   * Fetch and verify the channel index from the first mirror that answers
   * with something trustworthy; a mirror serving stale or bad metadata is
   * skipped, never believed.
   */
  async #verifiedIndex(now: Date): Promise<{ index: VerifiedIndex; source: RepoSource }> {
    const keyring = await this.#trust();
    const credentials = await this.#credentials();
    const errors: LiveupError[] = [];
    for (const mirror of this.#config.mirrors) {
      const source = openSource(mirror, credentials);
      try {
        const index = await fetchVerifiedIndex(source, {
          keyring, threshold: this.#config.threshold, now, channel: this.#config.channel, minSequence: this.#journal.floor().sequence,
        });
        return { index, source };
      } catch (e) {
        const err = toLiveupError(e);
        this.#log.warn({ mirror, code: err.code, err: err.message }, 'mirror refused');
        errors.push(err);
      }
    }
    // The most telling error: a verification failure beats "unreachable".
    const order: ErrorCode[] = ['VERSION_ROLLBACK', 'SIGNATURE_INVALID', 'KEY_NOT_TRUSTED', 'SIGNATURE_THRESHOLD', 'METADATA_EXPIRED', 'WRONG_CHANNEL', 'TOO_LARGE', 'SIGNATURE_MISSING'];
    const worst = errors.find((e) => order.includes(e.code)) ?? errors[0];
    if (!worst) throw new LiveupError('CONFIG_INVALID', 'no mirror is configured');
    throw new LiveupError(worst.code, errors.length > 1 ? `all ${errors.length} mirrors failed; ${errors.map((e) => e.message).join('; ')}` : worst.message, worst.details);
  }

  /** Check the channel; returns the verified target to update to, if any. */
  async #checkChannel(opts: { version?: number; honourHold: boolean }): Promise<{ result: CheckResult; target: Target | null; reason: string; rearm: number | null }> {
    const now = this.#now();
    return this.#step('check', null, async () => {
      const { index, source } = await this.#verifiedIndex(now);
      this.#journal.raiseFloor({ sequence: index.index.sequence });
      const current = await this.#current();
      const arch = this.#config.architecture;
      const hold = opts.honourHold ? this.#journal.getSetting('rollback-hold') : null;
      // A staged rollout holds its version back until this machine's turn (an
      // explicit version is an order); the fleet endpoint may narrow it further.
      const rollout = index.index.rollout;
      const held = new Map<number, string>();
      if (opts.version === undefined) {
        const limit = this.deps.reporter && this.#config.fleet ? await this.deps.reporter.rolloutLimit(this.#config.channel) : null;
        const versions = new Set([rollout?.version, limit?.version].filter((v): v is number => v !== undefined));
        if (versions.size > 0) {
          const machineId = (await this.#machineId()) || 'unknown-machine';
          for (const v of versions) {
            const turn = rolloutTurn(rollout, machineId, v, now, limit?.version === v ? limit : undefined);
            if (!turn.allowed) held.set(v, turn.reason);
          }
        }
      }
      const heldBack = held.size > 0 ? [...held.values()].join('; ') : null;
      const versions = index.index.generations
        .filter((g) => hold === null || g.version > Number(hold))
        .filter((g) => !held.has(g.version))
        .map((g) => ({ version: g.version, architecture: g.architecture }));
      const steps = planUpdate(current, { versions }, { keep: this.#config.keep, architecture: arch }, opts.version !== undefined ? { version: opts.version } : {});
      const available = index.index.generations.filter((g) => g.architecture === arch).map((g) => g.version);
      const availableVersion = available.length ? Math.max(...available) : null;
      const first = steps[0]!;
      let target: Target | null = null;
      let reason = first.kind === 'none' ? (heldBack ?? first.reason) : '';
      const fetchStep = steps.find((s) => s.kind === 'fetch');
      const menuStep = steps.find((s) => s.kind === 'write-menu');
      if (fetchStep && fetchStep.kind === 'fetch') {
        const v = fetchStep.version;
        const entry = index.index.generations.find((g) => g.version === v)!;
        const manifest = await fetchVerifiedManifest(source, entry, {
          keyring: await this.#trust(), threshold: this.#config.threshold, now, channel: this.#config.channel, architecture: arch,
          minVersion: opts.version !== undefined ? 0 : this.#journal.floor().version,
        });
        const m = manifest.manifest;
        const known = this.#journal.getGeneration(v);
        this.#journal.upsertGeneration({
          version: v, name: m.name, channel: m.channel, ...(known ? {} : { state: 'available' as const }),
          manifestSha512: entry.manifest.sha512, squashfsSha512: m.artifacts.find((a) => a.role === 'squashfs')?.sha512 ?? null,
          kernelVersion: m.kernel.version, cmdline: m.kernel.cmdline, parent: m.parent,
          rebootRequired: m.rebootRequired.required, rebootReasons: m.rebootRequired.reasons,
        });
        target = { source, manifest };
        reason = `generation ${v} (${m.name}) is available`;
      } else if (menuStep && menuStep.kind === 'write-menu') {
        reason = `generation ${menuStep.tryVersion} is staged`;
      }
      const pending = target ? target.manifest.manifest.version : null;
      this.#pending = pending;
      const downloadBytes = target ? target.manifest.manifest.artifacts.reduce((n, a) => n + a.length, 0) : undefined;
      const result: CheckResult = {
        availableVersion,
        currentVersion: this.#booted,
        updateAvailable: target !== null,
        channel: this.#config.channel,
        expires: index.index.expires,
        ...(downloadBytes !== undefined ? { downloadBytes } : {}),
      };
      this.#lastCheck = { at: now.toISOString(), result: target ? 'update-available' : 'up-to-date', errorCode: null, message: reason };
      // Already on the medium but not the armed trial (a rollback disarmed it): only the menu to write.
      const rearm = !target && menuStep && menuStep.kind === 'write-menu' ? menuStep.tryVersion : null;
      return { result, target, reason, rearm };
    }, (r) => r.reason);
  }

  async check(): Promise<CheckResult> {
    this.#setState('checking');
    try {
      return (await this.#checkChannel({ honourHold: false })).result;
    } catch (e) {
      const err = toLiveupError(e);
      this.#lastCheck = { at: this.#now().toISOString(), result: 'failed', errorCode: err.code, message: err.message };
      throw err;
    } finally {
      this.#setState('idle');
    }
  }

  // ---------------------------------------------------------------- update

  /**
   * check → fetch → stage → boot menu → gc. `scheduled` runs honour a hold
   * left by a rollback; an explicit `agentctl update` clears it.
   */
  async update(opts: UpdateOptions, how: { scheduled?: boolean; version?: number } = {}): Promise<UpdateResult> {
    this.#setState('checking');
    const phases = phaseTimer();
    try {
      if (!how.scheduled) this.#journal.setSetting('rollback-hold', null);
      const { target, reason, rearm } = await this.#checkChannel({ honourHold: how.scheduled === true, ...(how.version !== undefined ? { version: how.version } : {}) });
      phases.mark('check');
      // A generation staged before and disarmed since (`rollback --live`, then `agentctl update`) is
      // armed again, so the next boot tries it: a replay of it must not be undone by the reboot.
      const staged = target ? await this.#fetchAndStage(target) : rearm !== null ? await this.#rearm(rearm) : null;
      if (staged !== null) phases.mark('stage');
      // Acting on the decision: a scheduled run follows the policy; `--now` orders it; `--apply-live` asks for a replay only.
      const act = !opts.downloadOnly && (opts.applyNow === true || how.scheduled === true);
      const live = !opts.downloadOnly && (opts.applyLive || act);
      const next = this.#stagedNext();
      let waitNote = '';
      let warmNote = '';
      if (next !== null && (this.#running() === null || next > this.#running()!)) {
        // Only acting depends on the decision; otherwise it is for `status`, and its failure must not fail the update.
        const decided = await this.#decide(opts.applyLive ? 'live' : undefined, target?.manifest, opts.applyNow === true).catch((e: unknown) => {
          if (live) throw e;
          this.#log.warn({ err: toLiveupError(e).message }, 'decision failed');
          return null;
        });
        phases.mark('decide');
        if (decided) {
          // What an earlier plan prepared and this one does not use (another generation, another kind of
          // switch: a warm mount, a loaded kexec image) is only memory held: dropped before anything else.
          const d = decided.decision;
          const plan = d.action === 'wait' ? d.then : d.action;
          await this.#dropAhead((w, kind) => !(kind === plan && w === d.target));
        }
        if (decided?.decision.action === 'wait') waitNote = `; ${decided.decision.reason}`;
        if (decided && live && decided.decision.action === 'live-apply') return await this.#applyLive(decided.chain);
        if (decided && act && !opts.applyLive && ['soft-reboot', 'kexec', 'reboot'].includes(decided.decision.action)) return await this.#switchTo(decided.decision, decided.chain, phases);
        if (decided && opts.applyLive) {
          throw new LiveupError('LIVE_APPLY_REFUSED', `no live replay to ${decided.decision.target}: ${decided.decision.reason}`, { version: decided.decision.target ?? 0 });
        }
        const ahead = decided ? switchAhead(decided.decision, act) : null;
        if (ahead?.action === 'soft-reboot') {
          warmNote = await this.#prewarm(ahead.version);
          phases.mark('prewarm');
        } else if (ahead?.action === 'kexec') {
          warmNote = await this.#preloadKexec(ahead.version, decided!.chain);
          phases.mark('kexec-preload');
        }
      }
      if (staged === null) {
        this.#setState(this.#stagedNext() ? 'staged' : 'idle');
        return { version: null, outcome: 'up-to-date', message: `${reason}${warmNote}` };
      }
      this.#setState('staged');
      return {
        version: staged,
        outcome: 'staged',
        message: `generation ${staged} is staged and will be tried at the next boot (fallback: ${(await this.#defaultVersion()) ?? 'none'})${waitNote}${warmNote}`,
      };
    } catch (e) {
      const err = toLiveupError(e);
      if (this.#lastCheck === null || this.#state === 'checking') {
        this.#lastCheck = { at: this.#now().toISOString(), result: 'failed', errorCode: err.code, message: err.message };
      }
      this.#setState('failed');
      throw err;
    }
  }

  /**
   * What the machine runs and reads, from `v`'s image, a soft-reboot decided for
   * later, read into memory now (adapters/prewarm.ts), after dropping any other
   * generation's warm mount. Only on a machine; never fails the update —
   * without it the switch is only slower.
   * Returns the note for the update's message.
   */
  async #prewarm(v: number): Promise<string> {
    if (this.#config.liveRoot !== '/' || this.#config.prewarmMB === 0) return '';
    try {
      const squashfs = join(this.#config.bootDir, 'live', String(v), 'filesystem.squashfs');
      // The resident scan is best-effort: without it, the mapped files alone.
      const resident = await this.#residentInImage().catch((e: unknown) => {
        this.#log.warn({ err: toLiveupError(e).message }, 'prewarm: no list of resident files');
        return [];
      });
      const r = await prewarm({ squashfs, version: v, files: warmList(await scanProcesses(), resident), maxBytes: this.#config.prewarmMB * 2 ** 20 });
      this.#log.info({ version: v, resident: resident.length, ...r }, 'prewarmed for the soft-reboot');
      return `; ${r.files} of its files (${(r.bytes / 2 ** 20).toFixed(0)} MiB${r.truncated ? ', prewarmMB reached' : ''}) read into memory for the soft-reboot`;
    } catch (e) {
      this.#log.warn({ version: v, err: toLiveupError(e).message }, 'prewarm failed; the soft-reboot will read its files cold');
      return '';
    }
  }

  /**
   * A kexec decided for later: `v`'s kernel and initrd loaded now
   * (adapters/kexec.ts ensureKexecLoaded), so the switch does not load them
   * in its downtime. The image is held in memory until the switch, so only
   * when kernel and initrd fit in `prewarmMB`. Only on a machine; never fails
   * the update — the switch loads what is not loaded. Returns the note for
   * the update's message.
   */
  async #preloadKexec(v: number, chain: readonly VerifiedManifest[]): Promise<string> {
    if (this.#config.liveRoot !== '/' || this.#config.prewarmMB === 0) return '';
    try {
      const target = { bootDir: this.#config.bootDir, version: v, cmdline: await this.#kexecCmdline(v, chain) };
      const bytes = await kexecImageBytes(target);
      const mib = (bytes / 2 ** 20).toFixed(0);
      if (bytes > this.#config.prewarmMB * 2 ** 20) return `; its kernel and initrd (${mib} MiB) are more than prewarmMB: the kexec will load them`;
      const r = await ensureKexecLoaded({ ...target, keep: await runningParamsToKeep() });
      this.#log.info({ version: v, bytes, already: r.preloaded }, 'kexec image loaded ahead of the switch');
      return `; its kernel and initrd (${mib} MiB) ${r.preloaded ? 'are' : 'now'} loaded for the kexec`;
    } catch (e) {
      const err = toLiveupError(e);
      this.#log.warn({ version: v, err: err.message }, 'kexec preload failed; the switch will load the kernel itself');
      return `; the kexec's kernel could not be loaded ahead (${err.message}): the switch will try again`;
    }
  }

  /**
   * What was prepared ahead of a switch — warm mounts (prewarm.ts), the
   * loaded kexec image (kexec.ts) — dropped where `drop(version, kind)`
   * holds; only on a machine, and never an error: what is left is only memory.
   */
  async #dropAhead(drop: (version: number, kind: 'soft-reboot' | 'kexec') => boolean): Promise<void> {
    if (this.#config.liveRoot !== '/') return;
    await dropWarm((w) => drop(w, 'soft-reboot')).catch(() => undefined);
    const unloaded = await unloadKexec((w) => drop(w, 'kexec')).catch(() => null);
    if (unloaded !== null) this.#log.info({ version: unloaded }, 'kexec image unloaded: no longer the plan');
  }

  /** The kernel command line of `v`'s manifest: verified by the decision moments ago, or the staged one. */
  async #kexecCmdline(v: number, chain: readonly VerifiedManifest[]): Promise<string> {
    return (chain.find((m) => m.manifest.version === v) ?? (await this.#stagedManifest(v))).manifest.kernel.cmdline;
  }

  /**
   * The running image's files in memory (prewarm.ts residentFiles), scanned in
   * the image itself: the lower layer of the overlay on `/` (live-boot's), or,
   * after a soft-reboot, where that layer is no longer reachable, the booted
   * squashfs mounted from the medium — `mount -o ro,loop` reuses the root's
   * loop device, so it is the same page cache.
   */
  async #residentInImage(): Promise<string[]> {
    const lower = await hostFacts.rootLowerDir();
    if (lower !== null && (await stat(join(lower, 'usr')).then(() => true, () => false))) return residentFiles(lower);
    if (this.#booted === null) return [];
    const image = join(this.#config.stateDir, 'prewarm-image');
    const unmount = await mountImage(join(this.#config.bootDir, 'live', String(this.#booted), 'filesystem.squashfs'), image);
    try {
      return await residentFiles(image);
    } finally {
      await unmount();
    }
  }

  async #fetchAndStage(target: Target): Promise<number> {
    const m = target.manifest.manifest;
    const v = m.version;
    const dir = join(this.#paths.downloads, String(v));
    await ensureDir(dir);
    this.#setState('downloading');
    this.#journal.setState(v, 'downloading');
    const total = m.artifacts.reduce((n, a) => n + a.length, 0);
    const f = this.#config.fetch;
    const credentials = await this.#credentials();
    const artifacts = await this.#step('fetch', v, async () => {
      // Room for what is still to download (a resumed .part counts as done), checked
      // before a byte is written: a full state partition also stops the journal.
      let have = 0;
      for (const a of m.artifacts) have += await stat(join(dir, `${a.path}.part`)).then((st) => Math.min(st.size, a.length), () => 0);
      const fsInfo = await statfs(dir);
      const free = fsInfo.bavail * fsInfo.bsize;
      const need = total - have + DOWNLOAD_RESERVE_BYTES;
      if (need > free) {
        throw new LiveupError('NO_SPACE', `${dir}: downloading generation ${v} needs ${need} bytes (${total - have} to fetch + ${DOWNLOAD_RESERVE_BYTES} reserve), ${free} available`, { dir, needed: need, available: free, version: v });
      }
      const out: VerifiedArtifact[] = [];
      let before = 0;
      for (const a of m.artifacts) {
        const base = before;
        out.push(await fetchArtifact({
          mirrors: this.#config.mirrors,
          rel: artifactPath(v, a.path),
          ref: a,
          dest: join(dir, a.path),
          ...(credentials ? { credentials } : {}),
          deadlineMs: f.deadlineSeconds * 1000,
          minBytesPerSecond: f.minBytesPerSecond,
          retries: f.retries,
          backoffMs: f.backoffSeconds * 1000,
          // One `download` step over all artifacts: agentctl shows it as bytes, rate and ETA.
          onProgress: (done) => this.events.emitProgress({ step: 'download', done: base + done, total }),
        }));
        before += a.length;
      }
      return out;
    }, () => `downloaded and verified ${m.artifacts.length} artifacts (${total} bytes)`);
    return this.#stageVerified(target.manifest, artifacts, dir);
  }

  async #rearm(v: number): Promise<number> {
    await this.#step('stage', v, () => this.#writeMenu(v), () => `live/${v}/ was staged already: armed as the next boot's trial again`);
    return v;
  }

  /** Stage verified files, then the menu, then gc: the same path for downloads and the inbox. */
  async #stageVerified(manifest: VerifiedManifest, artifacts: readonly VerifiedArtifact[], workDir: string | null): Promise<number> {
    const m = manifest.manifest;
    const v = m.version;
    this.#setState('staging');
    await this.#step('stage', v, async () => {
      await stageGeneration({
        bootDir: this.#config.bootDir, manifest, manifestSig: manifest.signature, artifacts,
        reserveBytes: this.#config.freeSpaceReserveMB << 20,
      });
    }, () => `staged into live/${v}/`).catch((e: unknown) => {
      this.#journal.setState(v, 'available');
      throw e;
    });
    this.#journal.upsertGeneration({ version: v, name: m.name, channel: m.channel, state: 'staged' });
    this.#journal.raiseFloor({ version: v });
    if (this.#pending === v) this.#pending = null; // offered and now staged: no longer pending
    if (workDir) await rm(workDir, { recursive: true, force: true });
    await this.#writeMenu(v);
    await this.#collect(v);
    return v;
  }

  // ---------------------------------------------------------------- decide and apply live

  /** A staged generation's manifest, read from the medium and verified again (never trusted from disk). */
  async #stagedManifest(version: number): Promise<VerifiedManifest> {
    const dir = join(this.#config.bootDir, 'live', String(version));
    const bytes = await readFile(join(dir, 'manifest.json'));
    const sig = await readFile(join(dir, 'manifest.json.sig')).catch(() => null);
    return verifyManifest(bytes, sig, {
      keyring: await this.#trust(), threshold: this.#config.threshold, now: this.#now(),
      channel: this.#config.channel, architecture: this.#config.architecture, minVersion: 0, source: dir,
    });
  }

  /**
   * The manifests from the running generation to `target`, oldest first: a
   * parent between them that is not on the medium is fetched (verified) from
   * the channel, so N → N+1 → N+2 replays even though only N+2 was staged.
   * Stops where the parents do not lead back to the running generation.
   */
  async #replayChain(target: VerifiedManifest): Promise<VerifiedManifest[]> {
    const running = this.#running();
    const chain = [target];
    let channel: { index: VerifiedIndex; source: RepoSource } | null = null;
    for (let p = target.manifest.parent; running !== null && p !== null && p > running; p = chain[0]!.manifest.parent) {
      const parent: number = p;
      if ((await listStaged(this.#config.bootDir)).includes(parent)) {
        chain.unshift(await this.#stagedManifest(parent));
        continue;
      }
      channel ??= await this.#verifiedIndex(this.#now());
      const entry = channel.index.index.generations.find((g) => g.version === parent);
      if (!entry) break;
      chain.unshift(await fetchVerifiedManifest(channel.source, entry, {
        keyring: await this.#trust(), threshold: this.#config.threshold, now: this.#now(),
        channel: this.#config.channel, architecture: this.#config.architecture, minVersion: 0,
      }));
    }
    return chain;
  }

  /**
   * Run the decision engine on the newest staged generation (or `target`) and
   * journal the decision when it changes; `agentctl status` shows the last one.
   */
  async #decide(policy?: RebootStrategy, target?: VerifiedManifest, now_ = false): Promise<{ decision: Decision; chain: VerifiedManifest[] }> {
    const now = this.#now();
    const running = this.#running();
    const tv = target?.manifest.version ?? this.#stagedNext();
    let chain: VerifiedManifest[] = [];
    if (tv !== null && (running === null || tv > running)) {
      const t = target ?? (await this.#stagedManifest(tv));
      chain = await this.#replayChain(t).catch((e: unknown) => {
        this.#log.warn({ err: toLiveupError(e).message }, 'could not resolve the replay chain');
        return [t];
      });
    }
    const pending: PendingGeneration[] = chain.map((vm) => ({
      version: vm.manifest.version, parent: vm.manifest.parent, changes: vm.manifest.changes.length,
      kernelVersion: vm.manifest.kernel.version, rebootReasons: vm.manifest.rebootRequired.reasons,
    }));
    const host = this.#host;
    const disruptive = pending.length > 0;
    // `agentctl update --now`: the administrator's order overrides the window and the people gates,
    // so logind is not even asked (one D-Bus connection less before the switch).
    const none = { users: [], inhibitors: [] };
    const [sessions, kexecUnavailable, softRebootUnavailable] = disruptive
      ? await Promise.all([now_ ? none : host.sessions(), host.kexecUnavailable(), host.softRebootUnavailable()])
      : [none, null, null];
    const runningKernel = running === null ? null : this.#journal.getGeneration(running)?.kernelVersion ?? 'unknown';
    const decision = decide({
      running: running === null ? null : { version: running, kernelVersion: runningKernel ?? 'unknown' },
      pending, policy: policy ?? this.#config.rebootStrategy,
      window: now_ ? { open: true, nextOpen: null, label: null } : windowState(this.#config.maintenanceWindows, now, this.#config.timeZone), now,
      users: sessions.users, inhibitors: sessions.inhibitors, kexecUnavailable, softRebootUnavailable, fleetLock: 'none',
    });
    if (this.#decision?.action !== decision.action || this.#decision.reason !== decision.reason) {
      this.#journal.event({
        kind: 'decision', version: decision.target, message: `${decision.action}: ${decision.reason}`,
        details: { action: decision.action, ...(decision.until ? { until: decision.until.toISOString() } : {}), ...(decision.then ? { then: decision.then } : {}) },
      });
    }
    this.#decision = { ...decision, at: now.toISOString() };
    if (decision.action === 'wait' && decision.until) this.deps.wakeAt?.(decision.until);
    return { decision, chain };
  }

  /**
   * soft-reboot, kexec or reboot into the decision's target. The target is
   * already the armed trial in grubenv (staging did that), so if it fails its
   * boot check the next real boot falls back; the journal step is closed
   * before the machine goes down, so it is not reported as interrupted.
   */
  async #switchTo(d: Decision, chain: readonly VerifiedManifest[], phases: PhaseTimer): Promise<UpdateResult> {
    const v = d.target!;
    if (this.#config.liveRoot !== '/') {
      throw new LiveupError('INVALID_ARGUMENT', `${d.action} into ${v} is carried out only on a machine (liveRoot is ${this.#config.liveRoot})`);
    }
    const actions = this.deps.actions ?? THIS_MACHINE;
    // A reboot slot from the fleet first (FleetLock), held until this generation's boot check passes.
    if (this.#config.fleet && this.deps.reporter) {
      const machineId = await this.#machineId();
      const slot = await this.deps.reporter.preReboot(machineId);
      if (!slot.granted) {
        const until = new Date(this.#now().getTime() + 15 * 60_000);
        this.#decision = { action: 'wait', target: v, then: d.action as 'kexec' | 'reboot' | 'soft-reboot', until, reason: `${d.action} to ${v} waits: ${slot.reason}`, at: this.#now().toISOString() };
        this.#journal.event({ kind: 'decision', version: v, message: `wait: ${this.#decision.reason}`, details: { action: 'wait', until: until.toISOString() } });
        this.deps.wakeAt?.(until);
        return { version: v, outcome: 'staged', message: this.#decision.reason };
      }
      this.#journal.setSetting('fleet-lock-held', JSON.stringify({ version: v, machineId }));
      phases.mark('fleet-lock');
    }
    this.#setState('applying');
    const dir = join(this.#config.bootDir, 'live', String(v));
    // The journal keeps the timeline with the step (`agentctl history`), the log as fields. The
    // step's details get it before the target starts: a userspace going down may not close the
    // step, and the next start closes it as landed with that timeline (start()).
    const hooks = (stepId: number): SwitchHooks => ({
      mark: (p) => phases.mark(p),
      beforeStart: () => this.#journal.noteStep(stepId, { timeline: phases.summary() }),
    });
    const timed = (what: string) => {
      this.#log.info({ version: v, action: d.action, phases: phases.phases }, 'switch timeline');
      return `${what} (${d.reason}) [${phases.summary()}]`;
    };
    if (d.action === 'kexec') {
      // The decision verified the target's manifest moments ago: no second verification on the critical path.
      const cmdline = await this.#kexecCmdline(v, chain);
      await this.#step('kexec', v, (id) => actions.kexec({ bootDir: this.#config.bootDir, version: v, cmdline }, hooks(id)), () => timed(`kexec into ${v}: kernel loaded, kexec.target started`));
      return { version: v, outcome: 'kexec-scheduled', message: `switching to generation ${v} with kexec: ${d.reason}` };
    }
    if (d.action === 'soft-reboot') {
      await this.#step('reboot', v, (id) => actions.softReboot({ version: v, squashfs: join(dir, 'filesystem.squashfs'), persistent: [this.#config.stateDir] }, hooks(id)),
        () => timed(`soft-reboot into ${v}: /run/nextroot mounted, soft-reboot.target started`));
      return { version: v, outcome: 'reboot-scheduled', message: `switching userspace to generation ${v} (soft-reboot): ${d.reason}` };
    }
    await this.#step('reboot', v, async (id) => {
      hooks(id).beforeStart();
      await actions.reboot();
      phases.mark('start-reboot.target');
    }, () => timed(`reboot into ${v} started`));
    return { version: v, outcome: 'reboot-scheduled', message: `rebooting into generation ${v}: ${d.reason}` };
  }

  async #applyLive(chain: readonly VerifiedManifest[]): Promise<UpdateResult> {
    this.#setState('applying');
    const onMachine = this.#config.liveRoot === '/';
    const credentials = await this.#credentials();
    const f = this.#config.fetch;
    const r = await liveApply(this.#running(), chain, {
      dpkg: this.#dpkg(),
      journal: this.#journal,
      fetchDeb: async (v, ref) => {
        const dest = join(this.#paths.downloads, String(v), ref.path);
        await ensureDir(dirname(dest));
        return fetchArtifact({
          mirrors: this.#config.mirrors, rel: artifactPath(v, ref.path), ref, dest,
          ...(credentials ? { credentials } : {}),
          deadlineMs: f.deadlineSeconds * 1000, minBytesPerSecond: f.minBytesPerSecond, retries: f.retries, backoffMs: f.backoffSeconds * 1000,
        });
      },
      packageList: async (v) => {
        const text = await readFile(join(this.#config.bootDir, 'live', String(v), 'packages.json'), 'utf8').catch(() => null);
        return text === null ? null : (JSON.parse(text) as { packages: Record<string, string> }).packages;
      },
      // A root other than / has no processes of its own to renew.
      processes: () => (onMachine ? scanProcesses() : Promise.resolve([])),
      systemd: onMachine ? createSystemd('system') : null,
      selfUnit: SELF_UNIT,
      bootId: this.#bootId,
      log: this.#log,
      onProgress: (step, done, total) => this.events.emitProgress({ step, done, total }),
    });
    for (const vm of chain) await rm(join(this.#paths.downloads, String(vm.manifest.version), 'debs'), { recursive: true, force: true });
    this.#decision = null;
    this.#setState('staged');
    const extra = [
      r.restarted.length ? `restarted ${r.restarted.map((x) => `${x.unit} (${x.result})`).join(', ')}` : 'no service needed a restart',
      ...(r.needsReboot.length ? [`a reboot is still needed for: ${r.needsReboot.join('; ')}`] : []),
    ];
    return {
      version: r.version,
      outcome: 'applied-live',
      message: `generation ${r.version} applied live (${r.chain.join(' → ')}: ${r.installed} installed or upgraded, ${r.removed} removed); ${extra.join('; ')}; its image boots next`,
    };
  }

  // ---------------------------------------------------------------- boot menu

  async #defaultVersion(): Promise<number | null> {
    const cur = await this.#current();
    return lastGoodOf(cur.generations, cur.present) ?? this.#booted;
  }

  /**
   * Render grub.cfg from the journal and what is on the medium, write it
   * atomically, and (when `tryVersion` is set) arm a one-shot trial in grubenv.
   * Order matters: the menu that names the trial is in place before grubenv
   * points at it, so a crash between the two never boots a missing entry.
   * With `grubVerify: "signature"` there is no menu to write (it is static,
   * inside the signed GRUB image): the same choice goes into grubenv only.
   */
  async #writeMenu(tryVersion: number | null, defaultOverride?: number): Promise<void> {
    await this.#step('menu-write', tryVersion, async () => {
      const cur = await this.#current();
      const present = new Set(cur.present);
      const gens = this.#journal.listGenerations().filter((g) => present.has(g.version));
      const def = defaultOverride ?? lastGoodOf(cur.generations, cur.present) ?? this.#booted ??
        Math.max(...gens.filter((g) => g.state !== 'failed' && g.version !== tryVersion).map((g) => g.version), -1);
      if (def === null || def < 1) throw new LiveupError('UNKNOWN_GENERATION', 'no generation on the boot medium can be the default boot entry');
      // Before any boot check has passed, the running generation is the best
      // evidence of a working one: it booted this far. It stands as "good" for
      // the menu's default and fallback only, not in the journal.
      const noGood = lastGoodOf(cur.generations, cur.present) === null;
      const verify = this.#config.grubVerify;
      this.#journal.setSetting(VERIFY_SETTING, verify);
      const generations = gens.map((g) => ({
        version: g.version, name: g.name, kernelVersion: g.kernelVersion ?? 'unknown', cmdline: g.cmdline ?? 'boot=live components',
        state: noGood && g.version === def && coreState(g) === 'booted' ? 'good' as const : coreState(g) ?? 'staged',
      }));
      if (verify === 'signature') {
        // The menu is static inside the signed GRUB image: only the choice is ours to write.
        await writeSignedBootChoice(this.#grubenv, join(this.#config.bootDir, 'grub'), signedBootEnv({ generations, defaultVersion: def, tryVersion }, BOOT_TRIES));
        return;
      }
      if (verify === 'sha512') for (const g of gens) await ensureSha512Sums(this.#config.bootDir, g.version);
      const menu = renderBootMenu({
        generations,
        defaultVersion: def,
        tryVersion,
        root: { kind: 'file', path: '/live/.liveup-boot' },
        timeoutSeconds: 3,
        serial: true,
        verify,
      });
      await ensureDir(join(this.#config.bootDir, 'grub'));
      await writeFileAtomic(this.#paths.grubCfg, menu.text);
      if (tryVersion !== null) await this.#grubenv.set(this.#paths.grubenv, trialEnv(tryVersion, BOOT_TRIES));
      else await this.#grubenv.unset(this.#paths.grubenv, [ENV_TRY_VERSION, ENV_TRIES_LEFT, ENV_NEXT_ENTRY]).catch(() => undefined);
    }, () => `${this.#config.grubVerify === 'signature' ? 'grubenv (signed boot)' : 'grub.cfg'} written (default ${defaultOverride ?? 'last good'}${tryVersion ? `, trying ${tryVersion} once` : ''})`);
    await writeFileAtomic(join(this.#config.bootDir, 'live', '.liveup-boot'), 'liveup boot medium\n').catch(() => undefined);
  }

  // ---------------------------------------------------------------- gc

  async #collect(trial: number | null): Promise<GcResult> {
    const cur = await this.#current();
    const onMedium = cur.generations.filter((g) => cur.present.includes(g.version));
    const remove = gcPlan(onMedium, {
      booted: this.#booted, lastGood: lastGoodOf(cur.generations, cur.present), pinned: cur.pinned, keep: this.#config.keep, trial,
    });
    let freed = 0;
    for (const v of remove) {
      freed += await this.#sizeOf(v);
      // A warm mount (prewarm.ts) holds the squashfs open: released first; a loaded kexec image is of no use.
      await this.#dropAhead((w) => w === v);
      await this.#step('gc', v, () => removeGeneration(this.#config.bootDir, v));
      const g = this.#journal.getGeneration(v);
      if (g && g.state !== 'failed') this.#journal.setState(v, 'removed');
      this.#journal.event({ kind: 'gc-removed', version: v, message: `removed live/${v}/` });
    }
    if (remove.length) await this.#writeMenu(trial ?? cur.tryVersion ?? null);
    return { removed: remove, kept: cur.present.filter((v) => !remove.includes(v)), freedBytes: freed };
  }

  async #sizeOf(version: number): Promise<number> {
    const dir = join(this.#config.bootDir, 'live', String(version));
    let n = 0;
    for (const f of await readdir(dir).catch(() => [] as string[])) n += (await stat(join(dir, f)).catch(() => ({ size: 0 }))).size;
    return n;
  }

  async gc(): Promise<GcResult> {
    return this.#collect(null);
  }

  // ---------------------------------------------------------------- rollback, pin

  async rollback(version: number | null, opts: RollbackOptions): Promise<UpdateResult> {
    if (opts.live && opts.now) throw new LiveupError('INVALID_ARGUMENT', '--live and --now exclude each other: --live rolls back without a reboot, --now reboots');
    if (opts.live) return this.#rollbackLive(version);
    const cur = await this.#current();
    if (this.#booted === null) throw new LiveupError('UNKNOWN_GENERATION', 'the running system is not a liveup generation: nothing to roll back from');
    const target = chooseRollbackTarget(
      { generations: cur.generations, staged: cur.present, booted: this.#booted },
      version !== null ? { version } : {},
    );
    const id = this.#journal.beginStep('rollback', target.version, { from: this.#booted });
    try {
      // Newer generations stay on the medium but are not re-tried automatically
      // until an operator runs `agentctl update` (or something newer is published).
      this.#journal.setSetting('rollback-hold', String(Math.max(this.#booted, ...cur.present)));
      await this.#writeMenu(null, target.version);
      this.#journal.endStep(id, 'ok', null, `next boot: generation ${target.version}`);
    } catch (e) {
      const err = toLiveupError(e);
      this.#journal.endStep(id, 'failed', err.code, err.message);
      throw err;
    }
    this.#setState('staged');
    if (opts.now) {
      // An operator's explicit order: no window, no fleet slot (a rollback is how a bad rollout is stopped).
      if (this.#config.liveRoot !== '/') {
        throw new LiveupError('INVALID_ARGUMENT', `generation ${target.version} boots next, but --now reboots only a machine (liveRoot is ${this.#config.liveRoot})`);
      }
      const actions = this.deps.actions ?? THIS_MACHINE;
      await this.#step('reboot', target.version, () => actions.reboot(), () => `reboot into ${target.version} (rollback --now)`);
      return { version: target.version, outcome: 'reboot-scheduled', message: `rebooting into generation ${target.version} now` };
    }
    return {
      version: target.version,
      outcome: 'rollback-staged',
      message: `generation ${target.version} boots next; reboot to switch (or agentctl rollback --now)`,
    };
  }

  /**
   * `rollback --live`: back to the booted generation without a reboot, after
   * live replays in this boot (liverollback.ts). Before the first dpkg run
   * the boot side is made to agree — the booted generation is the default,
   * no trial is armed, and newer generations are held back exactly as by a
   * reboot rollback — so a reboot at any later point gives the same system.
   */
  async #rollbackLive(version: number | null): Promise<UpdateResult> {
    const booted = this.#booted;
    const from = this.#running();
    const refusal = liveRollbackRefusal({ booted, running: from, failedReplay: needsReboot(this.#journal, this.#bootId)?.version ?? null, requested: version });
    if (refusal !== null || booted === null || from === null) {
      throw new LiveupError('LIVE_APPLY_REFUSED', `live rollback refused, nothing was changed: ${refusal ?? 'the running generation is unknown'}`, { version: version ?? 0 });
    }
    const text = await readFile(join(this.#config.bootDir, 'live', String(booted), 'packages.json'), 'utf8').catch(() => null);
    if (text === null) {
      throw new LiveupError('LIVE_APPLY_REFUSED', `live rollback refused, nothing was changed: generation ${booted} has no packages.json on the boot medium; \`agentctl rollback ${booted} --now\` reboots into it`, { version: booted });
    }
    const bootedList = (JSON.parse(text) as { packages: Record<string, string> }).packages;
    const outDir = join(this.#config.stateDir, 'rollback-debs');
    // The booted image: configured, else the lower layer of / (live-boot's, or the soft-reboot's).
    let lower = this.#config.liveLowerDir ?? (this.#config.liveRoot === '/' ? await hostFacts.rootLowerDir() : null) ?? '/run/live/rootfs/filesystem.squashfs';
    let unmountImage: (() => Promise<void>) | null = null;
    // After a soft-reboot the overlay's lower layer is a mount of the old userspace's tree, no
    // longer reachable by path (systemd carries /run over, not the mounts below it). The booted
    // generation's squashfs on the boot medium is the same image, verified when it was staged:
    // read it from there. A lower layer that is reachable but not the booted image is still refused.
    const squashfs = join(this.#config.bootDir, 'live', String(booted), 'filesystem.squashfs');
    if (!(await stat(join(lower, 'var/lib/dpkg/status')).then(() => true, () => false)) && (await stat(squashfs).then(() => true, () => false))) {
      const dir = join(this.#config.stateDir, 'rollback-image');
      this.#log.info({ lower, squashfs }, 'the booted image is not reachable at the lower layer: reading it from the boot medium');
      unmountImage = await mountImage(squashfs, dir);
      lower = dir;
    }
    this.#setState('applying');
    try {
      const r = await liveRollback(booted, from, {
        dpkg: this.#dpkg(),
        journal: this.#journal,
        bootedList,
        imageList: () => installedIn(lower),
        repack: async (pkgs) => {
          await rm(outDir, { recursive: true, force: true });
          await ensureDir(outDir);
          const debs = new Map<string, Repacked>();
          for (const [i, p] of pkgs.entries()) {
            this.events.emitProgress({ step: 'repack', done: i, total: pkgs.length });
            debs.set(p.package, await repackFromRoot(p.package, p.version, { root: lower, outDir }));
          }
          return debs;
        },
        missing: async (paths) => {
          const gone: string[] = [];
          for (const p of paths) if (!(await lstat(join(this.#config.liveRoot, p)).then(() => true, () => false))) gone.push(p);
          return gone;
        },
        fileOwners: async (paths) => ({ now: await fileOwners(this.#config.liveRoot, paths), booted: await fileOwners(lower, paths) }),
        armBoot: async () => {
          const cur = await this.#current();
          this.#journal.setSetting('rollback-hold', String(Math.max(booted, from, ...cur.present)));
          await this.#writeMenu(null, booted);
        },
        processes: () => (this.#config.liveRoot === '/' ? scanProcesses() : Promise.resolve([])),
        systemd: this.#config.liveRoot === '/' ? createSystemd('system') : null,
        selfUnit: SELF_UNIT,
        bootId: this.#bootId,
        log: this.#log,
        onProgress: (step, done, total) => this.events.emitProgress({ step, done, total }),
      });
      this.#decision = null;
      const extra = [
        r.restarted.length ? `restarted ${r.restarted.map((x) => `${x.unit} (${x.result})`).join(', ')}` : 'no service needed a restart',
        ...(r.needsReboot.length ? [`a reboot is still needed for: ${r.needsReboot.join('; ')}`] : []),
      ];
      return {
        version: booted,
        outcome: 'rolled-back-live',
        message: `rolled back live from ${from} to the booted generation ${booted} (${r.changes.reinstall.length} reinstalled, ${r.changes.remove.length} removed); ${extra.join('; ')}; ${booted} boots next, newer generations are held until \`agentctl update\``,
      };
    } finally {
      await rm(outDir, { recursive: true, force: true }).catch(() => undefined);
      await unmountImage?.();
      this.#setState(this.#stagedNext() ? 'staged' : 'idle');
    }
  }

  async pin(version: number): Promise<void> {
    if (!this.#journal.getGeneration(version)) throw new LiveupError('UNKNOWN_GENERATION', `generation ${version} is not known to this machine`);
    this.#journal.pin(version);
  }

  async unpin(version: number): Promise<void> {
    if (!this.#journal.getGeneration(version)) throw new LiveupError('UNKNOWN_GENERATION', `generation ${version} is not known to this machine`);
    this.#journal.unpin(version);
  }

  // ---------------------------------------------------------------- offline inbox

  /**
   * Verify and stage a generation directory dropped into the inbox: the same
   * checks as a download (pinned keys, expiry, channel, architecture, floor,
   * every byte), then the same staging. A refused bundle is moved aside to
   * `inbox/.rejected/` with the reason, never left to be retried forever.
   */
  async importBundle(dir: string): Promise<number> {
    this.#setState('staging');
    try {
      const bytes = await readFile(join(dir, 'manifest.json'));
      const sig = await readFile(join(dir, 'manifest.json.sig')).catch(() => null);
      const vm = await verifyManifest(bytes, sig, {
        keyring: await this.#trust(), threshold: this.#config.threshold, now: this.#now(),
        channel: this.#config.channel, architecture: this.#config.architecture, minVersion: this.#journal.floor().version,
        source: join(dir, 'manifest.json'),
      });
      const m = vm.manifest;
      if ((await listStaged(this.#config.bootDir)).includes(m.version)) {
        await rm(dir, { recursive: true, force: true });
        return m.version;
      }
      this.#journal.upsertGeneration({
        version: m.version, name: m.name, channel: m.channel, state: 'available',
        kernelVersion: m.kernel.version, cmdline: m.kernel.cmdline, parent: m.parent,
        rebootRequired: m.rebootRequired.required, rebootReasons: m.rebootRequired.reasons,
      });
      const artifacts = await this.#step('fetch', m.version, async () =>
        Promise.all(m.artifacts.map((a) => verifyArtifactFile(join(dir, a.path), a))), () => `verified offline bundle ${dir}`);
      const v = await this.#stageVerified(vm, artifacts, null);
      await rm(dir, { recursive: true, force: true });
      this.#setState('staged');
      return v;
    } catch (e) {
      const err = toLiveupError(e);
      const rejected = join(this.#config.inboxDir, '.rejected');
      await mkdir(rejected, { recursive: true });
      const to = join(rejected, `${Date.now()}-${dir.split('/').pop()}`);
      await rename(dir, to).catch(() => undefined);
      await writeFileAtomic(`${to}.reason`, `${err.code}: ${err.message}\n`).catch(() => undefined);
      this.#journal.event({ kind: 'error', status: 'failed', errorCode: err.code, message: `offline bundle refused: ${err.message}` });
      this.#setState('failed');
      throw err;
    }
  }

  // ---------------------------------------------------------------- queries

  async getStatus(): Promise<AgentStatus> {
    const cur = await this.#current();
    return {
      state: this.#state,
      bootedVersion: this.#booted,
      stagedVersion: this.#stagedNext(),
      lastGoodVersion: lastGoodOf(cur.generations, cur.present),
      pendingVersion: this.#pending,
      channel: this.#config.channel,
      lastCheck: this.#lastCheck,
      nextCheck: this.deps.nextCheck?.()?.toISOString() ?? null,
      ...this.#decisionStatus(),
      runningVersion: this.#running(),
      needsReboot: needsReboot(this.#journal, this.#bootId),
      transaction: this.#transaction,
    };
  }

  #decisionStatus(): Pick<AgentStatus, 'decision' | 'reason' | 'decisionUntil'> {
    const d = this.#decision;
    if (d && d.target !== null && d.target === this.#stagedNext()) {
      return { decision: d.then ? `${d.action} (then ${d.then})` : d.action, reason: d.reason, decisionUntil: d.until?.toISOString() ?? null };
    }
    const next = this.#stagedNext();
    return next !== null && next > (this.#running() ?? 0)
      ? { decision: 'stage-only', reason: `generation ${next} is staged: it is tried at the next boot`, decisionUntil: null }
      : { decision: null, reason: null, decisionUntil: null };
  }

  /**
   * Give a FleetLock slot back once the generation it was taken for (or any
   * later one) runs and passed its boot check. Called at start and after checks.
   */
  /** A reboot slot taken for a switch is still held (released by releaseFleetLock once the new generation is good). */
  holdsFleetLock(): boolean {
    return this.#journal.getSetting('fleet-lock-held') !== null;
  }

  async releaseFleetLock(): Promise<void> {
    const raw = this.#journal.getSetting('fleet-lock-held');
    if (!raw || !this.deps.reporter || !this.#config.fleet) return;
    const held = JSON.parse(raw) as { version: number; machineId: string };
    const booted = this.#booted === null ? null : this.#journal.getGeneration(this.#booted);
    if (!booted || booted.state !== 'good' || booted.version < held.version) return;
    const r = await this.deps.reporter.steadyState(held.machineId);
    if (r.granted) this.#journal.setSetting('fleet-lock-held', null);
    else this.#log.warn({ err: r.reason }, 'fleet lock not released yet');
  }

  /** The fleet report body for now (the outbox adds seq, sending adds sentAt): fleet/src/report.ts. */
  async reportBody(): Promise<JsonObject> {
    const s = await this.getStatus();
    const f = this.#config.fleet;
    const machineId = f ? await this.#machineId() : '';
    const booted = s.bootedVersion === null ? null : this.#journal.getGeneration(s.bootedVersion);
    const lastFailed = this.#journal.history({ limit: 20 }).find((e) => e.status === 'failed');
    return {
      format: 1, machineId, hostname: hostname(), channel: s.channel, agentVersion: AGENT_VERSION, state: s.state,
      bootedVersion: s.bootedVersion, runningVersion: s.runningVersion ?? null, stagedVersion: s.stagedVersion, lastGoodVersion: s.lastGoodVersion,
      lastResult: s.lastCheck?.result === 'failed' ? (s.lastCheck.errorCode ?? 'failed') : lastFailed?.errorCode ?? 'ok',
      lastError: s.lastCheck?.result === 'failed' ? (s.lastCheck.message ?? null) : null,
      health: booted?.state === 'good' ? 'good' : booted?.state === 'failed' ? 'failed' : 'unknown',
      uptimeSeconds: Math.floor(uptime()), decision: s.decision ? `${s.decision}${s.reason ? `: ${s.reason}` : ''}`.slice(0, 500) : null,
      failedVersion: this.#journal.listGenerations().filter((g) => g.state === 'failed').reduce<number | null>((m, g) => Math.max(m ?? 0, g.version), null),
    };
  }

  async report(): Promise<ReportResult> {
    const r = this.deps.reporter;
    if (!this.#config.fleet || !r) throw new LiveupError('CONFIG_INVALID', 'no fleet endpoint is configured: agentctl enroll URL --token TOKEN');
    r.queue(await this.reportBody());
    return r.flush({ all: true });
  }

  async listGenerations(): Promise<GenerationInfo[]> {
    const present = new Set(await listStaged(this.#config.bootDir));
    const next = this.#stagedNext();
    return this.#journal
      .listGenerations()
      .filter((g) => g.state !== 'available' && g.state !== 'downloading')
      .map((g) => ({
        version: g.version,
        name: g.name,
        state: coreState(g) ?? 'staged',
        pinned: g.pinned,
        booted: g.version === this.#booted,
        staged: g.version === next,
        present: present.has(g.version),
        kernelVersion: g.kernelVersion,
        createdAt: g.createdAt,
        stagedAt: g.stagedAt,
        bootedAt: g.bootedAt,
      }));
  }

  async history(limit: number | null): Promise<HistoryEntry[]> {
    const kinds: Record<string, HistoryKind> = {
      check: 'check', fetch: 'update', stage: 'update', 'menu-write': 'update', 'live-replay': 'apply', 'live-rollback': 'rollback', kexec: 'apply', reboot: 'apply',
      rollback: 'rollback', gc: 'gc', 'gc-removed': 'gc', 'boot-check': 'boot', pinned: 'pin', unpinned: 'unpin',
      decision: 'decision', reconciled: 'recovery',
    };
    return this.#journal
      .history(limit !== null ? { limit } : {})
      .filter((e) => kinds[e.kind] !== undefined || e.kind === 'error')
      .map((e) => ({
        at: e.at,
        kind: kinds[e.kind] ?? 'update',
        status: e.status === 'ok' ? 'succeeded' : e.status,
        version: e.version,
        errorCode: e.errorCode,
        message: e.message ?? e.kind,
      }));
  }

  /** For the service: what transaction runs (set by the daemon's lock wrapper). */
  setTransaction(t: AgentStatus['transaction']): void {
    this.#transaction = t;
  }
}
