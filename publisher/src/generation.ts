/**
 * A generation directory (GENDIR) as `liveup build` / `liveup derive` write it
 * and `liveup publish` reads it. Only the three boot artifacts are required;
 * `generation.json` carries what the factory knows (name, kernel, parent,
 * recorded package changes) and `packages.json` the installed package list.
 */
import { readFile, access } from 'node:fs/promises';
import { join } from 'node:path';
import { LiveupError } from '../../agent/src/channel/errors.js';
import { ARCH_RE } from '../../agent/src/channel/schema.js';
import { Reader, parseJson } from '../../agent/src/util/validate.js';

export const GENDIR_FILES = {
  squashfs: 'filesystem.squashfs',
  kernel: 'vmlinuz',
  initrd: 'initrd.img',
  packages: 'packages.json',
  meta: 'generation.json',
} as const;

/** What a published generation directory holds that a boot medium needs (packages.json may be absent). */
export const BOOT_MEDIUM_FILES = [GENDIR_FILES.kernel, GENDIR_FILES.initrd, GENDIR_FILES.squashfs, 'manifest.json', 'manifest.json.sig', GENDIR_FILES.packages] as const;

/** Kernel consoles for `--serial` media (ISO, disk): the screen, and ttyS0 last so it is /dev/console. */
export const SERIAL_CONSOLES = 'console=tty0 console=ttyS0,115200';

export interface GendirChange {
  readonly action: 'install' | 'upgrade' | 'remove';
  readonly package: string;
  readonly version?: string;
  readonly from?: string;
  /** Path of the .deb inside GENDIR (install / upgrade). */
  readonly deb?: string;
}

export interface GendirMeta {
  readonly name?: string;
  readonly architecture?: string;
  readonly kernel?: { readonly version?: string; readonly cmdline?: string };
  readonly parent?: number | null;
  readonly changes?: readonly GendirChange[];
  readonly rebootRequired?: { readonly required: boolean; readonly reasons: readonly string[] };
  /** mksquashfs options the factory used, so `liveup derive` re-squashes a child the same way. */
  readonly squashfs?: { readonly algorithm: string; readonly level?: number; readonly blockSize: number };
}

export async function readGendirMeta(gendir: string): Promise<GendirMeta> {
  const p = join(gendir, GENDIR_FILES.meta);
  let text: string;
  try {
    text = await readFile(p, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw e;
  }
  const r = new Reader(p, 'GENERATION_INVALID');
  const o = r.object(parseJson(text, p, 'GENERATION_INVALID'), '', ['name', 'architecture', 'kernel', 'parent', 'changes', 'rebootRequired', 'profile', 'built', 'squashfs']);
  const k = o.kernel === undefined ? undefined : r.object(o.kernel, 'kernel', ['version', 'cmdline']);
  const changes = o.changes === undefined ? undefined : r.array(o, 'changes', '').map((c, i): GendirChange => {
    const path = `changes[${i}]`;
    const co = r.object(c, path, ['action', 'package', 'version', 'from', 'deb']);
    return {
      action: r.oneOf(co, 'action', path, ['install', 'upgrade', 'remove'] as const),
      package: r.string(co, 'package', path),
      version: r.optString(co, 'version', path),
      from: r.optString(co, 'from', path),
      deb: r.optString(co, 'deb', path),
    };
  });
  let rebootRequired: GendirMeta['rebootRequired'];
  if (o.rebootRequired !== undefined) {
    const rb = r.object(o.rebootRequired, 'rebootRequired', ['required', 'reasons']);
    rebootRequired = {
      required: r.bool(rb, 'required', 'rebootRequired'),
      reasons: r.array(rb, 'reasons', 'rebootRequired').map((x, i) => (typeof x === 'string' ? x : r.fail(`rebootRequired.reasons[${i}]`, 'expected a string'))),
    };
  }
  let squashfs: GendirMeta['squashfs'];
  if (o.squashfs !== undefined) {
    const so = r.object(o.squashfs, 'squashfs', ['algorithm', 'level', 'blockSize']);
    squashfs = {
      algorithm: r.oneOf(so, 'algorithm', 'squashfs', ['zstd', 'gzip', 'lzo', 'lz4', 'xz', 'lzma']),
      level: r.optInt(so, 'level', 'squashfs', { min: 1, max: 22 }),
      blockSize: r.int(so, 'blockSize', 'squashfs', { min: 4096, max: 1 << 20 }),
    };
  }
  return {
    squashfs,
    name: r.optString(o, 'name', ''),
    architecture: r.optString(o, 'architecture', '', { pattern: ARCH_RE, what: 'a Debian architecture' }),
    kernel: k ? { version: r.optString(k, 'version', 'kernel'), cmdline: r.optString(k, 'cmdline', 'kernel') } : undefined,
    parent: o.parent === undefined || o.parent === null ? null : r.int(o, 'parent', '', { min: 1 }),
    changes,
    rebootRequired,
  };
}

export async function requireGendirFiles(gendir: string): Promise<void> {
  const missing: string[] = [];
  for (const f of [GENDIR_FILES.squashfs, GENDIR_FILES.kernel, GENDIR_FILES.initrd]) {
    if (!(await access(join(gendir, f)).then(() => true, () => false))) missing.push(f);
  }
  if (missing.length) {
    throw new LiveupError('GENERATION_INVALID', `${gendir}: missing ${missing.join(', ')} (a generation needs filesystem.squashfs, vmlinuz and initrd.img)`, { file: gendir });
  }
}

/** Debian's name for the architecture Node runs on; the default when GENDIR does not say. */
export function hostArchitecture(): string {
  const map: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'armhf', ia32: 'i386', ppc64: 'ppc64el', s390x: 's390x', riscv64: 'riscv64' };
  return map[process.arch] ?? process.arch;
}

/**
 * The version string an x86 bzImage carries (boot protocol ≥ 2.0: "HdrS" at
 * 0x202, a pointer at 0x20E to a NUL-terminated string 0x200 further). Lets a
 * bare kernel file name its version without unpacking it.
 */
export async function kernelVersionOf(path: string): Promise<string | undefined> {
  const buf = await readFile(path).catch(() => null);
  if (!buf || buf.length < 0x210 || buf.toString('latin1', 0x202, 0x206) !== 'HdrS') return undefined;
  const off = buf.readUInt16LE(0x20e) + 0x200;
  if (off >= buf.length) return undefined;
  const end = buf.indexOf(0, off);
  const s = buf.toString('latin1', off, end < 0 ? Math.min(off + 256, buf.length) : end);
  return s.split(' ')[0] || undefined;
}
