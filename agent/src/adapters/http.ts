/**
 * HTTP(S) client adapter: the one place liveup speaks HTTP as a client.
 * node:http rather than fetch because we need exact control of Range /
 * Content-Range, TLS client certificates, and of aborting a body mid-stream.
 */
import { createRequire } from 'node:module';
import type http from 'node:http';
import type https from 'node:https';
import type { Readable } from 'node:stream';
import { LiveupError } from '../channel/errors.js';

export interface HttpCredentials {
  /** Sent as `Authorization: Bearer …`. */
  readonly bearerToken?: string;
  /** PEM client certificate and key for mutual TLS. */
  readonly clientCert?: string;
  readonly clientKey?: string;
  /** PEM CA bundle to trust instead of the system's. */
  readonly ca?: string;
}

export interface HttpResponse {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Readable;
}

export interface HttpRequestOptions {
  readonly headers?: Record<string, string>;
  readonly credentials?: HttpCredentials;
  /** Time allowed to receive response headers. */
  readonly headerTimeoutMs?: number;
  readonly method?: 'GET' | 'HEAD';
  readonly signal?: AbortSignal;
}

/**
 * node:http or node:https, loaded on first use: the daemon and agentctl start
 * on the boot's and each switch's critical path, where neither is needed, and
 * the startup snapshot (packaging/snapshot.mjs) cannot hold them. Through
 * require, not import(): code deserialized from a snapshot has no dynamic
 * import callback ("A dynamic import callback was not specified").
 */
export function clientFor(u: URL): typeof http | typeof https | null {
  const require = createRequire(import.meta.url);
  if (u.protocol === 'https:') return require('node:https') as typeof https;
  if (u.protocol === 'http:') return require('node:http') as typeof http;
  return null;
}

export async function httpGet(url: string, opts: HttpRequestOptions = {}): Promise<HttpResponse> {
  const u = new URL(url);
  const lib = clientFor(u);
  if (!lib) throw new LiveupError('INVALID_ARGUMENT', `unsupported URL scheme in ${url}`);
  const headers: Record<string, string> = { 'user-agent': 'liveup/0.1', ...opts.headers };
  const c = opts.credentials;
  if (c?.bearerToken) headers.authorization = `Bearer ${c.bearerToken}`;
  return new Promise<HttpResponse>((resolve, reject) => {
    const req = lib.request(
      u,
      {
        method: opts.method ?? 'GET',
        headers,
        ...(u.protocol === 'https:' && c ? { cert: c.clientCert, key: c.clientKey, ca: c.ca } : {}),
        signal: opts.signal,
      },
      (res) => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: res });
      },
    );
    const timer = setTimeout(() => {
      req.destroy(new LiveupError('FETCH_FAILED', `${url}: no response within ${opts.headerTimeoutMs ?? 30_000} ms`, { url }));
    }, opts.headerTimeoutMs ?? 30_000);
    req.on('error', (e) => {
      clearTimeout(timer);
      reject(e instanceof LiveupError ? e : new LiveupError('FETCH_FAILED', `${url}: ${(e as NodeJS.ErrnoException).code ?? e.message}`, { url }, { cause: e }));
    });
    req.end();
  });
}

/** Read a body into memory, refusing (and cutting the connection) past `cap` bytes. */
export async function readBodyCapped(body: Readable, cap: number, source: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of body) {
    const b = chunk as Buffer;
    total += b.length;
    if (total > cap) {
      body.destroy();
      throw new LiveupError('TOO_LARGE', `${source}: larger than the ${cap}-byte cap for unsigned input`, { file: source, cap });
    }
    chunks.push(b);
  }
  return Buffer.concat(chunks, total);
}
