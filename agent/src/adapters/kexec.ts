/**
 * kexec: load a staged generation's kernel and initrd with its command line,
 * so that starting kexec.target (systemd, over D-Bus) boots it without
 * firmware or bootloader. `kexec -s` (kexec_file_load) first: it is the
 * syscall a kernel with signature checking or lockdown allows; `-l`
 * (kexec_load) only when the file-based call is not implemented. A kexec
 * decided for later is loaded when its generation is staged
 * (ensureKexecLoaded), and unloaded when the plan changes (unloadKexec).
 */
import { readFile, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { run as defaultRun, type Runner } from './exec.js';
import { LiveupError, isLiveupError } from '../channel/errors.js';
import { kernelParams } from '../core/bootmenu.js';
import { ensureDir, writeFileAtomic } from '../util/fsatomic.js';

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

/** paramsToKeep of the running kernel's command line (none when it cannot be read). */
export async function runningParamsToKeep(procCmdline = '/proc/cmdline'): Promise<string[]> {
  return paramsToKeep(await readFile(procCmdline, 'utf8').catch(() => ''));
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

/**
 * Where the agent keeps what it loaded, and where the kernel says whether
 * anything is loaded. The kernel cannot be asked *which* image it holds, so
 * the record (in /run: it ends with the boot, as the loaded image does) names
 * it: the version, the command line and the identity of the two files.
 */
export interface KexecPaths {
  readonly record?: string;
  readonly loadedFlag?: string;
  readonly runner?: Runner;
}
const RECORD = '/run/liveup/kexec-loaded.json';
const LOADED_FLAG = '/sys/kernel/kexec_loaded';

interface KexecRecord {
  readonly version: number;
  /** The command line and each file as path:size:mtime:inode — restaged files do not match. */
  readonly image: readonly string[];
}

async function recordFor(t: KexecTarget): Promise<{ record: KexecRecord; bytes: number }> {
  const args = kexecArgs(t, false);
  const files = [args[1]!, args[2]!.slice('--initrd='.length)];
  const st = await Promise.all(files.map((f) => stat(f).catch((e: unknown) => {
    throw new LiveupError('NOT_FOUND', `kexec into ${t.version}: ${f} is not there (${(e as Error).message})`, { version: t.version }, { cause: e });
  })));
  return {
    record: { version: t.version, image: [args[3]!, ...files.map((f, i) => `${f}:${st[i]!.size}:${st[i]!.mtimeMs}:${st[i]!.ino}`)] },
    bytes: st.reduce((n, x) => n + x.size, 0),
  };
}

async function readRecord(path: string): Promise<KexecRecord | null> {
  const text = await readFile(path, 'utf8').catch(() => null);
  if (text === null) return null;
  try {
    const r = JSON.parse(text) as Partial<KexecRecord>;
    return typeof r.version === 'number' && Array.isArray(r.image) ? { version: r.version, image: r.image.map(String) } : null;
  } catch {
    return null; // a torn or foreign file: as if nothing were recorded
  }
}

const kernelHoldsImage = async (flag: string): Promise<boolean> => (await readFile(flag, 'utf8').catch(() => '0')).trim() === '1';

/** The kernel and initrd's size (what a loaded image holds in memory). */
export async function kexecImageBytes(t: KexecTarget): Promise<number> {
  return (await recordFor(t)).bytes;
}

/**
 * `t` loaded for kexec.target: left as it is when the kernel holds an image
 * and the record says it is this one (the same version, command line and
 * files), loaded (and recorded) otherwise. So the agent loads a kexec's
 * kernel when it stages the generation for a switch later (the window's
 * downtime then has no `kexec -l`: ~1.4 s under TCG, the files read and the
 * kernel's digest of them), and the switch checks and goes on.
 * As systemd's `systemctl kexec`, what the kernel holds is what boots: a
 * `kexec -l` by hand after the agent's is not seen; `kexec -u` is.
 */
export async function ensureKexecLoaded(t: KexecTarget, o: KexecPaths = {}): Promise<{ preloaded: boolean; bytes: number }> {
  const recordPath = o.record ?? RECORD;
  const { record, bytes } = await recordFor(t);
  const had = await readRecord(recordPath);
  if (had !== null && JSON.stringify(had) === JSON.stringify(record) && (await kernelHoldsImage(o.loadedFlag ?? LOADED_FLAG))) return { preloaded: true, bytes };
  // The old record goes first: a load that fails half-way must not leave it naming the image.
  await rm(recordPath, { force: true });
  await loadKexec(t, o.runner);
  await ensureDir(dirname(recordPath));
  await writeFileAtomic(recordPath, JSON.stringify(record));
  return { preloaded: false, bytes };
}

/**
 * Forget the image the agent loaded when `drop` holds for its version (the
 * plan changed, the generation runs now or is removed): `kexec -u`, so the
 * memory is freed and no `shutdown -r` (which kexecs whenever an image is
 * loaded) boots it. Returns the version dropped, or null.
 */
export async function unloadKexec(drop: (version: number) => boolean, o: KexecPaths = {}): Promise<number | null> {
  const recordPath = o.record ?? RECORD;
  const had = await readRecord(recordPath);
  if (had === null || !drop(had.version)) return null;
  if (await kernelHoldsImage(o.loadedFlag ?? LOADED_FLAG)) await (o.runner ?? defaultRun)('kexec', ['-u'], { timeoutMs: 30_000 });
  await rm(recordPath, { force: true });
  return had.version;
}
