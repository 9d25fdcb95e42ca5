/**
 * `liveup serve`: a static file server for development and tests. Production
 * uses any static server (docs/serving.md has nginx); this one exists so tests
 * and the demo need nothing else, and it gets Range right: a single
 * `bytes=` range answers 206 with Content-Range, an unsatisfiable one 416,
 * and anything it does not support (multiple ranges) the whole file with 200,
 * which RFC 9110 allows.
 */
import http from 'node:http';
import { createReadStream } from 'node:fs';
import { realpath, stat } from 'node:fs/promises';
import { resolve, sep } from 'node:path';

export interface ServeOptions {
  readonly root: string;
  readonly host: string;
  readonly port: number;
  readonly log?: (line: string) => void;
}

export interface RunningServer {
  readonly url: string;
  readonly port: number;
  close(): Promise<void>;
}

export function parseRange(header: string | undefined, size: number): { start: number; end: number } | 'unsatisfiable' | null {
  if (!header) return null;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return null; // multi-range or malformed: serve the whole file
  let start: number;
  let end: number;
  if (m[1] === '') {
    const suffix = Number(m[2]);
    if (suffix === 0) return 'unsatisfiable';
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
    if (m[2] !== '' && Number(m[2]) < start) return null;
  }
  if (start >= size) return 'unsatisfiable';
  return { start, end };
}

export async function serve(opts: ServeOptions): Promise<RunningServer> {
  const root = await realpath(opts.root);
  const log = opts.log ?? (() => undefined);
  const server = http.createServer((req, res) => {
    void (async () => {
      const method = req.method ?? 'GET';
      if (method !== 'GET' && method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
        return;
      }
      let path: string;
      try {
        // Collapse leading slashes first: `//dists/x` (what debmirror asks for
        // when the archive is at the server root) would otherwise parse as a
        // protocol-relative URL whose host is "dists".
        const url = new URL((req.url ?? '/').replace(/^\/+/, '/'), 'http://x');
        path = await realpath(resolve(root, '.' + decodeURIComponent(url.pathname)));
      } catch {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
        return;
      }
      // Symlinks are followed (the channel index is one) but never out of the root.
      if (path !== root && !path.startsWith(root + sep)) {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
        return;
      }
      const st = await stat(path).catch(() => null);
      if (!st?.isFile()) {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
        return;
      }
      const headers: http.OutgoingHttpHeaders = {
        'accept-ranges': 'bytes',
        'last-modified': st.mtime.toUTCString(),
        etag: `"${st.ino.toString(16)}-${st.size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`,
        'content-type': path.endsWith('.json') ? 'application/json' : 'application/octet-stream',
        // Metadata must not be cached past a publish; artifacts are immutable.
        'cache-control': /\/(index\.json|index\.json\.sig)$/.test(path) ? 'no-cache' : 'public, max-age=31536000, immutable',
      };
      const ifRange = req.headers['if-range'];
      const range = ifRange && ifRange !== headers.etag ? null : parseRange(req.headers.range, st.size);
      if (range === 'unsatisfiable') {
        res.writeHead(416, { 'content-range': `bytes */${st.size}` }).end();
        log(`${method} ${req.url} 416`);
        return;
      }
      const { start, end } = range ?? { start: 0, end: st.size - 1 };
      const length = st.size === 0 ? 0 : end - start + 1;
      headers['content-length'] = length;
      if (range) headers['content-range'] = `bytes ${start}-${end}/${st.size}`;
      res.writeHead(range ? 206 : 200, headers);
      log(`${method} ${req.url} ${range ? 206 : 200} ${length}`);
      if (method === 'HEAD' || length === 0) {
        res.end();
        return;
      }
      const stream = createReadStream(path, { start, end, highWaterMark: 1 << 20 });
      stream.on('error', () => res.destroy());
      stream.pipe(res);
    })().catch(() => res.destroy());
  });
  await new Promise<void>((ok, fail) => {
    server.once('error', fail);
    server.listen(opts.port, opts.host, () => ok());
  });
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : opts.port;
  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  return {
    url: `http://${host}:${port}/`,
    port,
    close: () => new Promise<void>((ok) => {
      server.closeAllConnections();
      server.close(() => ok());
    }),
  };
}
