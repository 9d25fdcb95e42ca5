/**
 * Steps `liveup build` and `liveup derive` share: apt sources, the kernel and
 * initrd copied out, packages.json, cleaning, and the squashfs itself.
 */
import { copyFile, mkdir, open, readFile, readdir, readlink, rm, writeFile, lstat, rename, symlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { LiveupError } from '../../../agent/src/channel/errors.js';
import { run } from '../exec.js';
import { pidAlive } from '../../../agent/src/util/pid.js';
import type { Chroot, StepContext } from './chroot.js';
import type { AptSource, Compression, Compressor } from './profile.js';

/** The persistent partition is mounted here; persistent paths point below PERSIST_ROOT. */
export const PERSIST_ROOT = '/var/lib/liveup/persist';
/** Content a persistent path had in the image, copied to the partition on first boot (tmpfiles `C`). */
export const PERSIST_SEED = '/usr/share/liveup/persist-seed';
export const DEFAULT_CMDLINE = 'boot=live components quiet';

/** Write the image's apt sources (deb822) and the keyrings they name. */
export async function writeSources(ch: Chroot, sources: readonly AptSource[], insecure: boolean): Promise<void> {
  await rm(ch.path('etc/apt/sources.list'), { force: true });
  await mkdir(ch.path('etc/apt/keyrings'), { recursive: true });
  const stanzas: string[] = [];
  for (const [i, s] of sources.entries()) {
    const lines = [`Types: deb`, `URIs: ${s.uri}`, `Suites: ${s.suite}`, `Components: ${s.components.join(' ')}`];
    if (s.keyring) {
      // Copy the key in: the image must be able to verify its own sources later (derive, agent).
      const dest = `/etc/apt/keyrings/liveup-${i}${s.keyring.endsWith('.asc') ? '.asc' : '.gpg'}`;
      await copyFile(s.keyring, ch.path(dest));
      lines.push(`Signed-By: ${dest}`);
    } else if (insecure) lines.push('Trusted: yes');
    stanzas.push(lines.join('\n'));
  }
  await writeFile(ch.path('etc/apt/sources.list.d/liveup.sources'), stanzas.join('\n\n') + '\n');
}

/** apt needs name resolution during the build; the image itself gets its resolver config at boot. */
export async function hostResolver(ch: Chroot): Promise<void> {
  await rm(ch.path('etc/resolv.conf'), { force: true });
  await copyFile('/etc/resolv.conf', ch.path('etc/resolv.conf'));
}

/** The kernel release the image boots: /vmlinuz's target if the kernel hooks made it, else the highest installed. */
export async function bootKernel(ch: Chroot): Promise<string | undefined> {
  const names = (await readdir(ch.path('boot')).catch(() => [] as string[])).filter((n) => n.startsWith('vmlinuz-'));
  if (names.length === 0) return undefined;
  const link = await readlink(ch.path('vmlinuz')).catch(() => undefined);
  const linked = link ? basename(link) : undefined;
  if (linked && names.includes(linked)) return linked.slice('vmlinuz-'.length);
  const versions = names.map((n) => n.slice('vmlinuz-'.length));
  let best = versions[0]!;
  for (const v of versions.slice(1)) if (await dpkgCompare(v, 'gt', best)) best = v;
  return best;
}

export async function dpkgCompare(a: string, op: 'gt' | 'ge' | 'lt' | 'le' | 'eq' | '>=' | '<=' | '>>' | '<<' | '=', b: string): Promise<boolean> {
  const r = await run('dpkg', ['--compare-versions', a, op === '=' ? 'eq' : op, b], { okExitCodes: [0, 1] });
  return r.exitCode === 0;
}

/** Copy the real kernel and initrd files (never the symlinks) into GENDIR. */
export async function copyBootFiles(ch: Chroot, kver: string, gendir: string): Promise<void> {
  const kernel = ch.path(`boot/vmlinuz-${kver}`);
  const initrd = ch.path(`boot/initrd.img-${kver}`);
  for (const f of [kernel, initrd]) {
    if (!(await lstat(f).then((s) => s.isFile(), () => false))) {
      throw new LiveupError('BUILD_FAILED', `${f} is missing after the kernel install (is update-initramfs working in the chroot?)`, { file: f });
    }
  }
  await copyFile(kernel, join(gendir, 'vmlinuz'));
  await copyFile(initrd, join(gendir, 'initrd.img'));
}

export async function writePackagesJson(installed: ReadonlyMap<string, string>, gendir: string): Promise<void> {
  const packages: Record<string, string> = {};
  for (const k of [...installed.keys()].sort()) packages[k] = installed.get(k)!;
  await writeFile(join(gendir, 'packages.json'), JSON.stringify({ format: 1, packages }, null, 2) + '\n');
}

/** What the image must not carry: caches, lists, the build's resolver and identity. */
export async function cleanImage(ch: Chroot, hostname: string): Promise<void> {
  await ch.exec('apt-get', ['clean'], { quiet: true });
  for (const dir of ['var/lib/apt/lists', 'tmp', 'var/tmp']) {
    for (const n of await readdir(ch.path(dir)).catch(() => [] as string[])) {
      if (dir === 'var/lib/apt/lists' && (n === 'partial' || n === 'lock')) continue;
      await rm(ch.path(join(dir, n)), { recursive: true, force: true });
    }
  }
  for (const f of ['var/cache/apt/pkgcache.bin', 'var/cache/apt/srcpkgcache.bin', 'etc/resolv.conf', 'var/lib/dbus/machine-id']) {
    await rm(ch.path(f), { force: true });
  }
  // Empty machine-id: systemd makes a fresh one per boot, so machines do not share an identity.
  await writeFile(ch.path('etc/machine-id'), '');
  await writeFile(ch.path('etc/hostname'), hostname + '\n');
  await settleUpdateUnits(ch);
}

/** lstat-based: a dangling symlink (a mask) exists. */
export async function exists(p: string): Promise<boolean> {
  return lstat(p).then(() => true, () => false);
}

/**
 * systemd's "rebuild after an offline /usr update" units, whose
 * ConditionNeedsUpdate= compares /usr's mtime with /etc/.updated's: in our
 * images every mtime is 0 (-all-time 0), which that check reads as "needs an
 * update" on every boot — ldconfig alone then costs ~14 s of each boot in
 * QEMU TCG. The image is the update: its caches are rebuilt here, once, and
 * the units masked. A live replay changes /usr through dpkg, whose triggers
 * run ldconfig themselves.
 */
export const UPDATE_UNITS = ['ldconfig.service', 'systemd-journal-catalog-update.service', 'systemd-update-done.service'] as const;

async function settleUpdateUnits(ch: Chroot): Promise<void> {
  if (await exists(ch.path('sbin/ldconfig'))) await ch.exec('/sbin/ldconfig', [], { quiet: true });
  if (await exists(ch.path('usr/bin/journalctl'))) await ch.exec('journalctl', ['--update-catalog'], { quiet: true });
  for (const unit of UPDATE_UNITS) {
    if (!(await exists(ch.path(`usr/lib/systemd/system/${unit}`)))) continue;
    const link = ch.path(`etc/systemd/system/${unit}`);
    if (await exists(link)) continue; // the profile decided already
    await mkdir(dirname(link), { recursive: true });
    await symlink('/dev/null', link);
  }
}

/** kexec-tools' default turns every reboot into a kexec; the agent loads kexec itself when it decides to. */
export async function disableKexecLoad(ch: Chroot): Promise<boolean> {
  const p = ch.path('etc/default/kexec');
  const text = await readFile(p, 'utf8').catch(() => undefined);
  if (text === undefined) return false;
  const next = /^LOAD_KEXEC=/m.test(text) ? text.replace(/^LOAD_KEXEC=.*$/m, 'LOAD_KEXEC=false') : text + 'LOAD_KEXEC=false\n';
  await writeFile(p, next);
  return true;
}

/**
 * Persistent paths: P becomes a symlink to PERSIST_ROOT/P. What the image had at P
 * moves to PERSIST_SEED/P and a tmpfiles.d rule copies it to the partition when
 * the target does not exist yet (first boot); otherwise the rule just makes the directory.
 */
export async function linkPersistent(ch: Chroot, paths: readonly string[]): Promise<void> {
  if (paths.length === 0) return;
  const rules: string[] = ['# liveup: persistent paths (docs/factory.md). Written by liveup build.'];
  for (const p of paths) {
    const inImage = ch.path(p);
    const target = PERSIST_ROOT + p;
    const st = await lstat(inImage).catch(() => undefined);
    if (st) {
      const seed = ch.path(PERSIST_SEED + p);
      await mkdir(dirname(seed), { recursive: true });
      await rename(inImage, seed);
      rules.push(`C ${target} - - - - ${PERSIST_SEED + p}`);
    } else {
      rules.push(`d ${target} 0755 root root -`);
    }
    await mkdir(dirname(inImage), { recursive: true });
    await symlink(target, inImage);
  }
  await mkdir(ch.path('usr/lib/tmpfiles.d'), { recursive: true });
  await writeFile(ch.path('usr/lib/tmpfiles.d/liveup-persist.conf'), rules.join('\n') + '\n');
}

/** Options recorded in generation.json so `derive` re-squashes exactly like the parent. */
export interface SquashOptions {
  readonly algorithm: Compressor;
  readonly level?: number;
  readonly blockSize: number;
}

export function mksquashfsArgs(rootfs: string, out: string, c: Compression | SquashOptions): string[] {
  return [
    rootfs, out, '-noappend', '-quiet', '-no-progress',
    // Identical trees give bit-identical images (notes): deltas between generations stay small.
    '-reproducible', '-mkfs-time', '0', '-all-time', '0', '-no-fragments',
    '-comp', c.algorithm, ...(c.level !== undefined ? ['-Xcompression-level', String(c.level)] : []),
    '-b', String(c.blockSize),
    // -e swallows every argument after it: keep it last. Mount points stay, their contents go.
    '-wildcards', '-e', 'proc/*', 'sys/*', 'dev/*', 'run/*', 'tmp/*',
  ];
}

export async function squash(ctx: StepContext, rootfs: string, out: string, c: Compression | SquashOptions): Promise<void> {
  await rm(out, { force: true });
  await run('mksquashfs', mksquashfsArgs(rootfs, out, c), { signal: ctx.signal, log: (l) => ctx.log(`  ${l}`) });
}

const COMP_IDS: Record<number, Compressor> = { 1: 'gzip', 2: 'lzma', 3: 'lzo', 4: 'xz', 5: 'lz4', 6: 'zstd' };

/**
 * Read compressor, level and block size from a squashfs superblock — the
 * fallback when a parent has no generation.json (a published generation
 * directory carries only manifest.json).
 */
export async function squashOptionsOf(file: string): Promise<SquashOptions> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(96 + 2 + 8);
    await fh.read(buf, 0, buf.length, 0);
    if (buf.readUInt32LE(0) !== 0x73717368) throw new LiveupError('GENERATION_INVALID', `${file} is not a squashfs image`, { file });
    const blockSize = buf.readUInt32LE(12);
    const algorithm = COMP_IDS[buf.readUInt16LE(20)];
    if (!algorithm) throw new LiveupError('GENERATION_INVALID', `${file}: unknown squashfs compressor id ${buf.readUInt16LE(20)}`, { file });
    const flags = buf.readUInt16LE(24);
    let level: number | undefined;
    // SQUASHFS_COMP_OPT: the compressor's options follow the superblock as one uncompressed metadata block.
    if (flags & 0x400 && (algorithm === 'zstd' || algorithm === 'gzip')) level = buf.readInt32LE(98);
    else if (flags & 0x400 && algorithm === 'lzo') level = buf.readInt32LE(102);
    else if (algorithm === 'zstd') level = 15; // mksquashfs omits options that equal its defaults
    else if (algorithm === 'gzip') level = 9;
    else if (algorithm === 'lzo') level = 8;
    return { algorithm, level, blockSize };
  } finally {
    await fh.close();
  }
}

/** Leftover `GENDIR.tmp-<pid>` trees of runs that died (SIGKILL, power loss): unmount and remove. */
export async function removeStaleTemps(out: string, log: (l: string) => void, removeTree: (d: string) => Promise<void>): Promise<void> {
  const dir = dirname(out);
  const prefix = basename(out) + '.tmp-';
  for (const n of await readdir(dir).catch(() => [] as string[])) {
    if (!n.startsWith(prefix)) continue;
    const pid = Number(n.slice(prefix.length));
    if (Number.isSafeInteger(pid) && pid !== process.pid && pidAlive(pid)) {
      throw new LiveupError('BUILD_FAILED', `${join(dir, n)} belongs to a build that is still running (pid ${pid})`, { pid });
    }
    log(`removing the leftover of an interrupted run: ${join(dir, n)}`);
    await removeTree(join(dir, n));
  }
}

/** debootstrap, chroot and mount need root; say so before any of them fails obscurely. */
export function requireRoot(): void {
  if (process.getuid?.() !== 0) throw new LiveupError('BUILD_FAILED', 'liveup build/derive must run as root (debootstrap, chroot and mount need it)');
}
