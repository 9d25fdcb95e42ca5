/**
 * Build profiles: the versioned JSON or YAML file `liveup build --profile` reads.
 * Every field is checked with the shared strict Reader, so a typo is an error
 * naming the key (PROFILE_INVALID), never a silently ignored setting.
 * The format is documented field by field in docs/factory.md.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { dirname, isAbsolute, posix, resolve } from 'node:path';
import { Reader, join, parseJson } from '../../../agent/src/util/validate.js';
import { ARCH_RE } from '../../../agent/src/channel/schema.js';
import { LiveupError } from '../../../agent/src/channel/errors.js';
import { isScalar, parseDocument } from 'yaml';

export const PROFILE_FORMAT = 1;
export const DEFAULT_MIRROR = 'http://deb.debian.org/debian';
export const DEFAULT_KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';
export const DEFAULT_SUITE = 'trixie';

export const MACHINE_TYPES = ['physical', 'virtual', 'container'] as const;
export type MachineType = (typeof MACHINE_TYPES)[number];

export const COMPRESSORS = ['zstd', 'gzip', 'lzo', 'lz4', 'xz', 'lzma'] as const;
export type Compressor = (typeof COMPRESSORS)[number];

/** Which compressors take a level in mksquashfs, and its range. */
const LEVELS: Partial<Record<Compressor, { min: number; max: number; def: number }>> = {
  zstd: { min: 1, max: 22, def: 15 },
  gzip: { min: 1, max: 9, def: 9 },
  lzo: { min: 1, max: 9, def: 8 },
};

export interface AptSource {
  readonly uri: string;
  readonly suite: string;
  readonly components: readonly string[];
  /** Absolute path on the build host (profile-relative paths are resolved), or undefined for unsigned (insecure) use. */
  readonly keyring?: string;
}

export type VersionOp = '=' | '>=' | '<=' | '>>' | '<<';

export interface PackageSpec {
  readonly name: string;
  /** Absent: newest candidate. */
  readonly constraint?: { readonly op: VersionOp; readonly version: string };
  /** As written in the profile, for messages. */
  readonly text: string;
}

export interface Compression {
  readonly algorithm: Compressor;
  /** Undefined for compressors without levels (xz, lzma, lz4). */
  readonly level?: number;
  /** Bytes, a power of two between 4 KiB and 1 MiB. */
  readonly blockSize: number;
}

export interface Profile {
  readonly format: number;
  readonly name: string;
  readonly version: string;
  readonly suite: string;
  readonly architecture: string;
  readonly sources: readonly AptSource[];
  readonly insecureNoCheckGpg: boolean;
  readonly machine: MachineType;
  readonly packages: readonly PackageSpec[];
  /** Absolute host paths of extra .deb files. */
  readonly debs: readonly string[];
  /** Absolute paths inside the image that live on the persistent partition. */
  readonly persistent: readonly string[];
  /** Absolute host paths of hook scripts, run in the chroot in this order. */
  readonly hooks: readonly string[];
  readonly compression: Compression;
  readonly factory: boolean;
  /** Install the liveup agent (.deb) so the generation can update itself (default true). */
  readonly agent: boolean;
  /** Directory of the profile file; relative paths were resolved against it. */
  readonly baseDir: string;
}

const NAME_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const VERSION_RE = /^[A-Za-z0-9][A-Za-z0-9.+~_-]{0,63}$/;
const SUITE_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const COMPONENT_RE = /^[a-z0-9][a-z0-9._/-]*$/;
const PKG_RE = /^([a-z0-9][a-z0-9+.-]+)(?:(=|>=|<=|>>|<<)([A-Za-z0-9.+~:_-]+))?$/;
/** Persistence cannot cover the API filesystems, scratch space, or liveup's own state root. */
const NOT_PERSISTABLE = ['/proc', '/sys', '/dev', '/run', '/tmp', '/var/lib/liveup', '/boot'];

export function parsePackageSpec(text: string): PackageSpec | undefined {
  const m = PKG_RE.exec(text.trim());
  if (!m) return undefined;
  return m[2] ? { name: m[1]!, constraint: { op: m[2] as VersionOp, version: m[3]! }, text } : { name: m[1]!, text };
}

/** Packages every image gets for its machine type (docs/factory.md explains each). */
export function basePackages(machine: MachineType): string[] {
  // minbase lacks kmod and udev; without them serial-getty never starts (notes/vm-boot-facts.md).
  const common = ['systemd-sysv', 'kmod', 'udev'];
  if (machine === 'container') return common;
  const booted = [...common, 'linux-image-amd64', 'live-boot'];
  if (machine === 'virtual') return booted;
  return [...booted, 'firmware-linux-free', 'intel-microcode', 'amd64-microcode'];
}

export const isYamlFile = (file: string): boolean => /\.ya?ml$/i.test(file);

/**
 * YAML 1.2 core schema (no `yes`/`no` booleans, no sexagesimal numbers),
 * duplicate keys refused, aliases capped. One trap remains: an unquoted
 * `version: 2026.1` is a number, so the error for a numeric name or version
 * says to quote it rather than silently turning 2026.10 into "2026.1".
 */
function parseYamlProfile(text: string, file: string): unknown {
  const doc = parseDocument(text, { schema: 'core', uniqueKeys: true, prettyErrors: true });
  const err = doc.errors[0];
  if (err) {
    const where = err.linePos ? ` at line ${err.linePos[0].line}, column ${err.linePos[0].col}` : '';
    const msg = (err.message.split('\n')[0] ?? '').replace(/ at line \d+, column \d+:?$/, '');
    throw new LiveupError('PROFILE_INVALID', `${file}: not valid YAML${where} (${msg})`, { file });
  }
  for (const key of ['name', 'version'] as const) {
    const node = doc.get(key, true);
    if (isScalar(node) && typeof node.value === 'number') {
      const written = node.range ? text.slice(node.range[0], node.range[1]) : String(node.value);
      throw new LiveupError('PROFILE_INVALID', `${file}: ${key}: ${written} is a number in YAML; quote it (${key}: "${written}")`, { file, key });
    }
  }
  try {
    return doc.toJS({ maxAliasCount: 100 });
  } catch (e) {
    throw new LiveupError('PROFILE_INVALID', `${file}: ${(e as Error).message}`, { file });
  }
}

/**
 * Parse profile text: YAML when `file` ends in .yaml/.yml, JSON otherwise.
 * `file` names the source in errors; `baseDir` resolves relative paths.
 */
export function parseProfile(text: string, file: string, baseDir: string = dirname(resolve(file))): Profile {
  const r: Reader = new Reader(file, 'PROFILE_INVALID');
  const o = r.object(isYamlFile(file) ? parseYamlProfile(text, file) : parseJson(text, file, 'PROFILE_INVALID'), '', [
    'format', 'name', 'version', 'suite', 'architecture', 'sources', 'insecureNoCheckGpg', 'machine',
    'packages', 'debs', 'persistent', 'hooks', 'compression', 'factory', 'agent', 'description',
  ]);
  const format = r.int(o, 'format', '', { min: 1 });
  if (format !== PROFILE_FORMAT) r.fail('format', `profile format ${format} is not supported (this liveup reads ${PROFILE_FORMAT})`);
  r.optString(o, 'description', '', { max: 1000 });
  const name = r.string(o, 'name', '', { pattern: NAME_RE, what: 'a name (lower-case letters, digits, ".", "_", "-"; up to 64)' });
  const version = r.string(o, 'version', '', { pattern: VERSION_RE, what: 'a version (letters, digits, ".", "+", "~", "_", "-")' });
  const suite = r.optString(o, 'suite', '', { pattern: SUITE_RE, what: 'a Debian suite name' }) ?? DEFAULT_SUITE;
  const architecture = r.optString(o, 'architecture', '', { pattern: ARCH_RE, what: 'a Debian architecture' }) ?? 'amd64';
  const insecureNoCheckGpg = r.optBool(o, 'insecureNoCheckGpg', '') ?? false;
  const machine = o.machine === undefined ? 'virtual' : r.oneOf(o, 'machine', '', MACHINE_TYPES);
  const hostPath = (v: unknown, path: string): string => {
    if (typeof v !== 'string' || v === '') r.fail(path, 'expected a file path');
    return resolve(baseDir, v);
  };

  let sources: AptSource[];
  if (o.sources === undefined) {
    sources = [{ uri: DEFAULT_MIRROR, suite, components: ['main', 'non-free-firmware'], keyring: insecureNoCheckGpg ? undefined : DEFAULT_KEYRING }];
  } else {
    const list = r.array(o, 'sources', '', { max: 32 });
    if (list.length === 0) r.fail('sources', 'needs at least one source (the first one is used to bootstrap)');
    sources = list.map((s, i) => {
      const p = join('sources', i);
      const so = r.object(s, p, ['uri', 'suite', 'components', 'keyring']);
      const uri = r.string(so, 'uri', p, { pattern: /^(https?|file):\/\/\S+$/, what: 'an http(s):// or file:// URI' });
      const components = so.components === undefined ? ['main'] : r.array(so, 'components', p).map((c, j) =>
        typeof c === 'string' && COMPONENT_RE.test(c) ? c : r.fail(`${p}.components[${j}]`, 'expected a component name such as "main"'));
      const keyring = so.keyring === undefined ? undefined : hostPath(so.keyring, `${p}.keyring`);
      if (keyring === undefined && !insecureNoCheckGpg) {
        r.fail(`${p}.keyring`, 'every source needs a keyring (or set insecureNoCheckGpg: true, which disables signature checks)');
      }
      return { uri: uri.replace(/\/+$/, ''), suite: r.optString(so, 'suite', p, { pattern: SUITE_RE, what: 'a Debian suite name' }) ?? suite, components, keyring };
    });
    // Caught here rather than as apt's "Unable to locate package intel-microcode" twenty minutes in.
    if (machine === 'physical' && !sources.some((s) => s.components.includes('non-free-firmware'))) {
      r.fail('sources', 'machine "physical" installs intel-microcode and amd64-microcode from the "non-free-firmware" component: add it to a source\'s components');
    }
  }

  const packages = o.packages === undefined ? [] : r.array(o, 'packages', '').map((v, i) => {
    const spec = typeof v === 'string' ? parsePackageSpec(v) : undefined;
    if (!spec) r.fail(`packages[${i}]`, `expected "name", "name=VERSION" or "name>=VERSION" (also <=, >>, <<), got ${JSON.stringify(v)}`);
    return spec;
  });
  const seen = new Set<string>();
  packages.forEach((p, i) => {
    if (seen.has(p.name)) r.fail(`packages[${i}]`, `package "${p.name}" is listed twice`);
    seen.add(p.name);
  });

  const debs = o.debs === undefined ? [] : r.array(o, 'debs', '').map((v, i) => {
    const p = hostPath(v, `debs[${i}]`);
    if (!p.endsWith('.deb')) r.fail(`debs[${i}]`, `"${String(v)}" is not a .deb file`);
    return p;
  });
  const hooks = o.hooks === undefined ? [] : r.array(o, 'hooks', '').map((v, i) => hostPath(v, `hooks[${i}]`));

  const persistent = o.persistent === undefined ? [] : r.array(o, 'persistent', '').map((v, i) => {
    const p = `persistent[${i}]`;
    if (typeof v !== 'string' || !isAbsolute(v)) r.fail(p, `expected an absolute path, got ${JSON.stringify(v)}`);
    const n = posix.normalize(v).replace(/\/+$/, '');
    if (n !== v.replace(/\/+$/, '') || n === '' || v.includes('..')) r.fail(p, `"${v}" is not a normalized absolute path`);
    const bad = NOT_PERSISTABLE.find((x) => n === x || n.startsWith(x + '/') || x.startsWith(n + '/'));
    if (bad) r.fail(p, `"${n}" overlaps ${bad}, which cannot be made persistent`);
    return n;
  });
  persistent.forEach((a, i) => persistent.forEach((b, j) => {
    if (i !== j && (a === b || b.startsWith(a + '/'))) r.fail(`persistent[${j}]`, `"${b}" is inside (or equal to) "${a}"`);
  }));

  let compression: Compression = { algorithm: 'zstd', level: 15, blockSize: 1 << 20 };
  if (o.compression !== undefined) {
    const co = r.object(o.compression, 'compression', ['algorithm', 'level', 'blockSize']);
    const algorithm = co.algorithm === undefined ? 'zstd' : r.oneOf(co, 'algorithm', 'compression', COMPRESSORS);
    const range = LEVELS[algorithm];
    let level: number | undefined;
    if (co.level !== undefined) {
      if (!range) r.fail('compression.level', `${algorithm} takes no level in mksquashfs (only ${Object.keys(LEVELS).join(', ')} do)`);
      level = r.int(co, 'level', 'compression', range);
    } else level = range?.def;
    const blockSize = co.blockSize === undefined ? 1 << 20 : parseBlockSize(r, co.blockSize);
    compression = { algorithm, level, blockSize };
  }

  return {
    format, name, version, suite, architecture, sources, insecureNoCheckGpg, machine, packages, debs, persistent, hooks, compression,
    factory: r.optBool(o, 'factory', '') ?? false,
    agent: r.optBool(o, 'agent', '') ?? true,
    baseDir,
  };
}

function parseBlockSize(r: Reader, v: unknown): number {
  let n: number | undefined;
  if (typeof v === 'number') n = v;
  else if (typeof v === 'string') {
    const m = /^(\d+)([KM]?)$/i.exec(v.trim());
    if (m) n = Number(m[1]) * (m[2]?.toUpperCase() === 'M' ? 1 << 20 : m[2] ? 1024 : 1);
  }
  if (n === undefined || !Number.isSafeInteger(n) || n < 4096 || n > 1 << 20 || (n & (n - 1)) !== 0) {
    r.fail('compression.blockSize', `expected a power of two from 4096 to 1048576 (or "4K"…"1M"), got ${JSON.stringify(v)}`);
  }
  return n;
}

export interface LoadedProfile {
  readonly profile: Profile;
  /** SHA-256 over the profile text and every file it pulls in (hooks, .debs, keyrings): same hash, same inputs. */
  readonly hash: string;
}

export async function loadProfile(file: string): Promise<LoadedProfile> {
  const text = await readFile(file, 'utf8').catch((e: NodeJS.ErrnoException) => {
    throw new LiveupError('PROFILE_INVALID', `${file}: cannot read the profile (${e.code ?? e.message})`, { file });
  });
  const profile = parseProfile(text, file);
  const h = createHash('sha256').update(text);
  for (const [what, p] of [...profile.hooks.map((x) => ['hook', x]), ...profile.debs.map((x) => ['deb', x]), ...profile.sources.flatMap((s) => (s.keyring ? [['keyring', s.keyring]] : []))] as [string, string][]) {
    const bytes = await readFile(p).catch((e: NodeJS.ErrnoException) => {
      throw new LiveupError('PROFILE_INVALID', `${file}: ${what} ${p} cannot be read (${e.code ?? e.message})`, { file, path: p });
    });
    h.update(`\0${what}\0${p}\0`).update(bytes);
  }
  return { profile, hash: h.digest('hex') };
}
