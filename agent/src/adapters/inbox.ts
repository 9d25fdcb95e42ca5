/**
 * The offline inbox: a generation directory (as `liveup publish` lays it out
 * under generations/<version>/, signatures included) copied into
 * `<state>/inbox/` from a USB stick or by scp is noticed here and handed to
 * the agent, which verifies and stages it exactly like a download.
 *
 * A copy arrives file by file in any order, so a bundle is announced only
 * once its manifest and signature exist and nothing in it has changed for a
 * settle period; the agent still verifies every byte, this only avoids
 * judging a half-copied directory.
 */
import chokidar, { type FSWatcher } from 'chokidar';
import { readdir, stat } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';

export interface InboxWatcher {
  close(): Promise<void>;
  /** Bundles currently present (for a scan at start-up). */
  scan(): Promise<string[]>;
}

async function isBundle(dir: string): Promise<boolean> {
  const names = await readdir(dir).catch(() => [] as string[]);
  return names.includes('manifest.json') && names.includes('manifest.json.sig');
}

export function watchInbox(inboxDir: string, onBundle: (dir: string) => void, opts: { settleMs?: number } = {}): InboxWatcher {
  const settleMs = opts.settleMs ?? 2000;
  const timers = new Map<string, NodeJS.Timeout>();
  const watcher: FSWatcher = chokidar.watch(inboxDir, {
    ignoreInitial: true,
    depth: 2,
    // Our own bookkeeping (rejected/, done markers) starts with a dot.
    ignored: (p: string) => relative(inboxDir, p).split(sep).some((part) => part.startsWith('.')),
  });
  const touch = (path: string) => {
    const rel = relative(inboxDir, path);
    if (!rel || rel.startsWith('..')) return;
    const top = join(inboxDir, rel.split(sep)[0]!);
    clearTimeout(timers.get(top));
    timers.set(
      top,
      setTimeout(() => {
        timers.delete(top);
        void isBundle(top).then((yes) => yes && onBundle(top));
      }, settleMs),
    );
  };
  watcher.on('add', touch).on('change', touch).on('addDir', (p) => p !== inboxDir && touch(join(p, 'x')));
  return {
    async close() {
      for (const t of timers.values()) clearTimeout(t);
      timers.clear();
      await watcher.close();
    },
    async scan() {
      const out: string[] = [];
      for (const n of await readdir(inboxDir).catch(() => [] as string[])) {
        const p = join(inboxDir, n);
        if (!n.startsWith('.') && (await stat(p)).isDirectory() && (await isBundle(p))) out.push(p);
      }
      return out;
    },
  };
}

