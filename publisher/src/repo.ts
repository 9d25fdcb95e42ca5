/**
 * The publisher's view of a channel repository on local disk: the lock that
 * makes publishes one at a time, the current index of a channel, and the
 * clean-up of whatever a killed publish left behind.
 */
import { open, readFile, readdir, readlink, rm, unlink, lstat } from 'node:fs/promises';
import { constants } from 'node:fs';
import { join } from 'node:path';
import { LiveupError } from '../../agent/src/channel/errors.js';
import { CHANNELS_DIR, GENERATIONS_DIR, INDEX_FILE, SIG_SUFFIX } from '../../agent/src/channel/layout.js';
import { parseIndex, type ChannelIndex } from '../../agent/src/channel/schema.js';
import { verifyDetached, type PinnedKeyring } from '../../agent/src/channel/signature.js';
import { ensureDir } from '../../agent/src/util/fsatomic.js';
import { pidAlive } from '../../agent/src/util/pid.js';

const LOCK = '.liveup-publish.lock';

/** One publish at a time per repository; a lock left by a dead process is taken over. */
export async function withRepoLock<T>(repo: string, fn: () => Promise<T>): Promise<T> {
  await ensureDir(repo);
  const path = join(repo, LOCK);
  for (let attempt = 0; ; attempt++) {
    try {
      const fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
      await fh.writeFile(`${process.pid}\n`);
      await fh.close();
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') {
          throw new LiveupError('REPO_LOCKED', `${repo} is being published to by another process (lock ${path})`, { file: path });
        }
        throw e;
      }
      const pid = Number((await readFile(path, 'utf8').catch(() => '')).trim());
      if (Number.isInteger(pid) && pid > 0 && pidAlive(pid)) {
        throw new LiveupError('REPO_LOCKED', `${repo} is being published to by process ${pid} (lock ${path})`, { file: path, pid });
      }
      await unlink(path).catch(() => undefined);
    }
  }
  try {
    return await fn();
  } finally {
    await unlink(path).catch(() => undefined);
  }
}

export async function listChannels(repo: string): Promise<string[]> {
  const dir = join(repo, CHANNELS_DIR);
  const names = await readdir(dir).catch(() => [] as string[]);
  const out: string[] = [];
  for (const n of names) {
    if (n.startsWith('.')) continue;
    if ((await lstat(join(dir, n))).isSymbolicLink()) out.push(n);
  }
  return out.sort();
}

/**
 * The channel's current index, checked against the publisher's own keys. An
 * index that does not verify is not silently replaced: it would hide a
 * tampered or foreign repository.
 */
export async function readCurrentIndex(repo: string, channel: string, keyring: PinnedKeyring): Promise<ChannelIndex | null> {
  const p = join(repo, CHANNELS_DIR, channel, INDEX_FILE);
  let bytes: Buffer;
  try {
    bytes = await readFile(p);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  const sig = await readFile(p + SIG_SUFFIX).catch(() => null);
  if (!sig) throw new LiveupError('REPO_INVALID', `${p} has no signature; refusing to publish over it`, { file: p });
  try {
    // Expiry is not checked here: re-publishing is how an expired channel is renewed.
    await verifyDetached(bytes, sig, keyring, { threshold: 1, now: new Date(), source: p });
  } catch (e) {
    throw new LiveupError('REPO_INVALID', `${p} is not signed by the key(s) given: ${(e as Error).message}; refusing to publish over it`, { file: p });
  }
  return parseIndex(bytes, p);
}

export async function allIndexes(repo: string, keyring: PinnedKeyring): Promise<ChannelIndex[]> {
  const out: ChannelIndex[] = [];
  for (const ch of await listChannels(repo)) {
    // A channel signed by someone else still claims its versions.
    const p = join(repo, CHANNELS_DIR, ch, INDEX_FILE);
    const idx = await readCurrentIndex(repo, ch, keyring).catch(async () => parseIndex(await readFile(p), p));
    if (idx) out.push(idx);
  }
  return out;
}

export async function existingVersions(repo: string): Promise<number[]> {
  const names = await readdir(join(repo, GENERATIONS_DIR)).catch(() => [] as string[]);
  return names.filter((n) => /^[1-9]\d*$/.test(n)).map(Number);
}

/**
 * Remove what a killed publish left: temporary generation and index
 * directories, and generation directories that no channel index names (the
 * publish died after the rename but before the index swap, so no reader ever
 * saw them). Old index directories beyond the two newest are pruned; readers
 * that are mid-way through a swap may still be reading the previous one.
 */
export async function cleanLeftovers(repo: string, indexes: readonly ChannelIndex[]): Promise<string[]> {
  const removed: string[] = [];
  const gdir = join(repo, GENERATIONS_DIR);
  const referenced = new Set(indexes.flatMap((i) => i.generations.map((g) => g.version)));
  for (const n of await readdir(gdir).catch(() => [] as string[])) {
    if (n.startsWith('.tmp-') || (/^[1-9]\d*$/.test(n) && !referenced.has(Number(n)))) {
      await rm(join(gdir, n), { recursive: true, force: true });
      removed.push(join(GENERATIONS_DIR, n));
    }
  }
  const cdir = join(repo, CHANNELS_DIR);
  const entries = await readdir(cdir).catch(() => [] as string[]);
  const live = new Set<string>();
  for (const n of entries) {
    if (!n.startsWith('.')) {
      const t = await readlink(join(cdir, n)).catch(() => null);
      if (t) live.add(t);
    }
  }
  const byChannel = new Map<string, { name: string; seq: number }[]>();
  for (const n of entries) {
    if (n.includes('.tmp-')) {
      await rm(join(cdir, n), { recursive: true, force: true });
      removed.push(join(CHANNELS_DIR, n));
      continue;
    }
    const m = /^\.(.+)\.(\d+)$/.exec(n);
    if (!m) continue;
    const list = byChannel.get(m[1]!) ?? [];
    list.push({ name: n, seq: Number(m[2]) });
    byChannel.set(m[1]!, list);
  }
  for (const list of byChannel.values()) {
    list.sort((a, b) => b.seq - a.seq);
    for (const old of list.slice(3)) {
      if (live.has(old.name)) continue;
      await rm(join(cdir, old.name), { recursive: true, force: true });
    }
  }
  return removed;
}
