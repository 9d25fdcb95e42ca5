/**
 * Real fixtures for tests: keys made by `liveup key generate`'s code, and
 * generation directories with a real squashfs (mksquashfs) and stand-in
 * kernel/initrd files of a chosen size.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type * as openpgp from 'openpgp';
import { loadKeyring, loadPrivateKey, type PinnedKeyring } from '../../agent/src/channel/signature.js';
import { generateKey } from '../../publisher/src/key.js';
import { publish } from '../../publisher/src/publish.js';

export interface TestKey {
  readonly priv: openpgp.PrivateKey;
  readonly keyring: PinnedKeyring;
  readonly privPath: string;
  readonly pubPath: string;
  readonly fingerprint: string;
}

/** A real key; created a week ago by default so tests may sign "in the past". */
export async function makeKey(dir: string, name = 'test', createdAt = new Date(Date.now() - 7 * 86400e3)): Promise<TestKey> {
  const k = await generateKey({ outDir: dir, name, createdAt });
  return {
    priv: await loadPrivateKey(k.privateKeyPath),
    keyring: await loadKeyring(k.publicKeyPath),
    privPath: k.privateKeyPath,
    pubPath: k.publicKeyPath,
    fingerprint: k.fingerprint,
  };
}

/** A generation directory: a real squashfs of a small tree, plus kernel/initrd stand-ins. */
export async function makeGendir(dir: string, opts: { marker?: string; kernelBytes?: number; packages?: Record<string, string> } = {}): Promise<string> {
  const tree = join(dir, 'tree');
  await mkdir(join(tree, 'etc'), { recursive: true });
  await writeFile(join(tree, 'etc', 'liveup-marker'), opts.marker ?? 'generation\n');
  const gen = join(dir, 'gen');
  await mkdir(gen, { recursive: true });
  execFileSync('mksquashfs', [tree, join(gen, 'filesystem.squashfs'), '-noappend', '-quiet', '-no-progress', '-comp', 'zstd'], { stdio: 'ignore' });
  await writeFile(join(gen, 'vmlinuz'), randomBytes(opts.kernelBytes ?? 64 * 1024));
  await writeFile(join(gen, 'initrd.img'), randomBytes(32 * 1024));
  if (opts.packages) await writeFile(join(gen, 'packages.json'), JSON.stringify({ format: 1, packages: opts.packages }, null, 2) + '\n');
  return gen;
}

/** Publish `count` generations into `repo` (channel `stable` unless told) and return their versions. */
export async function publishN(repo: string, work: string, key: TestKey, count: number, channel = 'stable'): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    const gen = await makeGendir(join(work, `g${i}-${channel}`), { marker: `gen ${i}\n` });
    const r = await publish({ repo, channel, gendir: gen, keys: [key.priv], indexTtlMs: 86400e3, manifestTtlMs: 86400e3 });
    out.push(r.version);
  }
  return out;
}
