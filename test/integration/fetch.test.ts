/**
 * fetchArtifact against real servers on 127.0.0.1: `liveup serve` for the
 * well-behaved path, small node:http servers for each kind of misbehaviour.
 */
import { execFileSync } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { fetchArtifact, type FetchArtifactOptions } from '../../agent/src/adapters/fetch.js';
import { isLiveupError, type LiveupError } from '../../agent/src/channel/errors.js';
import type { Artifact } from '../../agent/src/channel/schema.js';
import { serve, type RunningServer } from '../../publisher/src/serve.js';
import { publishVerified, type PublishedGeneration } from '../helpers/channel.js';
import { tmp } from '../helpers/tmp.js';

let pub: PublishedGeneration;
let kernel: Artifact;
let body: Buffer;
let fixtureDir: string;

beforeAll(async () => {
  // Not tmp(): that one is emptied after each test, and the channel is shared.
  fixtureDir = await mkdtemp(join(tmpdir(), 'liveup-fetch-fixture-'));
  pub = await publishVerified(fixtureDir, { kernelBytes: 256 * 1024 });
  kernel = pub.artifact('kernel');
  body = await pub.bytes(kernel);
  return () => rm(fixtureDir, { recursive: true, force: true });
});

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (closers.length) await closers.pop()!();
});

async function liveupServe(): Promise<{ url: string; log: string[] }> {
  const log: string[] = [];
  const s: RunningServer = await serve({ root: pub.repo, host: '127.0.0.1', port: 0, log: (l) => log.push(l) });
  closers.push(() => s.close());
  return { url: s.url, log };
}

interface Seen {
  readonly range: string | undefined;
}

/** A server whose every answer is decided by `handler`; `n` counts requests from 0. */
async function mini(handler: (req: http.IncomingMessage, res: http.ServerResponse, n: number) => void): Promise<{ url: string; seen: Seen[] }> {
  const seen: Seen[] = [];
  const server = http.createServer((req, res) => {
    seen.push({ range: req.headers.range });
    handler(req, res, seen.length - 1);
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  closers.push(() => new Promise<void>((ok) => {
    server.closeAllConnections();
    server.close(() => ok());
  }));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`, seen };
}

/** Serve `data` honestly, Range included. */
function honest(req: http.IncomingMessage, res: http.ServerResponse, data: Buffer = body): void {
  const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
  if (m) {
    const from = Number(m[1]);
    res.writeHead(206, { 'content-length': data.length - from, 'content-range': `bytes ${from}-${data.length - 1}/${data.length}` });
    res.end(data.subarray(from));
  } else {
    res.writeHead(200, { 'content-length': data.length });
    res.end(data);
  }
}

async function opts(over: Partial<FetchArtifactOptions> & Pick<FetchArtifactOptions, 'mirrors'>): Promise<FetchArtifactOptions> {
  const dir = await tmp();
  return {
    rel: pub.rel(kernel),
    ref: kernel,
    dest: join(dir, 'vmlinuz'),
    deadlineMs: 30_000,
    minBytesPerSecond: 0,
    retries: 2,
    backoffMs: 5,
    ...over,
  };
}

async function rejection(p: Promise<unknown>): Promise<LiveupError> {
  try {
    await p;
  } catch (e) {
    if (isLiveupError(e)) return e;
    throw e;
  }
  throw new Error('expected a rejection');
}

const exists = (p: string) => stat(p).then(() => true, () => false);

describe('fetchArtifact', () => {
  it('downloads, verifies and fsyncs into <dest>.part, reporting progress', async () => {
    const { url } = await liveupServe();
    const progress: [number, number][] = [];
    const o = await opts({ mirrors: [url], onProgress: (d, t) => progress.push([d, t]) });
    const v = await fetchArtifact(o);
    expect(v.path).toBe(`${o.dest}.part`);
    expect(v.ref).toEqual(kernel);
    expect((await readFile(v.path)).equals(body)).toBe(true);
    expect(progress.at(-1)).toEqual([kernel.length, kernel.length]);
  });

  it('resumes an existing .part with a Range request, transferring only the rest', async () => {
    const { url, log } = await liveupServe();
    const o = await opts({ mirrors: [url] });
    const have = 100_000;
    await writeFile(`${o.dest}.part`, body.subarray(0, have));
    const v = await fetchArtifact(o);
    expect((await readFile(v.path)).equals(body)).toBe(true);
    const gets = log.filter((l) => l.includes('vmlinuz'));
    expect(gets).toEqual([`GET /${pub.rel(kernel)} 206 ${kernel.length - have}`]);
  });

  it('a complete, valid .part needs no request at all', async () => {
    const { url, seen } = await mini((req, res) => honest(req, res));
    const o = await opts({ mirrors: [url] });
    await writeFile(`${o.dest}.part`, body);
    await fetchArtifact(o);
    expect(seen).toHaveLength(0);
  });

  it('a .part longer than the signed length is discarded and fetched anew', async () => {
    const { url, seen } = await mini((req, res) => honest(req, res));
    const o = await opts({ mirrors: [url] });
    await writeFile(`${o.dest}.part`, Buffer.concat([body, Buffer.from('extra')]));
    const v = await fetchArtifact(o);
    expect((await readFile(v.path)).equals(body)).toBe(true);
    expect(seen).toEqual([{ range: undefined }]);
  });

  it('server ignores Range and answers 200: starts over and still succeeds', async () => {
    const { url, seen } = await mini((_req, res) => {
      res.writeHead(200, { 'content-length': body.length });
      res.end(body);
    });
    const o = await opts({ mirrors: [url] });
    // A prefix that is *wrong*: if it were kept, the hash would fail.
    await writeFile(`${o.dest}.part`, Buffer.alloc(5000, 0xee));
    const v = await fetchArtifact(o);
    expect((await readFile(v.path)).equals(body)).toBe(true);
    expect(seen).toEqual([{ range: 'bytes=5000-' }]);
  });

  it('a 206 whose Content-Range does not match the request: starts over', async () => {
    const { url, seen } = await mini((req, res) => {
      if (req.headers.range) {
        // Claims a different window than the one asked for.
        res.writeHead(206, { 'content-range': `bytes 0-${body.length - 1}/${body.length}`, 'content-length': body.length });
        res.end(body);
      } else honest(req, res);
    });
    const o = await opts({ mirrors: [url] });
    await writeFile(`${o.dest}.part`, body.subarray(0, 1000));
    const v = await fetchArtifact(o);
    expect((await readFile(v.path)).equals(body)).toBe(true);
    expect(seen).toEqual([{ range: 'bytes=1000-' }, { range: undefined }]);
  });

  it('retries a server that answers 500 twice', async () => {
    const { url, seen } = await mini((req, res, n) => {
      if (n < 2) res.writeHead(500).end('oops');
      else honest(req, res);
    });
    const v = await fetchArtifact(await opts({ mirrors: [url], retries: 3 }));
    expect((await readFile(v.path)).equals(body)).toBe(true);
    expect(seen).toHaveLength(3);
  });

  it('a response cut short is resumed from where it stopped', async () => {
    const cut = 70_000;
    const { url, seen } = await mini((req, res, n) => {
      if (n === 0) {
        res.writeHead(200, { 'content-length': body.length });
        res.write(body.subarray(0, cut), () => res.socket?.destroy());
      } else honest(req, res);
    });
    const v = await fetchArtifact(await opts({ mirrors: [url] }));
    expect((await readFile(v.path)).equals(body)).toBe(true);
    // The reset may drop bytes still in flight: resumed from what arrived, at most the cut.
    expect(seen).toHaveLength(2);
    const from = Number(/^bytes=(\d+)-$/.exec(seen[1]!.range ?? '')?.[1]);
    expect(from).toBeGreaterThan(0);
    expect(from).toBeLessThanOrEqual(cut);
  });

  it('a server that always truncates fails cleanly and keeps the .part for later', async () => {
    const { url, seen } = await mini((_req, res) => {
      // No Content-Length, connection close: the body just ends early, every time.
      res.writeHead(200, { connection: 'close' });
      res.end(body.subarray(0, 1000));
    });
    const o = await opts({ mirrors: [url], retries: 2 });
    const e = await rejection(fetchArtifact(o));
    expect(e.code).toBe('FETCH_FAILED');
    expect(e.message).toMatch(/ended after 1000 of/);
    expect(seen).toHaveLength(3);
    expect((await stat(`${o.dest}.part`)).size).toBe(1000);
  });

  it('one byte past the signed length: LENGTH_MISMATCH, connection cut, .part removed', async () => {
    const { url } = await mini((_req, res) => {
      res.writeHead(200); // chunked: no length announced, the stream itself runs long
      res.end(Buffer.concat([body, Buffer.from([0])]));
    });
    const o = await opts({ mirrors: [url] });
    const e = await rejection(fetchArtifact(o));
    expect(e.code).toBe('LENGTH_MISMATCH');
    expect(e.message).toMatch(/longer than the signed length/);
    expect(await exists(`${o.dest}.part`)).toBe(false);
  });

  it('an announced Content-Length other than the signed one is refused before the body', async () => {
    const { url, seen } = await mini((_req, res) => {
      res.writeHead(200, { 'content-length': body.length + 1 });
      res.end(Buffer.concat([body, Buffer.from([0])]));
    });
    const o = await opts({ mirrors: [url] });
    const e = await rejection(fetchArtifact(o));
    expect(e.code).toBe('LENGTH_MISMATCH');
    expect(e.message).toMatch(/announces/);
    expect(seen).toHaveLength(1); // a definite answer: not retried
    expect(await exists(`${o.dest}.part`)).toBe(false);
  });

  it('wrong content: HASH_MISMATCH and the .part is removed', async () => {
    const bad = Buffer.from(body);
    bad[bad.length - 1]! ^= 0xff;
    const { url, seen } = await mini((req, res) => honest(req, res, bad));
    const o = await opts({ mirrors: [url] });
    const e = await rejection(fetchArtifact(o));
    expect(e.code).toBe('HASH_MISMATCH');
    expect(seen).toHaveLength(1);
    expect(await exists(`${o.dest}.part`)).toBe(false);
  });

  it('wrong content on the first mirror: the next mirror succeeds from scratch', async () => {
    const bad = Buffer.from(body);
    bad[10]! ^= 0xff;
    const first = await mini((req, res) => honest(req, res, bad));
    const second = await mini((req, res) => honest(req, res));
    const v = await fetchArtifact(await opts({ mirrors: [first.url, second.url] }));
    expect((await readFile(v.path)).equals(body)).toBe(true);
    expect(second.seen).toEqual([{ range: undefined }]); // nothing resumed from corrupt bytes
  });

  it('a corrupt prefix from elsewhere gets an honest mirror one retry from zero', async () => {
    const { url, seen } = await mini((req, res) => honest(req, res));
    const o = await opts({ mirrors: [url], retries: 0 });
    await writeFile(`${o.dest}.part`, Buffer.alloc(1000, 0xee));
    const v = await fetchArtifact(o);
    expect((await readFile(v.path)).equals(body)).toBe(true);
    expect(seen).toEqual([{ range: 'bytes=1000-' }, { range: undefined }]);
  });

  it('a trickling server is cut by the minimum throughput', async () => {
    const { url } = await mini((_req, res) => {
      res.writeHead(200, { 'content-length': body.length });
      let at = 0;
      const t = setInterval(() => {
        if (res.destroyed) return clearInterval(t);
        res.write(body.subarray(at, at + 10));
        at += 10;
      }, 100); // ~100 B/s
      res.on('close', () => clearInterval(t));
    });
    const o = await opts({ mirrors: [url], retries: 0, minBytesPerSecond: 10_000, throughputWindowMs: 1000, throughputGraceMs: 500 });
    const t0 = Date.now();
    const e = await rejection(fetchArtifact(o));
    const took = Date.now() - t0;
    expect(e.code).toBe('FETCH_FAILED');
    expect(e.details.reason).toBe('too-slow');
    expect(e.message).toMatch(/too slow/);
    expect(took).toBeLessThan(3000);
    // What did arrive is kept for a later resume.
    expect((await stat(`${o.dest}.part`)).size).toBeGreaterThan(0);
  });

  it('the overall deadline stops a stalled transfer and keeps the .part', async () => {
    const { url } = await mini((_req, res) => {
      res.writeHead(200, { 'content-length': body.length });
      res.write(body.subarray(0, 500)); // then nothing, forever
    });
    const o = await opts({ mirrors: [url], deadlineMs: 400 });
    const e = await rejection(fetchArtifact(o));
    expect(e.code).toBe('FETCH_FAILED');
    expect(e.details.reason).toBe('deadline');
    expect((await stat(`${o.dest}.part`)).size).toBe(500);
  });

  it('an AbortSignal cancels a transfer', async () => {
    const { url } = await mini((_req, res) => {
      res.writeHead(200, { 'content-length': body.length });
      res.write(body.subarray(0, 500));
    });
    const ac = new AbortController();
    const o = await opts({ mirrors: [url], signal: ac.signal, onProgress: () => ac.abort() });
    const e = await rejection(fetchArtifact(o));
    expect(e.details.reason).toBe('cancelled');
  });

  it('first mirror down (connection refused): the second one is used', async () => {
    // A port that was just free: nothing listens there any more.
    const probe = http.createServer();
    await new Promise<void>((ok) => probe.listen(0, '127.0.0.1', ok));
    const dead = `http://127.0.0.1:${(probe.address() as AddressInfo).port}/`;
    await new Promise<void>((ok) => probe.close(() => ok()));
    const { url } = await liveupServe();
    const v = await fetchArtifact(await opts({ mirrors: [dead, url], retries: 1 }));
    expect((await readFile(v.path)).equals(body)).toBe(true);
  });

  it('404 on a mirror is not retried; all mirrors missing gives NOT_FOUND', async () => {
    const { url, seen } = await mini((_req, res) => res.writeHead(404).end());
    const e = await rejection(fetchArtifact(await opts({ mirrors: [url], retries: 3 })));
    expect(e.code).toBe('NOT_FOUND');
    expect(seen).toHaveLength(1);
  });

  it('a full local disk is NO_SPACE at once, not a mirror failure to retry', async () => {
    const dir = await tmp('liveup-dl-');
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', dir]);
    closers.push(async () => void execFileSync('umount', [dir]));
    const { url, seen } = await mini((req, res) => honest(req, res));
    const e = await rejection(fetchArtifact({ ...(await opts({ mirrors: [url, url], retries: 3 })), dest: join(dir, 'vmlinuz') }));
    expect(e.code).toBe('NO_SPACE');
    expect(seen).toHaveLength(1);
  });

  it('reads from a file:// mirror, resuming there too', async () => {
    const o = await opts({ mirrors: [pathToFileURL(pub.repo).toString()] });
    await writeFile(`${o.dest}.part`, body.subarray(0, 12345));
    const v = await fetchArtifact(o);
    expect((await readFile(v.path)).equals(body)).toBe(true);
  });
});
