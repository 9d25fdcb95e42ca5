/**
 * A partitioned disk image on a loop device, with its partitions' nodes.
 *
 * Why not `losetup -P`: it does not create partition nodes on every kernel
 * (it did not on these hosts). `partx -a` adds them with BLKPG, but such
 * partitions outlive `losetup -d` on a loop device without partscan: the next
 * image attached to that device finds a stale `loopNp1` of the old geometry,
 * `partx -a` fails ("error adding partition 1"), and a tool that ignored that
 * would format the old extents. So every attach first deletes what is there,
 * adds the image's table, and checks each partition's start and size in sysfs
 * against the MBR the image holds, asking again until they match.
 *
 * Tests only, to look inside images: `liveup disk` and the VM harness write
 * partitions with mkfs.ext4 -d at their offsets (publisher/src/disk.ts,
 * writeExt4), with no loop device and no mount.
 */
import { existsSync, openSync, readSync, closeSync, readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { LiveupError } from '../../agent/src/channel/errors.js';
import { run } from '../../publisher/src/exec.js';

export interface MbrEntry {
  readonly number: number;
  readonly startLba: number;
  readonly sectors: number;
}

export interface AttachedImage {
  /** /dev/loopN */
  readonly loop: string;
  /** The node of partition `n` (1-based): /dev/loopNpn. */
  dev(n: number): string;
  /** Deletes the partitions and detaches the loop device; safe to call twice. */
  detach(): Promise<void>;
}

/** The primary partitions of an MBR sector (the only table liveup writes). */
export function parseMbr(sector: Buffer): MbrEntry[] {
  if (sector.length < 512 || sector[510] !== 0x55 || sector[511] !== 0xaa) return [];
  const out: MbrEntry[] = [];
  for (let i = 0; i < 4; i++) {
    const e = 446 + i * 16;
    const type = sector[e + 4]!;
    const startLba = sector.readUInt32LE(e + 8);
    const sectors = sector.readUInt32LE(e + 12);
    if (type !== 0 && sectors > 0) out.push({ number: i + 1, startLba, sectors });
  }
  return out;
}

function readMbr(image: string): MbrEntry[] {
  const b = Buffer.alloc(512);
  const fd = openSync(image, 'r');
  try {
    readSync(fd, b, 0, 512, 0);
  } finally {
    closeSync(fd);
  }
  return parseMbr(b);
}

/** The kernel's directory for partition `n` of `loop` (/sys/block/loopN/loopNpn). */
function partSysfs(loop: string, n: number): string {
  const name = basename(loop);
  return `/sys/block/${name}/${name}p${n}`;
}

/** True when the kernel's view of partition `p` on `loop` is the image's. */
function matches(loop: string, p: MbrEntry): boolean {
  const sys = partSysfs(loop, p.number);
  try {
    return Number(readFileSync(`${sys}/start`, 'utf8')) === p.startLba
      && Number(readFileSync(`${sys}/size`, 'utf8')) === p.sectors
      && existsSync(`${loop}p${p.number}`);
  } catch {
    return false;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Attach `image` on the first free loop device, or on `device` when given (it must be free). */
export async function attachPartitioned(image: string, device?: string): Promise<AttachedImage> {
  const parts = readMbr(image);
  if (!parts.length) throw new LiveupError('INVALID_ARGUMENT', `${image} has no MBR partition table`, { image });
  const loop = device
    ? (await run('losetup', [device, image]), device)
    : (await run('losetup', ['-f', '--show', image])).stdout.trim();
  let attached = true;
  const detach = async (): Promise<void> => {
    if (!attached) return;
    attached = false;
    // udev's probe of a just-unmounted partition can hold it for a moment: delete, then ask again.
    for (let i = 0; i < 5; i++) {
      await run('partx', ['-d', loop], { okExitCodes: [0, 1] }).catch(() => undefined);
      if (!parts.some((p) => existsSync(partSysfs(loop, p.number)))) break;
      await sleep(200);
    }
    await run('losetup', ['-d', loop]);
  };
  try {
    for (let attempt = 0; ; attempt++) {
      // exit 1: nothing to delete, or some partitions already present; the sysfs check decides.
      await run('partx', ['-d', loop], { okExitCodes: [0, 1] });
      await run('partx', ['-a', loop], { okExitCodes: [0, 1] });
      for (let i = 0; i < 20 && !parts.every((p) => matches(loop, p)); i++) await sleep(100);
      if (parts.every((p) => matches(loop, p))) break;
      if (attempt === 10) {
        throw new LiveupError('BUILD_FAILED', `the partitions of ${image} did not appear on ${loop} as its table says (${parts.map((p) => `p${p.number}@${p.startLba}+${p.sectors}`).join(', ')})`, { image, loop });
      }
    }
  } catch (e) {
    await detach().catch(() => undefined);
    throw e;
  }
  return { loop, dev: (n) => `${loop}p${n}`, detach };
}
