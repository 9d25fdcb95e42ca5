/**
 * Download one signed artifact from a list of mirrors into `<dest>.part`.
 *
 * What is trusted: only the `ArtifactRef` (length + SHA-512) from a verified
 * manifest. Mirrors, status codes and headers are hints; every byte goes
 * through the artifact's hasher before it reaches the disk, and the result is
 * a `VerifiedArtifact` only when the hasher says so.
 *
 * Resume is the point of the `.part`: a cut connection, a timeout, a
 * cancellation or a crash leave it in place, and the next call re-hashes it
 * and asks only for the rest. Content that can never verify (too long, wrong
 * hash) is deleted, so nothing is ever resumed from corrupted data.
 */
import { rm, stat } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { resolve, sep } from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { LiveupError, isLiveupError, toLiveupError, type ErrorCode } from '../channel/errors.js';
import type { ArtifactRef } from '../channel/schema.js';
import type { VerifiedArtifact } from '../channel/verify.js';
import { backoffDelay, sleep } from '../util/backoff.js';
import { ThroughputGuard } from '../util/throughput.js';
import { httpGet, type HttpCredentials } from './http.js';
import { PartFile } from './partfile.js';

export interface Mirror {
  /** Base URL: http://, https:// or file://; the artifact's `rel` is resolved against it. */
  readonly url: string;
  /** Overrides the call's credentials for this mirror. */
  readonly credentials?: HttpCredentials;
}

export interface FetchArtifactOptions {
  /** Tried in order; a mirror is left after its retries are spent or on a definite failure. */
  readonly mirrors: readonly (string | Mirror)[];
  /** The artifact's path relative to a mirror's base, e.g. `artifactPath(version, ref.path)`. */
  readonly rel: string;
  readonly ref: ArtifactRef;
  /** Final name; the download lives at `<dest>.part`, which is what the result points at. */
  readonly dest: string;
  readonly credentials?: HttpCredentials;
  /** Whole call, all mirrors and retries included (Infinity: none). The `.part` is kept for the next call. */
  readonly deadlineMs: number;
  /** Floor for the transfer rate; 0 disables. */
  readonly minBytesPerSecond: number;
  /** Sliding window the rate is measured over (default 10 s). */
  readonly throughputWindowMs?: number;
  /** No rate verdict before this much of a connection has passed (default 10 s). */
  readonly throughputGraceMs?: number;
  /** Retries per mirror after the first attempt. */
  readonly retries: number;
  /** Base of the exponential backoff between retries. */
  readonly backoffMs: number;
  readonly backoffMaxMs?: number;
  /** Time allowed for response headers (default 30 s). */
  readonly headerTimeoutMs?: number;
  readonly onProgress?: (bytesDone: number, total: number) => void;
  /** Minimum interval between progress calls (default 250 ms); the final one always comes. */
  readonly progressIntervalMs?: number;
  readonly signal?: AbortSignal;
}

const BATCH_BYTES = 1 << 20;

export function partPathFor(dest: string): string {
  return `${dest}.part`;
}

/** Integrity failures: the bytes are not the signed ones. */
const INTEGRITY: readonly ErrorCode[] = ['HASH_MISMATCH', 'LENGTH_MISMATCH'];

export async function fetchArtifact(opts: FetchArtifactOptions): Promise<VerifiedArtifact> {
  const { ref, rel } = opts;
  if (opts.mirrors.length === 0) throw new LiveupError('INVALID_ARGUMENT', `${rel}: no mirror to fetch from`);
  const mirrors: Mirror[] = opts.mirrors.map((m) => (typeof m === 'string' ? { url: m } : m));
  if (!Number.isInteger(opts.retries) || opts.retries < 0 || !(opts.deadlineMs > 0) || !(opts.backoffMs >= 0) || !(opts.minBytesPerSecond >= 0)) {
    throw new LiveupError('INVALID_ARGUMENT', `${rel}: retries must be an integer ≥ 0, deadlineMs > 0, backoffMs and minBytesPerSecond ≥ 0`);
  }
  const partPath = partPathFor(opts.dest);

  // One controller for the whole call: the caller's cancel and the deadline
  // both end up here, each with its own reason, so every wait and every
  // transfer below stops on either.
  const overall = new AbortController();
  // Infinity means no deadline; setTimeout would also fire at once past 2^31-1 ms, so clamp.
  const deadline = !Number.isFinite(opts.deadlineMs) ? undefined : setTimeout(() => {
    overall.abort(new LiveupError('FETCH_FAILED', `${rel}: not complete within the ${opts.deadlineMs} ms deadline (the partial download is kept for resuming)`, {
      file: rel, reason: 'deadline', deadlineMs: opts.deadlineMs,
    }));
  }, Math.min(opts.deadlineMs, 2 ** 31 - 1));
  const onCancel = () => overall.abort(new LiveupError('FETCH_FAILED', `${rel}: cancelled`, { file: rel, reason: 'cancelled' }, { cause: opts.signal?.reason }));
  if (opts.signal?.aborted) onCancel();
  else opts.signal?.addEventListener('abort', onCancel, { once: true });

  const progress = throttle(ref.length, opts.onProgress, opts.progressIntervalMs ?? 250);
  const failures: { mirror: string; error: LiveupError }[] = [];
  let pf = await PartFile.open(partPath, ref, rel);
  let sealed = false;
  try {
    // A complete .part from an earlier run needs no network at all.
    if (pf.size === ref.length) {
      try {
        const done = await pf.seal();
        sealed = true;
        progress(ref.length, true);
        return done;
      } catch (e) {
        if (!isLiveupError(e) || !INTEGRITY.includes(e.code)) throw e;
        pf = await fresh(pf);
      }
    }
    for (const mirror of mirrors) {
      // Bytes this mirror did not send. If the end hash fails, they may be the
      // culprit, not the mirror: it earns one more try from zero.
      let inherited = pf.size;
      let budget = opts.retries;
      for (let attempt = 0; ; attempt++) {
        if (overall.signal.aborted) throw overall.signal.reason;
        if (attempt > 0) await sleep(backoffDelay(attempt, opts.backoffMs, opts.backoffMaxMs), overall.signal);
        let error: LiveupError;
        try {
          await transfer(mirror, pf, opts, overall.signal, progress);
          if (pf.size < ref.length) {
            throw new LiveupError('FETCH_FAILED', `${urlFor(mirror, rel)}: response ended after ${pf.size} of ${ref.length} bytes`, {
              url: urlFor(mirror, rel), reason: 'truncated', received: pf.size, expected: ref.length,
            });
          }
          const done = await pf.seal();
          sealed = true;
          progress(ref.length, true);
          return done;
        } catch (e) {
          if (overall.signal.aborted) throw overall.signal.reason;
          error = toLiveupError(e, 'FETCH_FAILED');
        }
        // The local disk failing is not the mirror's fault; no mirror can help.
        if (error.code === 'NO_SPACE' || error.details.local === true) throw error;
        failures.push({ mirror: mirror.url, error });
        if (pf.poisoned) {
          const hashFailed = error.code === 'HASH_MISMATCH';
          pf = await fresh(pf);
          if (hashFailed && inherited > 0) {
            inherited = 0;
            budget++;
          } else {
            break; // this mirror served bytes that are not the signed ones
          }
        } else if (INTEGRITY.includes(error.code) || error.details.retry === false) {
          break; // a definite answer (wrong length announced, 404, 403): retrying will not change it
        }
        if (attempt >= budget) break;
      }
    }
    throw summarise(rel, failures);
  } finally {
    clearTimeout(deadline);
    opts.signal?.removeEventListener('abort', onCancel);
    await pf.close();
    // An empty .part holds nothing to resume; do not leave it lying around.
    if (!sealed && pf.size === 0) await rm(partPath, { force: true });
  }
}

/** Delete content that can never verify and start a new, empty .part. */
async function fresh(pf: PartFile): Promise<PartFile> {
  await pf.discard();
  return PartFile.open(pf.path, pf.ref, pf.source);
}

function summarise(rel: string, failures: readonly { mirror: string; error: LiveupError }[]): LiveupError {
  // Report the most telling code: served-but-wrong bytes matter more (an attack
  // or a broken mirror) than a mirror that was merely unreachable.
  const codes = failures.map((f) => f.error.code);
  const code: ErrorCode = codes.find((c) => INTEGRITY.includes(c))
    ?? (codes.length > 0 && codes.every((c) => c === 'NOT_FOUND') ? 'NOT_FOUND' : 'FETCH_FAILED');
  const last = failures.at(-1)?.error;
  const lines = failures.map((f) => `${f.mirror}: ${f.error.message}`);
  return new LiveupError(code, `${rel}: no mirror delivered it (${failures.length} failed attempt(s)): ${lines.join('; ')}`, {
    file: rel, attempts: failures.length, ...(last?.details.reason !== undefined ? { reason: last.details.reason } : {}),
  }, { cause: last });
}

function throttle(total: number, cb: ((done: number, total: number) => void) | undefined, intervalMs: number) {
  let last = -Infinity;
  return (done: number, force = false): void => {
    if (!cb) return;
    const now = performance.now();
    if (!force && now - last < intervalMs) return;
    last = now;
    cb(done, total);
  };
}

function baseOf(url: string): string {
  return url.endsWith('/') ? url : url + '/';
}

function urlFor(mirror: Mirror, rel: string): string {
  return new URL(rel, baseOf(mirror.url)).toString();
}

/** One connection: open the body from `pf.size`, stream it into `pf` until it ends. */
async function transfer(
  mirror: Mirror,
  pf: PartFile,
  opts: FetchArtifactOptions,
  overall: AbortSignal,
  progress: (done: number) => void,
): Promise<void> {
  const url = urlFor(mirror, opts.rel);
  const attempt = new AbortController();
  const signal = AbortSignal.any([overall, attempt.signal]);
  const body = url.startsWith('file:')
    ? await openFile(url, mirror, pf, opts.rel)
    : await openHttp(url, mirror, pf, opts, signal);
  const guard = new ThroughputGuard({
    minBytesPerSecond: opts.minBytesPerSecond,
    windowMs: opts.throughputWindowMs ?? 10_000,
    graceMs: opts.throughputGraceMs ?? 10_000,
    onTooSlow: (rate) => attempt.abort(new LiveupError('FETCH_FAILED',
      `${url}: too slow, ${Math.round(rate)} B/s over the last ${opts.throughputWindowMs ?? 10_000} ms, minimum ${opts.minBytesPerSecond} B/s`,
      { url, reason: 'too-slow', rate: Math.round(rate), minBytesPerSecond: opts.minBytesPerSecond })),
  });
  // Destroying the body closes the socket: the server stops sending at once.
  const onAbort = () => body.destroy(signal.reason instanceof Error ? signal.reason : undefined);
  signal.addEventListener('abort', onAbort, { once: true });
  // Network reads arrive in ~64 KiB pieces; hashing and writing them in
  // 1 MiB batches (or every 200 ms on a slow link) is measured ~1.3x faster
  // end to end (bench/agent). A
  // batch never hides an over-long body: past the signed length it is
  // appended at once, and the hasher refuses it.
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let flushedAt = 0; // the first piece goes straight through: progress shows at once
  const flush = async () => {
    flushedAt = Date.now();
    if (pendingBytes === 0) return;
    const batch = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
    pending = [];
    pendingBytes = 0;
    await pf.append(batch);
    progress(pf.size);
  };
  try {
    for await (const chunk of body) {
      const b = chunk as Buffer;
      pending.push(b);
      pendingBytes += b.length;
      guard.add(b.length);
      // A slow link still reaches the disk (and the progress bar) promptly.
      if (pendingBytes >= BATCH_BYTES || pf.size + pendingBytes > pf.ref.length || Date.now() - flushedAt > 200) await flush();
    }
    await flush();
    if (signal.aborted) throw signal.reason;
  } catch (e) {
    // Keep what arrived for a resume; a batch the hasher refuses was already dropped.
    await flush().catch(() => undefined);
    if (signal.aborted) throw signal.reason;
    if (e instanceof LiveupError) throw e;
    throw new LiveupError('FETCH_FAILED', `${url}: interrupted after ${pf.size} of ${pf.ref.length} bytes (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, {
      url, reason: 'interrupted', received: pf.size,
    }, { cause: e });
  } finally {
    guard.stop();
    signal.removeEventListener('abort', onAbort);
    body.destroy();
  }
}

async function openHttp(url: string, mirror: Mirror, pf: PartFile, opts: FetchArtifactOptions, signal: AbortSignal): Promise<Readable> {
  const from = pf.size;
  const length = pf.ref.length;
  const res = await httpGet(url, {
    headers: from > 0 ? { range: `bytes=${from}-` } : {},
    credentials: mirror.credentials ?? opts.credentials,
    headerTimeoutMs: opts.headerTimeoutMs ?? 30_000,
    signal,
  });
  const fail = (code: ErrorCode, message: string, details: Record<string, string | number | boolean> = {}): never => {
    res.body.destroy();
    throw new LiveupError(code, `${url}: ${message}`, { url, status: res.status, ...details });
  };
  if (res.status === 200) {
    const declared = res.headers['content-length'];
    if (declared !== undefined && Number(declared) !== length) {
      fail('LENGTH_MISMATCH', `announces ${declared} bytes, signed length is ${length}`, { expected: length, actual: Number(declared) });
    }
    // The server ignored our Range (allowed by RFC 9110): the body is the whole file.
    if (from > 0) await pf.reset();
    return res.body;
  }
  if (res.status === 206) {
    // Resume only onto exactly the bytes we asked for, of a file of exactly
    // the signed length; anything else would splice two different files.
    const expected = `bytes ${from}-${length - 1}/${length}`;
    const got = String(res.headers['content-range'] ?? '').trim();
    if (got.toLowerCase() !== expected) {
      await pf.reset();
      fail('FETCH_FAILED', `Content-Range "${got}" does not match the requested "${expected}"; starting over`, { reason: 'content-range' });
    }
    return res.body;
  }
  if (res.status === 416) {
    // The mirror's file is shorter than what we hold: start over and let the
    // full response show whether it or our prefix is wrong.
    await pf.reset();
    fail('FETCH_FAILED', `range ${from}- not satisfiable; starting over`, { reason: 'range-unsatisfiable' });
  }
  if (res.status === 404 || res.status === 410) fail('NOT_FOUND', `HTTP ${res.status}`, { retry: false });
  if (res.status === 401 || res.status === 403) fail('FETCH_FAILED', `HTTP ${res.status} (check the credentials)`, { retry: false });
  return fail('FETCH_FAILED', `HTTP ${res.status}`, { reason: 'status' });
}

async function openFile(url: string, mirror: Mirror, pf: PartFile, rel: string): Promise<Readable> {
  const base = resolve(fileURLToPath(baseOf(mirror.url)));
  const path = resolve(fileURLToPath(url));
  // `rel` comes from signed metadata and is already a safe relative path; this is belt and braces.
  if (!path.startsWith(base + sep)) throw new LiveupError('INVALID_ARGUMENT', `${rel} leaves the mirror ${base}`, { url });
  let size: number;
  try {
    size = (await stat(path)).size;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new LiveupError(code === 'ENOENT' ? 'NOT_FOUND' : 'FETCH_FAILED', `${path}: ${code ?? (e as Error).message}`, {
      url, ...(code === 'ENOENT' ? { retry: false } : {}),
    });
  }
  if (size !== pf.ref.length) {
    throw new LiveupError('LENGTH_MISMATCH', `${path}: ${size} bytes, signed length is ${pf.ref.length}`, { url, expected: pf.ref.length, actual: size });
  }
  return createReadStream(path, { start: pf.size, highWaterMark: 1 << 20 });
}
