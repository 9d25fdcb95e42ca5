import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtemp, mkdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureKexecLoaded, kexecArgs, loadKexec, paramsToKeep, runningParamsToKeep, unloadKexec } from '../../agent/src/adapters/kexec.js';
import { nextRootPlan } from '../../agent/src/adapters/nextroot.js';
import { LiveupError } from '../../agent/src/channel/errors.js';
import type { Runner } from '../../agent/src/adapters/exec.js';

const target = { bootDir: '/run/liveup/boot', version: 7, cmdline: 'boot=live components quiet live-media-path=/old liveup.generation=3', keep: ['console=ttyS0,115200'] };

describe('kexec', () => {
  it('loads the staged kernel and initrd with the command line its GRUB entry has, consoles kept', () => {
    expect(kexecArgs(target, true)).toEqual([
      '-s', '-l', '/run/liveup/boot/live/7/vmlinuz', '--initrd=/run/liveup/boot/live/7/initrd.img',
      '--command-line=boot=live components quiet live-media-path=/live/7 liveup.generation=7 console=ttyS0,115200',
    ]);
    expect(kexecArgs(target, false)[0]).toBe('-l');
    expect(paramsToKeep('BOOT_IMAGE=/live/3/vmlinuz boot=live console=tty0 console=ttyS0,115200 quiet')).toEqual(['console=tty0', 'console=ttyS0,115200']);
  });

  it('reads the running kernel\'s consoles from its command line; none when it cannot be read', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'liveup-cmdline-'));
    try {
      await writeFile(join(dir, 'cmdline'), 'boot=live console=ttyS0,115200 panic=5\n');
      expect(await runningParamsToKeep(join(dir, 'cmdline'))).toEqual(['console=ttyS0,115200']);
      expect(await runningParamsToKeep(join(dir, 'missing'))).toEqual([]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  // The runner is the edge: kexec really loading a kernel into this test host is not something a test may do.
  const runner = (answers: ((args: readonly string[]) => void)[]): { run: Runner; calls: string[][] } => {
    const calls: string[][] = [];
    return {
      calls,
      run: async (_cmd, args) => {
        calls.push([...args]);
        answers[calls.length - 1]?.(args);
        return { stdout: '', stderr: '', exitCode: 0 };
      },
    };
  };
  const fail = (stderr: string) => () => { throw new LiveupError('COMMAND_FAILED', 'kexec exited with 1', { stderr }); };

  it('uses kexec_file_load, falls back to kexec_load only when the syscall is missing', async () => {
    const ok = runner([]);
    expect(await loadKexec(target, ok.run)).toEqual({ fileLoad: true });
    expect(ok.calls).toHaveLength(1);
    const old = runner([fail('Syscall kexec_file_load not available')]);
    expect(await loadKexec(target, old.run)).toEqual({ fileLoad: false });
    expect(old.calls.map((c) => c[0])).toEqual(['-s', '-l']);
  });

  it('a refusal (lockdown, bad signature) is an error naming it, with no unsafe retry', async () => {
    const locked = runner([fail('kexec_file_load failed: Operation not permitted (lockdown)')]);
    await expect(loadKexec(target, locked.run)).rejects.toThrow(/kexec refused generation 7: .*Operation not permitted/);
    expect(locked.calls).toHaveLength(1);
  });
});

describe('kexec preload: the image loaded when staged, used by the switch', () => {
  // The kernel is the edge here too: `kexec_loaded` is a file the fake kexec sets as the kernel would.
  let dir = '';
  let paths: { record: string; loadedFlag: string; runner: Runner };
  let calls: string[][];
  let t: { bootDir: string; version: number; cmdline: string; keep: string[] };
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'liveup-kexec-'));
    await mkdir(join(dir, 'boot/live/7'), { recursive: true });
    await writeFile(join(dir, 'boot/live/7/vmlinuz'), 'k'.repeat(1000));
    await writeFile(join(dir, 'boot/live/7/initrd.img'), 'i'.repeat(3000));
    const loadedFlag = join(dir, 'kexec_loaded');
    await writeFile(loadedFlag, '0\n');
    calls = [];
    paths = {
      record: join(dir, 'run/kexec-loaded.json'),
      loadedFlag,
      runner: async (_cmd, args) => {
        calls.push([...args]);
        await writeFile(loadedFlag, args[0] === '-u' ? '0\n' : '1\n');
        return { stdout: '', stderr: '', exitCode: 0 };
      },
    };
    t = { ...target, bootDir: join(dir, 'boot') };
  });
  afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

  it('loads once; a second ask for the same image (the switch) finds it loaded and runs no kexec', async () => {
    expect(await ensureKexecLoaded(t, paths)).toEqual({ preloaded: false, bytes: 4000 });
    expect(calls).toEqual([kexecArgs(t, true)]);
    expect(JSON.parse(await readFile(paths.record, 'utf8'))).toMatchObject({ version: 7 });
    expect(await ensureKexecLoaded(t, paths)).toEqual({ preloaded: true, bytes: 4000 });
    expect(calls).toHaveLength(1);
  });

  it('loads again when the kernel holds nothing (kexec -u by hand), the files were restaged, or the command line differs', async () => {
    await ensureKexecLoaded(t, paths);
    await writeFile(paths.loadedFlag, '0\n');
    expect((await ensureKexecLoaded(t, paths)).preloaded).toBe(false);
    await utimes(join(dir, 'boot/live/7/initrd.img'), new Date(), new Date(Date.now() + 5000));
    expect((await ensureKexecLoaded(t, paths)).preloaded).toBe(false);
    expect((await ensureKexecLoaded({ ...t, keep: ['console=tty0'] }, paths)).preloaded).toBe(false);
    expect(calls).toHaveLength(4);
    expect((await ensureKexecLoaded({ ...t, keep: ['console=tty0'] }, paths)).preloaded).toBe(true);
  });

  it('a refused load leaves no record naming an image; a missing kernel is named', async () => {
    await ensureKexecLoaded(t, paths);
    const refusing: Runner = async () => { throw new LiveupError('COMMAND_FAILED', 'kexec exited with 1', { stderr: 'kexec_file_load failed: Key was rejected by service' }); };
    await writeFile(join(dir, 'boot/live/7/initrd.img'), 'new initrd');
    await expect(ensureKexecLoaded(t, { ...paths, runner: refusing })).rejects.toThrow(/kexec refused generation 7: .*Key was rejected/);
    await expect(readFile(paths.record, 'utf8')).rejects.toThrow(/ENOENT/);
    await rm(join(dir, 'boot/live/7/vmlinuz'));
    await expect(ensureKexecLoaded(t, paths)).rejects.toThrow(/kexec into 7: .*live\/7\/vmlinuz is not there/);
  });

  it('unload: only the version asked for, kexec -u only when the kernel holds an image, the record gone', async () => {
    expect(await unloadKexec(() => true, paths)).toBeNull(); // nothing recorded: nothing of ours to unload
    await ensureKexecLoaded(t, paths);
    expect(await unloadKexec((v) => v !== 7, paths)).toBeNull();
    expect((await readFile(paths.loadedFlag, 'utf8')).trim()).toBe('1');
    expect(await unloadKexec((v) => v === 7, paths)).toBe(7);
    expect(calls.at(-1)).toEqual(['-u']);
    expect((await readFile(paths.loadedFlag, 'utf8')).trim()).toBe('0');
    await expect(readFile(paths.record, 'utf8')).rejects.toThrow(/ENOENT/);
    await ensureKexecLoaded(t, paths);
    await writeFile(paths.loadedFlag, '0\n'); // already unloaded by hand (or a new boot)
    const before = calls.length;
    expect(await unloadKexec(() => true, paths)).toBe(7);
    expect(calls).toHaveLength(before);
  });
});

describe('soft-reboot next root', () => {
  it('mounts the squashfs read-only under a fresh tmpfs overlay at /run/nextroot, persistent mounts bound in', () => {
    const plan = nextRootPlan({ squashfs: '/run/liveup/boot/live/4/filesystem.squashfs', persistent: ['/var/lib/liveup'] });
    expect(plan.map((s) => s.args.join(' '))).toEqual([
      '-t squashfs -o ro,loop /run/liveup/boot/live/4/filesystem.squashfs /run/liveup/nextroot/lower',
      '-t tmpfs -o mode=0755 liveup-nextroot /run/liveup/nextroot/rw',
      '-t overlay overlay -o lowerdir=/run/liveup/nextroot/lower,upperdir=/run/liveup/nextroot/rw/upper,workdir=/run/liveup/nextroot/rw/work /run/nextroot',
      '--bind /var/lib/liveup /run/nextroot/var/lib/liveup',
    ]);
  });
});
