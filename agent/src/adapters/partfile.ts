/**
 * The `.part` file of a download, kept in lock-step with its hasher.
 *
 * Invariant: the hasher has seen exactly the bytes [0, size) of the file, in
 * order. Resuming therefore re-hashes what is on disk first (the disk is the
 * truth after a crash, not a saved hash state), and every appended chunk goes
 * through the hasher *before* it is written, so a byte past the signed length
 * is refused without ever reaching the disk.
 */
import { constants } from 'node:fs';
import { open, rm, type FileHandle } from 'node:fs/promises';
import { LiveupError } from '../channel/errors.js';
import type { ArtifactRef } from '../channel/schema.js';
import { ArtifactHasher, HASH_CHUNK, type VerifiedArtifact } from '../channel/verify.js';

/**
 * Write-back is started every this many bytes, in the background (libuv's
 * thread pool) while the next bytes arrive: the disk works during the
 * download instead of all at once in the final fsync, and a large image does
 * not pile up as dirty page cache. Measured in bench/agent.
 */
const WRITEBACK_BYTES = 32 << 20;

export class PartFile {
  private hasher: ArtifactHasher;
  private fh: FileHandle | null;
  private unsynced = 0;
  /** The background fdatasync in flight, if any; its failure surfaces in seal(). */
  private writeback: Promise<{ failed: unknown } | null> | null = null;
  /**
   * Set once the hasher refused data or the final check failed: the content
   * can no longer become valid and must not be resumed from.
   */
  poisoned = false;

  private constructor(
    readonly path: string,
    readonly ref: ArtifactRef,
    readonly source: string,
    fh: FileHandle,
    hasher: ArtifactHasher,
  ) {
    this.fh = fh;
    this.hasher = hasher;
  }

  /**
   * Open (or create) `path`, re-hashing any bytes already there. A file longer
   * than the signed length cannot be a prefix of the artifact: it is emptied.
   */
  static async open(path: string, ref: ArtifactRef, source: string): Promise<PartFile> {
    const fh = await open(path, constants.O_RDWR | constants.O_CREAT, 0o644).catch((e: unknown) => {
      throw localError(path, e);
    });
    const pf = new PartFile(path, ref, source, fh, new ArtifactHasher(ref, source));
    try {
      const { size } = await fh.stat();
      if (size > ref.length) await pf.reset();
      else if (size > 0) await pf.rehash(size);
    } catch (e) {
      await fh.close();
      throw e instanceof LiveupError ? e : localError(path, e);
    }
    return pf;
  }

  /** Bytes on disk, all of them already hashed. */
  get size(): number {
    return this.hasher.bytes;
  }

  private handle(): FileHandle {
    if (!this.fh) throw new LiveupError('INTERNAL', `${this.path}: used after close`);
    return this.fh;
  }

  private async rehash(size: number): Promise<void> {
    const fh = this.handle();
    const buf = Buffer.allocUnsafe(HASH_CHUNK);
    let pos = 0;
    while (pos < size) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - pos), pos);
      if (bytesRead === 0) break; // shrank under us: hash what is there, then cut to it
      this.hasher.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
    if (pos !== size) await fh.truncate(pos);
  }

  /** Start over: empty file, fresh hasher. */
  async reset(): Promise<void> {
    await this.handle().truncate(0).catch((e: unknown) => {
      throw localError(this.path, e);
    });
    this.hasher = new ArtifactHasher(this.ref, this.source);
    this.poisoned = false;
  }

  async append(chunk: Uint8Array): Promise<void> {
    const at = this.hasher.bytes;
    try {
      this.hasher.update(chunk);
    } catch (e) {
      this.poisoned = true;
      throw e;
    }
    try {
      let off = 0;
      while (off < chunk.length) {
        const { bytesWritten } = await this.handle().write(chunk, off, chunk.length - off, at + off);
        off += bytesWritten;
      }
    } catch (e) {
      // The hasher counted bytes the disk may not hold: the pair is out of step.
      // Re-opening re-hashes from disk and restores the invariant.
      this.poisoned = true;
      throw localError(this.path, e);
    }
    this.unsynced += chunk.length;
    if (this.unsynced >= WRITEBACK_BYTES && this.writeback === null) {
      this.unsynced = 0;
      const fh = this.handle();
      // A failure is kept and reported by seal(): the final fsync must not claim success after it.
      this.writeback = fh.datasync().then(
        () => { this.writeback = null; return null; },
        (e: unknown) => ({ failed: e }),
      );
    }
  }

  private async settleWriteback(): Promise<void> {
    const outcome = await this.writeback;
    this.writeback = null;
    if (outcome) throw outcome.failed;
  }

  /** fsync, close, and check length + SHA-512: the only way out as a VerifiedArtifact. */
  async seal(): Promise<VerifiedArtifact> {
    const fh = this.handle();
    try {
      await this.settleWriteback();
      await fh.sync();
    } catch (e) {
      throw localError(this.path, e);
    } finally {
      this.fh = null;
      await fh.close();
    }
    try {
      return this.hasher.finish(this.path);
    } catch (e) {
      this.poisoned = true;
      throw e;
    }
  }

  /** Close, keeping the bytes for a later resume. */
  async close(): Promise<void> {
    const fh = this.fh;
    this.fh = null;
    await this.writeback; // never close a descriptor under a pending fdatasync; its result no longer matters
    this.writeback = null;
    await fh?.close();
  }

  /** Close and delete: for content that can never verify. */
  async discard(): Promise<void> {
    await this.close();
    await rm(this.path, { force: true });
  }
}

/** A failure of the local disk, not of the mirror: no other mirror can help. */
export function localError(path: string, e: unknown): LiveupError {
  if (e instanceof LiveupError) return e;
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new LiveupError('NO_SPACE', `${path}: no space left while writing the download`, { file: path }, { cause: e });
  }
  return new LiveupError('INTERNAL', `${path}: ${code ?? (e as Error).message}`, { file: path, local: true }, { cause: e });
}
