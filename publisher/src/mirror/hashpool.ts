/**
 * A pool of worker threads that hash whole files. Hashing in Node's main
 * thread uses one core no matter how many reads are in flight (hash.update is
 * synchronous JavaScript-side), so parallel verification needs threads.
 *
 * Each worker reads with 1 MiB synchronous reads into one reused buffer: a
 * dedicated thread gains nothing from async reads, and a fixed buffer keeps
 * memory at jobs × 1 MiB whatever the file sizes. The size is checked with
 * fstat before hashing, so a truncated file costs nothing to report.
 *
 * The worker is given as source text (`eval: true`) rather than a file: the
 * same code then runs from the TypeScript sources under vitest and from dist/
 * without a build step that knows about worker entry points.
 */
import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';

const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const fs = require('node:fs');
const crypto = require('node:crypto');
const CHUNK = 1 << 20;
const buf = Buffer.allocUnsafe(CHUNK);
parentPort.on('message', (t) => {
  let fd;
  try {
    fd = fs.openSync(t.path, 'r');
  } catch (e) {
    parentPort.postMessage({ id: t.id, error: e.code || String(e) });
    return;
  }
  let pending = 0;
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) { parentPort.postMessage({ id: t.id, error: 'ENOTFILE' }); return; }
    if (t.size >= 0 && st.size !== t.size) { parentPort.postMessage({ id: t.id, size: st.size }); return; }
    const h = crypto.createHash(t.algo);
    let n, total = 0;
    while ((n = fs.readSync(fd, buf, 0, CHUNK, null)) > 0) {
      h.update(n === CHUNK ? buf : buf.subarray(0, n));
      total += n;
      pending += n;
      if (pending >= 32 * CHUNK) { parentPort.postMessage({ progress: pending }); pending = 0; }
    }
    parentPort.postMessage({ id: t.id, size: total, digest: h.digest('hex'), progress: pending });
  } catch (e) {
    parentPort.postMessage({ id: t.id, error: e.code || String(e), progress: pending });
  } finally {
    fs.closeSync(fd);
  }
});
`;

export type HashAlgo = 'md5' | 'sha1' | 'sha256' | 'sha512';

export type HashResult =
  /** Hashed: actual size and hex digest. */
  | { readonly kind: 'hashed'; readonly size: number; readonly digest: string }
  /** Size differs from the expected one; not hashed. */
  | { readonly kind: 'size'; readonly size: number }
  /** Could not read: ENOENT, EACCES, EIO, ENOTFILE… */
  | { readonly kind: 'error'; readonly code: string };

interface Task {
  readonly id: number;
  readonly path: string;
  readonly size: number;
  readonly algo: HashAlgo;
  readonly done: (r: HashResult) => void;
}

interface Msg {
  id?: number;
  size?: number;
  digest?: string;
  error?: string;
  progress?: number;
}

export function defaultJobs(): number {
  return availableParallelism();
}

export class HashPool {
  private readonly workers: Worker[] = [];
  private readonly queue: Task[] = [];
  private readonly inflight = new Map<number, Task>();
  private readonly load: number[] = [];
  private nextId = 0;
  private failure: Error | null = null;

  /** `onBytes` is called with byte counts as workers read (for progress). */
  constructor(readonly jobs: number, private readonly onBytes: (n: number) => void = () => undefined) {
    for (let i = 0; i < jobs; i++) {
      const w = new Worker(WORKER_SOURCE, { eval: true });
      w.on('message', (m: Msg) => this.onMessage(i, m));
      w.on('error', (e) => this.fail(e));
      this.workers.push(w);
      this.load.push(0);
    }
  }

  /** Expected size -1 means "hash whatever is there". */
  hash(path: string, expectedSize: number, algo: HashAlgo = 'sha256'): Promise<HashResult> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((done) => {
      this.queue.push({ id: this.nextId++, path, size: expectedSize, algo, done });
      this.pump();
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  // Two tasks in flight per worker, so a worker never idles waiting for the
  // main thread to hand it the next file.
  private pump(): void {
    for (let i = 0; i < this.workers.length && this.queue.length > 0; i++) {
      while (this.load[i]! < 2 && this.queue.length > 0) {
        const t = this.queue.shift()!;
        this.inflight.set(t.id, t);
        this.load[i]!++;
        this.workers[i]!.postMessage({ id: t.id, path: t.path, size: t.size, algo: t.algo });
      }
    }
  }

  private onMessage(worker: number, m: Msg): void {
    if (m.progress) this.onBytes(m.progress);
    if (m.id === undefined) return;
    const t = this.inflight.get(m.id);
    if (!t) return;
    this.inflight.delete(m.id);
    this.load[worker]!--;
    if (m.error !== undefined) t.done({ kind: 'error', code: m.error });
    else if (m.digest === undefined) t.done({ kind: 'size', size: m.size ?? -1 });
    else t.done({ kind: 'hashed', size: m.size ?? -1, digest: m.digest });
    this.pump();
  }

  private fail(e: Error): void {
    this.failure = e;
    for (const t of this.inflight.values()) t.done({ kind: 'error', code: `worker: ${e.message}` });
    for (const t of this.queue.splice(0)) t.done({ kind: 'error', code: `worker: ${e.message}` });
    this.inflight.clear();
  }
}
