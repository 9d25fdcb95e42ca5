/**
 * `liveup disk` as an administrator runs it: a published generation becomes
 * a disk image with the boot, data and EFI partitions the agent and the
 * initramfs expect, GRUB for BIOS (MBR gap) and UEFI (removable path), read
 * back here with sfdisk, blkid and the mounted file systems. That it boots is
 * proven in QEMU by test/vm/live.test.ts (BIOS), test/vm/disk.test.ts (UEFI).
 */
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { appendFile, mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { tmp } from '../helpers/tmp.js';
import { makeGendir, makeKey } from '../helpers/fixtures.js';
import { runCli } from '../helpers/cli.js';
import { publish } from '../../publisher/src/publish.js';
import { mbrSector, planPartitions } from '../../publisher/src/disk.js';
import { generateKey } from '../../publisher/src/key.js';
import { attachPartitioned } from '../helpers/loopdev.js';
import { grubPublicKeyBytes, loadBootPublicKey } from '../../publisher/src/bootsign.js';
import { loadPrivateKey } from '../../agent/src/channel/signature.js';
import { renderEarlyConfig, renderStaticMenu } from '../../agent/src/core/signedboot.js';

const sh = (cmd: string, args: string[], cwd?: string) => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...(cwd ? { cwd } : {}) });

describe('liveup disk', () => {
  it('lays out boot, data and EFI partitions; refuses what does not fit', () => {
    const p = planPartitions({ sizeMiB: 1024, dataMiB: 256, espMiB: 64 });
    expect(p.map((x) => [x.number, x.type, (x.sectors * 512) / 2 ** 20])).toEqual([[1, 0x83, 1024 - 1 - 256 - 64], [2, 0x83, 256], [3, 0xef, 64]]);
    expect(p[1]!.startLba).toBe(p[0]!.startLba + p[0]!.sectors);
    const mbr = mbrSector(p);
    expect(mbr.readUInt16BE(510)).toBe(0x55aa);
    expect(mbr[446]).toBe(0x80); // the boot partition is active
    expect(() => planPartitions({ sizeMiB: 300, dataMiB: 256, espMiB: 64 })).toThrow(/make it larger/);
    expect(() => planPartitions({ sizeMiB: 4096, dataMiB: 8, espMiB: 64 })).toThrow(/at least 16 MiB/);
  });

  it('writes a published generation with GRUB for BIOS and UEFI; a corrupt artifact or a wrong key writes nothing', async () => {
    const dir = await tmp();
    const key = await makeKey(join(dir, 'keys'));
    const repo = join(dir, 'repo');
    await publish({ repo, channel: 'stable', gendir: await makeGendir(join(dir, 'g')), keys: [key.priv], indexTtlMs: 86400e3, manifestTtlMs: 86400e3, cmdline: 'boot=live components' });
    const gendir = join(repo, 'generations', '1');
    const img = join(dir, 'out', 'machine.img');
    await mkdir(join(dir, 'out'));
    const r = await runCli('liveup', ['disk', '--gendir', gendir, '--out', img, '--keyring', key.pubPath, '--size', '400M', '--data-size', '64M', '--serial', '--grub-verify', 'sha512', '--json']);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, path: img, version: 1, firmware: ['bios', 'uefi'], sizeMiB: 400, dataMiB: 64 });
    expect(r.stderr).toMatch(/manifest signature verified/);

    const table = JSON.parse(sh('sfdisk', ['--json', img])) as { partitiontable: { label: string; partitions: { type: string; bootable?: boolean }[] } };
    expect(table.partitiontable.label).toBe('dos');
    expect(table.partitiontable.partitions.map((x) => x.type)).toEqual(['83', '83', 'ef']);
    // BIOS: GRUB's boot.img code in the MBR and core.img in the gap behind it.
    const head = readFileSync(img).subarray(0, 1024 * 1024);
    expect(head.subarray(0, 440).some((b) => b !== 0)).toBe(true);
    expect(head.subarray(512, 1024).some((b) => b !== 0)).toBe(true);

    const att = await attachPartitioned(img);
    const mnt = join(dir, 'mnt');
    try {
      expect(sh('blkid', ['-s', 'LABEL', '-o', 'value', att.dev(1)]).trim()).toBe('LIVEUP-BOOT');
      expect(sh('blkid', ['-s', 'LABEL', '-o', 'value', att.dev(2)]).trim()).toBe('LIVEUP-DATA');
      expect(sh('blkid', ['-s', 'TYPE', '-o', 'value', att.dev(3)]).trim()).toBe('vfat');
      await mkdir(mnt);
      sh('mount', ['-o', 'ro', att.dev(1), mnt]);
      try {
        expect((await readdir(join(mnt, 'live', '1'))).sort()).toEqual(['SHA512SUMS', 'filesystem.squashfs', 'initrd.img', 'manifest.json', 'manifest.json.sig', 'vmlinuz']);
        expect(sh('sha512sum', ['-c', '--strict', join(mnt, 'live', '1', 'SHA512SUMS')], join(mnt, 'live', '1'))).toMatch(/filesystem.squashfs: OK/);
        expect(readFileSync(join(mnt, 'live', '1', 'filesystem.squashfs'))).toEqual(readFileSync(join(gendir, 'filesystem.squashfs')));
        const cfg = readFileSync(join(mnt, 'grub', 'grub.cfg'), 'utf8');
        expect(cfg).toMatch(/search --no-floppy --set=root --file '\/live\/\.liveup-boot'/);
        expect(cfg).toMatch(/linux \/live\/1\/vmlinuz .*boot=live components console=tty0 console=ttyS0,115200.*liveup\.generation=1/);
        expect(cfg).toContain('if hashsum --hash sha512 --prefix /live/1 --check /live/1/SHA512SUMS ; then');
        expect(sh('grub-editenv', [join(mnt, 'grub', 'grubenv'), 'list'])).toBe('');
        expect(existsSync(join(mnt, 'grub', 'i386-pc', 'linux.mod'))).toBe(true);
        expect(existsSync(join(mnt, 'grub', 'x86_64-efi', 'linux.mod'))).toBe(true);
      } finally {
        sh('umount', [mnt]);
      }
      execFileSync('mcopy', ['-i', att.dev(3), '::/EFI/BOOT/BOOTX64.EFI', join(dir, 'BOOTX64.EFI')], { stdio: 'pipe' }); // (it warns that a loop partition has no disk geometry)
      expect(readFileSync(join(dir, 'BOOTX64.EFI')).subarray(0, 2).toString()).toBe('MZ'); // a PE image, where UEFI looks on removable media
    } finally {
      await att.detach();
    }

    // A wrong key, or an artifact that no longer matches its manifest: refused, nothing written.
    const other = await makeKey(join(dir, 'other'));
    const img2 = join(dir, 'out', 'two.img');
    const wrongKey = await runCli('liveup', ['disk', '--gendir', gendir, '--out', img2, '--keyring', other.pubPath, '--size', '400M', '--data-size', '64M']);
    expect(wrongKey.code).not.toBe(0);
    expect(wrongKey.stderr).toMatch(/KEY_NOT_TRUSTED|SIGNATURE/);
    await appendFile(join(gendir, 'vmlinuz'), 'x');
    const corrupt = await runCli('liveup', ['disk', '--gendir', gendir, '--out', img2, '--size', '400M', '--data-size', '64M']);
    expect(corrupt.code).not.toBe(0);
    expect(corrupt.stderr).toMatch(/LENGTH_MISMATCH|HASH_MISMATCH/);
    expect(await readdir(join(dir, 'out'))).toEqual(['machine.img']);
    // And the image in place is not replaced without --force.
    expect((await runCli('liveup', ['disk', '--gendir', gendir, '--out', img])).stderr).toMatch(/exists; pass --force/);
    expect((await runCli('liveup', ['disk', '--gendir', gendir, '--out', img2, '--grub-verify', 'md5'])).stderr).toMatch(/--grub-verify must be off, sha512, signature, got "md5"/);
  });

  it('signed boot: GRUB images carry the boot key, the modules and the static menu; the medium holds signed generations and grubenv only', async () => {
    const dir = await tmp();
    const key = await makeKey(join(dir, 'keys'));
    const bootKey = await generateKey({ outDir: join(dir, 'keys'), name: 'boot', type: 'rsa', rsaBits: 2048 });
    const repo = join(dir, 'repo');
    await publish({
      repo, channel: 'stable', gendir: await makeGendir(join(dir, 'g')), keys: [key.priv], bootKey: await loadPrivateKey(bootKey.privateKeyPath),
      indexTtlMs: 86400e3, manifestTtlMs: 86400e3, cmdline: 'boot=live components console=ttyS0,115200',
    });
    // And one published without the boot key, which a signed-boot disk cannot hold.
    await publish({ repo, channel: 'stable', gendir: await makeGendir(join(dir, 'g2')), keys: [key.priv], indexTtlMs: 86400e3, manifestTtlMs: 86400e3 });
    const gendir = join(repo, 'generations', '1');
    await mkdir(join(dir, 'out'));
    const img = join(dir, 'out', 'signed.img');
    const size = ['--size', '400M', '--data-size', '64M'];
    const r = await runCli('liveup', ['disk', '--gendir', gendir, '--out', img, '--keyring', key.pubPath, ...size, '--serial', '--grub-verify', 'signature', '--boot-pubkey', bootKey.publicKeyPath, '--json']);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    expect(r.stderr).toMatch(/boot signatures verified/);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, version: 1, firmware: ['bios', 'uefi'] });

    const att = await attachPartitioned(img);
    const mnt = join(dir, 'mnt');
    let efi: Buffer;
    try {
      await mkdir(mnt);
      sh('mount', ['-o', 'ro', att.dev(1), mnt]);
      try {
        expect((await readdir(join(mnt, 'live', '1'))).sort()).toEqual([
          'SHA512SUMS', 'boot.cfg', 'boot.cfg.sig', 'filesystem.squashfs', 'initrd.img', 'initrd.img.sig', 'manifest.json', 'manifest.json.sig', 'vmlinuz', 'vmlinuz.sig',
        ]);
        // GRUB reads no grub.cfg and loads no module from the medium in this mode: none is there to tamper with.
        expect((await readdir(join(mnt, 'grub'))).sort()).toEqual(['grubenv', 'liveup-good.env']);
        for (const f of ['grubenv', 'liveup-good.env']) {
          expect(sh('grub-editenv', [join(mnt, 'grub', f), 'list']).trim().split('\n').sort()).toEqual(['liveup_default=1', 'liveup_fallback=1']);
        }
        expect(sh('sha512sum', ['-c', '--strict', join(mnt, 'live', '1', 'SHA512SUMS')], join(mnt, 'live', '1'))).toMatch(/boot\.cfg\.sig: OK/);
      } finally {
        sh('umount', [mnt]);
      }
      execFileSync('mcopy', ['-i', att.dev(3), '::/EFI/BOOT/BOOTX64.EFI', join(dir, 'BOOTX64.EFI')], { stdio: 'pipe' }); // (it warns that a loop partition has no disk geometry)
      efi = readFileSync(join(dir, 'BOOTX64.EFI'));
    } finally {
      await att.detach();
    }
    // The UEFI image is not compressed: the key (binary, as GRUB reads it), the early config, the
    // static menu (a ustar memdisk) and the modules can be found in it byte for byte.
    const pub = grubPublicKeyBytes(await loadBootPublicKey(bootKey.publicKeyPath), bootKey.publicKeyPath);
    expect(pub[0]! & 0x80).toBe(0x80); // OpenPGP packets, not armor
    expect(efi.indexOf(Buffer.from(pub))).toBeGreaterThan(0);
    expect(efi.indexOf(Buffer.from(renderEarlyConfig('/live/.liveup-boot')))).toBeGreaterThan(0);
    const menu = renderStaticMenu({ serial: true, timeoutSeconds: 1, diskVersion: 1 });
    expect(efi.indexOf(Buffer.from(menu))).toBeGreaterThan(0);
    const menuFile = join(dir, 'static.cfg');
    await appendFile(menuFile, menu);
    execFileSync('grub-script-check', [menuFile]);
    for (const mod of ['pgp', 'gcry_rsa', 'gcry_sha512', 'verifiers', 'regexp', 'memdisk', 'tar', 'loadenv', 'linux', 'boot', 'normal']) {
      expect(efi.indexOf(Buffer.from(`${mod}\0`)), mod).toBeGreaterThan(0);
    }
    // BIOS: core.img (compressed) with the same inputs, in the MBR gap.
    expect(readFileSync(img).subarray(512, 1024).some((b) => b !== 0)).toBe(true);

    // Refused, nothing written: no key, a key that did not sign the generation, an Ed25519 key, an unsigned generation.
    const img2 = join(dir, 'out', 'two.img');
    const other = await generateKey({ outDir: join(dir, 'other'), name: 'boot', type: 'rsa', rsaBits: 2048 });
    const noKey = await runCli('liveup', ['disk', '--gendir', gendir, '--out', img2, ...size, '--grub-verify', 'signature']);
    expect([noKey.code, noKey.stderr]).toEqual([2, expect.stringMatching(/--grub-verify signature needs --boot-pubkey/)]);
    const wrong = await runCli('liveup', ['disk', '--gendir', gendir, '--out', img2, ...size, '--grub-verify', 'signature', '--boot-pubkey', other.publicKeyPath]);
    expect(wrong.code).not.toBe(0);
    expect(wrong.stderr).toMatch(/KEY_NOT_TRUSTED|SIGNATURE/);
    const ed = await runCli('liveup', ['disk', '--gendir', gendir, '--out', img2, ...size, '--grub-verify', 'signature', '--boot-pubkey', key.pubPath]);
    expect([ed.code, ed.stderr]).toEqual([2, expect.stringMatching(/eddsaLegacy \(ed25519Legacy\) key cannot be a boot key/)]);
    const unsigned = await runCli('liveup', ['disk', '--gendir', join(repo, 'generations', '2'), '--out', img2, ...size, '--grub-verify', 'signature', '--boot-pubkey', bootKey.publicKeyPath]);
    expect([unsigned.code, unsigned.stderr]).toEqual([2, expect.stringMatching(/generation 2 has no signed boot .*liveup publish --boot-key/)]);
    expect(await readdir(join(dir, 'out'))).toEqual(['signed.img']);
  }, 180_000);
});
