/**
 * Where things live in a channel repository (the static tree a web server
 * serves). Kept in one place because the publisher writes these paths and the
 * agent, `liveup verify` and the docs read them.
 *
 *   REPO/generations/<version>/manifest.json(.sig) + artifacts + debs/
 *   REPO/channels/<channel>            → symlink to .<channel>.<sequence>
 *   REPO/channels/.<channel>.<sequence>/index.json(.sig)
 *
 * The index and its signature are two files, yet must change together: the
 * publisher writes both into a fresh directory and swaps a symlink, which is
 * one atomic rename. A reader that straddles a swap (two HTTP requests) sees a
 * mismatched pair once; the client retries the pair (see client.ts).
 */
export const GENERATIONS_DIR = 'generations';
export const CHANNELS_DIR = 'channels';
export const SIG_SUFFIX = '.sig';
export const MANIFEST_FILE = 'manifest.json';
export const INDEX_FILE = 'index.json';

export function indexPath(channel: string): string {
  return `${CHANNELS_DIR}/${channel}/${INDEX_FILE}`;
}

export function generationDir(version: number): string {
  return `${GENERATIONS_DIR}/${version}`;
}

export function manifestPath(version: number): string {
  return `${generationDir(version)}/${MANIFEST_FILE}`;
}

/** Size caps for unsigned input: nothing is read past these before its signature holds. */
export const CAPS = {
  index: 8 << 20,
  manifest: 16 << 20,
  signature: 64 << 10,
} as const;

/** Resolve an artifact path named in a manifest against the manifest's directory. */
export function artifactPath(version: number, rel: string): string {
  return `${generationDir(version)}/${rel}`;
}
