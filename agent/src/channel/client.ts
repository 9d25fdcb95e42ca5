/**
 * Reading a channel: the index, then the manifests it names, each verified
 * before any field is used. Shared by the agent's check and `liveup verify`.
 */
import { LiveupError, isLiveupError } from './errors.js';
import { CAPS, SIG_SUFFIX, indexPath } from './layout.js';
import type { IndexEntry } from './schema.js';
import type { RepoSource } from './source.js';
import { verifyIndex, verifyManifest, type TrustContext, type VerifiedIndex, type VerifiedManifest } from './verify.js';

export async function fetchVerifiedIndex(
  src: RepoSource,
  ctx: TrustContext & { readonly channel: string; readonly minSequence: number; readonly indexCap?: number },
): Promise<VerifiedIndex> {
  const rel = indexPath(ctx.channel);
  const attempt = async (): Promise<VerifiedIndex> => {
    const bytes = await src.readBounded(rel, ctx.indexCap ?? CAPS.index);
    if (bytes === null) {
      throw new LiveupError('NOT_FOUND', `${src.base}: channel "${ctx.channel}" has no index (${rel})`, { file: rel });
    }
    const sig = await src.readBounded(rel + SIG_SUFFIX, CAPS.signature);
    return verifyIndex(bytes, sig, { ...ctx, source: `${rel}` });
  };
  try {
    return await attempt();
  } catch (e) {
    // The index and its signature are two requests; a publish between them
    // gives a mismatched pair once. One retry tells a race from an attack.
    if (isLiveupError(e, 'SIGNATURE_INVALID')) return attempt();
    throw e;
  }
}

export async function fetchVerifiedManifest(
  src: RepoSource,
  entry: IndexEntry,
  ctx: TrustContext & { readonly channel: string; readonly architecture: string; readonly minVersion: number },
): Promise<VerifiedManifest> {
  const rel = entry.manifest.path;
  // The index signed the manifest's length: read one byte more at most, so a
  // longer file is reported as LENGTH_MISMATCH rather than read on.
  const bytes = await src.readBounded(rel, Math.min(entry.manifest.length + 1, CAPS.manifest));
  if (bytes === null) throw new LiveupError('NOT_FOUND', `${src.base}: ${rel} is listed in the index but missing`, { file: rel });
  const sig = await src.readBounded(rel + SIG_SUFFIX, CAPS.signature);
  return verifyManifest(bytes, sig, {
    ...ctx,
    source: rel,
    expected: { ...entry.manifest, version: entry.version },
  });
}
