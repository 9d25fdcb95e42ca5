/**
 * VM harness: a raw BIOS disk holding one boot partition (ext4, label
 * LIVEUP-BOOT) with `live/<v>/`, `grub/grub.cfg` rendered by the agent's
 * renderBootMenu, `grub/grubenv`, and GRUB installed for i386-pc; with
 * `dataMiB`, a second partition (ext4, label LIVEUP-DATA): the persistent
 * data the initramfs mounts on /var/lib/liveup.
 *
 * The MBR is written here (primary Linux partitions from 1 MiB) so no
 * partitioning tool is needed; the partition is reached through a loop device
 * and `partx -a` (losetup -P does not create partition nodes on these hosts).
 * Needs root, grub-mkimage/grub-editenv (grub-common) and grub-pc-bin, mkfs.ext4.
 */
import { copyFileSync, mkdirSync, openSync, writeSync, closeSync, ftruncateSync, writeFileSync, existsSync, rmSync, readdirSync, readFileSync, appendFileSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { renderBootMenu, type BootMenuGeneration } from '../../agent/src/core/bootmenu.js';

export interface DiskGeneration {
  readonly version: number;
  readonly gendir: string;
  readonly name: string;
  readonly kernelVersion: string;
  readonly cmdline: string;
  readonly state: BootMenuGeneration['state'];
  /** Append a byte to the squashfs after computing the manifest's digest (a tampered medium). */
  readonly tamperSquashfs?: boolean;
}

export interface DiskOptions {
  readonly image: string;
  readonly sizeMiB: number;
  readonly generations: readonly DiskGeneration[];
  readonly defaultVersion: number;
  readonly tryVersion?: number | null;
  /** Extra grubenv variables. */
  readonly grubenv?: Readonly<Record<string, string>>;
  /** Size of the persistent data partition (LIVEUP-DATA) at the end of the disk; none when absent. */
  readonly dataMiB?: number;
  readonly log?: (s: string) => void;
}

const SECTOR = 512;
const START_LBA = 2048;

function writeMbr(image: string, sizeMiB: number, dataMiB: number): void {
  const fd = openSync(image, 'w');
  try {
    ftruncateSync(fd, sizeMiB * 1024 * 1024);
    const mbr = Buffer.alloc(SECTOR);
    const dataSectors = (dataMiB * 1024 * 1024) / SECTOR;
    const sectors = (sizeMiB * 1024 * 1024) / SECTOR - START_LBA - dataSectors;
    const entry = (e: number, start: number, count: number, bootable: boolean): void => {
      mbr[e] = bootable ? 0x80 : 0;
      mbr.writeUIntLE(0xfffffe, e + 1, 3); // CHS: unused (LBA)
      mbr[e + 4] = 0x83; // Linux
      mbr.writeUIntLE(0xfffffe, e + 5, 3);
      mbr.writeUInt32LE(start, e + 8);
      mbr.writeUInt32LE(count, e + 12);
    };
    entry(446, START_LBA, sectors, true);
    if (dataSectors > 0) entry(462, START_LBA + sectors, dataSectors, false);
    mbr.writeUInt32LE(0x4c495645, 440); // disk signature "LIVE"
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    writeSync(fd, mbr, 0, SECTOR, 0);
  } finally {
    closeSync(fd);
  }
}

function sh(cmd: string, args: string[], log: (s: string) => void): string {
  log(`$ ${cmd} ${args.join(' ')}`);
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

export function assembleDisk(o: DiskOptions): void {
  const log = o.log ?? (() => {});
  writeMbr(o.image, o.sizeMiB, o.dataMiB ?? 0);
  const loop = sh('losetup', ['-f', '--show', o.image], log).trim();
  const mnt = `${o.image}.mnt`;
  let mounted = false;
  try {
    sh('partx', ['-a', loop], log);
    const part = `${loop}p1`;
    for (let i = 0; i < 50 && !existsSync(part); i++) execFileSync('sleep', ['0.1']);
    sh('mkfs.ext4', ['-q', '-F', '-L', 'LIVEUP-BOOT', part], log);
    if (o.dataMiB) {
      const data = `${loop}p2`;
      for (let i = 0; i < 50 && !existsSync(data); i++) execFileSync('sleep', ['0.1']);
      sh('mkfs.ext4', ['-q', '-F', '-L', 'LIVEUP-DATA', data], log);
    }
    mkdirSync(mnt, { recursive: true });
    sh('mount', [part, mnt], log);
    mounted = true;
    for (const g of o.generations) {
      const d = join(mnt, 'live', String(g.version));
      mkdirSync(d, { recursive: true });
      for (const f of ['vmlinuz', 'initrd.img', 'filesystem.squashfs']) copyFileSync(join(g.gendir, f), join(d, f));
      if (existsSync(join(g.gendir, 'manifest.json.sig'))) {
        // A published generation (REPO/generations/<v>): the signed manifest and package list, as the agent stages them.
        for (const f of ['manifest.json', 'manifest.json.sig', 'packages.json']) if (existsSync(join(g.gendir, f))) copyFileSync(join(g.gendir, f), join(d, f));
        if (g.tamperSquashfs) appendFileSync(join(d, 'filesystem.squashfs'), 'tampered');
        continue;
      }
      // A minimal manifest.json: what the initramfs verification reads (the agent stages the signed one).
      const sq = readFileSync(join(g.gendir, 'filesystem.squashfs'));
      const manifest = {
        format: 1, version: g.version, name: g.name,
        artifacts: [{ role: 'squashfs', path: 'filesystem.squashfs', length: sq.length, sha512: createHash('sha512').update(sq).digest('hex') }],
      };
      writeFileSync(join(d, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
      if (g.tamperSquashfs) appendFileSync(join(d, 'filesystem.squashfs'), 'tampered');
    }
    writeFileSync(join(mnt, 'live', '.liveup-boot'), 'liveup boot medium\n');
    mkdirSync(join(mnt, 'grub'), { recursive: true });
    const menu = renderBootMenu({
      generations: o.generations.map((g) => ({ version: g.version, name: g.name, kernelVersion: g.kernelVersion, cmdline: g.cmdline, state: g.state })),
      defaultVersion: o.defaultVersion,
      tryVersion: o.tryVersion ?? null,
      root: { kind: 'file', path: '/live/.liveup-boot' },
      timeoutSeconds: 1,
      serial: true,
    });
    writeFileSync(join(mnt, 'grub', 'grub.cfg'), menu.text);
    sh('grub-editenv', [join(mnt, 'grub', 'grubenv'), 'create'], log);
    const vars = Object.entries(o.grubenv ?? {}).map(([k, v]) => `${k}=${v}`);
    if (vars.length) sh('grub-editenv', [join(mnt, 'grub', 'grubenv'), 'set', ...vars], log);
    // GRUB modules for insmod from grub.cfg; core.img and boot.img are written below, after unmounting.
    mkdirSync(join(mnt, 'grub', 'i386-pc'), { recursive: true });
    for (const f of readdirSync(GRUB_PC)) if (/\.(mod|lst)$/.test(f)) copyFileSync(join(GRUB_PC, f), join(mnt, 'grub', 'i386-pc', f));
  } finally {
    if (mounted) execFileSync('umount', [mnt]);
    if (existsSync(mnt)) rmdirSync(mnt);
    try { execFileSync('partx', ['-d', loop]); } catch { /* already gone */ }
    execFileSync('losetup', ['-d', loop]);
  }
  installGrubBios(o.image, log);
}

const GRUB_PC = '/usr/lib/grub/i386-pc';

/**
 * GRUB for BIOS without grub-install: grub-install cannot map a loop
 * partition to a BIOS drive here ("cannot find a GRUB drive for /dev/loop0p1",
 * even with a device.map), so do what grub-bios-setup does for a disk with an
 * MBR gap: boot.img's code (first 440 bytes, the partition table is kept) in
 * sector 0, and core.img from sector 1; boot.img loads sector 1 by default and
 * grub-mkimage writes core.img's own sector count into its blocklist.
 */
function installGrubBios(image: string, log: (s: string) => void): void {
  const core = `${image}.core.img`;
  sh('grub-mkimage', ['-O', 'i386-pc', '-o', core, '-p', '(hd0,msdos1)/grub', 'biosdisk', 'part_msdos', 'ext2'], log);
  const coreBytes = readFileSync(core);
  rmSync(core);
  if (coreBytes.length > (START_LBA - 1) * SECTOR) throw new Error(`core.img (${coreBytes.length} bytes) does not fit before the first partition`);
  const boot = readFileSync(join(GRUB_PC, 'boot.img'));
  const fd = openSync(image, 'r+');
  try {
    writeSync(fd, boot, 0, 440, 0);
    writeSync(fd, coreBytes, 0, coreBytes.length, SECTOR);
  } finally {
    closeSync(fd);
  }
}
