/**
 * SHA-512 of files in one streaming pass, optionally copying as we go (the
 * publisher hashes while it lays out the repository, so each byte is read once).
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { constants } from 'node:fs';
import type { ArtifactRef } from './schema.js';
import { HASH_CHUNK } from './verify.js';

export type Digest = Pick<ArtifactRef, 'length' | 'sha512'>;

export async function hashFile(path: string, onProgress?: (bytes: number) => void): Promise<Digest> {
  return copyAndHash(path, null, onProgress);
}

/** Hash `src`; when `dest` is given, also copy it there (created exclusively, fsynced). */
export async function copyAndHash(src: string, dest: string | null, onProgress?: (bytes: number) => void): Promise<Digest> {
  const hash = createHash('sha512');
  const input = await open(src, 'r');
  const output = dest ? await open(dest, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644) : null;
  let length = 0;
  try {
    const buf = Buffer.allocUnsafe(HASH_CHUNK);
    for (;;) {
      const { bytesRead } = await input.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      const chunk = buf.subarray(0, bytesRead);
      hash.update(chunk);
      if (output) await output.write(chunk);
      length += bytesRead;
      onProgress?.(length);
    }
    if (output) await output.sync();
  } finally {
    await input.close();
    await output?.close();
  }
  return { length, sha512: hash.digest('hex') };
}
