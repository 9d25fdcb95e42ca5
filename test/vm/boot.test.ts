/**
 * VM suite (opt-in: LIVEUP_VM_TESTS=1; root, qemu-system-x86, grub2-common,
 * grub-pc-bin). See docs/testing.md.
 *
 * In-GRUB verification: generation 2 on trial has a tampered kernel; GRUB's
 * hashsum refuses it and the fallback, generation 1, boots in the same boot
 * (its kernel, initrd and squashfs checked by GRUB, its squashfs again by the
 * initramfs, liveup.verify=1), records itself in /run/liveup/booted, runs
 * from RAM (`toram`) and keeps running once its boot disk is detached.
 * (The fallback scenarios are in boot-fallback.test.ts: one file per ~2-4
 * minutes of VM time lets two QEMU slots share the suite evenly.)
 */
import { describe, expect, onTestFinished, test } from 'vitest';
import { join } from 'node:path';
import { MARKER, prepareBootRun } from './generation.js';
import { assembleDisk } from './disk.js';
import { dropRunBulk } from './cache.js';
import { bootVm, waitForShell } from './qemu.js';

const RUN = process.env.LIVEUP_VM_TESTS === '1';

describe.skipIf(!RUN)('VM: boot a generation from GRUB', () => {
  test('GRUB refuses a tampered kernel on trial by its SHA-512; generation 1 boots verified, into RAM, and runs with its disk detached', async () => {
    const p = await prepareBootRun('boot');
    onTestFinished(() => dropRunBulk(p.work)); // pass or fail: the console logs stay, the disk image goes
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
  }, 20 * 60_000);

});
