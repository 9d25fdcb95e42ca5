/**
 * A staged soft-reboot target's programs read into memory ahead of the
 * switch, while the old userspace still serves.
 *
 * Why: after a soft-reboot every program of the new userspace is read from
 * the target's squashfs, a file the page cache has never seen, decompressed
 * at first touch. In bench/live (QEMU TCG) the new agent took 8-9 s from its
 * exec to its first log line (1.8-2.3 s with its files in memory; node alone
 * maps 75 MB of libnode and ICU). Read ahead, the new agent's start went from
 * 8.4-9.5 s to 4.2-7.5 s (bench/live runs 18-20 against 21-24; README).
 *
 * Why it survives into the switch: the page cache of a squashfs belongs to
 * its superblock, one per block device, and util-linux's `mount -o ro,loop
 * FILE` (≥ 2.29) reuses the loop device already attached read-only to FILE.
 * So the soft-reboot's own mount of the target (nextroot.ts, the same
 * command and path) lands on the superblock warmed here — checked in
 * test/integration/nextroot.test.ts, not assumed.
 *
 * What is read, at the same path in the target, whole, up to a byte budget:
 * every file the running processes have mapped (programs and their
 * libraries: systemd's, udevd's, dbus', node's), then every other file of
 * /usr and /etc of which the running image has pages in memory (fincore) —
 * what the machine's boot and work have read. The new userspace starts the
 * same programs and reads the same files, whichever of their pages it touches.
 *
 * The mount is made in PID 1's mount namespace (like nextroot's): the agent's
 * unit has one of its own, which dies with the process, and the warmth with
 * it. It stays until the soft-reboot (mounts below /run are not carried into
 * the new root; the new root's own mount keeps the superblock), until another
 * generation is warmed or this one collected, or until an agent start finds
 * it at or below the booted version. The pages are ordinary page cache, reclaimed
 * under memory pressure like any, so a switch long after staging may find
 * them gone and is as fast as without.
 */
import { open, readFile, rmdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { run as defaultRun, type Runner } from './exec.js';
import { namespaceOf, shellWord as q, teardownNextRoot } from './nextroot.js';
import { mountPoints } from '../util/mountinfo.js';
import type { ProcessInfo } from '../core/liveapply.js';

/** Where `<version>/` mounts live. */
export const WARM_DIR = '/run/liveup/warm';

/** Mapped paths that are not files of the root image. */
const NOT_IN_IMAGE = /^\/(?:proc|sys|dev|run|tmp|var\/tmp|memfd:|SYSV|\[)/;

/**
 * The files to read, each once: first what the running processes have mapped,
 * in the order first seen (PID order: systemd and the early services come
 * first), then the other files of the image the machine has in memory
 * (`resident`): a budget cuts the least sure last.
 */
export function warmList(procs: readonly ProcessInfo[], resident: readonly string[] = []): string[] {
  const out = new Set<string>();
  const mapped = [...procs].sort((a, b) => a.pid - b.pid).flatMap((p) => p.files);
  for (const f of [...mapped, ...resident]) if (f.startsWith('/') && !NOT_IN_IMAGE.test(f)) out.add(f);
  return [...out];
}

/** fincore's raw output: "RES FILE" a line, unsafe characters of FILE as \xHH. */
export function parseFincore(out: string): string[] {
  const files: string[] = [];
  for (const line of out.split('\n')) {
    const m = /^(\d+) (.+)$/.exec(line);
    if (m && Number(m[1]) > 0) files.push(m[2]!.replace(/\\x([0-9a-fA-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16))));
  }
  return files;
}

/**
 * The files of the image tree at `root` with pages in memory (util-linux
 * fincore), as paths in the image (`/usr/bin/kmod`), in path order: what
 * this machine has read of its image since it booted — the programs its boot
 * ran and that are gone since (kmod, systemd-tmpfiles, the boot check's
 * shell) as much as configuration and data files. A soft-reboot runs the
 * same boot again.
 *
 * `root` must be the image itself (the squashfs mount), not the overlay on
 * `/`: trixie's fincore (util-linux 2.41) asks cachestat(2) about the file it
 * opens, and an overlay file's own page cache is empty — every file showed
 * 0 bytes there (bench/live run 24), while the squashfs below had them.
 */
export async function residentFiles(root: string, dirs: readonly string[] = ['usr', 'etc'], runner: Runner = defaultRun): Promise<string[]> {
  // fincore (util-linux-extra, a Depends of the package) missing is an error the caller logs; a
  // file gone or unreadable in the scan is not (`|| true`: what was listed stays usable).
  const r = await runner('sh', ['-c', `command -v fincore >/dev/null || { echo 'fincore not found (util-linux-extra)' >&2; exit 127; }
find ${dirs.map((d) => q(join(root, d))).join(' ')} -xdev -type f -print0 | xargs -0 -r fincore --noheadings --raw --bytes --output RES,FILE 2>/dev/null || true`], { timeoutMs: 300_000 });
  const prefix = root.replace(/\/+$/, '');
  return parseFincore(r.stdout).filter((f) => f.startsWith(`${prefix}/`)).map((f) => f.slice(prefix.length)).sort();
}

export interface WarmResult {
  /** The mount point, in PID 1's namespace. */
  readonly mount: string;
  readonly files: number;
  readonly bytes: number;
  /** Files of the list the target does not have (a package it dropped): skipped. */
  readonly missing: number;
  /** The budget stopped the reading before the end of the list. */
  readonly truncated: boolean;
}

/**
 * Mount `squashfs` (read-only, loop) at `<dir>/<version>` in PID 1's
 * namespace, unless it is mounted there already, and read `files` from it.
 */
export async function prewarm(
  o: { squashfs: string; version: number; files: readonly string[]; maxBytes: number; dir?: string; initPid?: number },
  runner: Runner = defaultRun,
): Promise<WarmResult> {
  const ns = await namespaceOf(o.initPid ?? 1);
  const mount = join(o.dir ?? WARM_DIR, String(o.version));
  const script = `mkdir -p ${q(mount)}\nmountpoint -q ${q(mount)} || mount -t squashfs -o ro,loop ${q(o.squashfs)} ${q(mount)}`;
  await runner(...ns.command('sh', ['-ec', script]), { timeoutMs: 60_000 });
  const root = ns.path(mount);
  const buf = Buffer.allocUnsafe(1 << 20);
  let files = 0;
  let bytes = 0;
  let missing = 0;
  let truncated = false;
  for (const f of o.files) {
    if (bytes >= o.maxBytes) {
      truncated = true;
      break;
    }
    const p = join(root, f);
    const st = await stat(p).catch(() => null);
    if (!st?.isFile()) {
      missing++;
      continue;
    }
    const fh = await open(p, 'r');
    try {
      // Read and thrown away: what stays is the page cache. The budget may be passed by one chunk.
      for (let n = 1; n > 0 && bytes < o.maxBytes; bytes += n) n = (await fh.read(buf, 0, buf.length, null)).bytesRead;
    } finally {
      await fh.close();
    }
    files++;
  }
  return { mount, files, bytes, missing, truncated };
}

/** The versions with a warm mount in PID 1's namespace. */
export async function warmMounts(o: { dir?: string; initPid?: number } = {}): Promise<number[]> {
  const dir = o.dir ?? WARM_DIR;
  const seen = mountPoints(await readFile(`/proc/${o.initPid ?? 1}/mountinfo`, 'utf8').catch(() => ''));
  const out: number[] = [];
  for (const m of seen) {
    const v = m.startsWith(`${dir}/`) ? m.slice(dir.length + 1) : '';
    if (/^\d+$/.test(v)) out.push(Number(v));
  }
  return out.sort((a, b) => a - b);
}

/**
 * Unmount the warm mounts for which `drop(version)` holds (lazily: a reader
 * may still be in it). The page cache goes with the last mount of the image,
 * so a generation the soft-reboot mounted as the root stays cached.
 */
export async function dropWarm(drop: (version: number) => boolean, o: { dir?: string; initPid?: number } = {}, runner: Runner = defaultRun): Promise<number[]> {
  const dir = o.dir ?? WARM_DIR;
  const gone = (await warmMounts(o)).filter(drop);
  // Called after every decision, `--now`'s switch path included: nothing to drop costs one read.
  if (gone.length === 0) return [];
  const mounts = gone.map((v) => join(dir, String(v)));
  // The same lazy unmount in PID 1's namespace as a refused soft-reboot's new root.
  await teardownNextRoot(mounts, runner, o.initPid);
  const ns = await namespaceOf(o.initPid ?? 1);
  for (const m of mounts) await rmdir(ns.path(m)).catch(() => undefined);
  return gone;
}
