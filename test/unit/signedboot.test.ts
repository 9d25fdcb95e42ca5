/**
 * Signed boot's pure pieces: the publisher's boot.cfg, the static menu built
 * into the GRUB image, and the grubenv values the agent writes for it. The
 * texts are checked by GRUB's own parser (grub-script-check); what GRUB does
 * with them at boot is proven in test/vm/signedboot.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type BootMenuGeneration, ENV_TRIES_LEFT, ENV_TRY_VERSION } from '../../agent/src/core/bootmenu.js';
import {
  ENV_DEFAULT, ENV_FALLBACK, GOOD_ENV_FILE, renderBootCfg, renderEarlyConfig, renderStaticMenu, signedBootEnv,
} from '../../agent/src/core/signedboot.js';
import { run } from '../../agent/src/adapters/exec.js';
import { tmp } from '../helpers/tmp.js';

async function grubScriptCheck(text: string): Promise<void> {
  const f = join(await tmp(), 'x.cfg');
  await writeFile(f, text);
  await run('grub-script-check', [f], { timeoutMs: 10_000 });
}

const SHA = 'ab'.repeat(64);
const gen = (version: number, state: BootMenuGeneration['state']): BootMenuGeneration => ({ version, name: `g${version}`, kernelVersion: 'k', cmdline: 'boot=live', state });

describe('boot.cfg (signed by the publisher)', () => {
  it('checks initrd and kernel before loading the kernel, and carries the squashfs digest on the command line', async () => {
    const cfg = renderBootCfg({ version: 7, cmdline: 'boot=live components toram liveup.squashfs_sha512=forged live-media-path=/x', squashfsSha512: SHA });
    await grubScriptCheck(cfg);
    const lines = cfg.split('\n').map((l) => l.trim());
    const verify = lines.indexOf('if verify_detached /live/7/initrd.img /live/7/initrd.img.sig ; then');
    const verifyKernel = lines.indexOf('if verify_detached /live/7/vmlinuz /live/7/vmlinuz.sig ; then');
    const linux = lines.findIndex((l) => l.startsWith('linux /live/7/vmlinuz '));
    expect(verify).toBeGreaterThanOrEqual(0);
    // Refused inside an `if`: no error printed, so GRUB goes on to the fallback without its 10 s "Press any key".
    expect(verifyKernel).toBeGreaterThan(verify);
    expect(linux).toBeGreaterThan(verifyKernel);
    expect(lines[linux + 1]).toBe('initrd /live/7/initrd.img');
    // The manifest's forged copies are dropped: only liveup's own values reach the kernel.
    expect(lines[linux]).toBe(`linux /live/7/vmlinuz boot=live components toram live-media-path=/live/7 liveup.generation=7 liveup.squashfs_sha512=${SHA}`);
  });

  it('quotes what GRUB would expand and refuses what it cannot carry', () => {
    expect(renderBootCfg({ version: 2, cmdline: 'boot=live x=$y', squashfsSha512: SHA })).toContain("'x=$y'");
    expect(() => renderBootCfg({ version: 2, cmdline: 'boot=live', squashfsSha512: 'ABC' })).toThrow(/not lower-case hex/);
    expect(() => renderBootCfg({ version: 2, cmdline: 'a="b"', squashfsSha512: SHA })).toThrow(/quotes/);
  });
});

describe('the static menu (built into the GRUB image)', () => {
  const menu = renderStaticMenu({ serial: true, timeoutSeconds: 1, diskVersion: 3 });

  it('is valid GRUB script, turns enforcement on before reading anything, and reads grubenv only by whitelist', async () => {
    await grubScriptCheck(menu);
    await grubScriptCheck(renderEarlyConfig('/live/.liveup-boot'));
    const lines = menu.split('\n').filter((l) => l.trim() && !l.startsWith('#'));
    expect(lines[0]).toBe('set check_signatures=enforce');
    const loads = lines.filter((l) => l.includes('load_env'));
    expect(loads).toEqual([
      `load_env --skip-sig -f "(\${root})/grub/grubenv" ${ENV_DEFAULT} ${ENV_FALLBACK} next_entry ${ENV_TRY_VERSION} ${ENV_TRIES_LEFT}`,
      `load_env --skip-sig -f "(\${root})/grub/${GOOD_ENV_FILE}" ${ENV_DEFAULT} ${ENV_FALLBACK}`,
    ]);
    // No insmod (modules from disk would need signatures: all are built in) and no unchecked file test.
    expect(menu).not.toMatch(/insmod|\[ -s/);
    // Nothing but liveup_boot, which matches a generation number before it sources a boot.cfg.
    expect(menu).toContain(`if regexp '^[1-9][0-9]{0,15}$' "$1" ; then`);
    expect(menu).toMatch(/if verify_detached "\/live\/\$1\/boot\.cfg" "\/live\/\$1\/boot\.cfg\.sig" ; then\s+source "\/live\/\$1\/boot\.cfg"/);
  });

  it('falls back through the last good, the previous good and the disk\'s own generation', () => {
    expect(menu).toMatch(/^set default=0$/m);
    expect(menu).toMatch(/^set fallback="1 2 3"$/m);
    const ids = [...menu.matchAll(/^menuentry .* --id (\S+) /gm)].map((m) => m[1]);
    expect(ids).toEqual(['liveup-chosen', 'liveup-default', 'liveup-fallback', 'liveup-disk']);
    // A missing or garbled default (corrupt grubenv and good block) becomes the disk's generation.
    expect(menu).toContain(`if ! regexp '^[1-9][0-9]{0,15}$' "\${${ENV_DEFAULT}}" ; then set ${ENV_DEFAULT}=3 ; fi`);
    expect(menu).toMatch(/--id liveup-disk [^\n]*\{\n {2}liveup_boot 3\n\}/);
  });

  it('spends a trial attempt only once its decrement is saved, as the rendered menu does', () => {
    expect(menu).toContain(`elif regexp '^[1-9][0-9]{0,15}$' "\${${ENV_TRY_VERSION}}" ; then`);
    for (let n = 1; n <= 9; n++) {
      expect(menu).toContain(`[ "\${${ENV_TRIES_LEFT}}" = "${n}" ] ; then\n    set ${ENV_TRIES_LEFT}=${n - 1}\n    if save_env -f "(\${root})/grub/grubenv" ${ENV_TRIES_LEFT} ; then set liveup_chosen="\${${ENV_TRY_VERSION}}" ; fi`);
    }
  });

  it('the embedded config finds the boot partition with checks off, then hands over to the memdisk menu', () => {
    expect(renderEarlyConfig('/live/.liveup-boot').split('\n').filter(Boolean)).toEqual([
      'set check_signatures=no', 'search --no-floppy --set=root --file /live/.liveup-boot', 'set prefix=(memdisk)',
    ]);
    expect(() => renderEarlyConfig('/x;y')).toThrow(/plain names/);
  });
});

describe('what the agent writes for it', () => {
  it('the last good, the newest other good, and a trial only for a staged or booted generation', () => {
    const gens = [gen(2, 'good'), gen(3, 'failed'), gen(4, 'good'), gen(5, 'good'), gen(6, 'staged')];
    expect(signedBootEnv({ generations: gens, defaultVersion: 4, tryVersion: 6 }, 3)).toEqual({
      good: { [ENV_DEFAULT]: '4', [ENV_FALLBACK]: '5' },
      trial: { [ENV_TRY_VERSION]: '6', [ENV_TRIES_LEFT]: '3' },
    });
    expect(signedBootEnv({ generations: [gen(2, 'good')], defaultVersion: 2, tryVersion: null }, 3)).toEqual({ good: { [ENV_DEFAULT]: '2', [ENV_FALLBACK]: '2' }, trial: null });
    expect(() => signedBootEnv({ generations: gens, defaultVersion: 3, tryVersion: null }, 3)).toThrow(/is failed, not good/);
    expect(() => signedBootEnv({ generations: gens, defaultVersion: 4, tryVersion: 3 }, 3)).toThrow(/only staged or booted/);
    expect(() => signedBootEnv({ generations: gens, defaultVersion: 4, tryVersion: 9 }, 3)).toThrow(/not among/);
  });
});
