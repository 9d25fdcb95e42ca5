/**
 * `liveup derive`: the latest generation + package changes → a child GENDIR
 * whose generation.json records exactly what changed, in the order dpkg
 * applied it, with the .deb files an agent replays on a running machine.
 *
 * How the record stays exact: dpkg-query snapshots before and after decide
 * WHAT changed; the new lines of the chroot's /var/log/dpkg.log decide the
 * ORDER; the .debs come from apt's archive cache (downloaded first with
 * --download-only) and are checked with dpkg-deb to be that package and version.
 */
import { createHash } from 'node:crypto';
import { copyFile, lstat, mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { LiveupError, isLiveupError } from '../../../agent/src/channel/errors.js';
import { fetchVerifiedIndex, fetchVerifiedManifest } from '../../../agent/src/channel/client.js';
import { hashFile } from '../../../agent/src/channel/hash.js';
import { generationDir, indexPath } from '../../../agent/src/channel/layout.js';
import { artifactOfRole, parseIndex, parseManifest } from '../../../agent/src/channel/schema.js';
import type { PinnedKeyring } from '../../../agent/src/channel/signature.js';
import { openSource } from '../../../agent/src/channel/source.js';
import { readGendirMeta, requireGendirFiles, type GendirChange } from '../generation.js';
import { run } from '../exec.js';
import { Chroot, removeTree, timed, withInterrupts, type StepContext } from './chroot.js';
import {
  DEFAULT_CMDLINE, bootKernel, cleanImage, copyBootFiles, exists, hostResolver, removeStaleTemps, requireRoot, squash, squashOptionsOf,
  writePackagesJson, type SquashOptions,
} from './image.js';
import { DEFAULT_CACHE } from './build.js';
import { parsePackageSpec } from './profile.js';

export const DEFAULT_REBOOT_PACKAGES = ['libc6', 'systemd', 'dbus'];

export interface DeriveOptions {
  /** A GENDIR, a published generation directory, or a channel repository (with `channel`). */
  readonly from: string;
  readonly channel?: string;
  /** Verify the repository's index and manifest (and the squashfs hash) with these pinned keys. */
  readonly keyring?: PinnedKeyring;
  readonly install?: readonly string[];
  readonly remove?: readonly string[];
  /**
   * Local .deb files to install or upgrade to (the publisher's own packages, or a rebuilt one):
   * apt installs them with their dependencies, and they are recorded like any other change.
   */
  readonly debs?: readonly string[];
  readonly upgrade?: boolean;
  readonly out: string;
  readonly name?: string;
  /** Parent version when `from` is an unpublished GENDIR. */
  readonly parent?: number;
  readonly rebootPackages?: readonly string[];
  readonly cacheDir?: string;
  readonly force?: boolean;
  readonly log?: (line: string) => void;
}

export interface DeriveResult {
  readonly gendir: string;
  readonly name: string;
  readonly parent: number | null;
  readonly kernel?: string;
  readonly changes: readonly GendirChange[];
  readonly rebootRequired: { readonly required: boolean; readonly reasons: readonly string[] };
  readonly timings: Readonly<Record<string, number>>;
}

interface SourceGeneration {
  readonly dir: string;
  readonly version: number | null;
  readonly name: string;
  readonly architecture: string;
  readonly cmdline: string;
  readonly squash: SquashOptions;
  readonly profile?: unknown;
}

/** Find the generation to start from and what we know about it. */
async function locateSource(opts: DeriveOptions, log: (l: string) => void): Promise<SourceGeneration> {
  const from = resolve(opts.from.replace(/^file:\/\//, ''));
  if (/^https?:\/\//.test(opts.from)) throw new LiveupError('INVALID_ARGUMENT', '--from must be a local directory (a GENDIR or a channel repository); download over HTTP is not supported yet');
  let dir = from;
  let version: number | null = null;
  let manifestName: string | undefined;
  let manifestArch: string | undefined;
  let manifestCmdline: string | undefined;
  if (await exists(join(from, 'channels'))) {
    if (!opts.channel) throw new LiveupError('INVALID_ARGUMENT', `${from} is a channel repository: pass --channel NAME`);
    let latest: number | null;
    if (opts.keyring) {
      const src = openSource(from);
      const ctx = { keyring: opts.keyring, threshold: 1, now: new Date(), channel: opts.channel };
      const { index } = await fetchVerifiedIndex(src, { ...ctx, minSequence: 0 });
      latest = index.latest;
      const entry = index.generations.find((g) => g.version === latest);
      if (!entry) throw new LiveupError('NOT_FOUND', `channel ${opts.channel} has no generation`);
      const { manifest: m } = await fetchVerifiedManifest(src, entry, { ...ctx, architecture: entry.architecture, minVersion: 0 });
      const sq = artifactOfRole(m, 'squashfs');
      const got = await hashFile(join(from, generationDir(entry.version), sq!.path));
      if (got.sha512 !== sq!.sha512 || got.length !== sq!.length) {
        throw new LiveupError('HASH_MISMATCH', `generation ${entry.version}: filesystem.squashfs does not match its signed manifest`);
      }
      log(`  index, manifest and squashfs of generation ${entry.version} verified against the pinned key(s)`);
    } else {
      // Reading our own repository from disk: the files are ours, but say that nothing was verified.
      log(`  WARNING: reading ${from} directly; signatures are NOT checked (pass --keyring to verify)`);
      latest = parseIndex(await readFile(join(from, indexPath(opts.channel))), indexPath(opts.channel)).latest;
    }
    if (latest === null) throw new LiveupError('NOT_FOUND', `channel ${opts.channel} has no generation yet`);
    dir = join(from, generationDir(latest));
  }
  await requireGendirFiles(dir);
  if (await exists(join(dir, 'manifest.json'))) {
    const m = parseManifest(await readFile(join(dir, 'manifest.json')), join(dir, 'manifest.json'));
    version = m.version;
    manifestName = m.name;
    manifestArch = m.architecture;
    manifestCmdline = m.kernel.cmdline;
  }
  const meta = await readGendirMeta(dir);
  if (version === null && opts.parent !== undefined) version = opts.parent;
  if (version === null) log('  note: the source is an unpublished GENDIR; parent stays null (pass --parent N to name its published version)');
  const raw = await readFile(join(dir, 'generation.json'), 'utf8').then((t) => JSON.parse(t) as Record<string, unknown>, () => ({} as Record<string, unknown>));
  const squash = meta.squashfs
    ? { algorithm: meta.squashfs.algorithm as SquashOptions['algorithm'], level: meta.squashfs.level, blockSize: meta.squashfs.blockSize }
    : await squashOptionsOf(join(dir, 'filesystem.squashfs'));
  return {
    dir,
    version,
    name: manifestName ?? meta.name ?? 'generation',
    architecture: manifestArch ?? meta.architecture ?? 'amd64',
    cmdline: meta.kernel?.cmdline ?? manifestCmdline ?? DEFAULT_CMDLINE,
    squash,
    profile: raw.profile,
  };
}

export async function derive(opts: DeriveOptions): Promise<DeriveResult> {
  const log = opts.log ?? (() => undefined);
  const out = resolve(opts.out);
  requireRoot();
  const install = opts.install ?? [];
  const remove = opts.remove ?? [];
  for (const p of [...install, ...remove]) {
    if (!parsePackageSpec(p)) throw new LiveupError('INVALID_ARGUMENT', `"${p}" is not a package name (or name=VERSION)`);
  }
  for (const p of remove) if (p.includes('=')) throw new LiveupError('INVALID_ARGUMENT', `--remove takes package names, got "${p}"`);
  const localDebs = await Promise.all((opts.debs ?? []).map((d) => inspectLocalDeb(resolve(d))));
  if (install.length + remove.length + localDebs.length === 0 && !opts.upgrade) throw new LiveupError('INVALID_ARGUMENT', 'nothing to do: pass --install, --deb, --remove and/or --upgrade');
  if (!opts.force && (await exists(out))) throw new LiveupError('ALREADY_EXISTS', `${out} already exists (pass --force to replace it)`, { file: out });
  const cache = resolve(opts.cacheDir ?? DEFAULT_CACHE);
  const rebootPackages = new Set(opts.rebootPackages ?? DEFAULT_REBOOT_PACKAGES);

  return withInterrupts(log, async (signal) => {
    const ctx: StepContext = { log, signal };
    const timings: Record<string, number> = {};
    const src = await timed(ctx, timings, 'locate the source generation', () => locateSource(opts, log));
    for (const d of localDebs) {
      if (d.architecture !== 'all' && d.architecture !== src.architecture) {
        throw new LiveupError('INVALID_ARGUMENT', `${d.file}: architecture ${d.architecture}, the generation is ${src.architecture}`, { file: d.file });
      }
    }
    await mkdir(join(out, '..'), { recursive: true });
    await removeStaleTemps(out, log, (d) => removeTree(d, log));
    const tmp = `${out}.tmp-${process.pid}`;
    const rootfs = join(tmp, 'rootfs');
    await mkdir(tmp, { recursive: true });
    const ch = new Chroot(rootfs, ctx);
    let ok = false;
    try {
      await timed(ctx, timings, 'unsquashfs', () =>
        run('unsquashfs', ['-no-progress', '-d', rootfs, join(src.dir, 'filesystem.squashfs')], { signal }).then(() => undefined));
      await timed(ctx, timings, 'mount proc, sys, dev, dev/pts', () => ch.mountApi());
      await timed(ctx, timings, 'apt update', async () => {
        await hostResolver(ch);
        await ch.denyDaemons();
        await mkdir(join(cache, 'archives', 'partial'), { recursive: true });
        await ch.bind(join(cache, 'archives'), 'var/cache/apt/archives');
        await ch.apt(['update']);
      });
      const before = await ch.installed();
      const dpkgLog = ch.path('var/log/dpkg.log');
      const logOffset = await lstat(dpkgLog).then((s) => s.size, () => 0);
      await timed(ctx, timings, 'apply changes', async () => {
        // Download first, then install: the .debs stay in the archive cache for the record.
        if (opts.upgrade) {
          await ch.apt(['full-upgrade', '--download-only']);
          await ch.apt(['full-upgrade']);
        }
        // Local .debs go into the chroot (not the shared archive cache: a rebuilt package must not
        // pass for the archive's file of the same name); apt resolves their dependencies.
        const local: string[] = [];
        if (localDebs.length) await mkdir(ch.path(LOCAL_DEBS), { recursive: true });
        for (const d of localDebs) {
          await copyFile(d.file, ch.path(`${LOCAL_DEBS}/${d.canonical}`));
          local.push(`/${LOCAL_DEBS}/${d.canonical}`);
        }
        if (install.length + remove.length + local.length) {
          const args = ['install', '--no-install-recommends', ...install, ...local, ...remove.map((p) => `${p}-`)];
          await ch.apt([...args.slice(0, 1), '--download-only', ...args.slice(1)]);
          await ch.apt(args);
        }
      });
      const after = await ch.installed();
      const order = dpkgOrder((await readFile(dpkgLog, 'utf8').catch(() => '')).slice(logOffset));
      const changes = await timed(ctx, timings, 'record changes and copy .debs', () =>
        recordChanges(before, after, order, [join(cache, 'archives'), ch.path(LOCAL_DEBS)], tmp, src.architecture));
      await rm(ch.path(LOCAL_DEBS), { recursive: true, force: true });
      const kver = await bootKernel(ch);
      const reasons: string[] = [];
      if (changes.some((c) => c.package.startsWith('linux-image-'))) reasons.push('kernel');
      if (kver) {
        await copyBootFiles(ch, kver, tmp);
        const [a, b] = await Promise.all([hashFile(join(tmp, 'initrd.img')), hashFile(join(src.dir, 'initrd.img'))]);
        if (a.sha512 !== b.sha512) reasons.push('initrd');
      } else {
        throw new LiveupError('BUILD_FAILED', 'no kernel in /boot of the derived tree');
      }
      for (const c of changes) if (rebootPackages.has(c.package)) reasons.push(`package:${c.package}`);
      await writePackagesJson(after, tmp);
      await timed(ctx, timings, 'clean and unmount', async () => {
        await ch.unmountAll(); // the shared archive cache first: `apt-get clean` must not empty it
        await ch.allowDaemons();
        await cleanImage(ch, (await readFile(ch.path('etc/hostname'), 'utf8').catch(() => 'debian')).trim() || 'debian');
      });
      await timed(ctx, timings, `mksquashfs (${src.squash.algorithm}${src.squash.level !== undefined ? `-${src.squash.level}` : ''}, as the parent)`, () =>
        squash(ctx, rootfs, join(tmp, 'filesystem.squashfs'), src.squash));
      const name = opts.name ?? `${src.name.replace(/\+\d{8}T\d{6}$/, '')}+${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*$/, '')}`;
      const rebootRequired = { required: reasons.length > 0, reasons };
      const meta = {
        name,
        architecture: src.architecture,
        kernel: { version: kver, cmdline: src.cmdline },
        parent: src.version,
        changes,
        rebootRequired,
        squashfs: { ...src.squash },
        ...(src.profile !== undefined ? { profile: src.profile } : {}),
        built: new Date().toISOString(),
      };
      await writeFile(join(tmp, 'generation.json'), JSON.stringify(meta, null, 2) + '\n');
      await removeTree(rootfs, log);
      if (opts.force && (await exists(out))) await removeTree(out, log);
      await rename(tmp, out);
      ok = true;
      return { gendir: out, name, parent: src.version, kernel: kver, changes, rebootRequired, timings };
    } catch (e) {
      if (isLiveupError(e) && e.code !== 'COMMAND_FAILED') throw e;
      const err = isLiveupError(e) ? e : undefined;
      throw new LiveupError('BUILD_FAILED', err ? err.message : String(e), err ? { ...err.details } : {}, { cause: e });
    } finally {
      await ch.unmountAll().catch((e: unknown) => log(`cleanup: ${(e as Error).message}`));
      if (!ok) await removeTree(tmp, log).catch((e: unknown) => log(`cleanup: could not remove ${tmp}: ${(e as Error).message}`));
    }
  });
}

/** Package names in the order dpkg.log shows them being unpacked or removed ("install", "upgrade", "remove", "purge"). */
export function dpkgOrder(logText: string): string[] {
  const seen: string[] = [];
  for (const line of logText.split('\n')) {
    // 2025-01-01 12:00:00 install hello:amd64 <none> 2.10-3
    const m = /^\S+ \S+ (install|upgrade|remove|purge) (\S+?)(?::\S+)? /.exec(line);
    if (m && !seen.includes(m[2]!)) seen.push(m[2]!);
  }
  return seen;
}

/**
 * The change list: snapshots decide what, the dpkg log decides the order (anything
 * the log missed goes last, alphabetically), and each installed or upgraded
 * package's .deb is found in the archive cache and checked with dpkg-deb.
 */
/**
 * The name a .deb keeps in GENDIR/debs/: apt's archive name without the
 * epoch (`libfoo_2%3a1.0-1_amd64.deb` → `libfoo_1.0-1_amd64.deb`), as in
 * Debian's own pool. The `%` of apt's escaped colon is neither a safe
 * manifest path nor a URL path that survives a web server's decoding.
 * Unique in one generation: it holds one version of each package.
 */
export function storedDebName(archiveName: string): string {
  return archiveName.replace(/^([^_]+)_\d+%3a/i, '$1_');
}

async function recordChanges(
  before: ReadonlyMap<string, string>, after: ReadonlyMap<string, string>, order: readonly string[],
  archiveDirs: readonly string[], gendir: string, arch: string,
): Promise<GendirChange[]> {
  const changed = new Set<string>();
  for (const [p, v] of after) if (before.get(p) !== v) changed.add(p);
  for (const p of before.keys()) if (!after.has(p)) changed.add(p);
  const ordered = [...order.filter((p) => changed.has(p)), ...[...changed].filter((p) => !order.includes(p)).sort()];
  // Later directories win: a local .deb over the archive's file of the same name.
  const found = new Map<string, string>();
  for (const dir of archiveDirs) for (const f of await readdir(dir).catch(() => [] as string[])) found.set(f, join(dir, f));
  const changes: GendirChange[] = [];
  if (ordered.some((p) => after.has(p))) await mkdir(join(gendir, 'debs'), { recursive: true });
  for (const p of ordered) {
    const from = before.get(p);
    const version = after.get(p);
    if (version === undefined) { changes.push({ action: 'remove', package: p, from }); continue; }
    const enc = version.replace(/:/g, '%3a');
    const file = [`${p}_${enc}_${arch}.deb`, `${p}_${enc}_all.deb`].find((f) => found.has(f));
    if (!file) throw new LiveupError('BUILD_FAILED', `the .deb of ${p} ${version} is not in the archive cache ${archiveDirs[0]}`, { package: p, version });
    const fields = await debFields(found.get(file)!, ['Package', 'Version']);
    if (fields.Package !== p || fields.Version !== version) {
      throw new LiveupError('BUILD_FAILED', `${file} holds ${fields.Package} ${fields.Version}, expected ${p} ${version}`, { package: p });
    }
    const stored = storedDebName(file);
    await copyFile(found.get(file)!, join(gendir, 'debs', stored));
    changes.push(from === undefined
      ? { action: 'install', package: p, version, deb: `debs/${stored}` }
      : { action: 'upgrade', package: p, from, version, deb: `debs/${stored}` });
  }
  return changes;
}

/** Where local .debs wait inside the chroot (relative to its root); removed before squashing. */
const LOCAL_DEBS = 'var/tmp/liveup-derive-debs';

interface LocalDeb {
  readonly file: string;
  readonly architecture: string;
  /** apt's file name for it (name_version_arch.deb, epoch's colon as %3a): how the record finds it. */
  readonly canonical: string;
}

/** Control fields of a .deb (`dpkg-deb -f`), as name → value. */
async function debFields(file: string, names: readonly string[]): Promise<Record<string, string>> {
  const r = await run('dpkg-deb', ['-f', file, ...names]);
  return Object.fromEntries(r.stdout.split('\n').filter(Boolean).map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1).trim()]));
}

/** A --deb argument, checked to be a readable Debian package before anything is unpacked. */
async function inspectLocalDeb(file: string): Promise<LocalDeb> {
  if (!file.endsWith('.deb')) throw new LiveupError('INVALID_ARGUMENT', `--deb ${file}: not a .deb file`, { file });
  if (!(await exists(file))) throw new LiveupError('INVALID_ARGUMENT', `--deb ${file}: no such file`, { file });
  const fields = await debFields(file, ['Package', 'Version', 'Architecture']).catch(() => ({} as Record<string, string>));
  if (!fields.Package || !fields.Version || !fields.Architecture) {
    throw new LiveupError('INVALID_ARGUMENT', `--deb ${file}: not a readable Debian package (dpkg-deb cannot read its control fields)`, { file });
  }
  return { file, architecture: fields.Architecture, canonical: `${fields.Package}_${fields.Version.replace(/:/g, '%3a')}_${fields.Architecture}.deb` };
}

export function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}
