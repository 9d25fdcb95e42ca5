/**
 * Staging into a boot medium: real files, and a real (small) tmpfs mount for
 * the out-of-space and cross-file-system cases. Needs root for the mounts.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, readFile, readdir, writeFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { fetchArtifact } from '../../agent/src/adapters/fetch.js';
import { BOOT_FILES, listStaged, reconcileStaging, removeGeneration, stageGeneration } from '../../agent/src/adapters/stage.js';
import { isLiveupError, type LiveupError } from '../../agent/src/channel/errors.js';
import type { VerifiedArtifact } from '../../agent/src/channel/verify.js';
import { publishVerified, type PublishedGeneration } from '../helpers/channel.js';
import { tmp } from '../helpers/tmp.js';
import { generateKey } from '../../publisher/src/key.js';
import { loadPrivateKey } from '../../agent/src/channel/signature.js';

const mounts: string[] = [];
afterEach(() => {
  while (mounts.length) execFileSync('umount', [mounts.pop()!]);
});

async function tmpfs(size: string): Promise<string> {
  const dir = await tmp('liveup-boot-');
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]);
  mounts.push(dir);
  return dir;
}

/** Download every artifact of the generation the way the agent does (file:// mirror). */
async function fetchAll(pub: PublishedGeneration, downloads: string): Promise<VerifiedArtifact[]> {
  const out: VerifiedArtifact[] = [];
  for (const a of pub.artifacts) {
    out.push(await fetchArtifact({
      mirrors: [pathToFileURL(pub.repo).toString()], rel: pub.rel(a), ref: a, dest: join(downloads, a.path),
      deadlineMs: 30_000, minBytesPerSecond: 0, retries: 0, backoffMs: 1,
    }));
  }
  return out;
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

async function expectStaged(pub: PublishedGeneration, bootDir: string): Promise<void> {
  const v = pub.verified.manifest.version;
  const dir = join(bootDir, 'live', String(v));
  expect((await readdir(dir)).sort()).toEqual(['SHA512SUMS', 'filesystem.squashfs', 'initrd.img', 'manifest.json', 'manifest.json.sig', 'vmlinuz']);
  for (const a of pub.artifacts) expect((await readFile(join(dir, BOOT_FILES[a.role]))).equals(await pub.bytes(a))).toBe(true);
  // One line per artifact, its signed hash and its name on the medium.
  expect((await readFile(join(dir, 'SHA512SUMS'), 'utf8')).trim().split('\n').sort())
    .toEqual(pub.artifacts.map((a) => `${a.sha512}  ${BOOT_FILES[a.role]}`).sort());
  expect((await readFile(join(dir, 'manifest.json'))).equals(Buffer.from(pub.verified.bytes))).toBe(true);
  expect((await readFile(join(dir, 'manifest.json.sig'))).equals(Buffer.from(pub.sig))).toBe(true);
  expect(await readdir(join(bootDir, 'live'))).toEqual([String(v)]);
}

describe('stageGeneration', () => {
  it('stages live/<version>/ with the artifacts, manifest and signature, consuming the .part files', async () => {
    const dir = await tmp();
    const pub = await publishVerified(join(dir, 'pub'));
    const downloads = join(dir, 'dl');
    await mkdir(downloads);
    const artifacts = await fetchAll(pub, downloads);
    const bootDir = join(dir, 'boot');
    await mkdir(bootDir);
    const staged = await stageGeneration({ bootDir, manifest: pub.verified, manifestSig: pub.sig, artifacts, reserveBytes: 0 });
    expect(staged.dir).toBe(join(bootDir, 'live', String(pub.verified.manifest.version)));
    expect(staged.files.kernel).toBe(join(staged.dir, 'vmlinuz'));
    await expectStaged(pub, bootDir);
    expect(await readdir(downloads)).toEqual([]);
    expect(await listStaged(bootDir)).toEqual([pub.verified.manifest.version]);
  });

  it('a signed-boot generation (publish --boot-key) stages boot.cfg and the GRUB signatures under the names GRUB opens', async () => {
    const dir = await tmp();
    const bootKey = await generateKey({ outDir: join(dir, 'bootkey'), name: 'boot', type: 'rsa', rsaBits: 2048 });
    const pub = await publishVerified(join(dir, 'pub'), { bootKey: await loadPrivateKey(bootKey.privateKeyPath) });
    const downloads = join(dir, 'dl');
    await mkdir(downloads);
    const bootDir = join(dir, 'boot');
    await mkdir(bootDir);
    await stageGeneration({ bootDir, manifest: pub.verified, manifestSig: pub.sig, artifacts: await fetchAll(pub, downloads), reserveBytes: 0 });
    const gdir = join(bootDir, 'live', String(pub.verified.manifest.version));
    expect((await readdir(gdir)).sort()).toEqual([
      'SHA512SUMS', 'boot.cfg', 'boot.cfg.sig', 'filesystem.squashfs', 'initrd.img', 'initrd.img.sig', 'manifest.json', 'manifest.json.sig', 'vmlinuz', 'vmlinuz.sig',
    ]);
    for (const role of ['boot-config', 'boot-config-sig', 'kernel-sig', 'initrd-sig'] as const) {
      expect((await readFile(join(gdir, BOOT_FILES[role]))).equals(await pub.bytes(pub.artifact(role)))).toBe(true);
    }
    expect((await readFile(join(gdir, 'SHA512SUMS'), 'utf8')).trim().split('\n')).toHaveLength(7);
  }, 60_000);

  it('copies (re-verifying) when the downloads are on another file system', async () => {
    const dir = await tmp();
    const pub = await publishVerified(join(dir, 'pub'));
    const downloads = join(dir, 'dl');
    await mkdir(downloads);
    const artifacts = await fetchAll(pub, downloads);
    const bootDir = await tmpfs('16m');
    await stageGeneration({ bootDir, manifest: pub.verified, manifestSig: pub.sig, artifacts, reserveBytes: 0 });
    await expectStaged(pub, bootDir);
  });

  it('a .part changed after verification fails the copy, and nothing is left behind', async () => {
    const dir = await tmp();
    const pub = await publishVerified(join(dir, 'pub'));
    const downloads = join(dir, 'dl');
    await mkdir(downloads);
    const artifacts = await fetchAll(pub, downloads);
    const kernel = artifacts.find((a) => a.ref.path === pub.artifact('kernel').path)!;
    const bytes = await readFile(kernel.path);
    bytes[0]! ^= 0xff;
    await writeFile(kernel.path, bytes);
    const bootDir = await tmpfs('16m');
    const e = await rejection(stageGeneration({ bootDir, manifest: pub.verified, manifestSig: pub.sig, artifacts, reserveBytes: 0 }));
    expect(e.code).toBe('HASH_MISMATCH');
    expect(await readdir(join(bootDir, 'live'))).toEqual([]);
  });

  it('not enough space: NO_SPACE naming needed vs available, nothing written, other generations untouched', async () => {
    const dir = await tmp();
    const pub = await publishVerified(join(dir, 'pub'), { kernelBytes: 2 << 20 });
    const downloads = join(dir, 'dl');
    await mkdir(downloads);
    const artifacts = await fetchAll(pub, downloads);
    const bootDir = await tmpfs('1m');
    await mkdir(join(bootDir, 'live', '7'), { recursive: true });
    await writeFile(join(bootDir, 'live', '7', 'vmlinuz'), 'old kernel');
    const e = await rejection(stageGeneration({ bootDir, manifest: pub.verified, manifestSig: pub.sig, artifacts }));
    expect(e.code).toBe('NO_SPACE');
    expect(e.message).toMatch(/needs \d+ bytes .* \d+ available/);
    expect(Number(e.details.needed)).toBeGreaterThan(Number(e.details.available));
    expect(await readdir(join(bootDir, 'live'))).toEqual(['7']);
    expect(await readFile(join(bootDir, 'live', '7', 'vmlinuz'), 'utf8')).toBe('old kernel');
    // The downloads survive for a later attempt.
    for (const a of artifacts) expect((await stat(a.path)).size).toBe(a.ref.length);
  });

  it('refuses artifacts that do not match the manifest, and a version already staged', async () => {
    const dir = await tmp();
    const pub = await publishVerified(join(dir, 'pub'));
    const downloads = join(dir, 'dl');
    await mkdir(downloads);
    const artifacts = await fetchAll(pub, downloads);
    const bootDir = join(dir, 'boot');
    await mkdir(bootDir);
    const missing = await rejection(stageGeneration({ bootDir, manifest: pub.verified, manifestSig: pub.sig, artifacts: artifacts.slice(1) }));
    expect(missing.code).toBe('INVALID_ARGUMENT');
    await mkdir(join(bootDir, 'live', String(pub.verified.manifest.version)), { recursive: true });
    const again = await rejection(stageGeneration({ bootDir, manifest: pub.verified, manifestSig: pub.sig, artifacts }));
    expect(again.code).toBe('INVALID_ARGUMENT');
  });
});

describe('reconcileStaging / removeGeneration', () => {
  it('reconcileStaging removes half-staged and half-removed leftovers only', async () => {
    const bootDir = await tmp();
    const live = join(bootDir, 'live');
    for (const d of ['.staging-5', '.removing-3-abcd', '4']) {
      await mkdir(join(live, d), { recursive: true });
      await writeFile(join(live, d, 'manifest.json'), '{}');
    }
    expect((await reconcileStaging(bootDir)).sort()).toEqual(['.removing-3-abcd', '.staging-5']);
    expect(await readdir(live)).toEqual(['4']);
    expect(await reconcileStaging(join(bootDir, 'nothing-here'))).toEqual([]);
  });

  it('removeGeneration removes one generation and refuses an unknown one', async () => {
    const bootDir = await tmp();
    for (const v of ['3', '4']) {
      await mkdir(join(bootDir, 'live', v), { recursive: true });
      await writeFile(join(bootDir, 'live', v, 'vmlinuz'), v);
    }
    await removeGeneration(bootDir, 3);
    expect(await readdir(join(bootDir, 'live'))).toEqual(['4']);
    expect((await rejection(removeGeneration(bootDir, 3))).code).toBe('UNKNOWN_GENERATION');
  });
});
