/**
 * soft-reboot's new root: systemd (≥ 254) switches userspace into whatever
 * is mounted at /run/nextroot. liveup mounts the target generation there the
 * way live-boot mounts it at boot — its squashfs read-only under a fresh
 * tmpfs overlay — and binds the persistent mounts (the data partition with
 * /var/lib/liveup) in, since no initramfs runs on a soft-reboot.
 *
 * The plan is a pure list of mount steps (unit-tested); running it undoes
 * what it did when a step fails, so a refused soft-reboot leaves no mounts.
 *
 * The mounts must be made in PID 1's mount namespace: systemd looks at
 * /run/nextroot from there. A unit with any mount sandboxing (PrivateTmp,
 * ProtectControlGroups, ProtectSystem, …) runs in a namespace of its own,
 * a *slave* of the machine's: mounts made in it never reach PID 1, and
 * systemd then soft-reboots into the *old* root (seen in QEMU, 2026-12-03,
 * with only ProtectControlGroups=yes left). So when the caller's namespace
 * is not PID 1's, mounts run under `nsenter --mount=/proc/1/ns/mnt` and
 * paths are reached through `/proc/1/root` (a path walk there uses PID 1's
 * mounts); and the result is checked in PID 1's own mountinfo, so a new
 * root PID 1 cannot see is refused rather than switched to.
 */
import { randomUUID } from 'node:crypto';
import { copyFile, mkdir, readFile, readlink, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { run as defaultRun, type Runner } from './exec.js';
import { LiveupError, toLiveupError } from '../channel/errors.js';
import { writeFileAtomic } from '../util/fsatomic.js';
import { mountPoints } from '../util/mountinfo.js';

/** Beside `booted` in the run directory: this userspace boot's id after a soft-reboot (host.ts bootId). */
export const SOFT_REBOOT_ID = 'soft-reboot-id';

export interface NextRootOptions {
  /** The target generation's squashfs on the boot medium. */
  readonly squashfs: string;
  /** Default /run/nextroot (systemd's fixed path). */
  readonly nextroot?: string;
  /** Where the read-only lower and the tmpfs live (default /run/liveup/nextroot). */
  readonly scratch?: string;
  /** Mount points to carry over, bound at the same path in the new root (the data partition). */
  readonly persistent?: readonly string[];
  /** The process whose mount namespace must see the new root (default 1: systemd). */
  readonly initPid?: number;
}

/**
 * How to act in `pid`'s mount namespace from this process: directly when it
 * is ours, else through nsenter and /proc/PID/root.
 */
export interface NamespaceView {
  readonly pid: number;
  readonly same: boolean;
  /** `p` as seen by `pid`. */
  path(p: string): string;
  /** `cmd args` run in `pid`'s mount namespace. */
  command(cmd: string, args: readonly string[]): [string, string[]];
}

export async function namespaceOf(pid = 1): Promise<NamespaceView> {
  // Unreadable (no CAP_SYS_PTRACE over it, as in some containers): act in ours;
  // prepareNextRoot's check of PID 1's mountinfo still refuses what it cannot see.
  const [ours, theirs] = await Promise.all([readlink('/proc/self/ns/mnt'), readlink(`/proc/${pid}/ns/mnt`).catch(() => null)]);
  const same = theirs === null || ours === theirs;
  return {
    pid,
    same,
    path: (p) => (same ? p : join(`/proc/${pid}/root`, p)),
    command: (cmd, args) => (same ? [cmd, [...args]] : ['nsenter', [`--mount=/proc/${pid}/ns/mnt`, '--', cmd, ...args]]),
  };
}

export interface MountStep {
  readonly mkdir: readonly string[];
  readonly args: readonly string[];
  /** The mount point this step creates, for undoing it. */
  readonly target: string;
}

export function nextRootPlan(o: NextRootOptions): MountStep[] {
  const nextroot = o.nextroot ?? '/run/nextroot';
  const scratch = o.scratch ?? '/run/liveup/nextroot';
  const lower = join(scratch, 'lower');
  const rw = join(scratch, 'rw');
  return [
    { mkdir: [lower], args: ['-t', 'squashfs', '-o', 'ro,loop', o.squashfs, lower], target: lower },
    { mkdir: [rw], args: ['-t', 'tmpfs', '-o', 'mode=0755', 'liveup-nextroot', rw], target: rw },
    {
      mkdir: [join(rw, 'upper'), join(rw, 'work'), nextroot],
      args: ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lower},upperdir=${join(rw, 'upper')},workdir=${join(rw, 'work')}`, nextroot],
      target: nextroot,
    },
    ...(o.persistent ?? []).map((p) => ({ mkdir: [join(nextroot, p)], args: ['--bind', p, join(nextroot, p)], target: join(nextroot, p) })),
  ];
}

/** `s` as one shell word. */
export const shellWord = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
const q = shellWord;

/**
 * Mount the plan; on failure unmount what was mounted, newest first, and
 * rethrow. Returns the mount points, outermost last.
 *
 * The whole plan runs as one `sh -e` script in PID 1's namespace: one process
 * (and one nsenter) instead of a mkdir and a mount per step, since every spawn
 * is on a switch's critical path. A directory inside a mount made there exists
 * only there, so the mkdirs run in the script too.
 */
export async function prepareNextRoot(o: NextRootOptions, runner: Runner = defaultRun): Promise<string[]> {
  const ns = await namespaceOf(o.initPid ?? 1);
  const plan = nextRootPlan(o);
  const targets = plan.map((s) => s.target);
  const script = plan.map((s) => `mkdir -p ${s.mkdir.map(q).join(' ')}\nmount ${s.args.map(q).join(' ')}`).join('\n');
  try {
    await runner(...ns.command('sh', ['-ec', script]), { timeoutMs: 60_000 }).catch((e: unknown) => {
      // The script is long and the tool's own words name the failing mount: say those.
      const err = toLiveupError(e);
      const said = typeof err.details.stderr === 'string' && err.details.stderr.trim() ? err.details.stderr.trim() : err.message;
      throw new LiveupError('COMMAND_FAILED', `mounting the new root at ${o.nextroot ?? '/run/nextroot'} failed: ${said}`, { ...err.details, command: 'prepare /run/nextroot' }, { cause: e });
    });
    const seen = mountPoints(await readFile(`/proc/${ns.pid}/mountinfo`, 'utf8'));
    const missing = targets.filter((m) => !seen.has(m));
    if (missing.length > 0) {
      throw new LiveupError('COMMAND_FAILED', `the new root is not mounted where PID ${ns.pid} (systemd) looks: ${missing.join(', ')} missing from its mountinfo`, { missing: missing.join(' ') });
    }
    return targets;
  } catch (e) {
    // Whichever steps ran: unmounting one that did not is a harmless error.
    await teardownNextRoot(targets, runner, o.initPid);
    throw e;
  }
}

/** Lazily unmount `mounts`, newest first, in one process; mounts that are not there are skipped. */
export async function teardownNextRoot(mounts: readonly string[], runner: Runner = defaultRun, initPid = 1): Promise<void> {
  if (mounts.length === 0) return;
  const ns = await namespaceOf(initPid);
  const script = [...mounts].reverse().map((m) => `umount -l ${q(m)} 2>/dev/null || true`).join('\n');
  await runner(...ns.command('sh', ['-c', script]), { timeoutMs: 60_000 }).catch(() => undefined);
}

/**
 * What the initramfs does at a real boot and nothing does on a soft-reboot,
 * done here just before switching: `<runDir>/booted` names the target (the
 * boot check and the agent of the new userspace read it; systemd carries /run
 * over), `<runDir>/soft-reboot-id` gets a fresh id (the kernel's boot_id stays,
 * and a live replay of the old userspace must not count as the new one's), and
 * the new root gets the machine's /etc/machine-id. Returns the undo, for a
 * soft-reboot that could not be started.
 */
export async function handOverToNextRoot(o: { runDir: string; version: number; nextroot?: string; machineId?: string; initPid?: number }): Promise<() => Promise<void>> {
  const files = [join(o.runDir, 'booted'), join(o.runDir, SOFT_REBOOT_ID)];
  const before = await Promise.all(files.map((f) => readFile(f, 'utf8').catch(() => null)));
  const undo = async (): Promise<void> => {
    for (const [i, f] of files.entries()) {
      const was = before[i];
      await (was === null || was === undefined ? rm(f, { force: true }) : writeFileAtomic(f, was)).catch(() => undefined);
    }
  };
  try {
    await mkdir(o.runDir, { recursive: true });
    // The new root as PID 1 sees it (prepareNextRoot mounted it there).
    const nextroot = (await namespaceOf(o.initPid ?? 1)).path(o.nextroot ?? '/run/nextroot');
    await mkdir(join(nextroot, 'etc'), { recursive: true });
    await copyFile(o.machineId ?? '/etc/machine-id', join(nextroot, 'etc', 'machine-id'));
    await writeFileAtomic(files[1]!, `${randomUUID()}\n`);
    await writeFileAtomic(files[0]!, `${o.version}\n`);
  } catch (e) {
    await undo();
    throw e;
  }
  return undo;
}
