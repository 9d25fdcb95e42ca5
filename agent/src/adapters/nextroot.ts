/**
 * soft-reboot's new root: systemd (≥ 254) switches userspace into whatever
 * is mounted at /run/nextroot. liveup mounts the target generation there the
 * way live-boot mounts it at boot — its squashfs read-only under a fresh
 * tmpfs overlay — and binds the persistent mounts (the data partition with
 * /var/lib/liveup) in, since no initramfs runs on a soft-reboot.
 *
 * The plan is a pure list of mount steps (unit-tested); running it undoes
 * what it did when a step fails, so a refused soft-reboot leaves no mounts.
 */
import { randomUUID } from 'node:crypto';
import { copyFile, mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { run as defaultRun, type Runner } from './exec.js';
import { writeFileAtomic } from '../util/fsatomic.js';

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

/** Mount the plan; on failure unmount what was mounted, newest first, and rethrow. Returns the mount points, outermost last. */
export async function prepareNextRoot(o: NextRootOptions, runner: Runner = defaultRun): Promise<string[]> {
  const done: string[] = [];
  try {
    for (const step of nextRootPlan(o)) {
      for (const d of step.mkdir) await mkdir(d, { recursive: true });
      await runner('mount', step.args, { timeoutMs: 60_000 });
      done.push(step.target);
    }
    return done;
  } catch (e) {
    await teardownNextRoot(done, runner);
    throw e;
  }
}

export async function teardownNextRoot(mounts: readonly string[], runner: Runner = defaultRun): Promise<void> {
  for (const m of [...mounts].reverse()) await runner('umount', ['-l', m], { timeoutMs: 60_000 }).catch(() => undefined);
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
export async function handOverToNextRoot(o: { runDir: string; version: number; nextroot?: string; machineId?: string }): Promise<() => Promise<void>> {
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
    const nextroot = o.nextroot ?? '/run/nextroot';
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
