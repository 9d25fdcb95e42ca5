/** soft-reboot's /run/nextroot, mounted for real into a temporary directory (root only). */
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmp } from '../helpers/tmp.js';
import { prepareNextRoot, teardownNextRoot } from '../../agent/src/adapters/nextroot.js';

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
});
