/**
 * `liveup mirror verify`: check a local apt mirror end to end, in parallel.
 *
 *   1. every suite's InRelease (cleartext) and Release + Release.gpg (detached)
 *      against the pinned keyring; Valid-Until;
 *   2. every index file the signed Release lists and the mirror holds: size and
 *      SHA256 (a partial mirror legitimately lacks other architectures and the
 *      uncompressed variants Debian lists but does not ship, so absence alone
 *      is only a problem for the Packages index of a component/architecture
 *      the mirror carries or was asked for);
 *   3. by-hash/<ALGO>/<digest> files: content hashes to the name;
 *   4. only then, and only from indices whose hash held, every pool file named
 *      by a Packages or Sources index: size and SHA256;
 *   5. files under pool/ that no index names (when every suite was checked and
 *      every index could be read; otherwise the reference set is incomplete and
 *      reporting would blame good files).
 */
import { readdir, realpath, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { PinnedKeyring } from '../../../agent/src/channel/signature.js';
import { HashPool, defaultJobs, type HashAlgo, type HashResult } from './hashpool.js';
import { VARIANT_ORDER, indexKind, readIndex, type PoolRef } from './packages.js';
import { loadSuite, stripSource, type ReleaseEntry } from './release.js';

export const PROBLEM_KINDS = [
  'MISSING', 'SIZE_MISMATCH', 'HASH_MISMATCH', 'UNREFERENCED', 'BAD_SIGNATURE', 'INVALID', 'EXPIRED', 'UNREADABLE',
] as const;
export type ProblemKind = (typeof PROBLEM_KINDS)[number];

export interface MirrorProblem {
  readonly kind: ProblemKind;
  /** Relative to the mirror root. */
  readonly path: string;
  readonly detail: string;
}

export interface VerifyProgress {
  readonly phase: 'signatures' | 'indices' | 'pool' | 'unreferenced';
  readonly files: number;
  readonly filesTotal: number;
  readonly bytes: number;
  readonly bytesTotal: number;
}

export interface MirrorVerifyOptions {
  readonly keyring: PinnedKeyring;
  /** Worker threads hashing in parallel; default: CPU count. */
  readonly jobs?: number;
  /** Suites to check (directory names under dists/); default: all. */
  readonly dists?: readonly string[];
  /** Architectures whose Packages index must be present; default: those with a binary-ARCH directory. */
  readonly architectures?: readonly string[];
  /** Components that must be present; default: the Release's Components. */
  readonly components?: readonly string[];
  readonly now?: Date;
  readonly onProgress?: (p: VerifyProgress) => void;
}

export interface MirrorReport {
  readonly root: string;
  readonly suites: readonly string[];
  /** Index files (and by-hash files) whose hash was checked. */
  readonly indices: number;
  /** Pool files named by the indices. */
  readonly files: number;
  /** Bytes read and hashed, indices and pool. */
  readonly bytes: number;
  readonly unreferencedChecked: boolean;
  readonly problems: readonly MirrorProblem[];
  readonly ms: number;
}

const ALGO_DIRS: Record<string, HashAlgo> = { MD5Sum: 'md5', SHA1: 'sha1', SHA256: 'sha256', SHA512: 'sha512' };

async function isDir(p: string): Promise<boolean> {
  return (await stat(p).catch(() => null))?.isDirectory() ?? false;
}

/** `PATH` or, for a `liveup mirror sync` destination, `PATH/current`. */
export async function resolveMirrorRoot(path: string): Promise<string> {
  if (!(await isDir(join(path, 'dists'))) && (await isDir(join(path, 'current', 'dists')))) return join(path, 'current');
  return path;
}

async function listSuites(root: string): Promise<string[]> {
  const dists = join(root, 'dists');
  const names = await readdir(dists).catch(() => [] as string[]);
  const seen = new Set<string>();
  const out: string[] = [];
  // `stable -> bookworm` symlinks name one suite twice: check it once.
  for (const n of names.sort()) {
    const d = join(dists, n);
    if (!(await isDir(d))) continue;
    const hasRelease = (await stat(join(d, 'InRelease')).catch(() => null)) ?? (await stat(join(d, 'Release')).catch(() => null));
    if (!hasRelease) continue;
    const real = await realpath(d);
    if (seen.has(real)) continue;
    seen.add(real);
    out.push(n);
  }
  return out;
}

async function* walkFiles(dir: string, rel: string): AsyncGenerator<string> {
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  for (const e of entries) {
    if (e.isDirectory()) yield* walkFiles(join(dir, e.name), `${rel}/${e.name}`);
    else yield `${rel}/${e.name}`;
  }
}

/** Strip a compression suffix: `main/binary-amd64/Packages.xz` → `main/binary-amd64/Packages`. */
function indexBase(p: string): string {
  return p.replace(/\.(gz|xz|bz2|lzma|zst)$/, '');
}

export async function verifyMirror(root: string, opts: MirrorVerifyOptions): Promise<MirrorReport> {
  const t0 = performance.now();
  const now = opts.now ?? new Date();
  const problems: MirrorProblem[] = [];
  const add = (kind: ProblemKind, path: string, detail: string) => problems.push({ kind, path, detail });

  const allSuites = await listSuites(root);
  const suites = opts.dists && opts.dists.length > 0 ? [...opts.dists] : allSuites;
  if (suites.length === 0) add('MISSING', 'dists', 'no suite (dists/*/InRelease or Release) in this mirror');

  let bytes = 0;
  let progress: VerifyProgress = { phase: 'signatures', files: 0, filesTotal: 0, bytes: 0, bytesTotal: 0 };
  const report = (p: Partial<VerifyProgress>) => {
    progress = { ...progress, ...p };
    opts.onProgress?.(progress);
  };
  const pool = new HashPool(Math.max(1, opts.jobs ?? defaultJobs()), (n) => {
    bytes += n;
    report({ bytes: progress.bytes + n });
  });

  try {
    // 1. Signatures.
    const releases: { suite: string; entries: ReadonlyMap<string, ReleaseEntry>; components: readonly string[] }[] = [];
    for (const suite of suites) {
      const rel = `dists/${suite}`;
      const r = await loadSuite(join(root, rel), rel, opts.keyring, now);
      for (const p of r.problems) add(p.kind, p.file, p.detail);
      if (r.signed) releases.push({ suite, entries: r.signed.release.entries, components: r.signed.release.components });
    }

    // 2 + 3. Index files listed in Release, and by-hash files.
    interface IndexJob { suite: string; entry: ReleaseEntry; rel: string }
    const indexJobs: IndexJob[] = [];
    const byHash: { rel: string; algo: HashAlgo; digest: string }[] = [];
    for (const r of releases) {
      for (const entry of r.entries.values()) indexJobs.push({ suite: r.suite, entry, rel: `dists/${r.suite}/${entry.path}` });
      for await (const f of walkFiles(join(root, 'dists', r.suite), `dists/${r.suite}`)) {
        const m = /\/by-hash\/([^/]+)\/([^/]+)$/.exec(f);
        if (!m) continue;
        const algo = ALGO_DIRS[m[1]!];
        if (!algo) add('INVALID', f, `unknown by-hash algorithm directory "${m[1]}"`);
        else byHash.push({ rel: f, algo, digest: m[2]!.toLowerCase() });
      }
    }
    report({ phase: 'indices', files: 0, filesTotal: indexJobs.length + byHash.length, bytes: 0, bytesTotal: 0 });
    let done = 0;
    const tick = () => report({ files: ++done });
    const present = new Set<string>(); // rel paths of index files present and intact
    const absent = new Set<string>();
    let indexCount = 0;
    await Promise.all([
      ...indexJobs.map(async (j) => {
        const r = await pool.hash(join(root, j.rel), j.entry.size);
        tick();
        if (r.kind === 'error' && r.code === 'ENOENT') {
          absent.add(j.rel);
          return;
        }
        indexCount++;
        if (judge(r, j.rel, j.entry.size, j.entry.sha256, `dists/${j.suite}/Release`, add)) present.add(j.rel);
      }),
      ...byHash.map(async (b) => {
        const r = await pool.hash(join(root, b.rel), -1, b.algo);
        tick();
        indexCount++;
        if (r.kind === 'error') add('UNREADABLE', b.rel, r.code);
        else if (r.kind === 'hashed' && r.digest !== b.digest) add('HASH_MISMATCH', b.rel, `content hashes to ${r.digest}, not the ${b.algo} its name says`);
      }),
    ]);

    // Which Packages indices must exist, and which may be trusted for step 4.
    let refsComplete = true;
    const trusted: { rel: string; kind: 'packages' | 'sources' }[] = [];
    for (const r of releases) {
      const groups = new Map<string, string[]>(); // base rel → listed variants
      for (const e of r.entries.values()) {
        if (!indexKind(e.path)) continue;
        const base = `dists/${r.suite}/${indexBase(e.path)}`;
        groups.set(base, [...(groups.get(base) ?? []), `dists/${r.suite}/${e.path}`]);
      }
      for (const [base, variants] of groups) {
        const ok = VARIANT_ORDER.map((v) => base + v).find((v) => present.has(v));
        if (ok) trusted.push({ rel: ok, kind: indexKind(ok)! });
        else if (variants.some((v) => !absent.has(v))) refsComplete = false; // present but corrupt: reported above
      }
      const components = opts.components && opts.components.length > 0 ? opts.components : r.components;
      for (const comp of components) {
        const compDir = join(root, 'dists', r.suite, comp);
        const archs = opts.architectures && opts.architectures.length > 0
          ? opts.architectures
          : (await readdir(compDir).catch(() => [] as string[])).filter((n) => n.startsWith('binary-')).map((n) => n.slice(7));
        for (const arch of archs) {
          const base = `dists/${r.suite}/${comp}/binary-${arch}/Packages`;
          const variants = groups.get(base);
          if (!variants) add('MISSING', base, `the signed Release lists no Packages index for ${comp}/${arch}`);
          else if (variants.every((v) => absent.has(v))) {
            add('MISSING', variants.find((v) => v.endsWith('.xz')) ?? variants[0]!, `no variant of ${comp}/binary-${arch}/Packages is in the mirror`);
          }
        }
      }
    }
    if (releases.length < suites.length) refsComplete = false;

    // 4. Pool files named by the trusted indices.
    const refs = new Map<string, PoolRef>();
    for (const t of trusted) {
      try {
        await readIndex(join(root, t.rel), t.rel, t.kind, (ref) => {
          const prev = refs.get(ref.path);
          if (!prev) refs.set(ref.path, ref);
          else if (prev.sha256 !== ref.sha256 || prev.size !== ref.size) {
            add('INVALID', ref.path, `${prev.index} and ${ref.index} give it different sizes or SHA256s`);
          }
        });
      } catch (e) {
        refsComplete = false;
        add('INVALID', t.rel, stripSource(e, t.rel));
      }
    }
    const poolJobs = [...refs.values()];
    report({
      phase: 'pool', files: 0, filesTotal: poolJobs.length, bytes: 0,
      bytesTotal: poolJobs.reduce((n, r) => n + r.size, 0),
    });
    done = 0;
    await Promise.all(poolJobs.map(async (ref) => {
      const r = await pool.hash(join(root, ref.path), ref.size);
      tick();
      judge(r, ref.path, ref.size, ref.sha256, ref.index, add);
    }));

    // 5. Unreferenced pool files.
    const unreferencedChecked = refsComplete && suites.length > 0 && allSuites.every((s) => suites.includes(s));
    if (unreferencedChecked) {
      report({ phase: 'unreferenced' });
      for await (const f of walkFiles(join(root, 'pool'), 'pool')) {
        if (!refs.has(f)) add('UNREFERENCED', f, 'in pool/ but named by no index');
      }
    }

    problems.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : a.kind.localeCompare(b.kind)));
    return {
      root, suites, indices: indexCount, files: poolJobs.length, bytes, unreferencedChecked, problems,
      ms: performance.now() - t0,
    };
  } finally {
    await pool.close();
  }
}

/** Record what a hash result says against the expectation; true when it holds. */
function judge(
  r: HashResult, rel: string, size: number, sha256: string, by: string,
  add: (k: ProblemKind, p: string, d: string) => void,
): boolean {
  if (r.kind === 'error') {
    if (r.code === 'ENOENT') add('MISSING', rel, `named by ${by} (${size} bytes)`);
    else add('UNREADABLE', rel, r.code);
    return false;
  }
  if (r.kind === 'size' || r.size !== size) {
    add('SIZE_MISMATCH', rel, `${r.size} bytes, ${by} says ${size}`);
    return false;
  }
  if (r.digest !== sha256) {
    add('HASH_MISMATCH', rel, `SHA256 ${r.digest}, ${by} says ${sha256}`);
    return false;
  }
  return true;
}
