import { describe, expect, it } from 'vitest';
import { kexecArgs, loadKexec, paramsToKeep } from '../../agent/src/adapters/kexec.js';
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
