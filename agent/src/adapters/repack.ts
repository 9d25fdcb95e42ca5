/**
 * Repack an installed package from a read-only root (the booted image, the
 * overlay's lower layer) into a .deb, as `dpkg-repack` does — so a live
 * rollback needs neither the network nor the booted generation's .debs: the
 * image the machine booted holds every file and every dpkg record of it.
 *
 * - files: the root's `var/lib/dpkg/info/PKG.list` (or `PKG:ARCH.list`),
 *   copied with their real ownership and modes (numeric ids: the image's
 *   passwd is what they were made with);
 * - control: the package's stanza of the root's `var/lib/dpkg/status`, minus
 *   the fields only the status file has (Status, Conffiles, Config-Version,
 *   Triggers-*); Conffiles becomes DEBIAN/conffiles, so dpkg treats them as
 *   configuration files again (an admin's edit is kept, --force-confold);
 * - maintainer scripts and control files: `info/PKG.{preinst,…}`.
 *
 * A package that cannot be repacked exactly (no list file, no status stanza,
 * another version than asked for) is an error: the caller refuses the whole
 * rollback before any change.
 */
import { access, chmod, copyFile, lstat, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LiveupError } from '../channel/errors.js';
import { run as defaultRun, type Runner } from './exec.js';

/** info/ files dpkg-deb takes into DEBIAN/ (the ones dpkg keeps from a package's control archive). */
export const CONTROL_FILES = ['preinst', 'postinst', 'prerm', 'postrm', 'config', 'templates', 'triggers', 'shlibs', 'symbols', 'md5sums'] as const;
/** Fields dpkg writes into its status file that are not control fields of a .deb. */
const STATUS_ONLY = new Set(['status', 'conffiles', 'config-version', 'triggers-pending', 'triggers-awaited']);

export type Stanza = ReadonlyArray<{ readonly field: string; readonly value: string }>;

/** deb822 stanzas of a dpkg status file; a field's value keeps its continuation lines as written. */
export function parseStanzas(text: string): Stanza[] {
  const out: { field: string; value: string }[][] = [];
  let cur: { field: string; value: string }[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') {
      if (cur.length) out.push(cur);
      cur = [];
    } else if (/^[ \t]/.test(line) && cur.length) {
      cur[cur.length - 1]!.value += `\n${line}`;
    } else {
      const i = line.indexOf(':');
      if (i > 0) cur.push({ field: line.slice(0, i), value: line.slice(i + 1).trim() });
    }
  }
  if (cur.length) out.push(cur);
  return out;
}

export const fieldOf = (s: Stanza, name: string): string | undefined => s.find((f) => f.field.toLowerCase() === name.toLowerCase())?.value;

/** The installed stanza of `pkg`, or undefined. */
export function installedStanza(stanzas: readonly Stanza[], pkg: string): Stanza | undefined {
  return stanzas.find((s) => fieldOf(s, 'Package') === pkg && / installed$/.test(fieldOf(s, 'Status') ?? ''));
}

/** DEBIAN/control from a status stanza: the status-only fields dropped, continuation lines kept. */
export function controlOf(s: Stanza): string {
  return s.filter((f) => !STATUS_ONLY.has(f.field.toLowerCase())).map((f) => `${f.field}: ${f.value}`).join('\n').replace(/: \n/g, ':\n') + '\n';
}

/** Conffiles (` /etc/x md5` lines) that are still configuration files: obsolete and remove-on-upgrade ones are not shipped. */
export function conffilesOf(s: Stanza): string[] {
  return (fieldOf(s, 'Conffiles') ?? '').split('\n').map((l) => l.trim().split(/\s+/)).filter((w) => w[0]?.startsWith('/') && w.length === 2).map((w) => w[0]!);
}

export interface RepackOptions {
  /** The read-only root the package is installed in (the booted image). */
  readonly root: string;
  /** Where the .deb and its staging tree are written. */
  readonly outDir: string;
  readonly runner?: Runner;
}

const exists = (p: string) => access(p).then(() => true, () => false);

export interface Repacked {
  readonly deb: string;
  /** The non-directory paths it ships (directories are shared between packages; files are not). */
  readonly files: readonly string[];
}

/**
 * Build `<outDir>/<pkg>_<version>.deb` from `root`; `version` must be what
 * `root` has installed.
 */
export async function repackFromRoot(pkg: string, version: string, o: RepackOptions): Promise<Repacked> {
  const run = o.runner ?? defaultRun;
  const admin = join(o.root, 'var/lib/dpkg');
  const cannot = (why: string) => new LiveupError('LIVE_APPLY_REFUSED', `cannot repack ${pkg} ${version} from ${o.root}: ${why}`, { package: pkg });
  const status = await readFile(join(admin, 'status'), 'utf8').catch(() => null);
  if (status === null) throw cannot('no dpkg status file (is `liveLowerDir` the booted image?)');
  const stanza = installedStanza(parseStanzas(status), pkg);
  if (!stanza) throw cannot('not installed there');
  if (fieldOf(stanza, 'Version') !== version) throw cannot(`it has version ${fieldOf(stanza, 'Version') ?? 'none'} installed`);
  const arch = fieldOf(stanza, 'Architecture');
  // Multi-Arch: same packages have their info files qualified by architecture.
  const prefix = arch && (await exists(join(admin, 'info', `${pkg}:${arch}.list`))) ? `${pkg}:${arch}` : pkg;
  const list = await readFile(join(admin, 'info', `${prefix}.list`), 'utf8').catch(() => null);
  if (list === null) throw cannot(`no var/lib/dpkg/info/${prefix}.list`);

  const stage = join(o.outDir, `${pkg}.tree`);
  await rm(stage, { recursive: true, force: true });
  await mkdir(join(stage, 'DEBIAN'), { recursive: true });
  // Listed paths that are not in the image (dpkg path-exclude, e.g. docs in a
  // minimal image) are left out: the repacked package then matches the image.
  const paths: string[] = [];
  const files: string[] = [];
  for (const p of list.split('\n')) {
    if (!p.startsWith('/') || p === '/.') continue;
    const st = await lstat(join(o.root, p)).catch(() => null);
    if (!st) continue;
    paths.push(`.${p}`);
    if (!st.isDirectory()) files.push(p);
  }
  const pathsFile = join(o.outDir, `${pkg}.paths`);
  const tarFile = join(o.outDir, `${pkg}.tar`);
  await writeFile(pathsFile, paths.join('\n') + '\n');
  // One tar out of the image and into the tree: ownership, modes, symlinks and hard links as they are.
  await run('tar', ['-C', o.root, '--no-recursion', '--numeric-owner', '--verbatim-files-from', '-T', pathsFile, '-cf', tarFile], { timeoutMs: 10 * 60_000 });
  await run('tar', ['-C', stage, '--numeric-owner', '--same-owner', '-xpf', tarFile], { timeoutMs: 10 * 60_000 });
  await rm(tarFile, { force: true });
  await rm(pathsFile, { force: true });

  await writeFile(join(stage, 'DEBIAN', 'control'), controlOf(stanza));
  const conffiles: string[] = [];
  for (const c of conffilesOf(stanza)) {
    if ((await lstat(join(stage, c)).catch(() => null))?.isFile()) conffiles.push(c);
  }
  if (conffiles.length) await writeFile(join(stage, 'DEBIAN', 'conffiles'), conffiles.join('\n') + '\n');
  for (const f of CONTROL_FILES) {
    const src = join(admin, 'info', `${prefix}.${f}`);
    if (!(await exists(src))) continue;
    const dest = join(stage, 'DEBIAN', f);
    await copyFile(src, dest);
    // dpkg-deb wants scripts executable and data files not.
    await chmod(dest, ['preinst', 'postinst', 'prerm', 'postrm', 'config'].includes(f) ? 0o755 : 0o644);
  }
  const out = join(o.outDir, `${pkg}_${version.replace(/:/g, '%3a')}.deb`);
  // Uncompressed: the .deb lives for one dpkg run on the same machine, so compressing it is time lost.
  await run('dpkg-deb', ['-Znone', '--build', stage, out], { timeoutMs: 10 * 60_000 }).catch((e: unknown) => {
    throw new LiveupError('LIVE_APPLY_REFUSED', `cannot repack ${pkg} ${version}: dpkg-deb --build failed (${e instanceof Error ? e.message : String(e)})`, { package: pkg }, { cause: e });
  });
  await rm(stage, { recursive: true, force: true });
  return { deb: out, files };
}

/** name → version of what `root`'s dpkg status says is installed, or null without a status file. */
export async function installedIn(root: string): Promise<Record<string, string> | null> {
  const status = await readFile(join(root, 'var/lib/dpkg/status'), 'utf8').catch(() => null);
  if (status === null) return null;
  const out: Record<string, string> = {};
  for (const s of parseStanzas(status)) {
    const name = fieldOf(s, 'Package');
    const version = fieldOf(s, 'Version');
    if (name && version !== undefined && / installed$/.test(fieldOf(s, 'Status') ?? '')) out[name] = version;
  }
  return out;
}

/** dpkg's name for an info file's package: `libc6:amd64.list` → `libc6`. */
const ownerOf = (listFile: string): string => listFile.slice(0, -'.list'.length).replace(/:[a-z0-9]+$/, '');

/**
 * path → packages whose `info/*.list` in `root` names it, for the paths asked
 * about only (a whole system lists ~10⁵ paths; the question is about a few).
 */
export async function fileOwners(root: string, paths: ReadonlySet<string>): Promise<Map<string, string[]>> {
  const info = join(root, 'var/lib/dpkg/info');
  const out = new Map<string, string[]>();
  if (paths.size === 0) return out;
  for (const f of (await readdir(info).catch(() => [] as string[])).filter((n) => n.endsWith('.list'))) {
    const text = await readFile(join(info, f), 'utf8').catch(() => '');
    for (const p of text.split('\n')) {
      if (!paths.has(p)) continue;
      const owners = out.get(p) ?? [];
      owners.push(ownerOf(f));
      out.set(p, owners);
    }
  }
  return out;
}
