/**
 * Where a channel repository is read from: a local directory (file://, a USB
 * stick, an inbox) or a web server. Both give the same two operations, so the
 * client and `liveup verify` do not care which.
 */
import { open, stat } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LiveupError } from './errors.js';
import { httpGet, readBodyCapped, type HttpCredentials } from '../adapters/http.js';

export interface RepoSource {
  /** For messages: the repository's URL or path. */
  readonly base: string;
  /** The file's bytes, `null` when it does not exist, TOO_LARGE past `cap`. */
  readBounded(rel: string, cap: number): Promise<Uint8Array | null>;
  /** The whole file as a stream (hash-checked by the caller). */
  openStream(rel: string): Promise<Readable>;
}

export function openSource(location: string, credentials?: HttpCredentials): RepoSource {
  if (/^https?:\/\//.test(location)) return new HttpSource(location, credentials);
  const dir = location.startsWith('file://') ? fileURLToPath(location) : location;
  return new DirSource(resolve(dir));
}

class DirSource implements RepoSource {
  constructor(readonly base: string) {}

  private path(rel: string): string {
    const p = resolve(this.base, rel);
    if (p !== this.base && !p.startsWith(this.base + sep)) {
      throw new LiveupError('METADATA_INVALID', `path ${rel} leaves the repository ${this.base}`);
    }
    return p;
  }

  async readBounded(rel: string, cap: number): Promise<Uint8Array | null> {
    const p = this.path(rel);
    let fh;
    try {
      fh = await open(p, 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw new LiveupError('FETCH_FAILED', `${p}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { file: p });
    }
    try {
      // Read cap+1 bytes at most: one more than allowed proves "too large"
      // without trusting the size a file system reports.
      const buf = Buffer.alloc(cap + 1);
      let n = 0;
      for (;;) {
        const { bytesRead } = await fh.read(buf, n, buf.length - n, null);
        if (bytesRead === 0) break;
        n += bytesRead;
        if (n > cap) throw new LiveupError('TOO_LARGE', `${p}: larger than the ${cap}-byte cap for unsigned input`, { file: p, cap });
      }
      return buf.subarray(0, n);
    } finally {
      await fh.close();
    }
  }

  async openStream(rel: string): Promise<Readable> {
    const p = this.path(rel);
    try {
      await stat(p);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new LiveupError(code === 'ENOENT' ? 'NOT_FOUND' : 'FETCH_FAILED', `${p}: ${code ?? (e as Error).message}`, { file: p });
    }
    return createReadStream(p, { highWaterMark: 1 << 20 });
  }
}

class HttpSource implements RepoSource {
  readonly base: string;
  constructor(base: string, private readonly credentials?: HttpCredentials) {
    this.base = base.endsWith('/') ? base : base + '/';
  }

  url(rel: string): string {
    return new URL(rel, this.base).toString();
  }

  async readBounded(rel: string, cap: number): Promise<Uint8Array | null> {
    const url = this.url(rel);
    const res = await httpGet(url, { credentials: this.credentials });
    if (res.status === 404) {
      res.body.resume();
      return null;
    }
    if (res.status !== 200) {
      res.body.resume();
      throw new LiveupError('FETCH_FAILED', `${url}: HTTP ${res.status}`, { url, status: res.status });
    }
    const declared = Number(res.headers['content-length']);
    if (Number.isFinite(declared) && declared > cap) {
      res.body.destroy();
      throw new LiveupError('TOO_LARGE', `${url}: ${declared} bytes, larger than the ${cap}-byte cap for unsigned input`, { file: url, cap });
    }
    return readBodyCapped(res.body, cap, url);
  }

  async openStream(rel: string): Promise<Readable> {
    const url = this.url(rel);
    const res = await httpGet(url, { credentials: this.credentials });
    if (res.status !== 200) {
      res.body.resume();
      throw new LiveupError(res.status === 404 ? 'NOT_FOUND' : 'FETCH_FAILED', `${url}: HTTP ${res.status}`, { url, status: res.status });
    }
    return res.body;
  }
}
