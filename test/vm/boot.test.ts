/**
 * VM suite (opt-in: LIVEUP_VM_TESTS=1; root, qemu-system-x86, grub2-common,
 * grub-pc-bin). See docs/testing.md.
 *
 * 1. A generation built by `liveup build` boots from GRUB on a BIOS disk, and
 *    the initramfs script records it in /run/liveup/booted.
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

describe.skipIf(!RUN)('VM: boot a generation from GRUB', () => {
  test('generation 1 boots and /run/liveup/booted says 1', async () => {
    const gen = buildTestGeneration((s) => console.log(s));
    const meta = JSON.parse(readFileSync(join(gen.gendir, 'generation.json'), 'utf8')) as { kernel: { version: string; cmdline: string } };
    const work = join(VM_CACHE, 'runs', `${Date.now()}`);
    mkdirSync(work, { recursive: true });
    const image = join(work, 'disk.img');
    assembleDisk({
      image, sizeMiB: 768, defaultVersion: 1,
      generations: [{
        version: 1, gendir: gen.gendir, name: 'vmtest', kernelVersion: meta.kernel.version,
        cmdline: `${meta.kernel.cmdline.replace(/\bquiet\b/, '')} console=ttyS0,115200`.replace(/\s+/g, ' ').trim(), state: 'good',
      }],
    });
    const vm = bootVm({ image, consoleLog: join(work, 'console-boot1.log') });
    vms.push(vm);
    await vm.waitFor(/liveup: loading generation 1/, 60_000);
    const m = await vm.waitFor(new RegExp(`${MARKER} booted=(\\S+)\\s*$`, 'm'), 240_000);
    expect(m[1]).toBe('1');
    await vm.stop();
    rmSync(image, { force: true }); // the console log stays beside it
  }, 15 * 60_000);
});
