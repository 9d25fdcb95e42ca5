/**
 * A suite's Release file: where it comes from (InRelease, or Release plus
 * Release.gpg), whether the signature holds against the pinned keyring, and
 * what it lists. Only the *signed* text is ever parsed: for InRelease that is
 * the text the cleartext signature covers, not the bytes around it, so lines
 * slipped outside the signed block cannot add or change index entries.
 */
import * as openpgp from 'openpgp';
import { readFile } from 'node:fs/promises';
import { LiveupError } from '../../../agent/src/channel/errors.js';
import { verifyDetached, type PinnedKeyring } from '../../../agent/src/channel/signature.js';
import { Deb822Error, parseStanzas } from './deb822.js';

export interface ReleaseEntry {
  /** Relative to the suite directory, e.g. `main/binary-amd64/Packages.xz`. */
  readonly path: string;
  readonly size: number;
  readonly sha256: string;
}

export interface Release {
  readonly suite?: string;
  readonly codename?: string;
  readonly validUntil?: Date;
  readonly architectures: readonly string[];
  readonly components: readonly string[];
  readonly acquireByHash: boolean;
  /** The SHA256 section, by path. */
  readonly entries: ReadonlyMap<string, ReleaseEntry>;
}

export function parseRelease(text: string, source: string): Release {
  let stanzas;
  try {
    stanzas = parseStanzas(text, source);
  } catch (e) {
    if (e instanceof Deb822Error) throw new LiveupError('MIRROR_INVALID', e.message, { file: source });
    throw e;
  }
  if (stanzas.length !== 1) throw new LiveupError('MIRROR_INVALID', `${source}: expected one stanza, found ${stanzas.length}`, { file: source });
  const f = stanzas[0]!;
  const sha = f.get('sha256');
  if (sha === undefined) throw new LiveupError('MIRROR_INVALID', `${source}: no SHA256 field (MD5Sum/SHA1 alone are not trusted)`, { file: source });
  const entries = new Map<string, ReleaseEntry>();
  for (const l of sha.split('\n')) {
    if (l.trim() === '') continue;
    const m = /^([0-9a-fA-F]{64})\s+(\d+)\s+(\S+)$/.exec(l.trim());
    if (!m) throw new LiveupError('MIRROR_INVALID', `${source}: SHA256: malformed line "${l.slice(0, 80)}"`, { file: source });
    const path = m[3]!;
    if (!isSafeRelative(path)) throw new LiveupError('MIRROR_INVALID', `${source}: SHA256: path "${path}" leaves the suite directory`, { file: source });
    entries.set(path, { path, size: Number(m[2]), sha256: m[1]!.toLowerCase() });
  }
  let validUntil: Date | undefined;
  const vu = f.get('valid-until');
  if (vu !== undefined) {
    const t = Date.parse(vu.replace(/\bUTC$/, '+0000'));
    if (Number.isNaN(t)) throw new LiveupError('MIRROR_INVALID', `${source}: Valid-Until "${vu}" is not a date`, { file: source });
    validUntil = new Date(t);
  }
  const words = (k: string) => (f.get(k) ?? '').split(/\s+/).filter(Boolean);
  return {
    suite: f.get('suite'),
    codename: f.get('codename'),
    validUntil,
    architectures: words('architectures'),
    components: words('components'),
    acquireByHash: (f.get('acquire-by-hash') ?? '').toLowerCase() === 'yes',
    entries,
  };
}

/** A path from an index that must stay inside the tree it is relative to. */
export function isSafeRelative(p: string): boolean {
  return p !== '' && !p.startsWith('/') && !p.split('/').some((s) => s === '..' || s === '') && !p.includes('\0');
}

/**
 * Verify an InRelease cleartext signature and return the signed text. As in
 * signature.ts, `verified` is a promise that rejects on a bad signature: each
 * is awaited in a try, and only a pinned key whose signature resolves counts.
 */
export async function verifyInRelease(text: string, keyring: PinnedKeyring, now: Date, source: string): Promise<string> {
  let message: openpgp.CleartextMessage;
  try {
    message = await openpgp.readCleartextMessage({ cleartextMessage: text });
  } catch (e) {
    throw new LiveupError('SIGNATURE_INVALID', `${source}: not an OpenPGP cleartext-signed message (${(e as Error).message})`, { file: source });
  }
  let result;
  try {
    result = await openpgp.verify({ message, verificationKeys: [...keyring.keys], date: now });
  } catch (e) {
    throw new LiveupError('SIGNATURE_INVALID', `${source}: ${(e as Error).message}`, { file: source });
  }
  let good = 0;
  let lastError = '';
  let pinned = 0;
  for (const s of result.signatures) {
    if (!keyring.keys.some((k) => k.getKeys(s.keyID).length > 0)) continue;
    pinned++;
    try {
      await s.verified;
      good++;
    } catch (e) {
      lastError = (e as Error).message;
    }
  }
  if (good === 0) {
    if (pinned > 0) throw new LiveupError('SIGNATURE_INVALID', `${source}: signature does not verify (${lastError})`, { file: source });
    const ids = result.signatures.map((s) => s.keyID.toHex().toUpperCase()).join(', ') || 'none';
    throw new LiveupError('KEY_NOT_TRUSTED', `${source}: signed by key ${ids}, which is not in the keyring ${keyring.source}`, { file: source });
  }
  return result.data;
}

export interface SignedRelease {
  readonly release: Release;
  /** Which file(s) carried the signature we accepted. */
  readonly signedBy: readonly ('InRelease' | 'Release.gpg')[];
}

export interface ReleaseProblem {
  readonly kind: 'MISSING' | 'BAD_SIGNATURE' | 'INVALID' | 'EXPIRED';
  readonly file: string;
  readonly detail: string;
}

async function readOpt(path: string): Promise<Buffer | null> {
  try {
    return await readFile(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

/**
 * Load and check one suite. Every signature present must hold (a bad
 * Release.gpg next to a good InRelease is still a broken mirror: apt on some
 * clients reads one, some the other). Returns the parsed Release only when a
 * signature held; problems are returned, not thrown, so one bad suite does not
 * hide the others.
 */
export async function loadSuite(
  suiteDir: string,
  rel: string,
  keyring: PinnedKeyring,
  now: Date,
): Promise<{ signed: SignedRelease | null; problems: ReleaseProblem[] }> {
  const problems: ReleaseProblem[] = [];
  const inRelease = await readOpt(`${suiteDir}/InRelease`);
  const release = await readOpt(`${suiteDir}/Release`);
  const releaseGpg = await readOpt(`${suiteDir}/Release.gpg`);
  let text: string | null = null;
  const signedBy: ('InRelease' | 'Release.gpg')[] = [];
  if (inRelease) {
    try {
      text = await verifyInRelease(inRelease.toString('utf8'), keyring, now, `${rel}/InRelease`);
      signedBy.push('InRelease');
    } catch (e) {
      problems.push({ kind: 'BAD_SIGNATURE', file: `${rel}/InRelease`, detail: stripSource(e, `${rel}/InRelease`) });
    }
  }
  if (release && releaseGpg) {
    try {
      await verifyDetached(release, releaseGpg, keyring, { threshold: 1, now, source: `${rel}/Release.gpg` });
      signedBy.push('Release.gpg');
      if (text === null) text = release.toString('utf8');
    } catch (e) {
      problems.push({ kind: 'BAD_SIGNATURE', file: `${rel}/Release.gpg`, detail: stripSource(e, `${rel}/Release.gpg`) });
    }
  } else if (release && !inRelease) {
    problems.push({ kind: 'MISSING', file: `${rel}/Release.gpg`, detail: 'Release is not signed (no InRelease, no Release.gpg)' });
  } else if (!release && !inRelease) {
    problems.push({ kind: 'MISSING', file: `${rel}/InRelease`, detail: 'neither InRelease nor Release exists' });
  }
  if (text === null) return { signed: null, problems };
  // Both forms present and good, but saying different things: which one a
  // client reads would decide what it installs. Compare the parsed entries
  // rather than bytes, since cleartext signing normalises trailing spaces.
  let parsed: Release;
  try {
    parsed = parseRelease(text, `${rel}/${signedBy[0]}`);
    if (signedBy.length === 2 && release) {
      const other = parseRelease(release.toString('utf8'), `${rel}/Release`);
      if (!sameEntries(parsed, other)) problems.push({ kind: 'INVALID', file: `${rel}/Release`, detail: 'lists other files or hashes than InRelease' });
    }
  } catch (e) {
    problems.push({ kind: 'INVALID', file: `${rel}/${signedBy[0]}`, detail: stripSource(e, `${rel}/${signedBy[0]}`) });
    return { signed: null, problems };
  }
  if (parsed.validUntil && parsed.validUntil.getTime() < now.getTime()) {
    problems.push({ kind: 'EXPIRED', file: `${rel}/${signedBy[0]}`, detail: `Valid-Until ${parsed.validUntil.toISOString()} has passed` });
  }
  return { signed: { release: parsed, signedBy }, problems };
}

function sameEntries(a: Release, b: Release): boolean {
  if (a.entries.size !== b.entries.size) return false;
  for (const [p, e] of a.entries) {
    const o = b.entries.get(p);
    if (!o || o.size !== e.size || o.sha256 !== e.sha256) return false;
  }
  return true;
}

/** Problem lines already start with the path; drop the source prefix the error message repeats. */
export function stripSource(e: unknown, source: string): string {
  const m = e instanceof Error ? e.message : String(e);
  return m.startsWith(`${source}: `) ? m.slice(source.length + 2) : m;
}
