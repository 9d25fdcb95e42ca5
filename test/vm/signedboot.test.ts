/**
 * VM suite (opt-in: LIVEUP_VM_TESTS=1; root, qemu-system-x86, ovmf, grub-pc-bin,
 * grub-efi-amd64-bin). See docs/testing.md.
 *
 * Signed boot, end to end through the real tools: the test generation is
 * published twice with an RSA boot key (`liveup publish --boot-key`), and
 * `liveup disk --grub-verify signature` builds the disk (GRUB images with the
 * key, check_signatures=enforce, the static menu). Generation 2 is put on
 * trial in grubenv and its kernel changed (15 bytes, same length), as a
 * medium attacked or damaged after staging. Under BIOS and UEFI:
 * - GRUB refuses generation 2's kernel by its signature (nothing of 2 runs);
 * - the static menu's fallback boots generation 1 in the same boot, through
 *   its signed boot.cfg, and the initramfs checks its squashfs against the
 *   signed digest on the command line (liveup.squashfs_sha512);
 * - the trial's try was spent by GRUB's save_env under enforce (grubenv read
 *   back from the image after the VM stopped).
 */
import { describe, expect, onTestFinished, test } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildTestGeneration, MARKER } from './generation.js';
import { dropRunBulk, newRunDir } from './cache.js';
import { bootVm } from './qemu.js';
import { generateKey } from '../../publisher/src/key.js';
import { publish } from '../../publisher/src/publish.js';
import { makeDisk } from '../../publisher/src/disk.js';
import { attachPartitioned } from '../helpers/loopdev.js';
import { loadBootKey, loadBootPublicKey } from '../../publisher/src/bootsign.js';
import { loadPrivateKey } from '../../agent/src/channel/signature.js';

const RUN = process.env.LIVEUP_VM_TESTS === '1';

/** Run `fn` with the image's boot partition (p1) mounted read-write. */
async function withBootPartition<T>(image: string, dir: string, fn: (mnt: string) => T): Promise<T> {
  const img = await attachPartitioned(image);
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt, { recursive: true });
  try {
    execFileSync('mount', [img.dev(1), mnt]);
    try {
      return fn(mnt);
    } finally {
      execFileSync('umount', [mnt]);
    }
  } finally {
    await img.detach();
  }
}

async function signedDisk(work: string, uefi: boolean): Promise<string> {
  const gen = await buildTestGeneration((s) => console.log(s));
  const meta = JSON.parse(readFileSync(join(gen.gendir, 'generation.json'), 'utf8')) as { kernel: { cmdline: string } };
  // panic=5: an initramfs panic reboots instead of waiting at a shell. The console is in the
  // signed command line: a signed-boot disk cannot add it (boot.cfg is the publisher's).
  const cmdline = `${meta.kernel.cmdline.replace(/\bquiet\b/, '')} console=ttyS0,115200 panic=5`.replace(/\s+/g, ' ').trim();
  const channel = await generateKey({ outDir: join(work, 'keys'), name: 'channel' });
  const boot = await generateKey({ outDir: join(work, 'keys'), name: 'boot', type: 'rsa' });
  const repo = join(work, 'repo');
  for (let i = 0; i < 2; i++) {
    await publish({
      repo, channel: 'stable', gendir: gen.gendir, keys: [await loadPrivateKey(channel.privateKeyPath)], bootKey: await loadBootKey(boot.privateKeyPath),
      indexTtlMs: 86400e3, manifestTtlMs: 86400e3, cmdline, name: 'vmtest',
    });
  }
  const image = join(work, 'disk.img');
  const g = (version: number) => ({ version, dir: join(repo, 'generations', String(version)), name: 'vmtest', kernelVersion: 'test', cmdline });
  await makeDisk({
    out: image, layout: { sizeMiB: 1536, dataMiB: 64, espMiB: uefi ? 64 : 0 }, generations: [g(1), g(2)], defaultVersion: 1,
    serial: true, verify: 'signature', bootPubkey: { key: await loadBootPublicKey(boot.publicKeyPath), source: boot.publicKeyPath }, log: (l) => console.log(l),
  });
  await withBootPartition(image, work, (mnt) => {
    // Same length, 15 bytes changed in the middle: only the signature can tell.
    const k = join(mnt, 'live', '2', 'vmlinuz');
    const bytes = readFileSync(k);
    for (let i = 0; i < 15; i++) bytes[(bytes.length >> 1) + i] = bytes[(bytes.length >> 1) + i]! ^ 0x5a;
    writeFileSync(k, bytes);
    // The agent's trial of generation 2, one try (as after `agentctl update`).
    execFileSync('grub-editenv', [join(mnt, 'grub', 'grubenv'), 'set', 'liveup_try_version=2', 'liveup_tries_left=1']);
  });
  return image;
}

describe.skipIf(!RUN)('VM: signed boot (GRUB with the boot key, check_signatures=enforce)', () => {
  for (const uefi of [false, true]) {
    test(`${uefi ? 'UEFI' : 'BIOS'}: GRUB refuses the trial's tampered kernel by its signature; generation 1 boots, squashfs checked against the signed digest`, async () => {
      const work = newRunDir(`signed-${uefi ? 'uefi' : 'bios'}`);
      onTestFinished(() => dropRunBulk(work)); // pass or fail: the console log stays, the disk and channel go
      const image = await signedDisk(work, uefi);
      // allowGrubError: GRUB prints the refused signature as an error, pauses 10 s, then runs the fallback.
      const vm = bootVm({ image, uefi, consoleLog: join(work, 'console-signed.log'), allowGrubError: true });
      onTestFinished(() => vm.stop()); // a failed test must not leave its VM holding the QEMU lock
      await vm.waitFor(/liveup: loading generation 2 \(signed boot\)/, 120_000);
      // boot.cfg of 2 is intact (its initrd too): its kernel is refused by the key, before `linux` loads anything.
      await vm.waitFor(/error: bad signature[\s\S]*liveup: generation 2: vmlinuz failed its signature check; not booting it/, 300_000);
      // The static menu's fallback, in the same boot: the last good generation.
      await vm.waitFor(/liveup: loading generation 1 \(signed boot\)[\s\S]*liveup: generation 1: kernel and initrd signatures good/, 300_000);
      await vm.waitFor(/liveup: \/live\/1\/filesystem.squashfs verified/, 300_000);
      const m = await vm.waitFor(new RegExp(`${MARKER} booted=(\\S+)\\s*$`, 'm'), 300_000);
      expect(m[1]).toBe('1');
      const c = vm.console();
      expect(c.indexOf('Linux version')).toBeGreaterThan(c.indexOf('liveup: loading generation 1 (signed boot)')); // the only kernel that ran
      expect(c).toMatch(/liveup\.squashfs_sha512=[0-9a-f]{128}/); // the kernel's command line came from the signed boot.cfg
      await vm.stop();
      // GRUB spent the trial's try with save_env under enforce (grubenv is the one file it writes).
      const env = await withBootPartition(image, work, (mnt) => execFileSync('grub-editenv', [join(mnt, 'grub', 'grubenv'), 'list'], { encoding: 'utf8' }));
      expect(env).toMatch(/^liveup_tries_left=0$/m);
    }, 25 * 60_000);
  }
});
