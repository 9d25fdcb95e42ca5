/**
 * The boot medium's generations: `<bootDir>/live/<version>/`.
 *
 * A generation directory under `live/` is either complete or absent. It is
 * assembled under `live/.staging-<version>/`, every file and the directory
 * fsynced, then renamed into place and `live/` fsynced; removal goes the other
 * way (rename to `.removing-*` first). A crash at any point leaves only
 * dot-names, which `reconcileStaging` clears at daemon start; a name that
 * looks like a generation is never half-written or half-deleted.
 *
 * Only `Verified…` values come in: staging cannot be handed bytes that did not
 * pass the verifier.
 */
import { constants } from 'node:fs';
import { link, mkdir, open, readFile, readdir, rename, rm, stat, statfs, unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { LiveupError, isLiveupError } from '../channel/errors.js';
import { MANIFEST_FILE, SIG_SUFFIX } from '../channel/layout.js';
import { parseManifest, type ArtifactRole, type Manifest } from '../channel/schema.js';
import { ArtifactHasher, HASH_CHUNK, type VerifiedArtifact, type VerifiedManifest } from '../channel/verify.js';
import { SHA512SUMS_FILE } from '../core/bootmenu.js';
import { fsyncDir, fsyncPath, writeFileAtomic } from '../util/fsatomic.js';

export const LIVE_DIR = 'live';
const STAGING_PREFIX = '.staging-';
const REMOVING_PREFIX = '.removing-';

/**
 * Fixed file names per role, whatever path the manifest used: GRUB entries and
 * the initramfs hook find a generation's files by these names alone.
 */
export const BOOT_FILES: Readonly<Record<ArtifactRole, string>> = {
  squashfs: 'filesystem.squashfs',
  kernel: 'vmlinuz',
  initrd: 'initrd.img',
  packages: 'packages.json',
  // Signed boot (liveup publish --boot-key): GRUB reads `<file>.sig` beside each file it loads.
  'boot-config': 'boot.cfg',
  'boot-config-sig': 'boot.cfg.sig',
  'kernel-sig': 'vmlinuz.sig',
  'initrd-sig': 'initrd.img.sig',
};

/** Default head-room left on the boot medium (GRUB's environment block, logs, the next staging). */
export const DEFAULT_RESERVE_BYTES = 4 << 20;

export interface StageOptions {
  readonly bootDir: string;
  readonly manifest: VerifiedManifest;
  /** The detached signature verified together with `manifest`; staged beside it for the boot side. */
  readonly manifestSig: Uint8Array;
  /**
   * One per artifact the manifest lists. They are consumed: moved (or copied
   * and then deleted) into the generation directory.
   */
  readonly artifacts: readonly VerifiedArtifact[];
  readonly reserveBytes?: number;
}

export interface StagedGeneration {
  readonly version: number;
  readonly dir: string;
  /** Staged file per role present in the manifest. */
  readonly files: Readonly<Partial<Record<ArtifactRole, string>>>;
}

export function generationPath(bootDir: string, version: number): string {
  return join(bootDir, LIVE_DIR, String(version));
}

type Method = 'link' | 'copy';

export async function stageGeneration(opts: StageOptions): Promise<StagedGeneration> {
  const m = opts.manifest.manifest;
  const live = join(opts.bootDir, LIVE_DIR);
  const finalDir = generationPath(opts.bootDir, m.version);
  const plan = matchArtifacts(opts.manifest, opts.artifacts);

  if (await exists(finalDir)) {
    throw new LiveupError('INVALID_ARGUMENT', `${finalDir}: generation ${m.version} is already staged; remove it first`, { version: m.version, dir: finalDir });
  }

  // 1. Space, before anything is written. Files on the boot medium's own file
  // system are linked in and cost nothing more; the others are copied.
  const probe = (await exists(live)) ? live : opts.bootDir;
  const dev = (await stat(probe)).dev;
  const steps: { role: ArtifactRole; artifact: VerifiedArtifact; method: Method; target: string }[] = [];
  for (const { role, artifact } of plan) {
    const sameFs = (await stat(artifact.path)).dev === dev;
    steps.push({ role, artifact, method: sameFs ? 'link' : 'copy', target: BOOT_FILES[role] });
  }
  const reserve = opts.reserveBytes ?? DEFAULT_RESERVE_BYTES;
  const toCopy = steps.filter((s) => s.method === 'copy').reduce((n, s) => n + s.artifact.ref.length, 0);
  const needed = toCopy + opts.manifest.bytes.length + opts.manifestSig.length + reserve;
  const fs = await statfs(probe);
  const available = fs.bavail * fs.bsize;
  if (needed > available) {
    throw new LiveupError('NO_SPACE',
      `${opts.bootDir}: staging generation ${m.version} needs ${needed} bytes (${toCopy} to copy + metadata + ${reserve} reserve), ${available} available`,
      { dir: opts.bootDir, needed, available, version: m.version });
  }

  // 2. Assemble under a dot-name.
  if (!(await exists(live))) {
    await mkdir(live, { recursive: true });
    await fsyncDir(opts.bootDir);
  }
  const staging = join(live, `${STAGING_PREFIX}${m.version}`);
  await rm(staging, { recursive: true, force: true }); // our own leftover from a crash
  const moved: { from: string; to: string }[] = [];
  const files: Partial<Record<ArtifactRole, string>> = {};
  try {
    await mkdir(staging);
    for (const s of steps) {
      const to = join(staging, s.target);
      if (s.method === 'copy' || !(await linkOrMove(s.artifact.path, to, moved))) await copyVerified(s.artifact, to);
      await fsyncPath(to);
      files[s.role] = join(finalDir, s.target);
    }
    await writeNew(join(staging, SHA512SUMS_FILE), Buffer.from(sha512sums(m)));
    await writeNew(join(staging, MANIFEST_FILE), opts.manifest.bytes);
    await writeNew(join(staging, MANIFEST_FILE + SIG_SUFFIX), opts.manifestSig);
    await fsyncDir(staging);
    // 3. Publish it on the medium: one rename, made durable.
    await rename(staging, finalDir);
    await fsyncDir(live);
  } catch (e) {
    await rm(staging, { recursive: true, force: true }).catch(() => undefined);
    // Files moved in (file systems without hard links) go back, so a retry need not download them again.
    for (const { from, to } of moved.reverse()) await rename(to, from).catch(() => undefined);
    throw mapFsError(e, staging);
  }
  // 4. The sources are consumed; a leftover is harmless (the fetcher resumes or replaces it).
  for (const s of steps) await unlink(s.artifact.path).catch(() => undefined);
  return { version: m.version, dir: finalDir, files };
}

/**
 * The generation's files and their signed SHA-512s in `sha512sum` format, under
 * their names on the boot medium: what GRUB's `hashsum --check` (and an
 * administrator's `sha512sum -c`) reads.
 */
export function sha512sums(m: Manifest): string {
  // Small files first: a bad kernel is refused before GRUB spends seconds on the squashfs.
  const order: readonly ArtifactRole[] = ['kernel', 'initrd', 'boot-config', 'boot-config-sig', 'kernel-sig', 'initrd-sig', 'squashfs', 'packages'];
  return [...m.artifacts].sort((a, b) => order.indexOf(a.role) - order.indexOf(b.role)).map((a) => `${a.sha512}  ${BOOT_FILES[a.role]}\n`).join('');
}

/**
 * Write SHA512SUMS for a generation staged before the file existed, from the
 * manifest staged beside it (verified when it was staged). No-op when present.
 */
export async function ensureSha512Sums(bootDir: string, version: number): Promise<void> {
  const dir = generationPath(bootDir, version);
  if (await exists(join(dir, SHA512SUMS_FILE))) return;
  const manifest = parseManifest(await readFile(join(dir, MANIFEST_FILE)), join(dir, MANIFEST_FILE));
  await writeFileAtomic(join(dir, SHA512SUMS_FILE), sha512sums(manifest));
}

/** Pair each manifest artifact with exactly one VerifiedArtifact for the same signed bytes. */
function matchArtifacts(vm: VerifiedManifest, given: readonly VerifiedArtifact[]): { role: ArtifactRole; artifact: VerifiedArtifact }[] {
  const m = vm.manifest;
  const used = new Set<VerifiedArtifact>();
  const out = m.artifacts.map((a) => {
    const v = given.find((g) => !used.has(g) && g.ref.path === a.path && g.ref.length === a.length && g.ref.sha512 === a.sha512);
    if (!v) {
      throw new LiveupError('INVALID_ARGUMENT', `generation ${m.version}: no verified download for ${a.role} artifact ${a.path}`, { version: m.version, file: a.path });
    }
    used.add(v);
    return { role: a.role, artifact: v };
  });
  const extra = given.find((g) => !used.has(g));
  if (extra) {
    throw new LiveupError('INVALID_ARGUMENT', `generation ${m.version}: ${extra.ref.path} is not an artifact of its manifest`, { version: m.version, file: extra.ref.path });
  }
  return out;
}

/**
 * Hard-link `from` to `to` (atomic, and the source survives a failed staging).
 * Where the file system has no hard links (vfat ESPs), move instead and record
 * it for rollback. False when the two are on different mounts after all.
 */
async function linkOrMove(from: string, to: string, moved: { from: string; to: string }[]): Promise<boolean> {
  try {
    await link(from, to);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EXDEV') return false;
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'ENOSYS') throw e;
  }
  try {
    await rename(from, to);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EXDEV') return false;
    throw e;
  }
  moved.push({ from, to });
  return true;
}

/**
 * Copy across file systems, hashing on the way: the bytes on the boot medium
 * are checked against the signed ref, not just the ones in the .part (which
 * could have changed since it was verified).
 */
async function copyVerified(v: VerifiedArtifact, to: string): Promise<VerifiedArtifact> {
  const hasher = new ArtifactHasher(v.ref, v.path);
  const input = await open(v.path, 'r');
  const output = await open(to, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
  try {
    const buf = Buffer.allocUnsafe(HASH_CHUNK);
    for (;;) {
      const { bytesRead } = await input.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      const chunk = buf.subarray(0, bytesRead);
      hasher.update(chunk);
      await output.write(chunk);
    }
    await output.sync();
  } finally {
    await input.close();
    await output.close();
  }
  return hasher.finish(to);
}

async function writeNew(path: string, data: Uint8Array): Promise<void> {
  const fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Clear what an interrupted stage or removal left under `live/`. Called at
 * daemon start, before anything reads the generations. Returns the names removed.
 */
export async function reconcileStaging(bootDir: string): Promise<string[]> {
  const live = join(bootDir, LIVE_DIR);
  let names: string[];
  try {
    names = await readdir(live);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw mapFsError(e, live);
  }
  const leftovers = names.filter((n) => n.startsWith(STAGING_PREFIX) || n.startsWith(REMOVING_PREFIX));
  for (const n of leftovers) await rm(join(live, n), { recursive: true, force: true });
  if (leftovers.length) await fsyncDir(live);
  return leftovers;
}

/**
 * Remove a staged generation (GC). Whether it may go (booted, pinned, the
 * fallback) is the caller's decision; this only makes the removal crash-safe.
 */
export async function removeGeneration(bootDir: string, version: number): Promise<void> {
  const live = join(bootDir, LIVE_DIR);
  const dir = generationPath(bootDir, version);
  if (!Number.isSafeInteger(version) || version < 1 || !(await exists(dir))) {
    throw new LiveupError('UNKNOWN_GENERATION', `generation ${version} is not staged in ${live}`, { version, dir: live });
  }
  const doomed = join(live, `${REMOVING_PREFIX}${version}-${randomBytes(4).toString('hex')}`);
  // The rename is the removal as far as anyone reading live/ is concerned.
  await rename(dir, doomed);
  await fsyncDir(live);
  await rm(doomed, { recursive: true, force: true });
}

/** Versions fully staged under live/ (complete directories only), ascending. */
export async function listStaged(bootDir: string): Promise<number[]> {
  const live = join(bootDir, LIVE_DIR);
  const names = await readdir(live).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return [] as string[];
    throw mapFsError(e, live);
  });
  return names.filter((n) => /^[1-9][0-9]*$/.test(n)).map(Number).filter(Number.isSafeInteger).sort((a, b) => a - b);
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(() => true, () => false);
}

function mapFsError(e: unknown, where: string): LiveupError {
  if (isLiveupError(e)) return e;
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new LiveupError('NO_SPACE', `${where}: the boot medium ran out of space while staging`, { dir: where }, { cause: e });
  }
  return new LiveupError('INTERNAL', `${where}: ${code ?? (e as Error).message}`, { dir: where }, { cause: e });
}
