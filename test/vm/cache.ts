/**
 * Disk hygiene of the VM cache (/var/cache/liveup/vm, LIVEUP_VM_CACHE).
 *
 * Why: the cache used to grow without bound — every run kept its 3 GB disk
 * image and its 1.7 GB channel copy, every agent change left a 1.3-2.6 GB set
 * of cached generations — until a CI run on the same disk died of ENOSPC in
 * the middle of the live suite (2026-12-06, with 71 GB in the cache). Now:
 * - a run directory keeps only its logs once its process is gone
 *   (`dropRunBulk` at the end of a test or bench, `pruneRuns` for a run that
 *   was killed), and only the newest RUN_LOGS_KEPT run directories are kept;
 * - cached generation sets are kept for the KEYS_KEPT most recently used keys
 *   (a use touches the key's `used` stamp) and dropped before a new build;
 * - before a build or a run, the free space is checked and a shortfall named,
 *   instead of a test dying half way with ENOSPC.
 * LIVEUP_VM_KEEP=1 keeps every run's disk images and channel copies (for a
 * post-mortem), and then nothing of a run is pruned.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statfsSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pidAlive } from '../../agent/src/util/pid.js';

export const VM_CACHE = process.env.LIVEUP_VM_CACHE ?? '/var/cache/liveup/vm';
const RUNS = join(VM_CACHE, 'runs');
const KEEP = process.env.LIVEUP_VM_KEEP === '1';

/** Generation sets kept: the suite uses two keys at once (the plain and the agent generation), a bench one more. */
export const KEYS_KEPT = 4;
/** Run directories kept (their logs: a few hundred KB each). */
export const RUN_LOGS_KEPT = 40;
const GiB = 1024 ** 3;
/** Free space a VM run needs: its 3 GB sparse disk fills to ~1.3 GB, the channel copy 1.7 GB, two runs at once. */
export const RUN_NEEDS = 6 * GiB;
/** Free space a generation build needs: the chroot, the squashfs, the derived generations of the live rig. */
export const BUILD_NEEDS = 8 * GiB;

/** A key directory's name: 16 hex digits (generation.ts). */
const KEY_RE = /^[0-9a-f]{16}$/;

/** What is bulky in a run directory: disk images, ISOs, channel copies. Logs, journals and analyses stay. */
function isBulk(name: string): boolean {
  return /\.(img|iso|qcow2|raw)$/.test(name) || /^repo(-|$)/.test(name);
}

export function freeBytes(path: string): number {
  const s = statfsSync(path);
  return s.bavail * s.bsize;
}

function gib(n: number): string {
  return `${(n / GiB).toFixed(1)} GiB`;
}

/** Throws, naming the shortfall, when `path` has less than `need` bytes free. */
export function requireFreeSpace(path: string, need: number, what: string): void {
  const have = freeBytes(path);
  if (have < need) {
    throw new Error(`${what} needs ${gib(need)} free on ${path}, and only ${gib(have)} is available ` +
      `(the VM cache's old runs and generations were already pruned; free space elsewhere, or set LIVEUP_VM_CACHE to a larger disk)`);
  }
}

/** Removes a run directory's disk images and channel copies; its logs stay. */
export function dropRunBulk(dir: string): void {
  if (KEEP || !existsSync(dir)) return;
  for (const name of readdirSync(dir)) if (isBulk(name)) rmSync(join(dir, name), { recursive: true, force: true });
}

/** The pid that owns a run directory, if it is still running. */
function ownerAlive(dir: string): boolean {
  try {
    return pidAlive(Number(readFileSync(join(dir, '.owner'), 'utf8')));
  } catch {
    return false;
  }
}

/**
 * Drops the bulk of every run whose process is gone (a killed test or bench
 * never reached its own cleanup), then whole run directories beyond the
 * newest RUN_LOGS_KEPT. A run of a live process is never touched: two VM
 * slots and a bench may run at once.
 */
export function pruneRuns(): void {
  if (KEEP || !existsSync(RUNS)) return;
  const runs = readdirSync(RUNS)
    .map((name) => ({ name, dir: join(RUNS, name), mtime: statSync(join(RUNS, name)).mtimeMs }))
    .filter((r) => !ownerAlive(r.dir))
    .sort((a, b) => b.mtime - a.mtime);
  runs.forEach((r, i) => {
    if (i >= RUN_LOGS_KEPT) rmSync(r.dir, { recursive: true, force: true });
    else dropRunBulk(r.dir);
  });
}

/**
 * A new run directory `runs/<tag>-<ms>`, owned by this process, after the
 * leftovers of dead runs were pruned and the free space checked.
 */
export function newRunDir(tag: string): string {
  pruneRuns();
  mkdirSync(RUNS, { recursive: true });
  requireFreeSpace(RUNS, RUN_NEEDS, `a VM run (${tag})`);
  const dir = join(RUNS, `${tag}-${Date.now()}`);
  mkdirSync(dir);
  writeFileSync(join(dir, '.owner'), String(process.pid));
  return dir;
}

/** Marks a cached generation key as used now (what pruneGenerations keeps). */
export function touchGeneration(keyDir: string): void {
  const stamp = join(keyDir, 'used');
  const now = new Date();
  if (existsSync(stamp)) utimesSync(stamp, now, now);
  else writeFileSync(stamp, '');
}

function lastUse(keyDir: string): number {
  for (const f of ['used', 'done']) {
    try {
      return statSync(join(keyDir, f)).mtimeMs;
    } catch { /* older layout, or a build that never finished */ }
  }
  return 0;
}

/**
 * Drops cached generation sets beyond the KEYS_KEPT most recently used,
 * keeping `keep` (the key about to be built). Called under the build lock,
 * before a build, when new space is about to be taken.
 */
export function pruneGenerations(keep: string): string[] {
  if (!existsSync(VM_CACHE)) return [];
  const keys = readdirSync(VM_CACHE)
    .filter((n) => KEY_RE.test(n) && n !== keep)
    .map((n) => ({ n, used: lastUse(join(VM_CACHE, n)) }))
    .sort((a, b) => b.used - a.used);
  const dropped = keys.slice(KEYS_KEPT - 1).map((k) => k.n);
  for (const n of dropped) rmSync(join(VM_CACHE, n), { recursive: true, force: true });
  return dropped;
}
