/**
 * VM harness: a raw BIOS disk holding one boot partition (ext4, label
 * LIVEUP-BOOT) with `live/<v>/`, `grub/grub.cfg` rendered by the agent's
 * renderBootMenu, `grub/grubenv`, and GRUB installed for i386-pc (the core
 * `liveup disk` writes). For scenarios `liveup disk` does not make: a
 * generation on trial, a tampered squashfs, extra grubenv variables. The
 * machine's own disk (with its data partition) is `liveup disk`'s.
 *
 * The MBR is written here (one primary Linux partition from 1 MiB) so no
 * partitioning tool is needed; the partition's file system is written by
 * mkfs.ext4 -d at its offset (publisher/src/disk.ts, writeExt4): no loop
 * device, no mount. Needs grub-mkimage/grub-editenv (grub-common),
 * grub-pc-bin and mkfs.ext4 (e2fsprogs >= 1.43).
 */
import { copyFileSync, mkdirSync, mkdtempSync, openSync, writeSync, closeSync, writeFileSync, existsSync, rmSync, readdirSync, readFileSync, appendFileSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { renderBootMenu, type BootMenuGeneration, type BootVerify } from '../../agent/src/core/bootmenu.js';
import { parseManifest, type Manifest } from '../../agent/src/channel/schema.js';
import { sha512sums } from '../../agent/src/adapters/stage.js';
import { installGrubBios, writeBlankImage, writeExt4, type Partition } from '../../publisher/src/disk.js';

export interface DiskGeneration {
  readonly version: number;
  readonly gendir: string;
  readonly name: string;
  readonly kernelVersion: string;
  readonly cmdline: string;
  readonly state: BootMenuGeneration['state'];
  /** Append a byte to the squashfs after computing the manifest's digest (a tampered medium). */
  readonly tamperSquashfs?: boolean;
  /** Flip bytes in the kernel after its digest went into SHA512SUMS (for GRUB's hashsum). */
  readonly tamperKernel?: boolean;
}

export interface DiskOptions {
  readonly image: string;
  readonly sizeMiB: number;
  readonly generations: readonly DiskGeneration[];
  readonly defaultVersion: number;
  readonly tryVersion?: number | null;
  /** The menu's in-GRUB verification (SHA512SUMS is written for every generation either way). */
  readonly verify?: BootVerify;
  /** Extra grubenv variables. */
  readonly grubenv?: Readonly<Record<string, string>>;
  readonly log?: (s: string) => void;
}

/** One boot partition from 1 MiB to the end. */
function writeMbr(image: string, sizeMiB: number): Partition {
  const boot: Partition = { number: 1, startLba: 2048, sectors: (sizeMiB * 1024 * 1024) / 512 - 2048, type: 0x83, bootable: true };
  writeBlankImage(image, sizeMiB, [boot]);
  return boot;
}

function sh(cmd: string, args: string[], log: (s: string) => void): string {
  log(`$ ${cmd} ${args.join(' ')}`);
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

export async function assembleDisk(o: DiskOptions): Promise<void> {
  const log = o.log ?? (() => {});
  const part = writeMbr(o.image, o.sizeMiB);
  // The partition's tree, written by mkfs.ext4 -d as `liveup disk` does (no loop device, no mount).
  // Copies, not links: tampering must not reach the cached generation.
  const mnt = `${o.image}.boot`;
  rmSync(mnt, { recursive: true, force: true });
  try {
    mkdirSync(mnt, { recursive: true });
    for (const g of o.generations) {
      const d = join(mnt, 'live', String(g.version));
      mkdirSync(d, { recursive: true });
      for (const f of ['vmlinuz', 'initrd.img', 'filesystem.squashfs']) copyFileSync(join(g.gendir, f), join(d, f));
      let manifest: Manifest;
      if (existsSync(join(g.gendir, 'manifest.json.sig'))) {
        // A published generation (REPO/generations/<v>): the signed manifest and package list, as the agent stages them.
        for (const f of ['manifest.json', 'manifest.json.sig', 'packages.json']) if (existsSync(join(g.gendir, f))) copyFileSync(join(g.gendir, f), join(d, f));
        manifest = parseManifest(readFileSync(join(d, 'manifest.json')));
      } else {
        // A minimal manifest.json: what the initramfs verification reads (the agent stages the signed one).
        const artifact = (role: 'squashfs' | 'kernel' | 'initrd', path: string) => {
          const b = readFileSync(join(g.gendir, path));
          return { role, path, length: b.length, sha512: createHash('sha512').update(b).digest('hex') };
        };
        manifest = {
          format: 1, version: g.version, name: g.name,
          artifacts: [artifact('squashfs', 'filesystem.squashfs'), artifact('kernel', 'vmlinuz'), artifact('initrd', 'initrd.img')],
        } as unknown as Manifest;
        writeFileSync(join(d, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
      }
      writeFileSync(join(d, 'SHA512SUMS'), sha512sums(manifest));
      if (g.tamperSquashfs) appendFileSync(join(d, 'filesystem.squashfs'), 'tampered');
      if (g.tamperKernel) {
        // Same length, different bytes in the middle of the image: only a hash notices.
        const fd = openSync(join(d, 'vmlinuz'), 'r+');
        try { writeSync(fd, Buffer.from('liveup-tampered'), 0, 15, 1 << 20); } finally { closeSync(fd); }
      }
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
      verify: o.verify ?? 'off',
    });
    writeFileSync(join(mnt, 'grub', 'grub.cfg'), menu.text);
    sh('grub-editenv', [join(mnt, 'grub', 'grubenv'), 'create'], log);
    const vars = Object.entries(o.grubenv ?? {}).map(([k, v]) => `${k}=${v}`);
    if (vars.length) sh('grub-editenv', [join(mnt, 'grub', 'grubenv'), 'set', ...vars], log);
    // GRUB modules for insmod from grub.cfg; core.img and boot.img are written below, after unmounting.
    mkdirSync(join(mnt, 'grub', 'i386-pc'), { recursive: true });
    const GRUB_PC = '/usr/lib/grub/i386-pc';
    for (const f of readdirSync(GRUB_PC)) if (/\.(mod|lst)$/.test(f)) copyFileSync(join(GRUB_PC, f), join(mnt, 'grub', 'i386-pc', f));
    log(`$ mkfs.ext4 -d ${mnt} (${o.image} partition 1)`);
    await writeExt4(o.image, part, 'LIVEUP-BOOT', mnt);
  } finally {
    rmSync(mnt, { recursive: true, force: true });
  }
  const work = mkdtempSync(`${o.image}.grub-`);
  // The same GRUB core as `liveup disk` writes (it finds the boot partition by its marker file).
  try {
    await installGrubBios(o.image, work);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
