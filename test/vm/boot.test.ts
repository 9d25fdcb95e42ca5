/**
 * VM suite (opt-in: LIVEUP_VM_TESTS=1; root, qemu-system-x86, grub2-common,
 * grub-pc-bin). See docs/testing.md.
 *
 * 1. A generation built by `liveup build` boots from GRUB on a BIOS disk, and
 *    the initramfs script records it in /run/liveup/booted; the squashfs is
 *    verified in the initramfs (liveup.verify=1).
 * 2. A generation on trial whose squashfs was tampered with is refused by the
 *    initramfs (panic → reboot), and GRUB then boots the last good one.
 */
import { describe, expect, test, afterAll } from 'vitest';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { buildTestGeneration, MARKER, VM_CACHE } from './generation.js';
import { assembleDisk } from './disk.js';
import { bootVm, type Vm } from './qemu.js';

const RUN = process.env.LIVEUP_VM_TESTS === '1';
const vms: Vm[] = [];
afterAll(async () => { for (const v of vms) await v.stop(); });

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
  test('generation 1 boots, its squashfs verified, and /run/liveup/booted says 1', async () => {
    const p = await prepare();
    const image = join(p.work, 'disk.img');
    await assembleDisk({
      image, sizeMiB: 768, defaultVersion: 1,
      generations: [{ version: 1, gendir: p.gendir, name: 'vmtest', kernelVersion: p.kernelVersion, cmdline: p.cmdline, state: 'good' }],
    });
    const vm = bootVm({ image, consoleLog: join(p.work, 'console-boot1.log') });
    vms.push(vm);
    await vm.waitFor(/liveup: loading generation 1/, 60_000);
    await vm.waitFor(/liveup: \/live\/1\/filesystem.squashfs verified/, 120_000);
    const m = await vm.waitFor(new RegExp(`${MARKER} booted=(\\S+)\\s*$`, 'm'), 240_000);
    expect(m[1]).toBe('1');
    await vm.stop();
    rmSync(image, { force: true }); // the console log stays beside it
  }, 15 * 60_000);

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
    vms.push(vm);
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
});
