/**
 * Packages and Sources indices, read as a stream (a Debian main Packages file
 * is ~100 MB uncompressed; we never hold it whole): each stanza yields the pool
 * files it names with their size and SHA256. Compression is chosen by file
 * name: .gz through zlib, .xz through the `xz` tool (Node has no xz decoder,
 * and xz is Essential-adjacent on every Debian system).
 */
import { createReadStream } from 'node:fs';
import { createGunzip } from 'node:zlib';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { execa } from 'execa';
import { LiveupError } from '../../../agent/src/channel/errors.js';
import { Deb822Error, StanzaParser, type Stanza } from './deb822.js';
import { isSafeRelative } from './release.js';

export interface PoolRef {
  /** Relative to the mirror root, e.g. `pool/main/h/hello/hello_2.10-3_amd64.deb`. */
  readonly path: string;
  readonly size: number;
  readonly sha256: string;
  /** The index that names it, for messages. */
  readonly index: string;
}

export type IndexKind = 'packages' | 'sources';

/** `main/binary-amd64/Packages.xz` → packages; `main/source/Sources.gz` → sources; else null. */
export function indexKind(path: string): IndexKind | null {
  const base = path.slice(path.lastIndexOf('/') + 1);
  if (/^Packages(\.gz|\.xz)?$/.test(base)) return 'packages';
  if (/^Sources(\.gz|\.xz)?$/.test(base)) return 'sources';
  return null;
}

/** Cheapest variant first: plain text, then gzip, then xz (a child process). */
export const VARIANT_ORDER = ['', '.gz', '.xz'] as const;

function open(file: string): { stream: Readable; done: () => Promise<void> } {
  if (file.endsWith('.xz')) {
    const p = execa('xz', ['-dc', '--', file], { buffer: false, stdin: 'ignore', stderr: 'pipe' });
    return {
      stream: p.stdout,
      done: async () => {
        try {
          await p;
        } catch (e) {
          throw new Error(`xz -dc failed: ${(e as { shortMessage?: string }).shortMessage ?? (e as Error).message}`);
        }
      },
    };
  }
  const raw = createReadStream(file, { highWaterMark: 1 << 20 });
  if (file.endsWith('.gz')) {
    const gz = createGunzip();
    raw.on('error', (e) => gz.destroy(e));
    return { stream: raw.pipe(gz), done: async () => undefined };
  }
  return { stream: raw, done: async () => undefined };
}

/**
 * Read one index file and call `onRef` for every pool file it names.
 * `rel` is the index's path relative to the mirror root, used in messages.
 */
export async function readIndex(file: string, rel: string, kind: IndexKind, onRef: (r: PoolRef) => void): Promise<number> {
  const { stream, done } = open(file);
  const parser = new StanzaParser(rel);
  let stanzas = 0;
  const take = (s: Stanza | null) => {
    if (!s) return;
    stanzas++;
    if (kind === 'packages') packageRefs(s, rel, stanzas, onRef);
    else sourceRefs(s, rel, stanzas, onRef);
  };
  try {
    const lines = createInterface({ input: stream, crlfDelay: Infinity });
    for await (const line of lines) take(parser.line(line));
    take(parser.flush());
    await done();
  } catch (e) {
    stream.destroy();
    if (e instanceof LiveupError) throw e;
    const msg = e instanceof Deb822Error ? e.message : `${rel}: ${(e as Error).message}`;
    throw new LiveupError('MIRROR_INVALID', msg, { file: rel });
  }
  return stanzas;
}

function bad(rel: string, n: number, what: string): never {
  throw new LiveupError('MIRROR_INVALID', `${rel}: stanza ${n}: ${what}`, { file: rel });
}

function packageRefs(s: Stanza, rel: string, n: number, onRef: (r: PoolRef) => void): void {
  const filename = s.get('filename');
  const size = s.get('size');
  const sha256 = s.get('sha256');
  const pkg = s.get('package') ?? `#${n}`;
  if (!filename) bad(rel, n, `package ${pkg} has no Filename`);
  if (!isSafeRelative(filename)) bad(rel, n, `package ${pkg}: Filename "${filename}" leaves the mirror`);
  if (!size || !/^\d+$/.test(size)) bad(rel, n, `package ${pkg}: Size "${size ?? ''}" is not a number`);
  if (!sha256 || !/^[0-9a-fA-F]{64}$/.test(sha256)) bad(rel, n, `package ${pkg}: no SHA256 (MD5sum alone is not trusted)`);
  onRef({ path: filename, size: Number(size), sha256: sha256.toLowerCase(), index: rel });
}

function sourceRefs(s: Stanza, rel: string, n: number, onRef: (r: PoolRef) => void): void {
  const dir = s.get('directory');
  const sums = s.get('checksums-sha256');
  const pkg = s.get('package') ?? `#${n}`;
  if (!dir || !isSafeRelative(dir)) bad(rel, n, `source ${pkg}: Directory "${dir ?? ''}" missing or outside the mirror`);
  if (!sums) bad(rel, n, `source ${pkg} has no Checksums-Sha256`);
  for (const l of sums.split('\n')) {
    if (l.trim() === '') continue;
    const m = /^([0-9a-fA-F]{64})\s+(\d+)\s+(\S+)$/.exec(l.trim());
    if (!m || !isSafeRelative(m[3]!) || m[3]!.includes('/')) bad(rel, n, `source ${pkg}: malformed Checksums-Sha256 line "${l.slice(0, 80)}"`);
    onRef({ path: `${dir}/${m[3]}`, size: Number(m[2]), sha256: m[1]!.toLowerCase(), index: rel });
  }
}
