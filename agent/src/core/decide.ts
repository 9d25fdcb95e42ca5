/**
 * The decision engine: given what runs, what is staged and the policy, what
 * should the agent do now, and why? Pure, so every rule is a row of a table
 * test (test/unit/decide.test.ts); the daemon journals each decision with its
 * reason and `agentctl status` shows the last one.
 *
 * The order of preference follows the cost to the machine: a live replay of
 * the recorded package changes (no restart beyond the affected units) → a
 * soft-reboot (userspace only, same kernel) → kexec (no firmware, no
 * bootloader) → a full reboot. Only the first is non-disruptive; the others
 * wait for a maintenance window, for logged-in users and shutdown inhibitors,
 * and for a fleet reboot slot.
 */
import type { RebootStrategy } from '../config.js';
import type { WindowState } from './window.js';

/** A staged generation newer than the running one, as its verified manifest describes it. */
export interface PendingGeneration {
  readonly version: number;
  readonly parent: number | null;
  /** Number of recorded package changes against `parent` (0: only the full image can switch to it). */
  readonly changes: number;
  readonly kernelVersion: string;
  /** The manifest's reasons: `kernel`, `initrd`, `package:<name>`, `full-image`. */
  readonly rebootReasons: readonly string[];
}

export interface DecideInput {
  /** The generation the running system is (booted, or converged to by a live apply). */
  readonly running: { readonly version: number; readonly kernelVersion: string } | null;
  /** Staged generations newer than `running`, any order; the newest is the target. */
  readonly pending: readonly PendingGeneration[];
  readonly policy: RebootStrategy;
  readonly window: WindowState;
  readonly now: Date;
  /** Users with a session (logind); a disruptive step waits for them to log out. */
  readonly users: readonly string[];
  /** logind inhibitor locks in `block` mode on shutdown/sleep, as "who: why". */
  readonly inhibitors: readonly string[];
  /** null when kexec can be used, else why not (no kexec-tools, locked down, …). */
  readonly kexecUnavailable: string | null;
  /** null when soft-reboot can be used (systemd ≥ 254), else why not. */
  readonly softRebootUnavailable: string | null;
  /** Fleet reboot slot: `none` when no fleet lock is configured. */
  readonly fleetLock: 'none' | 'granted' | 'denied';
}

export type DisruptiveAction = 'soft-reboot' | 'kexec' | 'reboot';
export type Action = 'nothing' | 'live-apply' | 'stage-only' | DisruptiveAction | 'wait';

export interface Decision {
  readonly action: Action;
  /** The generation the action leads to (null for `nothing`). */
  readonly target: number | null;
  /** `live-apply`: the versions to replay, in order (N+1 … target). */
  readonly chain?: readonly number[];
  /** `wait`: what follows, and when to decide again. */
  readonly then?: DisruptiveAction;
  readonly until?: Date;
  readonly reason: string;
}

/** How soon to look again when waiting on people or on the fleet (not on a window). */
export const RECHECK_MS = 15 * 60_000;

/** The links N+1 … target, if they chain by parent from the running version. */
function replayChain(running: number, pending: readonly PendingGeneration[]): PendingGeneration[] | string {
  const sorted = [...pending].sort((a, b) => a.version - b.version);
  const chain: PendingGeneration[] = [];
  let at = running;
  for (const g of sorted) {
    if (g.parent !== at) return `generation ${g.version} was built from ${g.parent ?? 'nothing'}, not from ${at}`;
    if (g.changes === 0) return `generation ${g.version} records no package changes (a full image)`;
    chain.push(g);
    at = g.version;
  }
  return chain;
}

function disruptiveChoice(input: DecideInput, target: PendingGeneration, why: string): { action: DisruptiveAction; reason: string } {
  const sameKernel = input.running !== null && input.running.kernelVersion === target.kernelVersion;
  const newBoot = input.pending.flatMap((g) => g.rebootReasons.filter((r) => r === 'kernel' || r === 'initrd'));
  const kexec = (because: string): { action: DisruptiveAction; reason: string } =>
    input.kexecUnavailable === null
      ? { action: 'kexec', reason: `${because}; kexec skips firmware and bootloader` }
      : { action: 'reboot', reason: `${because}; kexec is not possible (${input.kexecUnavailable})` };
  switch (input.policy) {
    case 'reboot':
      return { action: 'reboot', reason: `${why}; the policy is to reboot` };
    case 'kexec':
      return kexec(`${why}; the policy is kexec`);
    default:
      if (newBoot.length === 0 && sameKernel) {
        if (input.softRebootUnavailable === null) return { action: 'soft-reboot', reason: `${why}; the kernel and initrd are unchanged, so only userspace restarts (soft-reboot)` };
        return kexec(`${why}; soft-reboot is not possible (${input.softRebootUnavailable})`);
      }
      return kexec(`${why}; ${newBoot.length ? `the ${[...new Set(newBoot)].join(' and ')} changed` : `the kernel differs (${input.running?.kernelVersion ?? 'unknown'} → ${target.kernelVersion})`}`);
  }
}

export function decide(input: DecideInput): Decision {
  if (input.pending.length === 0) return { action: 'nothing', target: null, reason: 'no staged generation is newer than the running one' };
  const target = [...input.pending].sort((a, b) => b.version - a.version)[0]!;
  const v = target.version;
  if (input.policy === 'stage-only') {
    return { action: 'stage-only', target: v, reason: `generation ${v} is staged for the next boot; the policy is stage-only` };
  }

  let why: string;
  if (input.policy === 'live' && input.running !== null) {
    const chain = replayChain(input.running.version, input.pending);
    if (typeof chain !== 'string') {
      const blockers = chain.flatMap((g) => g.rebootReasons);
      if (blockers.length === 0) {
        return {
          action: 'live-apply', target: v, chain: chain.map((g) => g.version),
          reason: `generation${chain.length > 1 ? 's' : ''} ${chain.map((g) => g.version).join(' → ')} change${chain.length > 1 ? '' : 's'} packages only: replay them on the running system`,
        };
      }
      why = `a live replay is unsafe (${[...new Set(blockers)].join(', ')})`;
    } else {
      why = `no live replay (${chain})`;
    }
  } else if (input.running === null) {
    why = 'the running generation is unknown';
  } else {
    why = `generation ${v} is staged`;
  }

  const choice = disruptiveChoice(input, target, why);
  const wait = (until: Date, because: string): Decision => ({ action: 'wait', target: v, then: choice.action, until, reason: `${choice.action} to ${v} waits: ${because} (${choice.reason})` });
  if (!input.window.open) {
    const until = input.window.nextOpen ?? new Date(input.now.getTime() + RECHECK_MS);
    return wait(until, `outside the maintenance window, next ${input.window.label ?? 'window'} at ${until.toISOString()}`);
  }
  const later = new Date(input.now.getTime() + RECHECK_MS);
  if (input.inhibitors.length) return wait(later, `shutdown is inhibited by ${input.inhibitors.join('; ')}`);
  if (input.users.length) return wait(later, `${input.users.length} user(s) logged in (${input.users.join(', ')})`);
  if (input.fleetLock === 'denied') return wait(later, 'the fleet lock has no free reboot slot');
  return { action: choice.action, target: v, reason: choice.reason };
}

/**
 * The switch to prepare ahead of time, and into which generation: one the
 * decision soft-reboots or kexecs into, but not now — it waits (a window,
 * people, a reboot slot) or nobody acts on it (staged by `--download-only` or
 * a schedule outside the window). A soft-reboot's target has its files read
 * into memory (adapters/prewarm.ts); a kexec's kernel and initrd are loaded
 * (adapters/kexec.ts ensureKexecLoaded), so the window's downtime has neither.
 * null when the switch runs now (preparing would only move the same work
 * before it) or is a reboot (firmware and GRUB start from nothing).
 */
export function switchAhead(d: Decision, actingNow: boolean): { action: 'soft-reboot' | 'kexec'; version: number } | null {
  if (d.target === null) return null;
  const action = d.action === 'wait' ? d.then : actingNow ? undefined : d.action;
  return action === 'soft-reboot' || action === 'kexec' ? { action, version: d.target } : null;
}
