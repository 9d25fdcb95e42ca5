/** soft-reboot's /run/nextroot, mounted for real into a temporary directory (root only). */
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmp } from '../helpers/tmp.js';
import { handOverToNextRoot, prepareNextRoot, teardownNextRoot } from '../../agent/src/adapters/nextroot.js';
import { bootId } from '../../agent/src/adapters/host.js';

const mounted = (p: string) => readFileSync('/proc/self/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === p);

describe.skipIf(process.getuid?.() !== 0)('prepareNextRoot', () => {
  it('the target generation is writable on top of its read-only image, persistent data is the same directory', async () => {
    const dir = await tmp();
    await mkdir(join(dir, 'tree', 'etc'), { recursive: true });
    await writeFile(join(dir, 'tree', 'etc', 'generation'), '4\n');
    execFileSync('mksquashfs', [join(dir, 'tree'), join(dir, 'fs.squashfs'), '-quiet', '-no-progress']);
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

  it('a step that fails undoes the mounts before it', async () => {
    const dir = await tmp();
    execFileSync('mksquashfs', [dir, join(dir, 'fs.squashfs'), '-quiet', '-no-progress']);
    const o = { squashfs: join(dir, 'fs.squashfs'), nextroot: join(dir, 'nextroot'), scratch: join(dir, 'scratch'), persistent: [join(dir, 'does-not-exist')] };
    await expect(prepareNextRoot(o)).rejects.toThrow(/mount/);
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
