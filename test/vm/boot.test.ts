/**
 * VM suite (opt-in: LIVEUP_VM_TESTS=1; root, qemu-system-x86, grub2-common,
 * grub-pc-bin). See docs/testing.md.
 *
 * 1. In-GRUB verification: generation 2 on trial has a tampered kernel; GRUB's
 *    hashsum refuses it and the fallback, generation 1, boots in the same boot
 *    (its kernel, initrd and squashfs checked by GRUB, its squashfs again by
 *    the initramfs, liveup.verify=1), records itself in /run/liveup/booted,
 *    runs from RAM (`toram`) and keeps running once its boot disk is detached.
 * 2. A generation on trial whose squashfs was tampered with is refused by the
 *    initramfs (panic → reboot), and GRUB then boots the last good one.
 * 3. A generation on trial whose boot ends in a kernel panic (its init exits):
 *    panic=5 reboots, the trial's tries are spent, GRUB boots the last good one.
 */
import { describe, expect, onTestFinished, test } from 'vitest';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { buildTestGeneration, MARKER, VM_CACHE } from './generation.js';
import { assembleDisk } from './disk.js';
import { bootVm, waitForShell } from './qemu.js';

const RUN = process.env.LIVEUP_VM_TESTS === '1';

async function prepare(): Promise<{ gendir: string; kernelVersion: string; cmdline: string; work: string }> {
  const gen = await buildTestGeneration((s) => console.log(s));
  const meta = JSON.parse(readFileSync(join(gen.gendir, 'generation.json'), 'utf8')) as { kernel: { version: string; cmdline: string } };
  const work = join(VM_CACHE, 'runs', `${Date.now()}`);
  mkdirSync(work, { recursive: true });
  // panic=5: an initramfs panic reboots (so GRUB's countdown/fallback runs) instead of waiting at a shell.
  const cmdline = `${meta.kernel.cmdline.replace(/\bquiet\b/, '')} console=ttyS0,115200 liveup.verify=1 panic=5`.replace(/\s+/g, ' ').trim();
  return { gendir: gen.gendir, kernelVersion: meta.kernel.version, cmdline, work };
}

describe.skipIf(!RUN)('VM: boot a generation from GRUB', () => {
  test('GRUB refuses a tampered kernel on trial by its SHA-512; generation 1 boots verified, into RAM, and runs with its disk detached', async () => {
    const p = await prepare();
    const image = join(p.work, 'disk.img');
    const g = { gendir: p.gendir, name: 'vmtest', kernelVersion: p.kernelVersion };
    await assembleDisk({
      image, sizeMiB: 1024, defaultVersion: 1, tryVersion: 2, verify: 'sha512',
      generations: [
        { ...g, version: 1, state: 'good', cmdline: `${p.cmdline} toram` },
        { ...g, version: 2, state: 'staged', cmdline: p.cmdline, tamperKernel: true },
      ],
      grubenv: { liveup_try_version: '2', liveup_tries_left: '1' },
    });
    const vm = bootVm({ image, scsi: true, consoleLog: join(p.work, 'console-grub-verify.log') });
    onTestFinished(() => vm.stop()); // a failed test must not leave its VM holding the QEMU lock
    await vm.waitFor(/liveup: loading generation 2/, 60_000);
    await vm.waitFor(/liveup: generation 2 failed its SHA-512 check; not booting it/, 300_000);
    // GRUB's fallback, in the same boot: nothing of generation 2 ran.
    await vm.waitFor(/liveup: loading generation 1[\s\S]*liveup: generation 1 passed its SHA-512 check/, 300_000);
    await vm.waitFor(/liveup: \/live\/1\/filesystem.squashfs verified/, 180_000);
    const m = await vm.waitFor(new RegExp(`${MARKER} booted=(\\S+)\\s*$`, 'm'), 300_000);
    expect(m[1]).toBe('1');
    const c = vm.console();
    expect(c.indexOf('Linux version')).toBeGreaterThan(c.indexOf('generation 1 passed its SHA-512 check')); // the only kernel that ran
    // toram: the squashfs was copied to RAM and the medium let go; the boot disk can go away.
    await waitForShell(vm, 0);
    expect((await vm.sh('cat /proc/cmdline')).out).toMatch(/\btoram\b/);
    expect((await vm.sh('findmnt -rn -o SOURCE,TARGET | grep -c "^/dev/sd" || true')).out.trim()).toBe('0');
    expect((await vm.sh('echo 1 > /sys/block/sda/device/delete && sleep 2 && test ! -e /dev/sda')).rc).toBe(0);
    expect((await vm.sh("lsblk -rn -o NAME | grep -c '^sd' || true")).out.trim()).toBe('0');
    // Every program of the image is still readable (from RAM), and services still start.
    const read = await vm.sh('cat /usr/bin/* /usr/lib/x86_64-linux-gnu/libc.so.6 > /dev/null && echo read-ok', 300_000);
    expect(read.out, read.out).toMatch(/read-ok/);
    // (the marker service writes its own line to this console too: take the last line)
    expect((await vm.sh('systemctl restart liveup-vm-marker && systemctl is-active systemd-journald')).out.trim().split('\n').pop()).toBe('active');
    expect((await vm.sh('cat /run/liveup/booted')).out.trim()).toBe('1');
    await vm.stop();
    rmSync(image, { force: true }); // the console log stays beside it
  }, 20 * 60_000);

  test('a tampered squashfs on trial is refused in the initramfs; GRUB then boots the last good', async () => {
    const p = await prepare();
    const image = join(p.work, 'disk.img');
    const g = { gendir: p.gendir, name: 'vmtest', kernelVersion: p.kernelVersion, cmdline: p.cmdline };
    await assembleDisk({
      image, sizeMiB: 1024, defaultVersion: 1, tryVersion: 2,
      generations: [{ ...g, version: 1, state: 'good' }, { ...g, version: 2, state: 'staged', tamperSquashfs: true }],
      grubenv: { liveup_try_version: '2', liveup_tries_left: '1' },
    });
    const vm = bootVm({ image, consoleLog: join(p.work, 'console-tampered.log'), allowReboot: true });
    onTestFinished(() => vm.stop()); // a failed test must not leave its VM holding the QEMU lock
    await vm.waitFor(/liveup: loading generation 2/, 60_000);
    await vm.waitFor(/live\/2\/filesystem.squashfs does not match its manifest/, 180_000);
    // panic=5 reboots; the trial has no tries left, so the default (1) boots.
    const again = vm.console().length;
    await vm.waitFor(/liveup: loading generation 1/, 120_000);
    expect(vm.console().lastIndexOf('liveup: loading generation 1')).toBeGreaterThan(again);
    const m = await vm.waitFor(new RegExp(`${MARKER} booted=(\\S+)\\s*$`, 'm'), 240_000);
    expect(m[1]).toBe('1');
    await vm.stop();
    rmSync(image, { force: true });
  }, 15 * 60_000);

  test('a generation whose boot ends in a kernel panic: panic=5 reboots, its tries are spent, GRUB boots the last good', async () => {
    const p = await prepare();
    const image = join(p.work, 'disk.img');
    const g = { gendir: p.gendir, name: 'vmtest', kernelVersion: p.kernelVersion };
    await assembleDisk({
      image, sizeMiB: 1024, defaultVersion: 1, tryVersion: 2,
      generations: [
        { ...g, version: 1, state: 'good', cmdline: p.cmdline },
        // Its init exits at once: the kernel panics ("Attempted to kill init").
        { ...g, version: 2, state: 'staged', cmdline: `${p.cmdline} init=/bin/false` },
      ],
      grubenv: { liveup_try_version: '2', liveup_tries_left: '1' },
    });
    const vm = bootVm({ image, consoleLog: join(p.work, 'console-panic.log'), allowReboot: true, allowPanic: true });
    onTestFinished(() => vm.stop()); // a failed test must not leave its VM holding the QEMU lock
    await vm.waitFor(/liveup: loading generation 2/, 60_000);
    await vm.waitFor(/Kernel panic - not syncing/, 300_000);
    const again = vm.console().length;
    await vm.waitFor(/Kernel panic[\s\S]*liveup: loading generation 1/, 180_000);
    expect(vm.console().lastIndexOf('liveup: loading generation 1')).toBeGreaterThan(again);
    const m = await vm.waitFor(new RegExp(`${MARKER} booted=(\\S+)\\s*$`, 'm'), 300_000);
    expect(m[1]).toBe('1');
    await vm.stop();
    rmSync(image, { force: true });
  }, 15 * 60_000);
});
