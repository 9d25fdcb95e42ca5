/**
 * `liveup build`: a profile → a generation directory (GENDIR).
 *
 * Everything happens in `GENDIR.tmp-<pid>` and is renamed into place at the
 * end, so a failed or interrupted build leaves no half GENDIR; every mount is
 * undone in `finally` (and on SIGINT/SIGTERM through withInterrupts).
 */
import { createHash } from 'node:crypto';
import { chmod, copyFile, lstat, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { LiveupError, isLiveupError } from '../../../agent/src/channel/errors.js';
import { run } from '../exec.js';
import { requireRoot } from './image.js';
import { Chroot, removeTree, timed, withInterrupts, type StepContext } from './chroot.js';
import {
  DEFAULT_CMDLINE, bootKernel, cleanImage, copyBootFiles, disableKexecLoad, dpkgCompare, exists, hostResolver, linkPersistent,
  removeStaleTemps, squash, writePackagesJson, writeSources,
} from './image.js';
import { agentDeb } from './agentdeb.js';
import { basePackages, loadProfile, type PackageSpec, type Profile } from './profile.js';

export const DEFAULT_CACHE = '/var/cache/liveup/factory';

export interface BuildOptions {
  readonly profilePath: string;
  readonly out: string;
  readonly cacheDir?: string;
  /** Replace an existing GENDIR (only once the new one is complete). */
  readonly force?: boolean;
  readonly log?: (line: string) => void;
  /** The liveup-agent .deb to install (profile `agent`); default: found by factory/agentdeb.ts. */
  readonly agentDeb?: string;
}

export interface BuildResult {
  readonly gendir: string;
  readonly name: string;
  readonly kernel?: string;
  /** Profile package → the version installed (floating constraints resolved). */
  readonly resolved: Readonly<Record<string, string>>;
  readonly packages: number;
  readonly squashfsBytes: number;
  /** Seconds per step, in order. */
  readonly timings: Readonly<Record<string, number>>;
  readonly baseCached: boolean;
}

export async function build(opts: BuildOptions): Promise<BuildResult> {
  const log = opts.log ?? (() => undefined);
  const { profile, hash } = await loadProfile(opts.profilePath);
  requireRoot();
  const out = resolve(opts.out);
  const cache = resolve(opts.cacheDir ?? DEFAULT_CACHE);
  if (!opts.force && (await exists(out))) {
    throw new LiveupError('ALREADY_EXISTS', `${out} already exists (pass --force to replace it once the new build is complete)`, { file: out });
  }
  if (profile.architecture !== 'amd64' && profile.machine !== 'container') {
    // The base package set names linux-image-amd64; other architectures need their own kernel package.
    throw new LiveupError('PROFILE_INVALID', `${opts.profilePath}: architecture: only amd64 is supported for machine types with a kernel so far`);
  }
  if (profile.insecureNoCheckGpg) {
    log('!!! WARNING: insecureNoCheckGpg is set: package signatures are NOT checked; anyone on the network path can alter this image !!!');
  }

  return withInterrupts(log, async (signal) => {
    const ctx: StepContext = { log, signal };
    const timings: Record<string, number> = {};
    await mkdir(join(out, '..'), { recursive: true });
    await removeStaleTemps(out, log, (d) => removeTree(d, log));
    const tmp = `${out}.tmp-${process.pid}`;
    const rootfs = join(tmp, 'rootfs');
    await mkdir(rootfs, { recursive: true });
    const ch = new Chroot(rootfs, ctx);
    let ok = false;
    try {
      const baseCached = await timed(ctx, timings, 'base system (debootstrap --variant=minbase)', () => baseSystem(ctx, profile, cache, rootfs));
      await timed(ctx, timings, 'mount proc, sys, dev, dev/pts', () => ch.mountApi());
      const resolved: Record<string, string> = {};
      let kver: string | undefined;
      await timed(ctx, timings, 'apt sources and update', async () => {
        await hostResolver(ch);
        await writeSources(ch, profile.sources, profile.insecureNoCheckGpg);
        await ch.denyDaemons();
        await mkdir(join(cache, 'archives', 'partial'), { recursive: true });
        await ch.bind(join(cache, 'archives'), 'var/cache/apt/archives');
        await ch.apt(['update']);
      });
      await timed(ctx, timings, 'install packages', async () => {
        const pins = await resolveVersions(ch, profile.packages, log);
        await mkdir(ch.path('tmp/liveup-debs'), { recursive: true });
        const debs: string[] = [];
        const extra = [...profile.debs];
        if (profile.agent) extra.push(await agentDeb({ explicit: opts.agentDeb, architecture: profile.architecture, cacheDir: cache, log }));
        for (const d of extra) {
          await copyFile(d, ch.path(`tmp/liveup-debs/${basename(d)}`));
          debs.push(`/tmp/liveup-debs/${basename(d)}`);
        }
        await rm(join(cache, 'agent-deb', String(process.pid)), { recursive: true, force: true });
        // Recommends are left out: an image holds what the profile names (docs/factory.md).
        await ch.apt(['install', '--no-install-recommends', ...basePackages(profile.machine), ...pins, ...debs]);
        const installed = await ch.installed();
        for (const p of profile.packages) {
          const v = installed.get(p.name);
          if (!v) throw new LiveupError('BUILD_FAILED', `package ${p.name} is not installed after apt-get install`);
          resolved[p.name] = v;
        }
        if (profile.agent) {
          const v = installed.get('liveup-agent');
          if (!v) throw new LiveupError('BUILD_FAILED', 'liveup-agent is not installed after apt-get install');
          resolved['liveup-agent'] = v;
        }
        if (await disableKexecLoad(ch)) log('kexec-tools found: LOAD_KEXEC=false (the agent loads kexec itself)');
      });
      await timed(ctx, timings, 'persistent paths', () => linkPersistent(ch, profile.persistent));
      await timed(ctx, timings, 'hooks', () => runHooks(ch, profile));
      if (profile.machine !== 'container') {
        kver = await timed(ctx, timings, 'update-initramfs', async () => {
          const k = await bootKernel(ch);
          if (!k) throw new LiveupError('BUILD_FAILED', 'no kernel in /boot after installing linux-image-amd64');
          const hasInitrd = await exists(ch.path(`boot/initrd.img-${k}`));
          await ch.exec('update-initramfs', [hasInitrd ? '-u' : '-c', '-k', k]);
          return k;
        });
        await timed(ctx, timings, 'copy out vmlinuz and initrd.img', () => copyBootFiles(ch, kver!, tmp));
      }
      const installed = await ch.installed();
      await writePackagesJson(installed, tmp);
      await timed(ctx, timings, 'clean and unmount', async () => {
        await ch.unmountAll(); // the archive cache first of all: `apt-get clean` must not empty the shared cache
        await ch.allowDaemons();
        await cleanImage(ch, profile.name);
      });
      await timed(ctx, timings, `mksquashfs (${profile.compression.algorithm}${profile.compression.level !== undefined ? `-${profile.compression.level}` : ''})`, () =>
        squash(ctx, rootfs, join(tmp, 'filesystem.squashfs'), profile.compression));
      const name = `${profile.name}-${profile.version}`;
      const meta = {
        name,
        architecture: profile.architecture,
        ...(kver ? { kernel: { version: kver, cmdline: DEFAULT_CMDLINE } } : {}),
        parent: null,
        changes: [],
        rebootRequired: { required: true, reasons: ['full-image'] },
        squashfs: { ...profile.compression },
        profile: { name: profile.name, version: profile.version, sha256: hash, machine: profile.machine, factory: profile.factory, packages: resolved },
        built: new Date().toISOString(),
      };
      await writeFile(join(tmp, 'generation.json'), JSON.stringify(meta, null, 2) + '\n');
      const squashfsBytes = (await lstat(join(tmp, 'filesystem.squashfs'))).size;
      await timed(ctx, timings, 'finish GENDIR', async () => {
        await removeTree(rootfs, log);
        if (opts.force && (await exists(out))) await removeTree(out, log);
        await rename(tmp, out);
      });
      ok = true;
      return { gendir: out, name, kernel: kver, resolved, packages: installed.size, squashfsBytes, timings, baseCached };
    } catch (e) {
      if (isLiveupError(e) && e.code !== 'COMMAND_FAILED') throw e;
      const err = isLiveupError(e) ? e : undefined;
      throw new LiveupError('BUILD_FAILED', err ? err.message : String(e), err ? { ...err.details } : {}, { cause: e });
    } finally {
      await ch.unmountAll().catch((e: unknown) => log(`cleanup: ${(e as Error).message}`));
      if (!ok) {
        await removeTree(tmp, log).catch((e: unknown) => log(`cleanup: could not remove ${tmp}: ${(e as Error).message}`));
      }
    }
  });
}

/** A fresh minbase tree, from the per-source cache tarball when there is one. Returns whether the cache was used. */
async function baseSystem(ctx: StepContext, profile: Profile, cache: string, rootfs: string): Promise<boolean> {
  const src = profile.sources[0]!;
  const keyringHash = src.keyring ? createHash('sha256').update(await readFile(src.keyring)).digest('hex') : 'none';
  const key = createHash('sha256')
    .update(JSON.stringify({ v: 1, variant: 'minbase', suite: profile.suite, arch: profile.architecture, uri: src.uri, keyringHash, insecure: profile.insecureNoCheckGpg }))
    .digest('hex')
    .slice(0, 16);
  const tarball = join(cache, `base-${profile.suite}-${profile.architecture}-${key}.tar.zst`);
  const tarFlags = ['--numeric-owner', '--xattrs', '--xattrs-include=*', '--zstd'];
  if (await exists(tarball)) {
    ctx.log(`  using the cached base tree ${tarball}`);
    await run('tar', [...tarFlags, '-xpf', tarball, '-C', rootfs], { signal: ctx.signal });
    return true;
  }
  const args = ['--variant=minbase', `--arch=${profile.architecture}`];
  if (profile.insecureNoCheckGpg) args.push('--no-check-gpg');
  else if (src.keyring) args.push(`--keyring=${src.keyring}`);
  await run('debootstrap', [...args, profile.suite, rootfs, src.uri], { signal: ctx.signal, log: (l) => ctx.log(`  ${l}`) });
  await mkdir(cache, { recursive: true });
  const part = `${tarball}.part-${process.pid}`;
  await run('tar', [...tarFlags, '-cf', part, '-C', rootfs, '.'], { signal: ctx.signal });
  await rename(part, tarball);
  ctx.log(`  cached the base tree as ${tarball}`);
  return false;
}

/**
 * Turn profile package specs into apt arguments. Pinned (`=`) and bare names
 * pass through; a floating constraint becomes `name=<newest candidate that
 * satisfies it>` from `apt-cache madison`, so the build records what it chose.
 */
export async function resolveVersions(ch: Chroot, specs: readonly PackageSpec[], log: (l: string) => void): Promise<string[]> {
  const args: string[] = [];
  for (const s of specs) {
    if (!s.constraint) { args.push(s.name); continue; }
    if (s.constraint.op === '=') { args.push(`${s.name}=${s.constraint.version}`); continue; }
    const r = await ch.exec('apt-cache', ['madison', s.name], { quiet: true });
    const versions = r.stdout.split('\n').map((l) => l.split('|')[1]?.trim()).filter((v): v is string => !!v);
    let best: string | undefined;
    for (const v of [...new Set(versions)]) {
      if (!(await dpkgCompare(v, s.constraint.op, s.constraint.version))) continue;
      if (best === undefined || (await dpkgCompare(v, 'gt', best))) best = v;
    }
    if (!best) {
      throw new LiveupError('BUILD_FAILED', `no candidate for "${s.text}" (available: ${versions.length ? [...new Set(versions)].join(', ') : 'none'})`, { package: s.name });
    }
    log(`  ${s.text} → ${s.name}=${best}`);
    args.push(`${s.name}=${best}`);
  }
  return args;
}

async function runHooks(ch: Chroot, profile: Profile): Promise<void> {
  for (const [i, h] of profile.hooks.entries()) {
    const inside = `/tmp/liveup-hook-${i}`;
    await copyFile(h, ch.path(inside));
    await chmod(ch.path(inside), 0o755);
    await ch.exec(inside, [], {
      env: { LIVEUP_PROFILE_NAME: profile.name, LIVEUP_PROFILE_VERSION: profile.version, LIVEUP_MACHINE: profile.machine },
    }).catch((e: unknown) => {
      throw new LiveupError('BUILD_FAILED', `hook ${h} failed: ${(e as Error).message}`, { hook: h }, { cause: e });
    });
  }
}
