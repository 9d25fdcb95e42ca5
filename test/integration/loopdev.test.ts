/**
 * attachPartitioned on real loop devices: partitions added with BLKPG outlive
 * `losetup -d`, so a device reused for another image holds stale nodes of the
 * old geometry (CI failed on exactly that: "partx: error adding partition 1").
 */
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { tmp } from '../helpers/tmp.js';
import { mbrSector, planPartitions, writeBlankImage } from '../../publisher/src/disk.js';
import { attachPartitioned, parseMbr } from '../helpers/loopdev.js';

const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

function image(path: string, sizeMiB: number, parts: { number: number; startLba: number; sectors: number }[]): void {
  if (parts.length) writeBlankImage(path, sizeMiB, parts.map((p) => ({ ...p, type: 0x83, bootable: false })));
  else writeFileSync(path, Buffer.alloc(sizeMiB * 1024 * 1024)); // no table at all
}

const sysParts = (loop: string) => {
  const n = basename(loop);
  try {
    return sh('ls', [`/sys/block/${n}`]).split('\n').filter((f) => f.startsWith(`${n}p`)).sort();
  } catch {
    return [];
  }
};

describe('loop devices for disk images', () => {
  it('reads back the MBR liveup writes', () => {
    const parts = planPartitions({ sizeMiB: 400, dataMiB: 64, espMiB: 64 });
    expect(parseMbr(mbrSector(parts))).toEqual(parts.map((p) => ({ number: p.number, startLba: p.startLba, sectors: p.sectors })));
    expect(parseMbr(Buffer.alloc(512))).toEqual([]); // no 55aa signature
  });

  it('replaces stale partitions a previous image left on the device, and leaves none behind', async () => {
    const dir = await tmp();
    const old = join(dir, 'old.img');
    const img = join(dir, 'new.img');
    image(old, 64, [{ number: 1, startLba: 2048, sectors: 100_000 }]);
    image(img, 96, [{ number: 1, startLba: 4096, sectors: 40_000 }, { number: 2, startLba: 50_000, sectors: 60_000 }]);
    // What an earlier user left: partitions added by partx, the device detached without partx -d.
    const loop = sh('losetup', ['-f', '--show', old]).trim();
    sh('partx', ['-a', loop]);
    sh('losetup', ['-d', loop]);
    expect(sysParts(loop)).toEqual([`${basename(loop)}p1`]);

    const att = await attachPartitioned(img, loop);
    try {
      const sys = `/sys/block/${basename(loop)}/${basename(loop)}p`;
      expect([sh('cat', [`${sys}1/start`]).trim(), sh('cat', [`${sys}1/size`]).trim()]).toEqual(['4096', '40000']);
      expect([sh('cat', [`${sys}2/start`]).trim(), sh('cat', [`${sys}2/size`]).trim()]).toEqual(['50000', '60000']);
      sh('mkfs.ext4', ['-q', '-F', '-L', 'LOOPTEST', att.dev(2)]);
      expect(sh('blkid', ['-s', 'LABEL', '-o', 'value', att.dev(2)]).trim()).toBe('LOOPTEST');
    } finally {
      await att.detach();
    }
    expect(sysParts(loop)).toEqual([]);
    expect(sh('losetup', ['-j', img]).trim()).toBe('');
    await att.detach(); // twice is harmless
  });

  it('refuses an image without a partition table and attaches nothing', async () => {
    const dir = await tmp();
    const img = join(dir, 'blank.img');
    image(img, 8, []);
    await expect(attachPartitioned(img)).rejects.toThrow(`${img} has no MBR partition table`);
    expect(sh('losetup', ['-j', img]).trim()).toBe('');
    expect(existsSync(img)).toBe(true);
  });
});
