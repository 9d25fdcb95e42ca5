/**
 * Crash-safe file primitives: write temp → fsync → rename → fsync dir.
 *
 * A rename is atomic on POSIX file systems, but it is only durable once the
 * directory holding it is fsynced; without that a power cut can bring back the
 * old name. Every durable write in liveup goes through here.
 */
import { open, rename, rm, mkdir, symlink, readdir } from 'node:fs/promises';
import { constants } from 'node:fs';
import { dirname, basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';

export async function fsyncPath(path: string): Promise<void> {
  const fh = await open(path, constants.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export const fsyncDir = fsyncPath;

/** A temporary name beside `path`, so the final rename never crosses a file system. */
export function tempNameFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
}

export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  opts: { mode?: number } = {},
): Promise<void> {
  const tmp = tempNameFor(path);
  const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, opts.mode ?? 0o644);
  try {
    // A mode asked for is the mode the file gets, whatever the umask (a 0600 secret, a 0644 public file).
    if (opts.mode !== undefined) await fh.chmod(opts.mode);
    await fh.writeFile(data);
    await fh.sync();
  } catch (e) {
    await fh.close();
    await rm(tmp, { force: true });
    throw e;
  }
  await fh.close();
  try {
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
  await fsyncDir(dirname(path));
}

/** Atomically point `linkPath` at `target` (a symlink swap by rename). */
export async function symlinkAtomic(target: string, linkPath: string): Promise<void> {
  const tmp = tempNameFor(linkPath);
  await symlink(target, tmp);
  try {
    await rename(tmp, linkPath);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
  await fsyncDir(dirname(linkPath));
}

export async function ensureDir(path: string, mode = 0o755): Promise<void> {
  await mkdir(path, { recursive: true, mode });
}

/** fsync every regular file directly in `dir`, then the directory itself. */
export async function fsyncTree(dir: string): Promise<void> {
  for (const ent of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, ent.name);
    if (ent.isDirectory()) await fsyncTree(p);
    else if (ent.isFile()) await fsyncPath(p);
  }
  await fsyncDir(dir);
}
