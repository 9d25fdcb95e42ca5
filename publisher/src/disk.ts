/**
 * `liveup disk`: a bootable disk image for a new machine, in the layout the
 * agent and the initramfs expect, to be written to the machine's disk with
 * `dd` (or booted as a VM disk):
 *
 *   p1  LIVEUP-BOOT  ext4   live/<v>/{vmlinuz,initrd.img,filesystem.squashfs,manifest.json,…},
 *                           grub/{grub.cfg,grubenv,i386-pc/,x86_64-efi/}
 *   p2  LIVEUP-DATA  ext4   /var/lib/liveup on the running machine (journal, enrollment,
 *                           machine id, persistent paths), empty here
 *   p3  ESP          FAT    EFI/BOOT/BOOTX64.EFI (UEFI firmware's removable-media path)
 *
 * An MBR (not GPT): SeaBIOS and every PC BIOS boot it, and UEFI firmware
 * accepts an ESP of type 0xEF on it. GRUB for BIOS goes into the MBR gap
 * (boot.img + core.img, what grub-bios-setup does: grub-install cannot map
 * loop partitions to BIOS drives); for UEFI, grub-mkimage's x86_64-efi image.
 * Both carry the same small embedded config: find the partition holding
 * `/live/.liveup-boot` and read its grub/grub.cfg, so disk order and firmware
 * do not matter. grub.cfg is rendered by the agent's own renderer
 * (core/bootmenu.ts): the agent rewrites it later from its journal. With
 * `verify: 'signature'` (signed boot) the images carry the boot key and a
 * static menu instead, and the medium no grub.cfg: see disksigned.ts.
 *
 * Everything is written into a temporary file next to the output and renamed
 * at the end: a failure leaves no half image. No loop device and no mount:
 * the boot partition's files are laid out in a directory and written by
 * `mkfs.ext4 -d` at the partition's offset in the image, the ESP's with
 * mtools (see writeExt4).
 */
import { closeSync, existsSync, openSync, readFileSync, writeSync, ftruncateSync } from 'node:fs';
import { copyFile, link, mkdir, mkdtemp, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { LiveupError } from '../../agent/src/channel/errors.js';
import type * as openpgp from 'openpgp';
import { renderBootMenu, type GrubVerify } from '../../agent/src/core/bootmenu.js';
import { SIGNED_BOOT_ROLES } from '../../agent/src/channel/schema.js';
import { SIGNED_BOOT_MEDIUM_FILES, SIGNED_GRUB_MODULES, SIGNED_GRUB_MODULES_EFI, checkBootSignatures, signedImageInputs, writeSignedBootEnv } from './disksigned.js';
import { ensureSha512Sums } from '../../agent/src/adapters/stage.js';
import { parseManifest } from '../../agent/src/channel/schema.js';
import { loadKeyring, verifyDetached } from '../../agent/src/channel/signature.js';
import { verifyArtifactFile } from '../../agent/src/channel/verify.js';
import { run } from './exec.js';
import { BOOT_MEDIUM_FILES, GENDIR_FILES } from './generation.js';
import { onPath } from '../../agent/src/util/path.js';

export const BOOT_LABEL = 'LIVEUP-BOOT';
export const DATA_LABEL = 'LIVEUP-DATA';
/** The file GRUB searches for; only a liveup boot partition has it. */
export const BOOT_MARKER = '/live/.liveup-boot';

const SECTOR = 512;
const START_LBA = 2048; // 1 MiB: the MBR gap GRUB's core.img lives in
const MiB = 1024 * 1024;
const GRUB_LIB = '/usr/lib/grub';

export interface DiskGeneration {
  readonly version: number;
  /** A published generation directory: vmlinuz, initrd.img, filesystem.squashfs, manifest.json(.sig), packages.json. */
  readonly dir: string;
  readonly name: string;
  readonly kernelVersion: string;
  readonly cmdline: string;
}

export interface DiskLayout {
  readonly sizeMiB: number;
  readonly dataMiB: number;
  /** 0: no ESP (BIOS only). */
  readonly espMiB: number;
}

export interface Partition {
  readonly number: number;
  readonly startLba: number;
  readonly sectors: number;
  /** MBR type: 0x83 Linux, 0xef EFI system partition. */
  readonly type: number;
  readonly bootable: boolean;
}

/** The partitions of a disk of this layout. Pure. */
export function planPartitions(l: DiskLayout): Partition[] {
  const total = (l.sizeMiB * MiB) / SECTOR;
  const data = (l.dataMiB * MiB) / SECTOR;
  const esp = (l.espMiB * MiB) / SECTOR;
  const boot = total - START_LBA - data - esp;
  if (l.dataMiB < 16) throw new LiveupError('INVALID_ARGUMENT', `data partition of ${l.dataMiB} MiB: at least 16 MiB`);
  if (boot * SECTOR < 64 * MiB) throw new LiveupError('INVALID_ARGUMENT', `a ${l.sizeMiB} MiB disk leaves ${Math.floor((boot * SECTOR) / MiB)} MiB for the boot partition: make it larger`);
  const parts: Partition[] = [
    { number: 1, startLba: START_LBA, sectors: boot, type: 0x83, bootable: true },
    { number: 2, startLba: START_LBA + boot, sectors: data, type: 0x83, bootable: false },
  ];
  if (esp > 0) parts.push({ number: 3, startLba: START_LBA + boot + data, sectors: esp, type: 0xef, bootable: false });
  return parts;
}

/** The 512-byte MBR for these partitions (no boot code: GRUB's goes in later). Pure. */
/** A blank image of `sizeMiB` holding `parts` in its MBR (written by makeDisk, and by the tests' own disks). */
export function writeBlankImage(path: string, sizeMiB: number, parts: readonly Partition[]): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, sizeMiB * MiB);
    writeSync(fd, mbrSector(parts), 0, SECTOR, 0);
  } finally {
    closeSync(fd);
  }
}

export function mbrSector(parts: readonly Partition[]): Buffer {
  const mbr = Buffer.alloc(SECTOR);
  for (const p of parts) {
    const e = 446 + (p.number - 1) * 16;
    mbr[e] = p.bootable ? 0x80 : 0;
    mbr.writeUIntLE(0xfffffe, e + 1, 3); // CHS unused: LBA only
    mbr[e + 4] = p.type;
    mbr.writeUIntLE(0xfffffe, e + 5, 3);
    mbr.writeUInt32LE(p.startLba, e + 8);
    mbr.writeUInt32LE(p.sectors, e + 12);
  }
  mbr.writeUInt32LE(0x4c495645, 440); // disk signature "LIVE"
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  return mbr;
}

export interface MakeDiskOptions {
  readonly out: string;
  readonly layout: DiskLayout;
  readonly generations: readonly DiskGeneration[];
  readonly defaultVersion: number;
  /** GRUB on the serial console too (ttyS0, 115200): servers and VMs. */
  readonly serial: boolean;
  /**
   * GRUB checks each generation's SHA512SUMS before booting it (`sha512`), or
   * its signatures by the boot key (`signature`: needs `bootPubkey`, see
   * disksigned.ts). The agent's `grubVerify` must say the same. Default off.
   */
  readonly verify?: GrubVerify;
  /** The RSA boot public key built into GRUB for `verify: 'signature'`. */
  readonly bootPubkey?: { readonly key: openpgp.PublicKey; readonly source: string };
  readonly log?: (line: string) => void;
}

/** GRUB's embedded config: find the liveup boot partition wherever the disk is, then its grub.cfg. */
const EARLY_CFG = `search --no-floppy --set=root --file ${BOOT_MARKER}\nset prefix=($root)/grub\n`;
const GRUB_MODULES = ['part_msdos', 'ext2', 'search', 'search_fs_file', 'configfile', 'normal', 'echo', 'test', 'loadenv', 'linux', 'serial', 'terminal'];

export async function makeDisk(o: MakeDiskOptions): Promise<void> {
  const log = o.log ?? (() => undefined);
  if (o.generations.length === 0) throw new LiveupError('INVALID_ARGUMENT', 'no generation to put on the disk');
  if (!o.generations.some((g) => g.version === o.defaultVersion)) throw new LiveupError('INVALID_ARGUMENT', `default generation ${o.defaultVersion} is not on the disk`);
  const uefi = o.layout.espMiB > 0;
  const signed = o.verify === 'signature';
  if (signed) {
    if (!o.bootPubkey) throw new LiveupError('INVALID_ARGUMENT', 'a signed-boot disk needs the boot public key (--boot-pubkey)');
    // Before anything is written: a key that does not match would make a disk that boots nothing.
    for (const g of o.generations) await checkBootSignatures(g.dir, g.version, o.bootPubkey.key, o.bootPubkey.source);
    log(`boot signatures verified (${o.bootPubkey.source})`);
  }
  for (const need of ['i386-pc', ...(uefi ? ['x86_64-efi'] : [])]) {
    if (!existsSync(join(GRUB_LIB, need))) throw new LiveupError('BUILD_FAILED', `${join(GRUB_LIB, need)} is missing: apt-get install ${need === 'i386-pc' ? 'grub-pc-bin' : 'grub-efi-amd64-bin'}`);
  }
  for (const [tool, pkg] of [['grub-mkimage', 'grub-common'], ['mkfs.ext4', 'e2fsprogs'], ...(uefi ? [['mkfs.vfat', 'dosfstools'], ['mcopy', 'mtools']] : [])] as const) {
    if (!(await onPath(tool))) throw new LiveupError('BUILD_FAILED', `${tool} is needed to write a disk image: apt-get install ${pkg}`, { tool });
  }
  const parts = planPartitions(o.layout);
  const tmp = join(dirname(o.out), `.${basename(o.out)}.tmp-${process.pid}`);
  const work = await mkdtemp(join(dirname(o.out), `.${basename(o.out)}.work-`));
  try {
    writeBlankImage(tmp, o.layout.sizeMiB, parts);
    // The boot partition's tree, laid out here and written by mkfs.ext4 -d below.
    const boot = join(work, 'boot');
    await mkdir(boot);
    for (const g of o.generations) {
      const d = join(boot, 'live', String(g.version));
      await mkdir(d, { recursive: true });
      log(`copying generation ${g.version}`);
      for (const f of [...BOOT_MEDIUM_FILES, ...(signed ? SIGNED_BOOT_MEDIUM_FILES : [])]) {
        if (existsSync(join(g.dir, f))) await linkOrCopy(join(g.dir, f), join(d, f));
        else if (f !== GENDIR_FILES.packages) throw new LiveupError('NOT_FOUND', `${join(g.dir, f)} is missing: is ${g.dir} a published generation?`, { file: join(g.dir, f) });
      }
      // As the agent stages it: the signed hashes for GRUB's hashsum (and sha512sum -c).
      await ensureSha512Sums(boot, g.version);
    }
    await writeFile(join(boot, BOOT_MARKER), 'liveup boot medium\n');
    await mkdir(join(boot, 'grub'), { recursive: true });
    const timeoutSeconds = o.serial ? 1 : 3;
    const signedInputs = signed && o.bootPubkey
      ? await signedImageInputs({ workDir: work, key: o.bootPubkey.key, keySource: o.bootPubkey.source, marker: BOOT_MARKER, serial: o.serial, timeoutSeconds, diskVersion: o.defaultVersion })
      : null;
    if (signedInputs) {
      // The menu is in the GRUB image; the medium holds only the agent's choices.
      await writeSignedBootEnv(join(boot, 'grub'), o.defaultVersion);
    } else await writePlainMenu(boot, o, uefi, timeoutSeconds);

    log('formatting: boot, data' + (uefi ? ', EFI system partition' : ''));
    await writeExt4(tmp, parts[0]!, BOOT_LABEL, boot);
    await writeExt4(tmp, parts[1]!, DATA_LABEL, null);
    if (uefi) {
      // At the ESP's offset in the image, as the ext4 ones (mkfs.fat counts 1 KiB blocks; mtools
      // takes IMAGE@@BYTES, and skips its disk geometry check on a file). -s 1: mkfs.fat sizes
      // clusters by the whole file, and 4 KiB ones leave a 64 MiB FAT32 too few for mtools.
      const esp = parts[2]!;
      await run('mkfs.vfat', ['-F', '32', '-s', '1', '-n', 'LIVEUP-ESP', '--offset', String(esp.startLba), tmp, String((esp.sectors * SECTOR) / 1024)]);
      const efi = join(work, 'BOOTX64.EFI');
      await grubImage('x86_64-efi', efi, work, [...new Set(['part_gpt', 'fat', ...(signedInputs ? [...SIGNED_GRUB_MODULES, ...SIGNED_GRUB_MODULES_EFI] : [])])], signedInputs);
      const at = `${tmp}@@${esp.startLba * SECTOR}`;
      const env = { MTOOLS_SKIP_CHECK: '1' };
      await run('mmd', ['-i', at, '::/EFI', '::/EFI/BOOT'], { env });
      await run('mcopy', ['-i', at, efi, '::/EFI/BOOT/BOOTX64.EFI'], { env });
    }

    await installGrubBios(tmp, work, signedInputs);
    await rename(tmp, o.out);
    log(`wrote ${o.out}: boot ${Math.round((parts[0]!.sectors * SECTOR) / MiB)} MiB, data ${o.layout.dataMiB} MiB${uefi ? `, ESP ${o.layout.espMiB} MiB` : ''}; BIOS${uefi ? ' and UEFI' : ''}${signed ? '; signed boot (check_signatures=enforce)' : ''}`);
  } finally {
    await rm(tmp, { force: true });
    await rm(work, { recursive: true, force: true });
  }
}

/**
 * An ext4 file system with `label` in partition `p` of `image`, holding
 * `dir`'s tree (`mkfs.ext4 -d`; empty without), written at the partition's
 * offset: no loop device, no mount. Why: on a host whose / is a private
 * mount, a mount of ours is copied into every mount namespace created while
 * it exists (`ip netns exec`, a unit with PrivateTmp), where it keeps the
 * partition busy after our umount; the partition node partx added then
 * outlives `losetup -d` (stale loopNp1 devices, seen in CI), and a live copy
 * of the file system stays mounted on an image a VM then writes. Without a
 * mount none of that exists. nodiscard: mke2fs would otherwise punch holes
 * in the image file (what discard is on a file) before writing.
 */
export async function writeExt4(image: string, p: Partition, label: string, dir: string | null): Promise<void> {
  await run('mkfs.ext4', ['-q', '-F', '-L', label, '-E', `offset=${p.startLba * SECTOR},nodiscard`, ...(dir ? ['-d', dir] : []), image, `${(p.sectors * SECTOR) / 1024}k`]);
}

/** `from` as `to`: a hard link when both are on one file system (mkfs.ext4 -d reads it once), else a copy. */
async function linkOrCopy(from: string, to: string): Promise<void> {
  try {
    await link(from, to);
  } catch {
    await copyFile(from, to);
  }
}

/** The plain (and SHA-512) disk's boot partition: grub.cfg by the agent's renderer, an empty grubenv, modules for insmod. */
async function writePlainMenu(boot: string, o: MakeDiskOptions, uefi: boolean, timeoutSeconds: number): Promise<void> {
  const menu = renderBootMenu({
    generations: o.generations.map((g) => ({ version: g.version, name: g.name, kernelVersion: g.kernelVersion, cmdline: g.cmdline, state: 'good' as const })),
    defaultVersion: o.defaultVersion,
    tryVersion: null,
    root: { kind: 'file', path: BOOT_MARKER },
    timeoutSeconds,
    serial: o.serial,
    verify: o.verify === 'sha512' ? 'sha512' : 'off',
  });
  await writeFile(join(boot, 'grub', 'grub.cfg'), menu.text);
  await run('grub-editenv', [join(boot, 'grub', 'grubenv'), 'create']);
  // Modules for grub.cfg's insmod, per platform.
  for (const platform of ['i386-pc', ...(uefi ? ['x86_64-efi'] : [])]) {
    await mkdir(join(boot, 'grub', platform), { recursive: true });
    for (const f of await readdir(join(GRUB_LIB, platform))) {
      if (/\.(mod|lst)$/.test(f)) await copyFile(join(GRUB_LIB, platform, f), join(boot, 'grub', platform, f));
    }
  }
}

/**
 * A published generation, checked before it goes on a disk: every artifact
 * against the manifest's length and SHA-512 (a corrupt copy would make a
 * machine that cannot boot), and with a keyring the manifest's signature.
 */
export async function checkedGeneration(gendir: string, keyringPath: string | undefined, log: (l: string) => void): Promise<{ version: number; name: string; kernelVersion: string; cmdline: string; signedBoot: boolean }> {
  const mpath = join(gendir, 'manifest.json');
  if (!existsSync(mpath) || !existsSync(`${mpath}.sig`)) {
    throw new LiveupError('NOT_FOUND', `${gendir} is not a published generation (no manifest.json and .sig): liveup publish it, then use REPO/generations/<N>`, { file: mpath });
  }
  const bytes = readFileSync(mpath);
  if (keyringPath) {
    await verifyDetached(bytes, readFileSync(`${mpath}.sig`), await loadKeyring(keyringPath), { threshold: 1, now: new Date(), source: mpath });
    log(`manifest signature verified (${keyringPath})`);
  } else log('note: the manifest signature is not checked (pass --keyring to check it)');
  const m = parseManifest(bytes, mpath);
  for (const a of m.artifacts) {
    if (a.role === 'packages' && !existsSync(join(gendir, a.path))) continue;
    log(`checking ${a.path} (${(a.length / 1e6).toFixed(0)} MB)`);
    await verifyArtifactFile(join(gendir, a.path), a, join(gendir, a.path));
  }
  const signedBoot = SIGNED_BOOT_ROLES.every((role) => m.artifacts.some((a) => a.role === role));
  return { version: m.version, name: m.name, kernelVersion: m.kernel.version, cmdline: m.kernel.cmdline, signedBoot };
}

/** For a signed-boot image: its early config and the `--pubkey`/memdisk arguments (disksigned.ts). */
export interface SignedImageInputs {
  readonly earlyConfig: string;
  readonly args: readonly string[];
}

/**
 * A GRUB image for `format` with the embedded config that finds the liveup
 * boot partition; for signed boot, the key, the memdisk and its own config.
 */
async function grubImage(format: 'i386-pc' | 'x86_64-efi', out: string, workDir: string, extraModules: readonly string[], signed: SignedImageInputs | null = null): Promise<void> {
  const cfg = join(workDir, `early-${format}.cfg`);
  await writeFile(cfg, signed ? signed.earlyConfig : EARLY_CFG);
  await run('grub-mkimage', ['-O', format, '-o', out, '-c', cfg, '-p', '/grub', ...(signed?.args ?? []), ...extraModules, ...GRUB_MODULES]);
}

/**
 * GRUB for BIOS on a disk image with an MBR gap, as grub-bios-setup does it:
 * boot.img's code (440 bytes; the partition table stays) in sector 0, and
 * core.img — with the embedded config that finds the liveup boot partition —
 * from sector 1 (boot.img loads sector 1; grub-mkimage writes core.img's own
 * sector count into its blocklist). grub-install cannot map a loop partition
 * to a BIOS drive, hence this.
 */
export async function installGrubBios(image: string, workDir: string, signed: SignedImageInputs | null = null): Promise<void> {
  const core = join(workDir, 'core.img');
  await grubImage('i386-pc', core, workDir, ['biosdisk', ...(signed ? SIGNED_GRUB_MODULES : [])], signed);
  const coreBytes = readFileSync(core);
  if (coreBytes.length > (START_LBA - 1) * SECTOR) throw new LiveupError('BUILD_FAILED', `GRUB's core.img (${coreBytes.length} bytes) does not fit before the first partition`);
  const bootImg = readFileSync(join(GRUB_LIB, 'i386-pc', 'boot.img'));
  const fd = openSync(image, 'r+');
  try {
    writeSync(fd, bootImg, 0, 440, 0);
    writeSync(fd, coreBytes, 0, coreBytes.length, SECTOR);
  } finally {
    closeSync(fd);
  }
}

