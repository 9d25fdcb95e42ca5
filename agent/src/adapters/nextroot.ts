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
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { run as defaultRun, type Runner } from './exec.js';

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
