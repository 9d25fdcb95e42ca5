/**
 * The channel format: the contract between the publisher and the agent.
 * Documented field by field in docs/formats.md; change both together.
 *
 * Parsing here only checks shape. Whether the content can be *trusted*
 * (signature, expiry, floor, channel, architecture) is decided in verify.ts,
 * and only on bytes whose signature already held.
 */
import { Reader, parseJson } from '../util/validate.js';

export const FORMAT_VERSION = 1;

export const ARTIFACT_ROLES = ['squashfs', 'kernel', 'initrd', 'packages', 'boot-config', 'boot-config-sig', 'kernel-sig', 'initrd-sig'] as const;
/**
 * The signed-boot set (`liveup publish --boot-key`): GRUB's `boot.cfg` and the
 * detached signatures GRUB checks under `check_signatures=enforce`. A manifest
 * has all four or none (docs/boot.md, "Signed boot").
 */
export const SIGNED_BOOT_ROLES = ['boot-config', 'boot-config-sig', 'kernel-sig', 'initrd-sig'] as const;
export type ArtifactRole = (typeof ARTIFACT_ROLES)[number];

/** A file the signed metadata vouches for: exact length and SHA-512. */
export interface ArtifactRef {
  /** Path relative to the directory of the manifest (or of the repository root, for an index). */
  readonly path: string;
  readonly length: number;
  /** Lower-case hex, 128 characters. */
  readonly sha512: string;
}

export interface Artifact extends ArtifactRef {
  readonly role: ArtifactRole;
}

export type PackageChange =
  | { readonly action: 'install'; readonly package: string; readonly version: string; readonly deb: ArtifactRef }
  | { readonly action: 'upgrade'; readonly package: string; readonly from: string; readonly version: string; readonly deb: ArtifactRef }
  | { readonly action: 'remove'; readonly package: string; readonly from: string };

export interface RebootRequired {
  readonly required: boolean;
  /** e.g. `kernel`, `initrd`, `package:libc6`, `full-image` (no recorded changes). */
  readonly reasons: readonly string[];
}

export interface Manifest {
  readonly format: typeof FORMAT_VERSION;
  readonly kind: 'liveup-manifest';
  readonly channel: string;
  readonly architecture: string;
  readonly version: number;
  readonly name: string;
  readonly parent: number | null;
  readonly created: string;
  readonly expires: string;
  readonly kernel: { readonly version: string; readonly cmdline: string };
  readonly artifacts: readonly Artifact[];
  readonly changes: readonly PackageChange[];
  readonly rebootRequired: RebootRequired;
}

export interface IndexEntry {
  readonly version: number;
  readonly name: string;
  readonly architecture: string;
  readonly created: string;
  readonly manifest: ArtifactRef;
}

export interface ChannelIndex {
  readonly format: typeof FORMAT_VERSION;
  readonly kind: 'liveup-index';
  readonly channel: string;
  readonly sequence: number;
  readonly created: string;
  readonly expires: string;
  /** Highest published version in this channel, or null when it holds none. */
  readonly latest: number | null;
  readonly generations: readonly IndexEntry[];
  /** A staged rollout of `version` (optional; absent: every machine takes every version). */
  readonly rollout?: Rollout;
}

/**
 * Waves: a machine takes `version` when its stable bucket (a hash of its id
 * and the version, 0-100) is below the current percentage — `percent`, or
 * growing linearly from 0 at `start` to 100 after `durationSeconds`. While
 * `paused` the percentage stays where it is. See core/rollout.ts.
 */
export interface Rollout {
  readonly version: number;
  readonly start: string;
  readonly percent?: number;
  readonly durationSeconds?: number;
  readonly paused: boolean;
}

export const NAME_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;
export const ARCH_RE = /^[a-z0-9][a-z0-9-]{0,31}$/;
const SHA512_RE = /^[0-9a-f]{128}$/;
/** Relative, no `..`, no absolute paths, no backslashes: safe to join under a directory. */
const REL_PATH_RE = /^(?!\/)(?!.*(?:^|\/)\.\.?(?:\/|$))[A-Za-z0-9._+~\/-]{1,255}$/;
const PKG_RE = /^[a-z0-9][a-z0-9+.-]+$/;
const DEBVER_RE = /^[A-Za-z0-9.+~:-]{1,128}$/;
/** Channel names travel in URLs and file names. */
export const CHANNEL_RE = NAME_RE;
/** Generation versions are positive integers; JSON's safe range is plenty. */
export const MAX_VERSION = Number.MAX_SAFE_INTEGER;

function artifactRef(r: Reader, v: unknown, path: string): ArtifactRef {
  const o = r.object(v, path, ['path', 'length', 'sha512', 'role']);
  return {
    path: r.string(o, 'path', path, { pattern: REL_PATH_RE, what: 'a safe relative path' }),
    length: r.int(o, 'length', path, { min: 0 }),
    sha512: r.string(o, 'sha512', path, { pattern: SHA512_RE, what: 'a lower-case hex SHA-512' }),
  };
}

export function parseManifest(bytes: Uint8Array | string, source = 'manifest.json'): Manifest {
  const r = new Reader(source, 'METADATA_INVALID');
  const text = typeof bytes === 'string' ? bytes : Buffer.from(bytes).toString('utf8');
  const o = r.object(parseJson(text, source, 'METADATA_INVALID'), '', [
    'format', 'kind', 'channel', 'architecture', 'version', 'name', 'parent', 'created', 'expires',
    'kernel', 'artifacts', 'changes', 'rebootRequired',
  ]);
  r.int(o, 'format', '', { min: FORMAT_VERSION, max: FORMAT_VERSION });
  r.oneOf(o, 'kind', '', ['liveup-manifest'] as const);
  const version = r.int(o, 'version', '', { min: 1 });
  let parent: number | null = null;
  if (o.parent !== null) parent = r.int(o, 'parent', '', { min: 1, max: version - 1 });
  const k = r.object(o.kernel, 'kernel', ['version', 'cmdline']);
  const artifacts = r.array(o, 'artifacts', '', { max: 64 }).map((a, i): Artifact => {
    const p = `artifacts[${i}]`;
    const ao = r.object(a, p, ['path', 'length', 'sha512', 'role']);
    return { ...artifactRef(r, ao, p), role: r.oneOf(ao, 'role', p, ARTIFACT_ROLES) };
  });
  for (const role of ['squashfs', 'kernel', 'initrd'] as const) {
    const n = artifacts.filter((a) => a.role === role).length;
    if (n !== 1) r.fail('artifacts', `expected exactly one artifact with role "${role}", found ${n}`);
  }
  for (const role of SIGNED_BOOT_ROLES) {
    if (artifacts.filter((a) => a.role === role).length > 1) r.fail('artifacts', `more than one artifact with role "${role}"`);
  }
  const signed = SIGNED_BOOT_ROLES.filter((role) => artifacts.some((a) => a.role === role));
  if (signed.length > 0 && signed.length < SIGNED_BOOT_ROLES.length) {
    r.fail('artifacts', `a signed boot needs all of ${SIGNED_BOOT_ROLES.join(', ')}; found only ${signed.join(', ')}`);
  }
  if (new Set(artifacts.map((a) => a.path)).size !== artifacts.length) r.fail('artifacts', 'two artifacts share a path');
  const changes = r.array(o, 'changes', '', { max: 100_000 }).map((c, i): PackageChange => {
    const p = `changes[${i}]`;
    const co = r.object(c, p, ['action', 'package', 'from', 'version', 'deb']);
    const action = r.oneOf(co, 'action', p, ['install', 'upgrade', 'remove'] as const);
    const pkg = r.string(co, 'package', p, { pattern: PKG_RE, what: 'a Debian package name' });
    const ver = (key: string) => r.string(co, key, p, { pattern: DEBVER_RE, what: 'a Debian version' });
    switch (action) {
      case 'install':
        if (co.from !== undefined) r.fail(`${p}.from`, 'an install has no "from" version');
        return { action, package: pkg, version: ver('version'), deb: artifactRef(r, co.deb, `${p}.deb`) };
      case 'upgrade':
        return { action, package: pkg, from: ver('from'), version: ver('version'), deb: artifactRef(r, co.deb, `${p}.deb`) };
      case 'remove':
        if (co.deb !== undefined || co.version !== undefined) r.fail(p, 'a remove has neither "version" nor "deb"');
        return { action, package: pkg, from: ver('from') };
    }
  });
  if (changes.length > 0 && parent === null) r.fail('changes', 'package changes need a parent version');
  const rb = r.object(o.rebootRequired, 'rebootRequired', ['required', 'reasons']);
  const reasons = r.array(rb, 'reasons', 'rebootRequired', { max: 256 }).map((x, i): string => {
    if (typeof x !== 'string' || x.length === 0 || x.length > 200) return r.fail(`rebootRequired.reasons[${i}]`, 'expected a non-empty string');
    return x;
  });
  const required = r.bool(rb, 'required', 'rebootRequired');
  if (required && reasons.length === 0) r.fail('rebootRequired.reasons', 'a required reboot must give its reasons');
  return {
    format: FORMAT_VERSION,
    kind: 'liveup-manifest',
    channel: r.string(o, 'channel', '', { pattern: CHANNEL_RE, what: 'a channel name ([a-z0-9._-])' }),
    architecture: r.string(o, 'architecture', '', { pattern: ARCH_RE, what: 'a Debian architecture' }),
    version,
    name: r.string(o, 'name', '', { max: 128 }),
    parent,
    created: r.timestamp(o, 'created', ''),
    expires: r.timestamp(o, 'expires', ''),
    kernel: { version: r.string(k, 'version', 'kernel', { max: 128 }), cmdline: r.string(k, 'cmdline', 'kernel', { max: 4096 }) },
    artifacts,
    changes,
    rebootRequired: { required, reasons },
  };
}

export function parseIndex(bytes: Uint8Array | string, source = 'index.json'): ChannelIndex {
  const r = new Reader(source, 'METADATA_INVALID');
  const text = typeof bytes === 'string' ? bytes : Buffer.from(bytes).toString('utf8');
  const o = r.object(parseJson(text, source, 'METADATA_INVALID'), '', [
    'format', 'kind', 'channel', 'sequence', 'created', 'expires', 'latest', 'generations', 'rollout',
  ]);
  r.int(o, 'format', '', { min: FORMAT_VERSION, max: FORMAT_VERSION });
  r.oneOf(o, 'kind', '', ['liveup-index'] as const);
  const generations = r.array(o, 'generations', '', { max: 100_000 }).map((g, i): IndexEntry => {
    const p = `generations[${i}]`;
    const go = r.object(g, p, ['version', 'name', 'architecture', 'created', 'manifest']);
    return {
      version: r.int(go, 'version', p, { min: 1 }),
      name: r.string(go, 'name', p, { max: 128 }),
      architecture: r.string(go, 'architecture', p, { pattern: ARCH_RE, what: 'a Debian architecture' }),
      created: r.timestamp(go, 'created', p),
      manifest: artifactRef(r, go.manifest, `${p}.manifest`),
    };
  });
  const versions = generations.map((g) => g.version);
  if (new Set(versions).size !== versions.length) r.fail('generations', 'a version is listed twice');
  const latest = o.latest === null ? null : r.int(o, 'latest', '', { min: 1 });
  const max = versions.length ? Math.max(...versions) : null;
  if (latest !== max) r.fail('latest', `is ${String(latest)} but the highest listed version is ${String(max)}`);
  let rollout: Rollout | undefined;
  if (o.rollout !== undefined) {
    const ro = r.object(o.rollout, 'rollout', ['version', 'start', 'percent', 'durationSeconds', 'paused']);
    const percent = ro.percent === undefined ? undefined : r.int(ro, 'percent', 'rollout', { min: 0, max: 100 });
    const durationSeconds = ro.durationSeconds === undefined ? undefined : r.int(ro, 'durationSeconds', 'rollout', { min: 1 });
    if ((percent === undefined) === (durationSeconds === undefined)) r.fail('rollout', 'needs exactly one of "percent" and "durationSeconds"');
    const version = r.int(ro, 'version', 'rollout', { min: 1 });
    if (!versions.includes(version)) r.fail('rollout.version', `${version} is not listed in generations`);
    rollout = {
      version, start: r.timestamp(ro, 'start', 'rollout'), paused: r.bool(ro, 'paused', 'rollout'),
      ...(percent !== undefined ? { percent } : {}), ...(durationSeconds !== undefined ? { durationSeconds } : {}),
    };
  }
  return {
    format: FORMAT_VERSION,
    kind: 'liveup-index',
    channel: r.string(o, 'channel', '', { pattern: CHANNEL_RE, what: 'a channel name ([a-z0-9._-])' }),
    sequence: r.int(o, 'sequence', '', { min: 1 }),
    created: r.timestamp(o, 'created', ''),
    expires: r.timestamp(o, 'expires', ''),
    latest,
    generations,
    ...(rollout ? { rollout } : {}),
  };
}

/** Canonical serialisation: what the publisher signs. Stable key order, trailing newline. */
export function serialize(doc: Manifest | ChannelIndex): string {
  return JSON.stringify(doc, null, 2) + '\n';
}

export function artifactOfRole(m: Manifest, role: ArtifactRole): Artifact | undefined {
  return m.artifacts.find((a) => a.role === role);
}
