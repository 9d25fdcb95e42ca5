/**
 * A published, *verified* generation for agent-side tests: the repository is
 * written by the real publisher and read back through the real client, so the
 * Verified… values are minted the only way they can be.
 */
import type * as openpgp from 'openpgp';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fetchVerifiedIndex, fetchVerifiedManifest } from '../../agent/src/channel/client.js';
import { SIG_SUFFIX, artifactPath } from '../../agent/src/channel/layout.js';
import type { Artifact } from '../../agent/src/channel/schema.js';
import { openSource } from '../../agent/src/channel/source.js';
import type { VerifiedManifest } from '../../agent/src/channel/verify.js';
import { publish } from '../../publisher/src/publish.js';
import { makeGendir, makeKey } from './fixtures.js';

export interface PublishedGeneration {
  readonly repo: string;
  readonly verified: VerifiedManifest;
  /** The manifest's detached signature, as published. */
  readonly sig: Uint8Array;
  readonly artifacts: readonly Artifact[];
  /** Path of an artifact relative to the repository root (what a mirror serves). */
  rel(a: Artifact): string;
  /** The artifact's file in the repository. */
  file(a: Artifact): string;
  bytes(a: Artifact): Promise<Buffer>;
  artifact(role: Artifact['role']): Artifact;
}

export async function publishVerified(dir: string, opts: { kernelBytes?: number; bootKey?: openpgp.PrivateKey } = {}): Promise<PublishedGeneration> {
  const key = await makeKey(join(dir, 'key'));
  const repo = join(dir, 'repo');
  const gen = await makeGendir(join(dir, 'work'), { kernelBytes: opts.kernelBytes });
  await publish({ repo, channel: 'stable', gendir: gen, keys: [key.priv], indexTtlMs: 86400e3, manifestTtlMs: 86400e3, ...(opts.bootKey ? { bootKey: opts.bootKey } : {}) });
  const src = openSource(repo);
  const trust = { keyring: key.keyring, threshold: 1, now: new Date() };
  const index = await fetchVerifiedIndex(src, { ...trust, channel: 'stable', minSequence: 0 });
  const entry = index.index.generations[0]!;
  const verified = await fetchVerifiedManifest(src, entry, { ...trust, channel: 'stable', architecture: entry.architecture, minVersion: 0 });
  const sig = await readFile(join(repo, entry.manifest.path + SIG_SUFFIX));
  const m = verified.manifest;
  const rel = (a: Artifact) => artifactPath(m.version, a.path);
  return {
    repo,
    verified,
    sig,
    artifacts: m.artifacts,
    rel,
    file: (a) => join(repo, rel(a)),
    bytes: (a) => readFile(join(repo, rel(a))),
    artifact: (role) => {
      const a = m.artifacts.find((x) => x.role === role);
      if (!a) throw new Error(`no ${role} artifact`);
      return a;
    },
  };
}
