/** The initramfs script that records the booted generation, run with busybox-compatible sh on the host. */
import { describe, expect, test } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdir, readFile, rm, writeFile, chmod } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { tmp } from '../helpers/tmp.js';

const SCRIPT = join(import.meta.dirname, '../../initramfs-hooks/scripts/init-bottom/liveup');

async function runWith(cmdline: string): Promise<string | null> {
  const d = await tmp('liveup-initramfs-');
  await writeFile(join(d, 'cmdline'), cmdline + '\n');
  // rootmnt in the temporary directory: a host disk labelled LIVEUP-DATA must never be mounted by a test.
  execFileSync('sh', [SCRIPT], { stdio: 'ignore', env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LIVEUP_CMDLINE_FILE: join(d, 'cmdline'), LIVEUP_RUN_DIR: join(d, 'run/liveup'), rootmnt: join(d, 'root') } });
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
  test("mounts the data partition (found by label) on the new root's /var/lib/liveup, and keeps one machine-id across boots", async () => {
    const d = await tmp('liveup-data-');
    const label = `LT${process.pid % 100000}`;
    execFileSync('truncate', ['-s', '16M', join(d, 'data.img')]);
    execFileSync('mkfs.ext4', ['-q', '-F', '-L', label, join(d, 'data.img')]);
    const loop = execFileSync('losetup', ['-f', '--show', join(d, 'data.img')], { encoding: 'utf8' }).trim();
    try {
      const boot = async (n: number, cmdline: string) => {
        const root = join(d, `root${n}`);
        await mkdir(join(root, 'etc'), { recursive: true });
        await writeFile(join(root, 'etc/machine-id'), '');
        await writeFile(join(d, 'cmdline'), cmdline + '\n');
        const r = execFileSync('sh', [SCRIPT], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', LIVEUP_CMDLINE_FILE: join(d, 'cmdline'), LIVEUP_RUN_DIR: join(d, `run${n}`), rootmnt: root } });
        const mounted = execFileSync('findmnt', ['-rno', 'SOURCE', join(root, 'var/lib/liveup')], { encoding: 'utf8' }).trim();
        return { root, r, mounted };
      };
      const first = await boot(1, `boot=live liveup.generation=3 liveup.data=${label}`);
      expect(first.mounted).toBe(loop);
      const id = (await readFile(join(first.root, 'etc/machine-id'), 'utf8')).trim();
      expect(id).toMatch(/^[0-9a-f]{32}$/);
      expect((await readFile(join(d, 'run1/data'), 'utf8')).trim()).toBe(loop);
      await writeFile(join(first.root, 'var/lib/liveup/journal.db'), 'kept');
      execFileSync('umount', [join(first.root, 'var/lib/liveup')]);
      // The next boot: a clean root, the same partition, the same identity and data.
      const second = await boot(2, `boot=live liveup.generation=4 liveup.data=${label}`);
      expect((await readFile(join(second.root, 'etc/machine-id'), 'utf8')).trim()).toBe(id);
      expect(await readFile(join(second.root, 'var/lib/liveup/journal.db'), 'utf8')).toBe('kept');
      execFileSync('umount', [join(second.root, 'var/lib/liveup')]);
    } finally {
      execFileSync('sh', ['-c', `umount ${d}/root*/var/lib/liveup 2>/dev/null; losetup -d ${loop}`]);
    }
  });

  test('without its data partition (or with liveup.data=none) the boot goes on, and says what it loses', async () => {
    const d = await tmp('liveup-nodata-');
    await mkdir(join(d, 'root/etc'), { recursive: true });
    const run = (cmdline: string) => {
      execFileSync('sh', ['-c', `printf '%s\n' '${cmdline}' > ${d}/cmdline`]);
      return execFileSync('sh', ['-c', `sh ${SCRIPT} 2>&1`], { encoding: 'utf8', env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', LIVEUP_CMDLINE_FILE: join(d, 'cmdline'), LIVEUP_RUN_DIR: join(d, 'run'), rootmnt: join(d, 'root') } });
    };
    expect(run('liveup.generation=5 liveup.data=NO-SUCH-LABEL-XYZ')).toMatch(/no data partition labelled NO-SUCH-LABEL-XYZ: nothing this boot writes will be kept/);
    expect(run('liveup.generation=5 liveup.data=none')).toBe('');
    expect(run('liveup.generation=5 liveup.data=a;b')).toMatch(/not a file system label/);
    expect(existsSync(join(d, 'root/var/lib/liveup'))).toBe(false);
    expect(await readFile(join(d, 'run/booted'), 'utf8')).toBe('5\n');
  });

  test('prereqs prints nothing to depend on', () => {
    expect(execFileSync('sh', [SCRIPT, 'prereqs'], { encoding: 'utf8' }).trim()).toBe('');
  });
  test.skipIf(!existsSync('/usr/bin/shellcheck'))('shellcheck-clean', () => {
    execFileSync('shellcheck', ['-s', 'sh', SCRIPT]);
  });
});

const VERIFY = join(import.meta.dirname, '../../initramfs-hooks/scripts/init-premount/liveup-verify');

describe('initramfs-hooks/scripts/init-premount/liveup-verify', () => {
  async function medium(opts: { tamper?: boolean; compact?: boolean; noDigest?: boolean } = {}): Promise<{ d: string; medium: string; panicLog: string; panic: string }> {
    const d = await tmp('liveup-verify-');
    const medium = join(d, 'medium');
    await mkdir(join(medium, 'live/3'), { recursive: true });
    const squash = Buffer.from('pretend squashfs '.repeat(1000));
    await writeFile(join(medium, 'live/3/filesystem.squashfs'), opts.tamper ? Buffer.concat([squash, Buffer.from('x')]) : squash);
    const sha = createHash('sha512').update(squash).digest('hex');
    const artifacts = [
      { role: 'kernel', path: 'vmlinuz', length: 1, sha512: 'a'.repeat(128) },
      opts.noDigest ? { role: 'squashfs', path: 'filesystem.squashfs', length: squash.length } : { role: 'squashfs', path: 'filesystem.squashfs', length: squash.length, sha512: sha },
    ];
    const manifest = { format: 1, version: 3, artifacts };
    await writeFile(join(medium, 'live/3/manifest.json'), opts.compact ? JSON.stringify(manifest) : JSON.stringify(manifest, null, 2));
    const panicLog = join(d, 'panic.log');
    const panic = join(d, 'panic');
    await writeFile(panic, `#!/bin/sh\necho "$*" >> ${panicLog}\n`);
    await chmod(panic, 0o755);
    return { d, medium, panicLog, panic };
  }

  async function verify(m: { d: string; medium: string; panic: string }, cmdline: string): Promise<number> {
    await writeFile(join(m.d, 'cmdline'), cmdline + '\n');
    try {
      execFileSync('sh', [VERIFY], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LIVEUP_CMDLINE_FILE: join(m.d, 'cmdline'), LIVEUP_MEDIUM: m.medium, LIVEUP_PANIC: m.panic }, stdio: 'pipe' });
      return 0;
    } catch (e) {
      return (e as { status: number }).status;
    }
  }

  const CMD = 'boot=live components live-media-path=/live/3 liveup.generation=3 liveup.verify=1';

  test('a matching squashfs passes (pretty and compact manifests)', async () => {
    for (const compact of [false, true]) {
      const m = await medium({ compact });
      expect(await verify(m, CMD)).toBe(0);
      expect(existsSync(m.panicLog)).toBe(false);
    }
  });

  test('a tampered squashfs panics', async () => {
    const m = await medium({ tamper: true });
    expect(await verify(m, CMD)).toBe(1);
    expect(await readFile(m.panicLog, 'utf8')).toMatch(/does not match its manifest/);
  });

  test('a manifest without the squashfs digest panics', async () => {
    const m = await medium({ noDigest: true });
    expect(await verify(m, CMD)).toBe(1);
    expect(await readFile(m.panicLog, 'utf8')).toMatch(/names no squashfs sha512/);
  });

  test('without liveup.verify=1 nothing is checked', async () => {
    const m = await medium({ tamper: true });
    expect(await verify(m, CMD.replace(' liveup.verify=1', ''))).toBe(0);
    expect(await verify(m, CMD.replace('liveup.verify=1', 'liveup.verify=0'))).toBe(0);
    expect(existsSync(m.panicLog)).toBe(false);
  });

  test('signed boot: the digest on the command line (from the signed boot.cfg) is checked without liveup.verify=1 or a manifest', async () => {
    const SIGNED = 'boot=live live-media-path=/live/3 liveup.generation=3';
    const squash = await readFile(join((await medium()).medium, 'live/3/filesystem.squashfs'));
    const sha = createHash('sha512').update(squash).digest('hex');
    const m = await medium();
    await rm(join(m.medium, 'live/3/manifest.json')); // not needed, and its absence must not skip the check
    expect(await verify(m, `${SIGNED} liveup.squashfs_sha512=${sha}`)).toBe(0);
    expect(existsSync(m.panicLog)).toBe(false);
    // The manifest agrees with the medium, the signed value does not: the signed value wins.
    const m2 = await medium();
    expect(await verify(m2, `${SIGNED} liveup.squashfs_sha512=${'0'.repeat(128)}`)).toBe(1);
    expect(await readFile(m2.panicLog, 'utf8')).toMatch(/does not match the signed command line/);
    // Fails closed: a malformed digest, or no medium holding the squashfs.
    const m3 = await medium();
    expect(await verify(m3, `${SIGNED} liveup.squashfs_sha512=${sha.toUpperCase()}`)).toBe(1);
    expect(await readFile(m3.panicLog, 'utf8')).toMatch(/not a lower-case hex SHA-512/);
    const m4 = await medium();
    await rm(join(m4.medium, 'live/3/filesystem.squashfs'));
    expect(await verify(m4, `${SIGNED} liveup.squashfs_sha512=${sha}`)).toBe(1);
    expect(await readFile(m4.panicLog, 'utf8')).toMatch(/the signed squashfs cannot be checked/);
  });

  test('live-media-path defaults to /live/<generation>', async () => {
    const m = await medium({ tamper: true });
    expect(await verify(m, 'boot=live liveup.generation=3 liveup.verify=1')).toBe(1);
  });

  test.skipIf(!existsSync('/usr/bin/shellcheck'))('shellcheck-clean', () => {
    execFileSync('shellcheck', ['-s', 'sh', VERIFY]);
  });

  test.skipIf(!existsSync('/bin/busybox') && !existsSync('/usr/bin/busybox'))('runs under busybox sh', async () => {
    const m = await medium({ tamper: true });
    await writeFile(join(m.d, 'cmdline'), CMD + '\n');
    const bb = existsSync('/bin/busybox') ? '/bin/busybox' : '/usr/bin/busybox';
    let status = 0;
    try {
      execFileSync(bb, ['sh', VERIFY], { env: { PATH: process.env.PATH ?? '', LIVEUP_CMDLINE_FILE: join(m.d, 'cmdline'), LIVEUP_MEDIUM: m.medium, LIVEUP_PANIC: m.panic }, stdio: 'pipe' });
    } catch (e) { status = (e as { status: number }).status; }
    expect(status).toBe(1);
  });
});
