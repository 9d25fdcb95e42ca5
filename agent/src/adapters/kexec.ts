/**
 * kexec: load a staged generation's kernel and initrd with its command line,
 * so that starting kexec.target (systemd, over D-Bus) boots it without
 * firmware or bootloader. `kexec -s` (kexec_file_load) first: it is the
 * syscall a kernel with signature checking or lockdown allows; `-l`
 * (kexec_load) only when the file-based call is not implemented.
 */
import { join } from 'node:path';
import { run as defaultRun, type Runner } from './exec.js';
import { LiveupError, isLiveupError } from '../channel/errors.js';
import { kernelParams } from '../core/bootmenu.js';

export interface KexecTarget {
  readonly bootDir: string;
  readonly version: number;
  /** The manifest's kernel command line. */
  readonly cmdline: string;
  /** Console and other parameters of this machine to keep (e.g. `console=ttyS0,115200`). */
  readonly keep?: readonly string[];
}

/** The kexec arguments for `target`; `fileLoad` selects kexec_file_load (-s). */
export function kexecArgs(t: KexecTarget, fileLoad: boolean): string[] {
  const dir = join(t.bootDir, 'live', String(t.version));
  const params = [...kernelParams(t.cmdline, t.version), ...(t.keep ?? [])];
  return [...(fileLoad ? ['-s'] : []), '-l', join(dir, 'vmlinuz'), `--initrd=${join(dir, 'initrd.img')}`, `--command-line=${params.join(' ')}`];
}

/** The running kernel's parameters worth carrying over: the consoles (where an operator watches). */
export function paramsToKeep(procCmdline: string): string[] {
  return procCmdline.split(/\s+/).filter((w) => /^console=/.test(w));
}

export async function loadKexec(t: KexecTarget, runner: Runner = defaultRun): Promise<{ fileLoad: boolean }> {
  try {
    await runner('kexec', kexecArgs(t, true), { timeoutMs: 60_000 });
    return { fileLoad: true };
  } catch (e) {
    const said = isLiveupError(e) ? String(e.details.stderr ?? '') : '';
    // ENOSYS: no kexec_file_load in this kernel; anything else (a signature, lockdown) is a real refusal.
    if (!/not implemented|Function not implemented|ENOSYS|Syscall kexec_file_load not available/i.test(said)) {
      throw new LiveupError('COMMAND_FAILED', `kexec refused generation ${t.version}: ${said.trim() || (e as Error).message}`, { version: t.version }, { cause: e });
    }
  }
  await runner('kexec', kexecArgs(t, false), { timeoutMs: 60_000 });
  return { fileLoad: false };
}

/** Forget a loaded kernel (when the switch is called off). */
export async function unloadKexec(runner: Runner = defaultRun): Promise<void> {
  await runner('kexec', ['-u'], { timeoutMs: 30_000 });
}
