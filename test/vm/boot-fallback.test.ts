/**
 * VM suite (opt-in: LIVEUP_VM_TESTS=1; root, qemu-system-x86, grub2-common,
 * grub-pc-bin). See docs/testing.md.
 *
 * GRUB's boot counting and fallback, across real reboots:
 * 1. A generation on trial whose squashfs was tampered with is refused by the
 *    initramfs (panic → reboot), and GRUB then boots the last good one.
 * 2. A generation on trial whose boot ends in a kernel panic (its init exits):
 *    panic=5 reboots, the trial's tries are spent, GRUB boots the last good one.
 */
import { describe, expect, onTestFinished, test } from 'vitest';
import { join } from 'node:path';
import { MARKER, prepareBootRun } from './generation.js';
import { assembleDisk } from './disk.js';
import { dropRunBulk } from './cache.js';
import { bootVm } from './qemu.js';

const RUN = process.env.LIVEUP_VM_TESTS === '1';

describe.skipIf(!RUN)('VM: GRUB falls back to the last good generation', () => {
  test('a tampered squashfs on trial is refused in the initramfs; GRUB then boots the last good', async () => {
    const p = await prepareBootRun('fallback');
    onTestFinished(() => dropRunBulk(p.work)); // pass or fail: the console logs stay, the disk image goes
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
  }, 15 * 60_000);

  test('a generation whose boot ends in a kernel panic: panic=5 reboots, its tries are spent, GRUB boots the last good', async () => {
    const p = await prepareBootRun('fallback');
    onTestFinished(() => dropRunBulk(p.work)); // pass or fail: the console logs stay, the disk image goes
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
  }, 15 * 60_000);
});
