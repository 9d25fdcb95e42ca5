/**
 * Live replay, the pure half: which dpkg runs replay a chain of generations,
 * and which units must restart afterwards. The runner (agent/src/liveapply.ts)
 * does the IO.
 */
import type { PackageChange } from '../channel/schema.js';

export interface ReplayLink {
  readonly version: number;
  readonly parent: number | null;
  readonly changes: readonly PackageChange[];
}

export type ReplayStep =
  | { readonly kind: 'install'; readonly version: number; readonly changes: readonly Extract<PackageChange, { deb: unknown }>[] }
  | { readonly kind: 'remove'; readonly version: number; readonly packages: readonly string[] };

/**
 * The chain must start at `running` and link by parent. Returns why not, or null.
 */
export function chainProblem(running: number | null, chain: readonly ReplayLink[]): string | null {
  if (chain.length === 0) return 'nothing to replay';
  let at = running;
  for (const l of chain) {
    if (at === null) return 'the running generation is unknown';
    if (l.parent !== at) return `generation ${l.version} was built from ${l.parent ?? 'no parent'}, but the system runs ${at}`;
    if (l.changes.length === 0) return `generation ${l.version} records no package changes`;
    at = l.version;
  }
  return null;
}

/**
 * One dpkg run per run of consecutive installs/upgrades or removals, in the
 * recorded order: dpkg orders the packages of one `-i` run by their
 * dependencies itself, as apt's own run on the publisher did.
 */
export function replaySteps(chain: readonly ReplayLink[]): ReplayStep[] {
  const steps: ReplayStep[] = [];
  for (const link of chain) {
    for (const c of link.changes) {
      const last = steps[steps.length - 1];
      if (c.action === 'remove') {
        if (last?.kind === 'remove' && last.version === link.version) steps[steps.length - 1] = { ...last, packages: [...last.packages, c.package] };
        else steps.push({ kind: 'remove', version: link.version, packages: [c.package] });
      } else if (last?.kind === 'install' && last.version === link.version) {
        steps[steps.length - 1] = { ...last, changes: [...last.changes, c] };
      } else {
        steps.push({ kind: 'install', version: link.version, changes: [c] });
      }
    }
  }
  return steps;
}

/** What the system knows about one running process. */
export interface ProcessInfo {
  readonly pid: number;
  readonly comm: string;
  /** Its systemd unit from /proc/PID/cgroup (`foo.service`, `session-3.scope`), or null. */
  readonly unit: string | null;
  /** The executable and every mapped file (`/proc/PID/maps`), " (deleted)" stripped. */
  readonly files: readonly string[];
}

export interface RestartPlan {
  /** Services to restart through systemd, sorted. */
  readonly restart: readonly string[];
  /** Affected processes that a restart of a service cannot renew (sessions, PID 1, outside any unit), with why. */
  readonly needsReboot: readonly string[];
  /** The agent's own unit was affected: restarted last, after the transaction is journalled. */
  readonly restartSelf: boolean;
}

/** `0::/system.slice/nginx.service` (cgroup v2) → `nginx.service`; the innermost unit wins. */
export function unitOfCgroup(text: string): string | null {
  for (const line of text.split('\n')) {
    const path = line.startsWith('0::') ? line.slice(3) : null;
    if (!path) continue;
    const units = path.split('/').filter((p) => /\.(service|scope)$/.test(p));
    return units[units.length - 1] ?? null;
  }
  return null;
}

/**
 * Units whose processes run code or libraries the replay replaced or removed.
 * A file counts when its path is one the changed packages own (before and
 * after): that catches both a replaced library (mapped as deleted) and one a
 * process has not noticed yet.
 */
export function restartPlan(processes: readonly ProcessInfo[], changedFiles: ReadonlySet<string>, selfUnit: string): RestartPlan {
  const restart = new Set<string>();
  const needsReboot = new Set<string>();
  let restartSelf = false;
  for (const p of processes) {
    const hit = p.files.find((f) => changedFiles.has(f));
    if (!hit) continue;
    if (p.pid === 1) needsReboot.add(`PID 1 (${p.comm}) uses ${hit}`);
    else if (p.unit === selfUnit) restartSelf = true;
    else if (p.unit?.endsWith('.service') && !/^user@\d+\.service$/.test(p.unit)) restart.add(p.unit);
    else needsReboot.add(`${p.comm} (PID ${p.pid}${p.unit ? `, ${p.unit}` : ''}) uses ${hit}`);
  }
  return { restart: [...restart].sort(), needsReboot: [...needsReboot].sort(), restartSelf };
}
