/**
 * Signed boot's only writable boot state: the agent's choices in grubenv and
 * in the good block beside it (core/signedboot.ts says why there are two).
 * Each write is one atomic block replacement (grubenv.ts); a damaged block is
 * recreated rather than left, since GRUB would then fall back to the disk's
 * own generation.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { isLiveupError } from '../channel/errors.js';
import { ENV_NEXT_ENTRY, ENV_TRIES_LEFT, ENV_TRY_VERSION } from '../core/bootmenu.js';
import { GOOD_ENV_FILE, type SignedBootEnv } from '../core/signedboot.js';
import type { GrubEnv } from './grubenv.js';

async function setOrRecreate(env: GrubEnv, file: string, vars: Readonly<Record<string, string>>): Promise<void> {
  try {
    await env.set(file, vars);
  } catch (e) {
    if (!isLiveupError(e) || e.code !== 'BOOT_ENV_INVALID') throw e;
    await env.create(file);
    await env.set(file, vars);
  }
}

/**
 * The good block first, then grubenv: a crash in between leaves the new good
 * choice already in the block GRUB prefers, and the old trial (if any) in
 * grubenv, which the next write or boot check clears.
 */
export async function writeSignedBootChoice(env: GrubEnv, grubDir: string, choice: SignedBootEnv): Promise<void> {
  await mkdir(grubDir, { recursive: true });
  await setOrRecreate(env, join(grubDir, GOOD_ENV_FILE), choice.good);
  const grubenv = join(grubDir, 'grubenv');
  if (choice.trial) {
    await setOrRecreate(env, grubenv, { ...choice.good, ...choice.trial });
    return;
  }
  await setOrRecreate(env, grubenv, choice.good);
  await env.unset(grubenv, [ENV_TRY_VERSION, ENV_TRIES_LEFT, ENV_NEXT_ENTRY]);
}
