/**
 * A Debian 13 (trixie) root for tests that need a real one (dpkg, chroot):
 * the factory's cached minbase tarball when `liveup build` made one, else
 * one debootstrap makes, cached under /var/cache/liveup/pkgtest/. Plus the
 * process and mount helpers such tests share. Needs root.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { mountsUnder } from '../../publisher/src/factory/chroot.js';

export const CACHE = process.env.LIVEUP_CACHE ?? '/var/cache/liveup';
export const PKGTEST_CACHE = join(CACHE, 'pkgtest');
export const MIRROR = process.env.LIVEUP_DEBIAN_MIRROR ?? 'http://deb.debian.org/debian';

export interface Result { code: number | null; stdout: string; stderr: string }

export function run(cmd: string, args: string[], opts: { allowFail?: boolean; env?: NodeJS.ProcessEnv } = {}): Promise<Result> {
  return new Promise((ok, fail) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', fail);
    child.on('close', (code) => {
      if (code !== 0 && !opts.allowFail) fail(new Error(`${cmd} ${args.join(' ')} exited ${code}\n${stdout.slice(-3000)}\n${stderr.slice(-3000)}`));
      else ok({ code, stdout, stderr });
    });
  });
}


export async function unmountAll(dir: string): Promise<void> {
  for (const m of await mountsUnder(dir)) {
    const r = await run('umount', [m], { allowFail: true });
    if (r.code !== 0) await run('umount', ['-l', m], { allowFail: true });
  }
}

/** Never rm -rf a tree that still has /dev, /proc or /sys bound into it. */
export async function removeTree(dir: string): Promise<void> {
  await unmountAll(dir);
  if ((await mountsUnder(dir)).length) throw new Error(`${dir} still has mounts; left in place`);
  await rm(dir, { recursive: true, force: true });
}


/** A trixie base tarball: the factory's, else one debootstrap makes (cached). */
export async function baseTarball(): Promise<string> {
  const factory = join(CACHE, 'factory');
  if (existsSync(factory)) {
    const found = readdirSync(factory).filter((f) => /^base-trixie-amd64-.*\.tar\.zst$/.test(f)).sort();
    if (found.length) return join(factory, found[found.length - 1]!);
  }
  const own = join(PKGTEST_CACHE, 'base-trixie-minbase.tar.zst');
  if (existsSync(own)) return own;
  await mkdir(PKGTEST_CACHE, { recursive: true });
  const dir = await mkdtemp(join(PKGTEST_CACHE, '.debootstrap-'));
  try {
    await run('debootstrap', ['--variant=minbase', 'trixie', dir, MIRROR]);
    await run('tar', ['--zstd', '-C', dir, '-cf', `${own}.tmp`, '.']);
    await rename(`${own}.tmp`, own);
  } finally {
    await removeTree(dir);
  }
  return own;
}

