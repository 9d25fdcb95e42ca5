/**
 * `liveup publish`: lay a generation into a channel repository, sign its
 * manifest, then re-sign the channel index. Readers never see a half-published
 * state: the generation is assembled under a temporary name and renamed into
 * place, and the index (with its signature) becomes visible by one symlink
 * swap, last. A publish killed at any point leaves the previous index valid;
 * the next publish removes what it left.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type * as openpgp from 'openpgp';
import { LiveupError } from '../../agent/src/channel/errors.js';
import { rolloutPercent } from '../../agent/src/core/rollout.js';
import { copyAndHash } from '../../agent/src/channel/hash.js';
import { CHANNELS_DIR, GENERATIONS_DIR, INDEX_FILE, MANIFEST_FILE, SIG_SUFFIX, generationDir, manifestPath } from '../../agent/src/channel/layout.js';
import {
  CHANNEL_RE, FORMAT_VERSION, parseIndex, parseManifest, serialize,
  type Artifact, type ArtifactRole, type ChannelIndex, type IndexEntry, type Manifest, type PackageChange, type Rollout,
} from '../../agent/src/channel/schema.js';
import { signDetached, type PinnedKeyring } from '../../agent/src/channel/signature.js';
import { fsyncDir, fsyncTree, symlinkAtomic } from '../../agent/src/util/fsatomic.js';
import { BOOT_CFG_FILE, renderBootCfg } from '../../agent/src/core/signedboot.js';
import { assertGrubKey, signForGrub } from './bootsign.js';
import { GENDIR_FILES, hostArchitecture, kernelVersionOf, readGendirMeta, requireGendirFiles } from './generation.js';
import { allIndexes, cleanLeftovers, existingVersions, readCurrentIndex, withRepoLock } from './repo.js';

export interface PublishOptions {
  readonly repo: string;
  readonly channel: string;
  readonly gendir: string;
  readonly keys: readonly openpgp.PrivateKey[];
  /**
   * The RSA boot key (bootsign.ts): with it the generation also carries
   * `boot.cfg` and GRUB-readable signatures of it, the kernel and the initrd,
   * listed in the manifest like every artifact (signed boot, docs/boot.md).
   */
  readonly bootKey?: openpgp.PrivateKey;
  /** How long the new index stays valid (ms). Agents refuse an expired index. */
  readonly indexTtlMs: number;
  /** How long the manifest stays valid (ms). */
  readonly manifestTtlMs: number;
  readonly version?: number;
  readonly name?: string;
  readonly architecture?: string;
  readonly cmdline?: string;
  /** Roll the new version out in waves: a fixed share of machines, or growing to all over a duration. */
  readonly rollout?: { readonly percent: number } | { readonly durationSeconds: number };
  readonly now?: Date;
  readonly log?: (line: string) => void;
  /** Test hook: called between steps, so a test can kill the process mid-publish. */
  readonly onStep?: (step: string) => void | Promise<void>;
}

export interface PublishResult {
  readonly version: number;
  readonly channel: string;
  readonly sequence: number;
  readonly manifest: Manifest;
  readonly manifestPath: string;
}

export const DEFAULT_CMDLINE = 'boot=live components';

function keyringOf(keys: readonly openpgp.PrivateKey[]): PinnedKeyring {
  const pub = keys.map((k) => k.toPublic());
  return { keys: pub, fingerprints: pub.map((k) => k.getFingerprint().toUpperCase()), source: 'the signing key(s)' };
}

export async function publish(opts: PublishOptions): Promise<PublishResult> {
  const log = opts.log ?? (() => undefined);
  const step = async (s: string) => opts.onStep?.(s);
  if (!CHANNEL_RE.test(opts.channel)) {
    throw new LiveupError('INVALID_ARGUMENT', `channel "${opts.channel}" must match ${CHANNEL_RE} (lower-case letters, digits, ".", "_", "-")`);
  }
  if (opts.keys.length === 0) throw new LiveupError('INVALID_ARGUMENT', 'at least one signing key (--key) is needed');
  if (opts.bootKey) assertGrubKey(opts.bootKey, 'the boot key');
  await requireGendirFiles(opts.gendir);
  const meta = await readGendirMeta(opts.gendir);
  const now = opts.now ?? new Date();
  const keyring = keyringOf(opts.keys);

  return withRepoLock(opts.repo, async () => {
    const indexes = await allIndexes(opts.repo, keyring);
    const removed = await cleanLeftovers(opts.repo, indexes);
    for (const r of removed) log(`removed leftover of an interrupted publish: ${r}`);
    const current = await readCurrentIndex(opts.repo, opts.channel, keyring);

    const taken = new Set([...(await existingVersions(opts.repo)), ...indexes.flatMap((i) => i.generations.map((g) => g.version))]);
    const highest = Math.max(0, ...taken);
    const version = opts.version ?? highest + 1;
    if (!Number.isSafeInteger(version) || version < 1) throw new LiveupError('INVALID_ARGUMENT', `--version must be a positive integer, got ${version}`);
    if (taken.has(version)) {
      throw new LiveupError('VERSION_EXISTS', `version ${version} is already published in ${opts.repo}; versions are never reused (next free: ${highest + 1})`, { version });
    }
    if (current?.latest != null && version < current.latest) {
      throw new LiveupError('VERSION_ROLLBACK', `version ${version} is lower than channel ${opts.channel}'s latest ${current.latest}; agents would refuse it`, { version, latest: current.latest });
    }

    const parent = meta.parent ?? null;
    const changes = meta.changes ?? [];
    if (changes.length > 0) {
      if (parent === null) throw new LiveupError('GENERATION_INVALID', `${opts.gendir}/generation.json records package changes but no parent version`);
      if (!current?.generations.some((g) => g.version === parent)) {
        throw new LiveupError('GENERATION_INVALID', `parent version ${parent} is not published in channel ${opts.channel}; publish it first`, { parent });
      }
    }

    // 1. Assemble the generation under a temporary name, hashing as we copy.
    const gdir = join(opts.repo, GENERATIONS_DIR);
    await mkdir(gdir, { recursive: true });
    const tmp = join(gdir, `.tmp-${version}-${process.pid}`);
    await mkdir(tmp);
    const artifacts: Artifact[] = [];
    const roles: [ArtifactRole, string][] = [
      ['squashfs', GENDIR_FILES.squashfs],
      ['kernel', GENDIR_FILES.kernel],
      ['initrd', GENDIR_FILES.initrd],
    ];
    if (await readFile(join(opts.gendir, GENDIR_FILES.packages)).then(() => true, () => false)) roles.push(['packages', GENDIR_FILES.packages]);
    for (const [role, file] of roles) {
      const t0 = Date.now();
      const d = await copyAndHash(join(opts.gendir, file), join(tmp, file));
      artifacts.push({ role, path: file, ...d });
      log(`hashed ${file}: ${d.length} bytes, sha512 ${d.sha512.slice(0, 16)}… (${Date.now() - t0} ms)`);
      await step(`artifact:${file}`);
    }
    const cmdline = opts.cmdline ?? meta.kernel?.cmdline ?? DEFAULT_CMDLINE;
    if (opts.bootKey) {
      artifacts.push(...(await signBoot(tmp, version, cmdline, artifacts, opts.bootKey, now)));
      log(`signed ${BOOT_CFG_FILE}, ${GENDIR_FILES.kernel} and ${GENDIR_FILES.initrd} with the boot key ${opts.bootKey.getKeyID().toHex().toUpperCase()}`);
      await step('boot-signed');
    }
    const manifestChanges: PackageChange[] = [];
    if (changes.length) await mkdir(join(tmp, 'debs'));
    for (const [i, c] of changes.entries()) {
      const where = `${opts.gendir}/generation.json changes[${i}]`;
      if (c.action === 'remove') {
        if (!c.from) throw new LiveupError('GENERATION_INVALID', `${where}: a remove needs "from"`);
        manifestChanges.push({ action: 'remove', package: c.package, from: c.from });
        continue;
      }
      if (!c.deb || !c.version) throw new LiveupError('GENERATION_INVALID', `${where}: an ${c.action} needs "version" and "deb"`);
      const rel = `debs/${basename(c.deb)}`;
      const d = await copyAndHash(join(opts.gendir, c.deb), join(tmp, rel)).catch((e: NodeJS.ErrnoException) => {
        throw new LiveupError('GENERATION_INVALID', `${where}: cannot read ${c.deb} (${e.code ?? e.message})`);
      });
      const deb = { path: rel, ...d };
      if (c.action === 'install') manifestChanges.push({ action: 'install', package: c.package, version: c.version, deb });
      else {
        if (!c.from) throw new LiveupError('GENERATION_INVALID', `${where}: an upgrade needs "from"`);
        manifestChanges.push({ action: 'upgrade', package: c.package, from: c.from, version: c.version, deb });
      }
    }
    if (changes.length) log(`copied ${manifestChanges.filter((c) => c.action !== 'remove').length} .deb file(s) for ${changes.length} package change(s)`);

    const manifest: Manifest = {
      format: FORMAT_VERSION,
      kind: 'liveup-manifest',
      channel: opts.channel,
      architecture: opts.architecture ?? meta.architecture ?? hostArchitecture(),
      version,
      name: opts.name ?? meta.name ?? `${opts.channel}-${version}`,
      parent,
      created: now.toISOString(),
      expires: new Date(now.getTime() + opts.manifestTtlMs).toISOString(),
      kernel: {
        version: meta.kernel?.version ?? (await kernelVersionOf(join(opts.gendir, GENDIR_FILES.kernel))) ?? 'unknown',
        cmdline,
      },
      artifacts,
      changes: manifestChanges,
      rebootRequired: meta.rebootRequired ?? (changes.length
        ? { required: false, reasons: [] }
        : { required: true, reasons: ['full-image'] }),
    };
    // Round-trip through the agent's parser: never publish what agents would refuse.
    const manifestText = serialize(manifest);
    parseManifest(manifestText, `manifest of version ${version}`);
    const manifestBytes = Buffer.from(manifestText);
    await writeFile(join(tmp, MANIFEST_FILE), manifestBytes);
    await writeFile(join(tmp, MANIFEST_FILE + SIG_SUFFIX), await signDetached(manifestBytes, opts.keys, now));
    await fsyncTree(tmp);
    await step('manifest-signed');

    // 2. The generation appears under its final name (no index names it yet).
    const final = join(opts.repo, generationDir(version));
    await rename(tmp, final);
    await fsyncDir(gdir);
    log(`laid out ${generationDir(version)}/ and signed ${MANIFEST_FILE}`);
    await step('generation-renamed');

    // 3. The new index, in a fresh directory, made visible by a symlink swap.
    const entry: IndexEntry = {
      version,
      name: manifest.name,
      architecture: manifest.architecture,
      created: manifest.created,
      manifest: { path: manifestPath(version), length: manifestBytes.length, sha512: createSha512(manifestBytes) },
    };
    const index = await writeIndex(opts.repo, opts.channel, {
      previous: current,
      generations: [...(current?.generations ?? []), entry].sort((a, b) => a.version - b.version),
      // A rollout names the newest version; publishing a newer one ends the previous rollout.
      ...(opts.rollout ? { rollout: { version, start: now.toISOString(), paused: false, ...opts.rollout } } : {}),
      keys: opts.keys,
      now,
      ttlMs: opts.indexTtlMs,
      onStep: step,
    });
    log(`signed channel ${opts.channel} index, sequence ${index.sequence}, latest ${String(index.latest)}`);
    return { version, channel: opts.channel, sequence: index.sequence, manifest, manifestPath: join(final, MANIFEST_FILE) };
  });
}

/**
 * Signed boot: `boot.cfg` (with the squashfs's digest on its command line)
 * and a GRUB-readable signature for it, the kernel and the initrd, written
 * into the generation being assembled. Signs the copies just hashed, so the
 * signatures and the manifest's digests are over the same bytes.
 */
async function signBoot(dir: string, version: number, cmdline: string, hashed: readonly Artifact[], key: openpgp.PrivateKey, now: Date): Promise<Artifact[]> {
  const squashfs = hashed.find((a) => a.role === 'squashfs');
  if (!squashfs) throw new LiveupError('INTERNAL', 'signed boot: the squashfs was not hashed first');
  const cfg = Buffer.from(renderBootCfg({ version, cmdline, squashfsSha512: squashfs.sha512 }));
  await writeFile(join(dir, BOOT_CFG_FILE), cfg);
  const out: Artifact[] = [{ role: 'boot-config', path: BOOT_CFG_FILE, length: cfg.length, sha512: createSha512(cfg) }];
  const signed: [ArtifactRole, string, Uint8Array][] = [
    ['boot-config-sig', BOOT_CFG_FILE, cfg],
    ['kernel-sig', GENDIR_FILES.kernel, await readFile(join(dir, GENDIR_FILES.kernel))],
    ['initrd-sig', GENDIR_FILES.initrd, await readFile(join(dir, GENDIR_FILES.initrd))],
  ];
  for (const [role, file, bytes] of signed) {
    const sig = await signForGrub(bytes, key, now);
    // GRUB looks for exactly `<file>.sig` beside the file it opens.
    await writeFile(join(dir, `${file}${SIG_SUFFIX}`), sig);
    out.push({ role, path: `${file}${SIG_SUFFIX}`, length: sig.length, sha512: createSha512(sig) });
  }
  return out;
}

function createSha512(b: Uint8Array): string {
  return createHash('sha512').update(b).digest('hex');
}

/** Write and sign a new index for `channel` (sequence + 1) and swap it in. Caller holds the repo lock. */
export async function writeIndex(
  repo: string,
  channel: string,
  o: {
    previous: ChannelIndex | null;
    generations: readonly IndexEntry[];
    rollout?: Rollout;
    keys: readonly openpgp.PrivateKey[];
    now: Date;
    ttlMs: number;
    onStep?: (s: string) => void | Promise<void>;
  },
): Promise<ChannelIndex> {
  const sequence = (o.previous?.sequence ?? 0) + 1;
  const index: ChannelIndex = {
    format: FORMAT_VERSION,
    kind: 'liveup-index',
    channel,
    sequence,
    created: o.now.toISOString(),
    expires: new Date(o.now.getTime() + o.ttlMs).toISOString(),
    latest: o.generations.length ? Math.max(...o.generations.map((g) => g.version)) : null,
    generations: o.generations,
    ...(o.rollout ? { rollout: o.rollout } : {}),
  };
  const text = serialize(index);
  parseIndex(text, `index of channel ${channel}`);
  const bytes = Buffer.from(text);
  const cdir = join(repo, CHANNELS_DIR);
  await mkdir(cdir, { recursive: true });
  const dirName = `.${channel}.${sequence}`;
  const tmp = join(cdir, `${dirName}.tmp-${process.pid}`);
  await mkdir(tmp);
  await writeFile(join(tmp, INDEX_FILE), bytes);
  await writeFile(join(tmp, INDEX_FILE + SIG_SUFFIX), await signDetached(bytes, o.keys, o.now));
  await fsyncTree(tmp);
  // A publish killed between this rename and the swap left a directory of
  // this sequence that no reader was ever pointed at: replace it.
  await rm(join(cdir, dirName), { recursive: true, force: true });
  await rename(tmp, join(cdir, dirName));
  await fsyncDir(cdir);
  await o.onStep?.('index-written');
  await symlinkAtomic(dirName, join(cdir, channel));
  await o.onStep?.('index-swapped');
  return index;
}

export type RolloutChange = { readonly percent: number } | { readonly pause: true } | { readonly resume: true } | { readonly done: true };

/**
 * Change the rollout of channel's newest version and re-sign the index:
 * `percent` sets a fixed share, `pause` freezes the share reached (a timed
 * rollout becomes that fixed percentage), `resume` lifts the pause, `done`
 * ends it (every machine takes the version).
 */
export async function changeRollout(o: {
  repo: string; channel: string; keys: readonly openpgp.PrivateKey[]; change: RolloutChange; indexTtlMs: number; now?: Date;
}): Promise<ChannelIndex> {
  const now = o.now ?? new Date();
  const keyring = keyringOf(o.keys);
  return withRepoLock(o.repo, async () => {
    const current = await readCurrentIndex(o.repo, o.channel, keyring);
    if (!current || current.latest === null) throw new LiveupError('NOT_FOUND', `channel ${o.channel} has no published generation in ${o.repo}`);
    const latest = current.latest;
    const existing = current.rollout?.version === latest ? current.rollout : undefined;
    let rollout: Rollout | undefined;
    const c = o.change;
    if ('percent' in c) {
      if (!Number.isInteger(c.percent) || c.percent < 0 || c.percent > 100) throw new LiveupError('INVALID_ARGUMENT', `--percent must be 0 to 100, got ${c.percent}`);
      rollout = { version: latest, start: existing?.start ?? now.toISOString(), percent: c.percent, paused: false };
    } else if ('done' in c) {
      rollout = undefined;
    } else {
      if (!existing) throw new LiveupError('NOT_FOUND', `version ${latest} of channel ${o.channel} has no rollout to ${'pause' in c ? 'pause' : 'resume'}`);
      const reached = Math.floor(rolloutPercent(existing, now));
      rollout = { version: latest, start: existing.start, percent: existing.percent ?? reached, paused: 'pause' in c };
    }
    return writeIndex(o.repo, o.channel, {
      previous: current, generations: current.generations, ...(rollout ? { rollout } : {}), keys: o.keys, now, ttlMs: o.indexTtlMs,
    });
  });
}
