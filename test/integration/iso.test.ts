/**
 * `liveup iso` as a user runs it: a real grub-mkrescue/xorriso image, read
 * back with xorriso. That it boots is proven in QEMU (BIOS and UEFI) by
 * test/vm/iso.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmp } from '../helpers/tmp.js';
import { makeGendir, makeKey } from '../helpers/fixtures.js';
import { runCli } from '../helpers/cli.js';
import { publish } from '../../publisher/src/publish.js';

/** Extracts one file from the ISO. */
function extract(iso: string, path: string, to: string): Buffer {
  execFileSync('xorriso', ['-osirrox', 'on', '-indev', iso, '-extract', path, to], { stdio: 'ignore' });
  return readFileSync(to);
}

const sha512 = (b: Buffer): string => createHash('sha512').update(b).digest('hex');

describe('liveup iso', () => {
  it('writes a hybrid image that boots with BIOS and UEFI, holding the generation and a valid GRUB menu', async () => {
    const dir = await tmp();
    const gen = await makeGendir(dir);
    await writeFile(join(gen, 'generation.json'), JSON.stringify({ name: 'kiosk-7', kernel: { version: '6.12.0-test', cmdline: 'boot=live components quiet' } }));
    const iso = join(dir, 'out', 'kiosk.iso');
    execFileSync('mkdir', ['-p', join(dir, 'out')]);
    const r = await runCli('liveup', ['iso', '--gendir', gen, '--out', iso, '--serial', '--append', 'toram', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const res = JSON.parse(r.stdout) as { path: string; version: number; firmware: string[]; bytes: number };
    expect(res).toMatchObject({ path: iso, version: 1, firmware: ['bios', 'uefi'] });

    const report = execFileSync('xorriso', ['-indev', iso, '-report_el_torito', 'plain'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    expect(report).toMatch(/El Torito boot img\s*:\s*\d+\s+BIOS/);
    expect(report).toMatch(/El Torito boot img\s*:\s*\d+\s+UEFI/);
    // Hybrid: an MBR partition table too, so `dd` to a USB stick boots.
    expect(readFileSync(iso).subarray(510, 512).toString('hex')).toBe('55aa');

    const squash = extract(iso, '/live/1/filesystem.squashfs', join(dir, 'x.squashfs'));
    expect(sha512(squash)).toBe(sha512(readFileSync(join(gen, 'filesystem.squashfs'))));
    const cfg = extract(iso, '/boot/grub/grub.cfg', join(dir, 'grub.cfg')).toString();
    execFileSync('grub-script-check', [join(dir, 'grub.cfg')]);
    expect(cfg).toMatch(/insmod iso9660/);
    expect(cfg).toMatch(/search --no-floppy --set=root --file '?\/live\/1\/vmlinuz/);
    expect(cfg).toMatch(/kiosk-7/);
    const linux = /^\s*linux\s+(\S+)\s+(.*)$/m.exec(cfg);
    expect(linux?.[1]).toBe('/live/1/vmlinuz');
    const params = linux?.[2]?.split(/\s+/) ?? [];
    expect(params).toEqual(expect.arrayContaining(['boot=live', 'live-media-path=/live/1', 'liveup.generation=1', 'console=ttyS0,115200', 'toram']));
    expect(cfg).toMatch(/^\s*initrd\s+\/live\/1\/initrd\.img/m);
    // Nothing left beside the ISO.
    expect(await readdir(join(dir, 'out'))).toEqual(['kiosk.iso']);
  });

  it('a published generation boots under its own version, with its signed manifest on the medium', async () => {
    const dir = await tmp();
    const key = await makeKey(dir);
    const repo = join(dir, 'repo');
    for (const m of ['one', 'two']) {
      await publish({ repo, channel: 'stable', gendir: await makeGendir(join(dir, m), { marker: m }), keys: [key.priv], indexTtlMs: 86400e3, manifestTtlMs: 86400e3 });
    }
    const iso = join(dir, 'two.iso');
    const r = await runCli('liveup', ['iso', '--gendir', join(repo, 'generations', '2'), '--out', iso]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/generation 2, .* boots with BIOS and UEFI/);
    const listing = execFileSync('xorriso', ['-indev', iso, '-find', '/live', '-type', 'f'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    for (const f of ['filesystem.squashfs', 'vmlinuz', 'initrd.img', 'manifest.json', 'manifest.json.sig']) expect(listing).toContain(`/live/2/${f}`);
  });

  it('bad input: a generation missing its kernel, an existing ISO, a bad --version: clear errors, nothing written', async () => {
    const dir = await tmp();
    const gen = await makeGendir(dir);
    const iso = join(dir, 'a.iso');
    await rm(join(gen, 'vmlinuz'));
    const missing = await runCli('liveup', ['iso', '--gendir', gen, '--out', iso]);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toMatch(/GENERATION_INVALID: .*missing vmlinuz/);
    expect(existsSync(iso)).toBe(false);

    await writeFile(join(gen, 'vmlinuz'), 'k');
    await writeFile(iso, 'precious');
    const exists = await runCli('liveup', ['iso', '--gendir', gen, '--out', iso]);
    expect(exists.code).not.toBe(0);
    expect(exists.stderr).toMatch(/ALREADY_EXISTS: .*a\.iso exists; pass --force/);
    expect(readFileSync(iso, 'utf8')).toBe('precious');

    const badVersion = await runCli('liveup', ['iso', '--gendir', gen, '--out', join(dir, 'b.iso'), '--version', 'zero']);
    expect(badVersion.code).not.toBe(0);
    expect(badVersion.stderr).toMatch(/--version/);
    expect((await readdir(dir)).filter((n) => n.includes('.iso'))).toEqual(['a.iso']);
  });
});
