/**
 * Real apt archives for tests: tiny .debs built with dpkg-deb, indices and
 * Release written by apt-ftparchive (what real archives use), and the Release
 * signed by openpgp.js as InRelease (cleartext) and Release.gpg (detached),
 * with a key made by `liveup key generate`'s code — which gpgv, and so
 * debmirror, must accept too.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import * as openpgp from 'openpgp';
import { signDetached } from '../../agent/src/channel/signature.js';
import type { TestKey } from './fixtures.js';

export interface DebSpec {
  readonly name: string;
  readonly version?: string;
  readonly arch: string;
  /** Size of the random payload (incompressible: the .deb is about this big). */
  readonly bytes?: number;
}

export const ARCHES = ['amd64', 'arm64', 'armhf', 'i386'] as const;

/** Build one .deb into ROOT/pool/main/<initial>/<name>/ and return its path relative to ROOT. */
export async function buildDeb(root: string, spec: DebSpec, work: string): Promise<string> {
  const version = spec.version ?? '1.0';
  const tree = join(work, `${spec.name}_${version}_${spec.arch}`);
  await rm(tree, { recursive: true, force: true });
  await mkdir(join(tree, 'DEBIAN'), { recursive: true });
  await mkdir(join(tree, 'usr', 'share', spec.name), { recursive: true });
  await writeFile(join(tree, 'usr', 'share', spec.name, 'payload'), randomBytes(spec.bytes ?? 4096));
  await writeFile(join(tree, 'DEBIAN', 'control'),
    `Package: ${spec.name}\nVersion: ${version}\nArchitecture: ${spec.arch}\nMaintainer: liveup tests <tests@liveup.invalid>\nDescription: test package\n`);
  const rel = `pool/main/${spec.name[0]}/${spec.name}/${spec.name}_${version}_${spec.arch}.deb`;
  await mkdir(join(root, 'pool/main', spec.name[0]!, spec.name), { recursive: true });
  // -Znone: the payload is random anyway, and compression would only cost time.
  execFileSync('dpkg-deb', ['-Znone', '--root-owner-group', '--build', tree, join(root, rel)], { stdio: 'ignore' });
  await rm(tree, { recursive: true, force: true });
  return rel;
}

/** Write dists/SUITE/main/binary-ARCH/Packages{,.gz,.xz}, Release, InRelease and Release.gpg. */
export async function indexArchive(root: string, key: TestKey, opts: { suite?: string; arches?: readonly string[] } = {}): Promise<void> {
  const suite = opts.suite ?? 'stable';
  const arches = opts.arches ?? ARCHES;
  const dist = join(root, 'dists', suite);
  for (const arch of arches) {
    const dir = join(dist, 'main', `binary-${arch}`);
    await mkdir(dir, { recursive: true });
    const packages = execFileSync('apt-ftparchive', ['--arch', arch, 'packages', 'pool/main'], { cwd: root, maxBuffer: 1 << 28 });
    await writeFile(join(dir, 'Packages'), packages);
    execFileSync('gzip', ['-9kf', join(dir, 'Packages')]);
    execFileSync('xz', ['-kf', join(dir, 'Packages')]);
  }
  await rm(join(dist, 'Release'), { force: true });
  await rm(join(dist, 'InRelease'), { force: true });
  await rm(join(dist, 'Release.gpg'), { force: true });
  const release = execFileSync('apt-ftparchive', [
    '-o', `APT::FTPArchive::Release::Suite=${suite}`,
    '-o', `APT::FTPArchive::Release::Codename=${suite}`,
    '-o', `APT::FTPArchive::Release::Architectures=${arches.join(' ')}`,
    '-o', 'APT::FTPArchive::Release::Components=main',
    'release', `dists/${suite}`,
  ], { cwd: root });
  await signRelease(dist, release, key);
}

export async function signRelease(dist: string, release: Buffer, key: TestKey): Promise<void> {
  await writeFile(join(dist, 'Release'), release);
  await writeFile(join(dist, 'Release.gpg'), await signDetached(release, [key.priv]));
  const message = await openpgp.createCleartextMessage({ text: release.toString('utf8') });
  await writeFile(join(dist, 'InRelease'), await openpgp.sign({ message, signingKeys: [key.priv] }));
}

/** An upstream archive: `perArch` packages for each architecture plus one `all` package. */
export async function makeArchive(root: string, key: TestKey, work: string, opts: { perArch?: number; bytes?: number } = {}): Promise<string[]> {
  const debs: string[] = [];
  for (let i = 0; i < (opts.perArch ?? 2); i++) {
    for (const arch of ARCHES) debs.push(await buildDeb(root, { name: `pkg${i}`, arch, bytes: opts.bytes }, work));
  }
  debs.push(await buildDeb(root, { name: 'common', arch: 'all', bytes: opts.bytes }, work));
  await indexArchive(root, key);
  return debs;
}

/** The key as a binary keyring file (what Debian ships in /usr/share/keyrings). */
export async function writeBinaryKeyring(key: TestKey, path: string): Promise<string> {
  await writeFile(path, Buffer.concat(key.keyring.keys.map((k) => Buffer.from(k.write()))));
  return path;
}
