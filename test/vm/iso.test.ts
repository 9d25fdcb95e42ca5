/**
 * VM suite (LIVEUP_VM_TESTS=1): the ISO written by `liveup iso` boots the
 * generation in QEMU from the CD drive, with SeaBIOS and with UEFI (OVMF),
 * and the booted system reports the generation it runs (/run/liveup/booted,
 * printed by the test generation's marker unit).
 */
import { describe, expect, test, afterAll } from 'vitest';
import { join } from 'node:path';
import { buildTestGeneration, MARKER, REPO, runAsync } from './generation.js';
import { dropRunBulk, newRunDir } from './cache.js';
import { bootVm, type Vm } from './qemu.js';

const RUN = process.env.LIVEUP_VM_TESTS === '1';
const vms: Vm[] = [];
afterAll(async () => { for (const v of vms) await v.stop(); });

describe.skipIf(!RUN)('VM: liveup iso boots with BIOS and UEFI', () => {
  let iso = '';
  let work = '';
  const prepare = async (): Promise<void> => {
    if (iso) return;
    const gen = await buildTestGeneration((s) => console.log(s));
    work = newRunDir('iso');
    iso = join(work, 'gen.iso');
    // As a user runs it; --version 5 shows the number on the medium is the one booted.
    await runAsync(join(REPO, 'bin', 'liveup'), ['iso', '--gendir', gen.gendir, '--out', iso, '--serial', '--version', '5']);
  };

  for (const firmware of ['bios', 'uefi'] as const) {
    test(`${firmware}: GRUB from the ISO boots generation 5 to multi-user`, async () => {
      await prepare();
      const log = join(work, `console-${firmware}.log`);
      const vm = bootVm({ cdrom: iso, uefi: firmware === 'uefi', consoleLog: log });
      vms.push(vm);
      await vm.waitFor(/liveup: loading generation 5/, 180_000);
      const m = await vm.waitFor(new RegExp(`${MARKER} booted=(\\S+)\\s*$`, 'm'), 300_000);
      expect(m[1]).toBe('5');
      await vm.stop();
    }, 10 * 60_000);
  }

  afterAll(() => { if (work) dropRunBulk(work); }); // the console logs stay, the ISO goes
});
