/** `liveup mirror verify | sync` as a user runs them, on real archives served over HTTP. */
import { describe, expect, it } from 'vitest';
import { appendFile, cp, open, readFile, readlink, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { tmp } from '../helpers/tmp.js';
import { makeKey, type TestKey } from '../helpers/fixtures.js';
import { runCli, startCli } from '../helpers/cli.js';
import { buildDeb, indexArchive, makeArchive, writeBinaryKeyring } from '../helpers/aptrepo.js';
import { verifyMirror } from '../../publisher/src/mirror/verify.js';

interface Fixture { dir: string; key: TestKey; mirror: string; debs: string[] }

async function fixture(): Promise<Fixture> {
  const dir = await tmp('liveup-mirror-');
  const key = await makeKey(join(dir, 'keys'));
  const mirror = join(dir, 'mirror');
  const debs = await makeArchive(mirror, key, join(dir, 'work'));
  return { dir, key, mirror, debs };
}

async function flipBit(file: string, at: number): Promise<void> {
  const fh = await open(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0] = b[0]! ^ 0x01;
    await fh.write(b, 0, 1, at);
  } finally {
    await fh.close();
  }
}

async function verifyCli(path: string, keyring: string, ...extra: string[]) {
  return runCli('liveup', ['mirror', 'verify', path, '--keyring', keyring, ...extra]);
}

describe('liveup mirror verify', () => {
  it('passes a fresh mirror, with an armored and with a binary keyring', async () => {
    const f = await fixture();
    const r = await verifyCli(f.mirror, f.key.pubPath);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^OK: 1 suite\(s\), \d+ index file\(s\), 9 pool file\(s\)/m);
    const bin = await writeBinaryKeyring(f.key, join(f.dir, 'keyring.gpg'));
    const j = await verifyCli(f.mirror, bin, '--json', '--jobs', '3');
    expect(j.code).toBe(0);
    const report = JSON.parse(j.stdout) as { ok: boolean; files: number; problems: unknown[]; unreferencedChecked: boolean };
    expect(report).toMatchObject({ ok: true, files: 9, problems: [], unreferencedChecked: true });
  });

  it('names the file for a truncated .deb, a bit flip, a missing file and an unreferenced .deb', async () => {
    const f = await fixture();
    const [a, b, c] = f.debs as [string, string, string];
    await truncate(join(f.mirror, a), 1000);
    await flipBit(join(f.mirror, b), 700);
    await rm(join(f.mirror, c));
    const extra = 'pool/main/z/zombie/zombie_1.0_amd64.deb';
    await cp(join(f.mirror, f.debs[3]!), join(f.mirror, extra), { recursive: true });
    const r = await verifyCli(f.mirror, f.key.pubPath);
    expect(r.code).toBe(1);
    const lines = r.stdout.trim().split('\n');
    expect(lines).toContainEqual(expect.stringMatching(new RegExp(`^SIZE_MISMATCH ${a}: 1000 bytes, dists/stable/main/binary-\\S+/Packages(\\.gz)? says \\d+$`)));
    expect(lines).toContainEqual(expect.stringMatching(new RegExp(`^HASH_MISMATCH ${b}: SHA256 [0-9a-f]{64}, .* says [0-9a-f]{64}$`)));
    expect(lines).toContainEqual(expect.stringMatching(new RegExp(`^MISSING ${c}: named by dists/stable/`)));
    expect(lines).toContainEqual(`UNREFERENCED ${extra}: in pool/ but named by no index`);
    expect(lines.at(-1)).toMatch(/^FAILED: 4 problem\(s\)/);
  });

  it('fails on an edited InRelease, a corrupt index and a foreign key', async () => {
    const f = await fixture();
    const inrel = join(f.mirror, 'dists/stable/InRelease');
    await writeFile(inrel, (await readFile(inrel, 'utf8')).replace('Suite: stable', 'Suite: st4ble'));
    const r = await verifyCli(f.mirror, f.key.pubPath);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/^BAD_SIGNATURE dists\/stable\/InRelease: signature does not verify/m);

    await appendFile(join(f.mirror, 'dists/stable/main/binary-arm64/Packages.gz'), 'x');
    const r2 = await verifyCli(f.mirror, f.key.pubPath);
    expect(r2.stdout).toMatch(/^SIZE_MISMATCH dists\/stable\/main\/binary-arm64\/Packages\.gz: /m);

    const other = await makeKey(join(f.dir, 'other'), 'other');
    const r3 = await verifyCli(f.mirror, other.pubPath);
    expect(r3.code).toBe(1);
    expect(r3.stdout).toMatch(/^BAD_SIGNATURE dists\/stable\/Release\.gpg: signed by key [0-9A-F]+, which is not in the pinned keyring/m);
  });

  it('checks by-hash files against their names', async () => {
    const f = await fixture();
    const dir = join(f.mirror, 'dists/stable/main/binary-amd64/by-hash/SHA256');
    await cp(join(f.mirror, 'dists/stable/main/binary-amd64/Packages.xz'), join(dir, 'a'.repeat(64)), { recursive: true });
    const report = await verifyMirror(f.mirror, { keyring: f.key.keyring, jobs: 2 });
    expect(report.problems).toEqual([
      expect.objectContaining({ kind: 'HASH_MISMATCH', path: `dists/stable/main/binary-amd64/by-hash/SHA256/${'a'.repeat(64)}` }),
    ]);
  });
});

async function serveUpstream(root: string): Promise<{ url: string; child: ChildProcess }> {
  const child = startCli('liveup', ['serve', root, '--listen', '127.0.0.1:0', '--quiet']);
  const url = await new Promise<string>((ok, fail) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /at (http:\/\/\S+)/.exec(out);
      if (m) ok(m[1]!);
    });
    child.on('exit', () => fail(new Error(`liveup serve exited: ${out}`)));
  });
  return { url, child };
}

describe('liveup mirror sync', () => {
  it('syncs a verified mirror, and keeps the previous good state when upstream is corrupt', async () => {
    const f = await fixture();
    const { url, child } = await serveUpstream(f.mirror);
    try {
      const dest = join(f.dir, 'local');
      const config = join(f.dir, 'mirror.json');
      await writeFile(config, JSON.stringify({
        upstream: url, suites: ['stable'], components: ['main'],
        architectures: ['amd64', 'arm64', 'armhf', 'i386'], keyring: f.key.pubPath, dest,
      }));
      const s1 = await runCli('liveup', ['mirror', 'sync', '--config', config]);
      expect(s1.stdout + s1.stderr).toMatch(/OK: .* is now current/);
      expect(s1.code).toBe(0);
      const first = await readlink(join(dest, 'current'));
      expect((await verifyCli(dest, f.key.pubPath)).code).toBe(0);

      // Upstream publishes a new package whose file then rots (same size, one bit).
      const added = await buildDeb(f.mirror, { name: 'newpkg', arch: 'amd64', bytes: 8192 }, join(f.dir, 'work'));
      await indexArchive(f.mirror, f.key);
      await flipBit(join(f.mirror, added), 2000);
      const s2 = await runCli('liveup', ['mirror', 'sync', '--config', config, '--quiet']);
      expect(s2.code).toBe(1);
      // debmirror only checks pool file sizes; our verification of the staged tree catches it.
      expect(s2.stdout).toMatch(new RegExp(`^HASH_MISMATCH ${added}: `, 'm'));
      expect(s2.stdout).toMatch(/FAILED: the synced mirror fails verification .*current is still .*states\/\d{8}T\d{6}Z/);
      expect(await readlink(join(dest, 'current'))).toBe(first);
      const still = await verifyCli(dest, f.key.pubPath);
      expect(still.code).toBe(0);
      expect(still.stdout).toMatch(/8 pool file\(s\)|9 pool file\(s\)/);
      await expect(stat(join(dest, 'current', added))).rejects.toThrow();

      // Upstream's InRelease is tampered with: refused, current unchanged.
      await flipBit(join(f.mirror, added), 2000); // repaired
      const inrel = join(f.mirror, 'dists/stable/InRelease');
      await writeFile(inrel, (await readFile(inrel, 'utf8')).replace('Suite: stable', 'Suite: st4ble'));
      const s3 = await runCli('liveup', ['mirror', 'sync', '--config', config, '--quiet']);
      expect(s3.code).toBe(1);
      expect(s3.stdout).toMatch(/FAILED: .*current is still/);
      expect(await readlink(join(dest, 'current'))).toBe(first);

      // Fixed upstream: the next sync goes through and brings the new package.
      await indexArchive(f.mirror, f.key);
      const s4 = await runCli('liveup', ['mirror', 'sync', '--config', config, '--quiet']);
      expect(s4.code).toBe(0);
      expect(await readlink(join(dest, 'current'))).not.toBe(first);
      expect((await stat(join(dest, 'current', added))).isFile()).toBe(true);
      expect((await verifyCli(dest, f.key.pubPath)).code).toBe(0);
    } finally {
      child.kill('SIGTERM');
    }
  });

  it('rejects a bad config naming the key', async () => {
    const dir = await tmp();
    const config = join(dir, 'm.json');
    await writeFile(config, JSON.stringify({ upstream: 'ftp://x', suites: ['stable'], keyring: 'k', dest: 'd' }));
    const r = await runCli('liveup', ['mirror', 'sync', '--config', config]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/CONFIG_INVALID: .*m\.json: upstream: "ftp:\/\/x" is not an http:\/\/ or https:\/\/ URL/);
  });
});
