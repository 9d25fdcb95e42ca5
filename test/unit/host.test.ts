/** Host facts read from files: the overlay's lower layer on `/` (mountinfo), the booted generation. */
import { describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmp } from '../helpers/tmp.js';
import { rootLowerDir } from '../../agent/src/adapters/host.js';
import { readBootedVersion } from '../../agent/src/adapters/booted.js';

async function mountinfo(lines: string[]): Promise<string> {
  const f = join(await tmp('liveup-mountinfo-'), 'mountinfo');
  writeFileSync(f, lines.join('\n') + '\n');
  return f;
}

// As a live-boot machine shows it (Debian 13, trimmed).
const LIVE_BOOT = '27 1 0:27 / / rw,noatime shared:1 - overlay overlay rw,lowerdir=/run/live/rootfs/filesystem.squashfs/,upperdir=/run/live/overlay/rw,workdir=/run/live/overlay/work,uuid=on';
const RUN = '25 27 0:24 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,size=403656k,mode=755';

describe('rootLowerDir', () => {
  it('is live-boot\'s squashfs mount after a boot', async () => {
    expect(await rootLowerDir(await mountinfo([LIVE_BOOT, RUN]))).toBe('/run/live/rootfs/filesystem.squashfs/');
  });

  it('is the agent\'s next-root lower after a soft-reboot (the root mounted last is the visible one)', async () => {
    const soft = '310 1 0:61 / / rw,relatime shared:150 - overlay overlay rw,lowerdir=/run/liveup/nextroot/lower,upperdir=/run/liveup/nextroot/rw/upper,workdir=/run/liveup/nextroot/rw/work';
    expect(await rootLowerDir(await mountinfo([LIVE_BOOT, RUN, soft]))).toBe('/run/liveup/nextroot/lower');
  });

  it('takes the topmost of several lower layers, and decodes escapes', async () => {
    const multi = '27 1 0:27 / / rw - overlay overlay rw,lowerdir=/run/a\\040b:/run/c,upperdir=/u,workdir=/w';
    expect(await rootLowerDir(await mountinfo([multi]))).toBe('/run/a b');
  });

  it('is null when / is not an overlay, or the file cannot be read', async () => {
    expect(await rootLowerDir(await mountinfo(['22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro', RUN]))).toBeNull();
    expect(await rootLowerDir(await mountinfo([LIVE_BOOT, '40 1 254:1 / / rw - ext4 /dev/vda1 rw']))).toBeNull();
    expect(await rootLowerDir('/nonexistent/mountinfo')).toBeNull();
  });
});

describe('readBootedVersion', () => {
  const dirWith = async (booted: string | null, cmdline: string): Promise<{ runDir: string; cmdline: string }> => {
    const runDir = await tmp('liveup-run-');
    if (booted !== null) writeFileSync(join(runDir, 'booted'), booted);
    writeFileSync(join(runDir, 'cmdline'), cmdline);
    return { runDir, cmdline: join(runDir, 'cmdline') };
  };

  it('is what the initramfs recorded, over the command line', async () => {
    const d = await dirWith('7\n', 'boot=live liveup.generation=6');
    expect(await readBootedVersion(d.runDir, d.cmdline)).toBe(7);
  });

  it('falls back to liveup.generation= on the command line when nothing was recorded', async () => {
    const d = await dirWith(null, 'boot=live liveup.generation=6 quiet\n');
    expect(await readBootedVersion(d.runDir, d.cmdline)).toBe(6);
  });

  it('is null for a machine not booted by liveup, and ignores a garbled record', async () => {
    const d = await dirWith('seven', 'boot=live liveup.generation=06x');
    expect(await readBootedVersion(d.runDir, d.cmdline)).toBeNull();
  });
});
