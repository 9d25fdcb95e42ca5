/** soft-reboot's /run/nextroot, mounted for real into a temporary directory (root only). */
import { describe, expect, it } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readlinkSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmp } from '../helpers/tmp.js';
import { handOverToNextRoot, prepareNextRoot, teardownNextRoot } from '../../agent/src/adapters/nextroot.js';
import { dropWarm, prewarm, residentFiles, warmMounts } from '../../agent/src/adapters/prewarm.js';
import { bootId } from '../../agent/src/adapters/host.js';
import { run } from '../../agent/src/adapters/exec.js';
import type { Runner } from '../../agent/src/adapters/exec.js';

const mounted = (p: string, pid: number | 'self' = 'self') => readFileSync(`/proc/${pid}/mounts`, 'utf8').split('\n').some((l) => l.split(' ')[1] === p);

/**
 * A process in a mount namespace of its own (private: nothing propagates
 * either way), standing for PID 1 while the test plays a sandboxed agent.
 */
async function namespaceHolder(): Promise<ChildProcess & { pid: number }> {
  const child = spawn('unshare', ['--mount', '--propagation', 'private', 'sleep', '600'], { stdio: 'ignore' });
  const ours = readlinkSync('/proc/self/ns/mnt');
  for (let i = 0; i < 100; i++) {
    const theirs = child.pid ? (() => { try { return readlinkSync(`/proc/${child.pid}/ns/mnt`); } catch { return ours; } })() : ours;
    if (theirs !== ours) return child as ChildProcess & { pid: number };
    await new Promise((r) => setTimeout(r, 20));
  }
  child.kill();
  throw new Error('unshare did not enter a new mount namespace');
}

async function squashfsWithGeneration(dir: string, generation: string): Promise<string> {
  await mkdir(join(dir, 'tree', 'etc'), { recursive: true });
  await writeFile(join(dir, 'tree', 'etc', 'generation'), generation);
  execFileSync('mksquashfs', [join(dir, 'tree'), join(dir, 'fs.squashfs'), '-quiet', '-no-progress']);
  return join(dir, 'fs.squashfs');
}

describe.skipIf(process.getuid?.() !== 0)('prepareNextRoot', () => {
  it('the target generation is writable on top of its read-only image, persistent data is the same directory', async () => {
    const dir = await tmp();
    await squashfsWithGeneration(dir, '4\n');
    const data = join(dir, 'data');
    await mkdir(data);
    await writeFile(join(data, 'journal.db'), 'state');
    const o = { squashfs: join(dir, 'fs.squashfs'), nextroot: join(dir, 'nextroot'), scratch: join(dir, 'scratch'), persistent: [data] };
    const mounts = await prepareNextRoot(o);
    try {
      expect(readFileSync(join(o.nextroot, 'etc', 'generation'), 'utf8')).toBe('4\n');
      await writeFile(join(o.nextroot, 'etc', 'new'), 'x'); // the overlay's tmpfs upper takes writes
      expect(readFileSync(join(o.nextroot, data, 'journal.db'), 'utf8')).toBe('state');
      await writeFile(join(o.nextroot, data, 'written-from-next'), 'y');
      expect(readFileSync(join(data, 'written-from-next'), 'utf8')).toBe('y');
    } finally {
      await teardownNextRoot(mounts);
    }
    for (const m of mounts) expect(mounted(m)).toBe(false);
  });

  it('from a sandboxed namespace, the new root is mounted where PID 1 looks (nsenter), not in the caller\'s', async () => {
    // The agent's unit has ProtectControlGroups=yes, so its own (slave) mount namespace; systemd
    // soft-reboots into whatever *its* namespace has at /run/nextroot.
    const dir = await tmp();
    const init = await namespaceHolder();
    try {
      const o = { squashfs: await squashfsWithGeneration(dir, '5\n'), nextroot: join(dir, 'nextroot'), scratch: join(dir, 'scratch'), initPid: init.pid };
      const mounts = await prepareNextRoot(o);
      expect(mounts).toContain(o.nextroot);
      expect(mounted(o.nextroot, init.pid)).toBe(true);
      expect(mounted(o.nextroot)).toBe(false);
      expect(readFileSync(join(`/proc/${init.pid}/root`, o.nextroot, 'etc', 'generation'), 'utf8')).toBe('5\n');
      // The hand-over writes into the new root as PID 1 sees it.
      await writeFile(join(dir, 'machine-id'), '0123456789abcdef0123456789abcdef\n');
      await handOverToNextRoot({ runDir: join(dir, 'run'), version: 5, nextroot: o.nextroot, machineId: join(dir, 'machine-id'), initPid: init.pid });
      expect(readFileSync(join(`/proc/${init.pid}/root`, o.nextroot, 'etc', 'machine-id'), 'utf8')).toBe('0123456789abcdef0123456789abcdef\n');
      await teardownNextRoot(mounts, undefined, init.pid);
      for (const m of mounts) expect(mounted(m, init.pid)).toBe(false);
    } finally {
      init.kill();
    }
  });

  it('a new root that PID 1 cannot see is refused and unmounted', async () => {
    const dir = await tmp();
    const init = await namespaceHolder();
    // A sandbox that swallows the mount: it lands in the caller's namespace only.
    const swallowing: Runner = (cmd, args, opts) => (cmd === 'nsenter' ? run(args[2]!, args.slice(3), opts) : run(cmd, args, opts));
    try {
      const o = { squashfs: await squashfsWithGeneration(dir, '5\n'), nextroot: join(dir, 'nextroot'), scratch: join(dir, 'scratch'), initPid: init.pid };
      await expect(prepareNextRoot(o, swallowing)).rejects.toThrow(/not mounted where PID \d+ \(systemd\) looks/);
      for (const p of [join(dir, 'scratch', 'lower'), join(dir, 'scratch', 'rw'), o.nextroot]) expect(mounted(p)).toBe(false);
    } finally {
      init.kill();
    }
  });

  it('a step that fails undoes the mounts before it', async () => {
    const dir = await tmp();
    execFileSync('mksquashfs', [dir, join(dir, 'fs.squashfs'), '-quiet', '-no-progress']);
    const o = { squashfs: join(dir, 'fs.squashfs'), nextroot: join(dir, 'nextroot'), scratch: join(dir, 'scratch'), persistent: [join(dir, 'does-not-exist')] };
    // The mount's own words, naming what is missing, not the script that ran it.
    await expect(prepareNextRoot(o)).rejects.toThrow(new RegExp(`^mounting the new root at ${o.nextroot} failed: mount: .*does-not-exist`));
    for (const p of [join(dir, 'scratch', 'lower'), join(dir, 'scratch', 'rw'), o.nextroot]) expect(mounted(p)).toBe(false);
    expect(existsSync(join(dir, 'scratch', 'lower'))).toBe(true); // directories may stay; mounts may not
  });

  it('the hand-over names the target in /run, gives the new userspace its own boot id and the machine id; undo restores', async () => {
    const dir = await tmp();
    const run = join(dir, 'run');
    await mkdir(run);
    await writeFile(join(run, 'booted'), '3\n');
    await writeFile(join(dir, 'boot_id'), 'kernel-boot\n');
    await writeFile(join(dir, 'machine-id'), '0123456789abcdef0123456789abcdef\n');
    const nextroot = join(dir, 'nextroot');
    expect(await bootId(join(dir, 'boot_id'), join(run, 'soft-reboot-id'))).toBe('kernel-boot');

    const undo = await handOverToNextRoot({ runDir: run, version: 5, nextroot, machineId: join(dir, 'machine-id') });
    expect(readFileSync(join(run, 'booted'), 'utf8')).toBe('5\n');
    expect(readFileSync(join(nextroot, 'etc', 'machine-id'), 'utf8')).toBe('0123456789abcdef0123456789abcdef\n');
    const soft = await bootId(join(dir, 'boot_id'), join(run, 'soft-reboot-id'));
    expect(soft).toMatch(/^kernel-boot\+[0-9a-f-]{36}$/);
    // A second soft-reboot is another userspace boot again.
    await handOverToNextRoot({ runDir: run, version: 6, nextroot, machineId: join(dir, 'machine-id') });
    expect(await bootId(join(dir, 'boot_id'), join(run, 'soft-reboot-id'))).not.toBe(soft);

    await undo(); // back to what the first hand-over found
    expect(readFileSync(join(run, 'booted'), 'utf8')).toBe('3\n');
    expect(existsSync(join(run, 'soft-reboot-id'))).toBe(false);
    expect(await bootId(join(dir, 'boot_id'), join(run, 'soft-reboot-id'))).toBe('kernel-boot');
  });

  it('a hand-over that cannot complete changes nothing in /run', async () => {
    const dir = await tmp();
    const run = join(dir, 'run');
    await mkdir(run);
    await writeFile(join(run, 'booted'), '3\n');
    await expect(handOverToNextRoot({ runDir: run, version: 5, nextroot: join(dir, 'nextroot'), machineId: join(dir, 'no-machine-id') })).rejects.toThrow(/no-machine-id/);
    expect(readFileSync(join(run, 'booted'), 'utf8')).toBe('3\n');
    expect(existsSync(join(run, 'soft-reboot-id'))).toBe(false);
  });
});

const MiB = 1 << 20;
/** Bytes of `file` in the page cache (util-linux fincore). */
const resident = (file: string): number => Number(execFileSync('fincore', ['-b', '-n', '-o', 'RES', file], { encoding: 'utf8' }).trim());
/** The source (the loop device) of the mount at `p`, from mountinfo: the field after the filesystem type. */
const sourceOf = (p: string, pid: number | 'self' = 'self'): string | undefined => {
  const line = readFileSync(`/proc/${pid}/mountinfo`, 'utf8').split('\n').find((l) => l.split(' ')[4] === p);
  return line?.split(' - ')[1]?.split(' ')[1];
};

/** An image with a program and two libraries of incompressible bytes, without fragments like the factory's. */
async function imageWithPrograms(dir: string): Promise<string> {
  for (const [f, size] of [['usr/bin/prog', 3 * MiB], ['usr/lib/libbig.so', 5 * MiB], ['usr/lib/libcold.so', 2 * MiB]] as const) {
    await mkdir(join(dir, 'tree', f, '..'), { recursive: true });
    await writeFile(join(dir, 'tree', f), randomBytes(size));
  }
  execFileSync('mksquashfs', [join(dir, 'tree'), join(dir, 'fs.squashfs'), '-no-fragments', '-quiet', '-no-progress']);
  return join(dir, 'fs.squashfs');
}

describe.skipIf(process.getuid?.() !== 0)('prewarm: a staged soft-reboot target read into memory ahead of the switch', () => {
  it('the soft-reboot\'s own mount of the target finds the files read ahead in memory, and only those', async () => {
    const dir = await tmp();
    const squashfs = await imageWithPrograms(dir);
    const warmDir = join(dir, 'warm');
    const files = ['/usr/bin/prog', '/usr/lib/libbig.so', '/usr/lib/gone.so', '/usr/lib'];
    try {
      expect(await prewarm({ squashfs, version: 5, files, maxBytes: 64 * MiB, dir: warmDir })).toEqual({ mount: join(warmDir, '5'), files: 2, bytes: 8 * MiB, missing: 2, truncated: false });
      // Again (a later check while the switch waits): the same mount, read again.
      expect((await prewarm({ squashfs, version: 5, files, maxBytes: 64 * MiB, dir: warmDir })).files).toBe(2);
      expect(await warmMounts({ dir: warmDir })).toEqual([5]);
      const o = { squashfs, nextroot: join(dir, 'nextroot'), scratch: join(dir, 'scratch') };
      const mounts = await prepareNextRoot(o);
      try {
        const lower = join(o.scratch, 'lower');
        // The same loop device, hence the same squashfs superblock and page cache.
        expect(sourceOf(lower)).toMatch(/^\/dev\/loop\d+$/);
        expect(sourceOf(lower)).toBe(sourceOf(join(warmDir, '5')));
        expect(resident(join(lower, 'usr/bin/prog'))).toBe(3 * MiB);
        expect(resident(join(lower, 'usr/lib/libbig.so'))).toBe(5 * MiB);
        expect(resident(join(lower, 'usr/lib/libcold.so'))).toBe(0);
      } finally {
        await teardownNextRoot(mounts);
      }
    } finally {
      expect(await dropWarm(() => true, { dir: warmDir })).toEqual([5]);
    }
    expect(await warmMounts({ dir: warmDir })).toEqual([]);
    expect(mounted(join(warmDir, '5'))).toBe(false);
  });

  it('stops at the byte budget and says so; another version\'s mount is dropped, not this one\'s', async () => {
    const dir = await tmp();
    const squashfs = await imageWithPrograms(dir);
    const warmDir = join(dir, 'warm');
    try {
      const r = await prewarm({ squashfs, version: 6, files: ['/usr/bin/prog', '/usr/lib/libbig.so', '/usr/lib/libcold.so'], maxBytes: 4 * MiB, dir: warmDir });
      expect(r).toMatchObject({ files: 2, bytes: 4 * MiB, truncated: true });
      expect(resident(join(warmDir, '6', 'usr/lib/libcold.so'))).toBe(0);
      await prewarm({ squashfs, version: 7, files: [], maxBytes: MiB, dir: warmDir });
      expect(await warmMounts({ dir: warmDir })).toEqual([6, 7]);
      expect(await dropWarm((v) => v !== 7, { dir: warmDir })).toEqual([6]);
      expect(await warmMounts({ dir: warmDir })).toEqual([7]);
    } finally {
      await dropWarm(() => true, { dir: warmDir });
    }
  });

  it('from a sandboxed namespace, mounts where PID 1 keeps it (it outlives the agent\'s namespace)', async () => {
    const dir = await tmp();
    const init = await namespaceHolder();
    const warmDir = join(dir, 'warm');
    try {
      const r = await prewarm({ squashfs: await imageWithPrograms(dir), version: 5, files: ['/usr/bin/prog'], maxBytes: 64 * MiB, dir: warmDir, initPid: init.pid });
      expect(r).toMatchObject({ files: 1, bytes: 3 * MiB });
      expect(mounted(join(warmDir, '5'), init.pid)).toBe(true);
      expect(mounted(join(warmDir, '5'))).toBe(false);
      expect(await warmMounts({ dir: warmDir, initPid: init.pid })).toEqual([5]);
      expect(await dropWarm(() => true, { dir: warmDir, initPid: init.pid })).toEqual([5]);
      expect(mounted(join(warmDir, '5'), init.pid)).toBe(false);
    } finally {
      init.kill();
    }
  });

  it('lists the files of the running image that have pages in memory, read through the overlay on it, and only those', async () => {
    const dir = await tmp();
    const image = join(dir, 'image');
    const over = { upper: join(dir, 'up'), work: join(dir, 'work'), root: join(dir, 'root') };
    for (const d of [image, ...Object.values(over)]) await mkdir(d);
    const squashfs = await imageWithPrograms(dir);
    execFileSync('mount', ['-t', 'squashfs', '-o', 'ro,loop', squashfs, image]);
    try {
      execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${image},upperdir=${over.upper},workdir=${over.work}`, over.root]);
      try {
        // As the machine runs: its programs are read through the overlay on / .
        readFileSync(join(over.root, 'usr/bin/prog'));
        readFileSync(join(over.root, 'usr/lib/libbig.so'));
        expect(await residentFiles(image)).toEqual(['/usr/bin/prog', '/usr/lib/libbig.so']);
        expect(await residentFiles(image, ['missing'])).toEqual([]);
        // Without fincore (the package's Depends util-linux-extra not there): an error saying so.
        const noFincore: Runner = (cmd, args, opts) => run(cmd, args, { ...opts, env: { PATH: join(dir, 'no-tools') } });
        await expect(residentFiles(image, ['usr'], noFincore)).rejects.toThrow(/fincore not found \(util-linux-extra\)/);
      } finally {
        execFileSync('umount', [over.root]);
      }
    } finally {
      execFileSync('umount', [image]);
    }
  });

  it('a target that cannot be mounted is an error naming it, and leaves no mount', async () => {
    const dir = await tmp();
    const warmDir = join(dir, 'warm');
    await expect(prewarm({ squashfs: join(dir, 'missing.squashfs'), version: 5, files: ['/usr/bin/prog'], maxBytes: MiB, dir: warmDir })).rejects.toThrow(/missing\.squashfs/);
    expect(await warmMounts({ dir: warmDir })).toEqual([]);
  });
});
