/**
 * `liveup mirror sync`: keep a local apt mirror with Debian's debmirror, and
 * only ever expose a state that `mirror verify` passed.
 *
 *   DEST/current -> states/<id>       what the factory (and apt clients) use
 *   DEST/states/<id>                  verified states; the newest `keep` stay
 *   DEST/states/<id>.partial          the sync in progress
 *   DEST/states/<id>.failed           the last failed sync, kept for inspection
 *
 * A sync seeds the staging tree from `current` with hard links (cp -al), so
 * only what changed upstream is downloaded. That is safe because debmirror
 * never writes into an existing file: downloads go to `<file>-<pid>` and are
 * renamed over, and meta files are unlinked before being linked in from
 * `.temp` (see http_get and "Moving meta files" in /usr/bin/debmirror). A
 * changed file therefore gets a new inode in staging and the old state keeps
 * its bytes. debmirror then verifies signatures with gpgv, and we verify the
 * whole staged tree ourselves (debmirror only checks the sizes of pool files),
 * and switch `current` with an atomic symlink rename. On any failure `current`
 * is untouched: the previous good state stays in use.
 */
import { mkdir, readFile, readdir, rename, rm, writeFile, readlink, stat } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { execa } from 'execa';
import { LiveupError } from '../../../agent/src/channel/errors.js';
import { loadKeyring, type PinnedKeyring } from '../../../agent/src/channel/signature.js';
import { symlinkAtomic } from '../../../agent/src/util/fsatomic.js';
import { Reader, parseJson } from '../../../agent/src/util/validate.js';
import { withRepoLock } from '../repo.js';
import { verifyMirror, type MirrorProblem, type MirrorReport, type VerifyProgress } from './verify.js';

/** What the profiles build for; the default when a config names none. */
export const PROFILE_ARCHITECTURES = ['amd64', 'arm64', 'armhf', 'i386'] as const;

export interface MirrorConfig {
  /** http(s) URL of the upstream archive root (the directory holding dists/ and pool/). */
  readonly upstream: string;
  readonly suites: readonly string[];
  readonly components: readonly string[];
  readonly architectures: readonly string[];
  /** Armored or binary OpenPGP keyring the upstream Release must be signed with. */
  readonly keyring: string;
  /** Directory holding `current` and `states/`. */
  readonly dest: string;
  /** Mirror source packages too. */
  readonly sources: boolean;
  /** Verified states kept, `current` included. */
  readonly keep: number;
  /** Extra debmirror arguments (e.g. `--i18n`), passed as given. */
  readonly debmirrorArgs: readonly string[];
}

const WORD = /^[A-Za-z0-9][A-Za-z0-9._/-]*$/;

export function parseMirrorConfig(text: string, source: string): MirrorConfig {
  const r = new Reader(source, 'CONFIG_INVALID');
  const o = r.object(parseJson(text, source, 'CONFIG_INVALID'), '', [
    'upstream', 'suites', 'components', 'architectures', 'keyring', 'dest', 'sources', 'keep', 'debmirrorArgs',
  ]);
  const upstream = r.string(o, 'upstream', '', { pattern: /^https?:\/\/[^/\s]+(\/\S*)?$/, what: 'an http:// or https:// URL' });
  const words = (key: string, def?: readonly string[]): string[] => {
    if (o[key] === undefined && def) return [...def];
    const list = r.array(o, key, '', { max: 64 });
    if (list.length === 0) r.fail(key, 'must not be empty');
    return list.map((_, i) => r.string(list as unknown as Record<string, unknown>, String(i), key, { pattern: WORD, what: 'a suite, component or architecture name' }));
  };
  const base = dirname(resolve(source));
  const path = (key: string) => {
    const p = r.string(o, key, '', { max: 4096 });
    if (p === '') r.fail(key, 'must not be empty');
    return isAbsolute(p) ? p : resolve(base, p);
  };
  const extra = o.debmirrorArgs === undefined ? [] : r.array(o, 'debmirrorArgs', '', { max: 64 });
  return {
    upstream,
    suites: words('suites'),
    components: words('components', ['main']),
    architectures: words('architectures', PROFILE_ARCHITECTURES),
    keyring: path('keyring'),
    dest: path('dest'),
    sources: r.optBool(o, 'sources', '') ?? false,
    keep: r.optInt(o, 'keep', '', { min: 1, max: 100 }) ?? 2,
    debmirrorArgs: extra.map((_, i) => r.string(extra as unknown as Record<string, unknown>, String(i), 'debmirrorArgs', { pattern: /^--[a-z]/, what: 'a --option' })),
  };
}

export async function loadMirrorConfig(path: string): Promise<MirrorConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new LiveupError('CONFIG_INVALID', `cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { file: path });
  }
  return parseMirrorConfig(text, path);
}

export interface SyncOptions {
  readonly jobs?: number;
  readonly now?: Date;
  readonly log?: (line: string) => void;
  readonly onProgress?: (p: VerifyProgress) => void;
}

export interface SyncResult {
  readonly ok: boolean;
  /** Absolute path of the state `current` points to after the sync. */
  readonly current: string | null;
  /** The state this sync built (verified when ok, `.failed` otherwise). */
  readonly state: string;
  /** Why the sync failed, when it did. */
  readonly reason?: string;
  readonly problems: readonly MirrorProblem[];
  readonly report?: MirrorReport;
  readonly debmirrorMs: number;
}

/** debmirror's arguments for a config; exported for tests and `--help` docs. */
export function debmirrorArgs(cfg: MirrorConfig, keyringGpg: string, target: string): string[] {
  const url = new URL(cfg.upstream);
  const root = url.pathname.replace(/^\/+|\/+$/g, '');
  return [
    `--host=${url.host}`,
    `--method=${url.protocol.replace(':', '')}`,
    // debmirror joins host and root with "/"; an empty root means the server root.
    `--root=${root === '' ? '/' : root}`,
    `--dist=${cfg.suites.join(',')}`,
    `--section=${cfg.components.join(',')}`,
    `--arch=${cfg.architectures.join(',')}`,
    cfg.sources ? '--source' : '--nosource',
    `--keyring=${keyringGpg}`,
    // No rsync of project/trace and no pdiffs: plain HTTP, whole indices.
    '--rsync-extra=none',
    '--diff=none',
    '--progress',
    ...cfg.debmirrorArgs,
    target,
  ];
}

function stateId(now: Date): string {
  return now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
}

async function exists(p: string): Promise<boolean> {
  return (await stat(p).catch(() => null)) !== null;
}

/** gpgv reads binary keyrings only: write the pinned keys as one packet stream. */
async function writeBinaryKeyring(keyring: PinnedKeyring, path: string): Promise<void> {
  const parts = keyring.keys.map((k) => k.write());
  await writeFile(path, Buffer.concat(parts.map((p) => Buffer.from(p))), { mode: 0o644 });
}

export async function syncMirror(cfg: MirrorConfig, opts: SyncOptions = {}): Promise<SyncResult> {
  const log = opts.log ?? (() => undefined);
  const keyring = await loadKeyring(cfg.keyring);
  await mkdir(join(cfg.dest, 'states'), { recursive: true });
  return withRepoLock(cfg.dest, async () => {
    const states = join(cfg.dest, 'states');
    // A sync killed half-way leaves a .partial: it was never current, drop it.
    for (const n of await readdir(states)) if (n.endsWith('.partial')) await rm(join(states, n), { recursive: true, force: true });

    let id = stateId(opts.now ?? new Date());
    for (let i = 2; (await exists(join(states, id))) || (await exists(join(states, `${id}.failed`))); i++) id = `${stateId(opts.now ?? new Date())}-${i}`;
    const staging = join(states, `${id}.partial`);
    const currentLink = join(cfg.dest, 'current');
    const previous = await readlink(currentLink).then((t) => resolve(cfg.dest, t), () => null);

    await mkdir(staging);
    if (previous) {
      log(`seeding ${staging} from ${previous} (hard links)`);
      for (const d of ['dists', 'pool']) {
        if (await exists(join(previous, d))) await execa('cp', ['-al', join(previous, d), join(staging, d)]);
      }
    }

    const work = join(cfg.dest, '.work');
    await rm(work, { recursive: true, force: true });
    await mkdir(join(work, 'gnupg'), { recursive: true, mode: 0o700 });
    const keyringGpg = join(work, 'keyring.gpg');
    await writeBinaryKeyring(keyring, keyringGpg);

    const fail = async (reason: string, problems: readonly MirrorProblem[], debmirrorMs: number, report?: MirrorReport): Promise<SyncResult> => {
      // Keep only the latest failed state, for inspection; it never becomes current.
      for (const n of await readdir(states)) if (n.endsWith('.failed')) await rm(join(states, n), { recursive: true, force: true });
      const failed = join(states, `${id}.failed`);
      await rename(staging, failed);
      await rm(work, { recursive: true, force: true });
      log(`sync failed: ${reason}; current stays ${previous ?? '(none)'}`);
      return { ok: false, current: previous, state: failed, reason, problems, report, debmirrorMs };
    };

    const args = debmirrorArgs(cfg, keyringGpg, staging);
    log(`debmirror ${args.join(' ')}`);
    const t0 = performance.now();
    const run = execa('debmirror', args, {
      // A private GNUPGHOME so gpgv neither reads nor writes root's keyrings.
      env: { GNUPGHOME: join(work, 'gnupg') },
      all: true,
      reject: false,
      stdin: 'ignore',
    });
    run.all?.on('data', (d: Buffer) => {
      for (const l of d.toString().split('\n')) if (l.trim()) log(`debmirror: ${l.trim()}`);
    });
    const res = await run;
    const debmirrorMs = performance.now() - t0;
    if (res.failed) {
      if ((res as { code?: string }).code === 'ENOENT') {
        throw new LiveupError('COMMAND_FAILED', 'debmirror is not installed (apt-get install debmirror)');
      }
      const tail = String(res.all ?? '').trim().split('\n').slice(-5).join(' | ');
      return fail(`debmirror exited with ${res.exitCode ?? res.signal ?? 'an error'}: ${tail}`, [], debmirrorMs);
    }

    log(`verifying ${staging}`);
    const report = await verifyMirror(staging, {
      keyring,
      jobs: opts.jobs,
      dists: cfg.suites,
      components: cfg.components,
      architectures: cfg.architectures,
      now: opts.now,
      onProgress: opts.onProgress,
    });
    if (report.problems.length > 0) return fail(`the synced mirror fails verification (${report.problems.length} problem(s))`, report.problems, debmirrorMs, report);

    // Durable before visible: flush the file system holding the new state
    // (syncfs via `sync -f`, far cheaper than fsyncing every pool file).
    await execa('sync', ['-f', staging]);
    const final = join(states, id);
    await rename(staging, final);
    await symlinkAtomic(`states/${id}`, currentLink);
    await rm(work, { recursive: true, force: true });
    log(`current -> states/${id}`);

    // Prune: the newest `keep` verified states stay (current is the newest).
    const good = (await readdir(states)).filter((n) => !n.includes('.')).sort();
    for (const n of good.slice(0, Math.max(0, good.length - cfg.keep))) {
      if (n !== id) await rm(join(states, n), { recursive: true, force: true });
    }
    return { ok: true, current: final, state: final, problems: [], report, debmirrorMs };
  });
}
