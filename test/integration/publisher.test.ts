/** `liveup key | publish | verify | serve` as a user runs them. */
import { describe, expect, it } from 'vitest';
import { readdir, readFile, stat, writeFile, readlink, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import http from 'node:http';
import { tmp } from '../helpers/tmp.js';
import { makeGendir, makeKey } from '../helpers/fixtures.js';
import { bin, collect, runCli, startCli } from '../helpers/cli.js';
import { spawnSync } from 'node:child_process';
import { publish } from '../../publisher/src/publish.js';
import { serve } from '../../publisher/src/serve.js';
import { verifyRepo } from '../../publisher/src/verify-repo.js';
import { openSource } from '../../agent/src/channel/source.js';
import { artifactPath } from '../../agent/src/channel/layout.js';

function get(url: string, headers: Record<string, string> = {}, method = 'GET'): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((ok, fail) => {
    const req = http.request(url, { headers, method }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => ok({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', fail);
    req.end();
  });
}

describe('liveup key generate', () => {
  it('writes a 0600 private key and a public key, prints the fingerprint, refuses to overwrite', async () => {
    const dir = await tmp();
    const r = await runCli('liveup', ['key', 'generate', '--out', dir, '--name', 'ops']);
    expect(r.code).toBe(0);
    const fpr = /fingerprint ([0-9A-F]{40})/.exec(r.stdout)?.[1];
    expect(fpr).toBeDefined();
    expect((await stat(join(dir, 'ops.key.asc'))).mode & 0o777).toBe(0o600);
    expect(await readFile(join(dir, 'ops.pub.asc'), 'utf8')).toContain('BEGIN PGP PUBLIC KEY BLOCK');
    const again = await runCli('liveup', ['key', 'generate', '--out', dir, '--name', 'ops']);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/ALREADY_EXISTS: .*ops\.key\.asc already exists/);
  });

  it('has --help on every command and rejects unknown options with usage', async () => {
    for (const cmd of [['key', 'generate'], ['build'], ['derive'], ['publish'], ['verify'], ['serve']]) {
      const r = await runCli('liveup', [...cmd, '--help']);
      expect(r.code).toBe(0);
      expect(r.stdout).toContain(`Usage: liveup ${cmd.join(' ')}`);
    }
    const bad = await runCli('liveup', ['publish', '--bogus']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/Unknown option '--bogus'/);
  });

  it('ends quietly with success when its reader has gone (`agentctl history | head -1`)', async () => {
    // fd 5: the write end of a FIFO whose only reader (fd 4) is closed, so the first
    // write fails with EPIPE every time (a `| head` races with the writer).
    const dir = await tmp();
    for (const name of ['liveup', 'agentctl'] as const) {
      const r = spawnSync('sh', ['-c', `mkfifo "$1/f" && exec 4<>"$1/f" 5>"$1/f" 4<&- && rm "$1/f" && exec "$2" --help >&5`, 'sh', dir, bin(name)], { encoding: 'utf8' });
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
    }
  });
});

describe('liveup publish', () => {
  it('refuses a reused or lower version and an incomplete GENDIR, writing nothing', async () => {
    const dir = await tmp();
    const key = await makeKey(join(dir, 'k'));
    const repo = join(dir, 'repo');
    const gen = await makeGendir(join(dir, 'g'));
    const base = { repo, channel: 'stable', gendir: gen, keys: [key.priv], indexTtlMs: 86400e3, manifestTtlMs: 86400e3 };
    await publish({ ...base, version: 5 });
    await expect(publish({ ...base, version: 5 })).rejects.toMatchObject({ code: 'VERSION_EXISTS' });
    await expect(publish({ ...base, version: 3 })).rejects.toMatchObject({ code: 'VERSION_ROLLBACK' });
    const empty = join(dir, 'empty');
    await mkdir(empty);
    await writeFile(join(empty, 'vmlinuz'), 'k');
    await expect(publish({ ...base, gendir: empty })).rejects.toMatchObject({ code: 'GENERATION_INVALID', message: expect.stringContaining('filesystem.squashfs, initrd.img') });
    expect(await readdir(join(repo, 'generations'))).toEqual(['5']);
    expect(await readlink(join(repo, 'channels', 'stable'))).toBe('.stable.1');
  });

  it('records package changes with their .deb files and refuses changes without a published parent', async () => {
    const dir = await tmp();
    const key = await makeKey(join(dir, 'k'));
    const repo = join(dir, 'repo');
    const base = { repo, channel: 'stable', keys: [key.priv], indexTtlMs: 86400e3, manifestTtlMs: 86400e3 };
    await publish({ ...base, gendir: await makeGendir(join(dir, 'g1')) });
    const g2 = await makeGendir(join(dir, 'g2'));
    await mkdir(join(g2, 'debs'));
    await writeFile(join(g2, 'debs', 'htop_3.3.0-4_amd64.deb'), 'not really a deb, but hashed like one');
    const meta = (parent: number) => JSON.stringify({
      parent,
      changes: [
        { action: 'install', package: 'htop', version: '3.3.0-4', deb: 'debs/htop_3.3.0-4_amd64.deb' },
        { action: 'remove', package: 'nano', from: '8.4-1' },
      ],
      rebootRequired: { required: false, reasons: [] },
    });
    await writeFile(join(g2, 'generation.json'), meta(7));
    await expect(publish({ ...base, gendir: g2 })).rejects.toMatchObject({ code: 'GENERATION_INVALID', message: expect.stringContaining('parent version 7') });
    await writeFile(join(g2, 'generation.json'), meta(1));
    const r = await publish({ ...base, gendir: g2 });
    expect(r.manifest.parent).toBe(1);
    expect(r.manifest.changes.map((c) => c.action)).toEqual(['install', 'remove']);
    const report = await verifyRepo(openSource(repo), { keyring: key.keyring, threshold: 1, channels: ['stable'] });
    expect(report.problems).toEqual([]);
    expect(report.channels[0]!.artifacts).toBe(3 + 4); // 3 + 3 boot artifacts and one .deb
  });

  it('a publish killed with SIGKILL at any point leaves the previous index valid; the next one cleans up', async () => {
    const dir = await tmp();
    const keyDir = join(dir, 'k');
    const key = await makeKey(keyDir);
    const repo = join(dir, 'repo');
    const args = (gen: string) => ['publish', '--repo', repo, '--channel', 'stable', '--key', key.privPath, gen];
    expect((await runCli('liveup', args(await makeGendir(join(dir, 'g0'))))).code).toBe(0);
    // A large kernel makes publishing take long enough to be killed mid-way.
    const big = await makeGendir(join(dir, 'big'), { kernelBytes: 48 << 20 });
    let interrupted = 0;
    for (const delay of [150, 250, 350, 450, 600, 800]) {
      const child = startCli('liveup', args(big));
      const done = collect(child);
      await new Promise((r) => setTimeout(r, delay));
      child.kill('SIGKILL');
      const res = await done;
      if (res.signal === 'SIGKILL') interrupted++;
      const v = await runCli('liveup', ['verify', '--repo', repo, '--keyring', key.pubPath]);
      expect(v.stderr).toBe('');
      expect(v.code).toBe(0);
    }
    expect(interrupted).toBeGreaterThan(0);
    const final = await runCli('liveup', args(big));
    expect(final.code).toBe(0);
    expect((await readdir(join(repo, 'generations'))).filter((n) => n.startsWith('.'))).toEqual([]);
    expect((await readdir(join(repo, 'channels'))).filter((n) => n.includes('.tmp-'))).toEqual([]);
    const v = await runCli('liveup', ['verify', '--repo', repo, '--keyring', key.pubPath, '--json']);
    const report = JSON.parse(v.stdout) as { ok: boolean; channels: { generations: number }[] };
    expect(report.ok).toBe(true);
  });
});

describe('liveup verify', () => {
  it('prints one line per problem and exits 1; --json lists them', async () => {
    const dir = await tmp();
    const key = await makeKey(join(dir, 'k'));
    const repo = join(dir, 'repo');
    const base = { repo, channel: 'stable', keys: [key.priv], indexTtlMs: 86400e3, manifestTtlMs: 86400e3 };
    await publish({ ...base, gendir: await makeGendir(join(dir, 'g1')) });
    await publish({ ...base, gendir: await makeGendir(join(dir, 'g2')) });
    const k1 = join(repo, artifactPath(1, 'vmlinuz'));
    const bytes = await readFile(k1);
    bytes[10]! ^= 1;
    await writeFile(k1, bytes);
    await writeFile(join(repo, artifactPath(2, 'initrd.img')), 'short');
    const r = await runCli('liveup', ['verify', '--repo', repo, '--keyring', key.pubPath]);
    expect(r.code).toBe(1);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^HASH_MISMATCH generations\/1\/vmlinuz: /);
    expect(lines[1]).toMatch(/^LENGTH_MISMATCH generations\/2\/initrd.img: /);
    const j = await runCli('liveup', ['verify', '--repo', repo, '--keyring', key.pubPath, '--json']);
    const out = JSON.parse(j.stdout) as { ok: boolean; problems: { code: string }[] };
    expect(out.ok).toBe(false);
    expect(out.problems.map((p) => p.code)).toEqual(['HASH_MISMATCH', 'LENGTH_MISMATCH']);
  });

  it('verifies over HTTP from `liveup serve`, and a foreign keyring fails with KEY_NOT_TRUSTED', async () => {
    const dir = await tmp();
    const key = await makeKey(join(dir, 'k'));
    const other = await makeKey(join(dir, 'o'), 'other');
    const repo = join(dir, 'repo');
    await publish({ repo, channel: 'stable', gendir: await makeGendir(join(dir, 'g1')), keys: [key.priv], indexTtlMs: 86400e3, manifestTtlMs: 86400e3 });
    const server = startCli('liveup', ['serve', repo, '--listen', '127.0.0.1:0', '--quiet']);
    try {
      const url = await new Promise<string>((ok) => server.stdout!.on('data', (d: Buffer) => {
        const m = /(http:\/\/\S+)/.exec(d.toString());
        if (m) ok(m[1]!);
      }));
      const good = await runCli('liveup', ['verify', '--repo', url, '--channel', 'stable', '--keyring', key.pubPath]);
      expect(good.code).toBe(0);
      expect(good.stdout).toMatch(/OK: 1 channel\(s\), 3 artifact\(s\)/);
      const bad = await runCli('liveup', ['verify', '--repo', url, '--channel', 'stable', '--keyring', other.pubPath]);
      expect(bad.code).toBe(1);
      expect(bad.stderr).toMatch(/^KEY_NOT_TRUSTED channels\/stable\/index.json: /);
    } finally {
      server.kill('SIGTERM');
    }
  });
});

describe('liveup serve', () => {
  it('answers Range requests with 206 and Content-Range, 416 past the end, and refuses paths outside the root', async () => {
    const dir = await tmp();
    const root = join(dir, 'root');
    await mkdir(root);
    const data = Buffer.from(Array.from({ length: 1000 }, (_, i) => i % 251));
    await writeFile(join(root, 'f.bin'), data);
    await writeFile(join(dir, 'secret'), 'no');
    const s = await serve({ root, host: '127.0.0.1', port: 0 });
    try {
      const full = await get(s.url + 'f.bin');
      expect(full.status).toBe(200);
      expect(full.headers['content-length']).toBe('1000');
      expect(full.headers['accept-ranges']).toBe('bytes');
      const part = await get(s.url + 'f.bin', { range: 'bytes=100-199' });
      expect(part.status).toBe(206);
      expect(part.headers['content-range']).toBe('bytes 100-199/1000');
      expect(part.headers['content-length']).toBe('100');
      expect(part.body.equals(data.subarray(100, 200))).toBe(true);
      const open = await get(s.url + 'f.bin', { range: 'bytes=990-' });
      expect(open.headers['content-range']).toBe('bytes 990-999/1000');
      expect(open.body.length).toBe(10);
      const suffix = await get(s.url + 'f.bin', { range: 'bytes=-5' });
      expect(suffix.body.equals(data.subarray(995))).toBe(true);
      const past = await get(s.url + 'f.bin', { range: 'bytes=1000-' });
      expect(past.status).toBe(416);
      expect(past.headers['content-range']).toBe('bytes */1000');
      const head = await get(s.url + 'f.bin', {}, 'HEAD');
      expect(head.headers['content-length']).toBe('1000');
      expect(head.body.length).toBe(0);
      expect((await get(s.url + '..%2fsecret')).status).toBe(404);
      expect((await get(s.url + '../secret')).status).toBe(404);
      expect((await get(s.url + 'missing')).status).toBe(404);
    } finally {
      await s.close();
    }
  });
});
