/** The initramfs script that records the booted generation, run with busybox-compatible sh on the host. */
import { describe, expect, test } from 'vitest';
import { execFileSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { tmp } from '../helpers/tmp.js';

const SCRIPT = join(import.meta.dirname, '../../initramfs-hooks/scripts/init-bottom/liveup');

async function runWith(cmdline: string): Promise<string | null> {
  const d = await tmp('liveup-initramfs-');
  await writeFile(join(d, 'cmdline'), cmdline + '\n');
  execFileSync('sh', [SCRIPT], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LIVEUP_CMDLINE_FILE: join(d, 'cmdline'), LIVEUP_RUN_DIR: join(d, 'run/liveup') } });
  const f = join(d, 'run/liveup/booted');
  return existsSync(f) ? readFile(f, 'utf8') : null;
}

describe('initramfs-hooks/scripts/init-bottom/liveup', () => {
  test('records liveup.generation=N', async () => {
    expect(await runWith('BOOT_IMAGE=/live/7/vmlinuz boot=live components live-media-path=/live/7 liveup.generation=7')).toBe('7\n');
  });
  test('ignores what is not a positive integer, and the absence of the parameter', async () => {
    expect(await runWith('boot=live liveup.generation=07')).toBeNull();
    expect(await runWith('boot=live liveup.generation=x1')).toBeNull();
    expect(await runWith('boot=live liveup.generation=')).toBeNull();
    expect(await runWith('boot=live quiet')).toBeNull();
    expect(await runWith('liveup.generationx=3')).toBeNull();
  });
  test('prereqs prints nothing to depend on', () => {
    expect(execFileSync('sh', [SCRIPT, 'prereqs'], { encoding: 'utf8' }).trim()).toBe('');
  });
  test.skipIf(!existsSync('/usr/bin/shellcheck'))('shellcheck-clean', () => {
    execFileSync('shellcheck', ['-s', 'sh', SCRIPT]);
  });
});
