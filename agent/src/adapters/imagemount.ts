/**
 * A generation's squashfs mounted read-only for reading only (no overlay, no
 * switch): what `rollback --live` repacks from when the overlay's own lower
 * layer cannot be reached. In the agent's own mount namespace: nobody else
 * needs to see it.
 */
import { mkdir, rmdir } from 'node:fs/promises';
import { run as defaultRun, type Runner } from './exec.js';

/** Mounts `squashfs` at `dir` (created; a mount left there by a killed run is dropped first) and returns the unmount. */
export async function mountImage(squashfs: string, dir: string, runner: Runner = defaultRun): Promise<() => Promise<void>> {
  await runner('umount', ['-l', dir], { timeoutMs: 60_000 }).catch(() => undefined);
  await mkdir(dir, { recursive: true });
  await runner('mount', ['-t', 'squashfs', '-o', 'ro,loop', squashfs, dir], { timeoutMs: 60_000 });
  return async () => {
    await runner('umount', ['-l', dir], { timeoutMs: 60_000 }).catch(() => undefined);
    await rmdir(dir).catch(() => undefined);
  };
}
