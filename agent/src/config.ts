/**
 * The agent's configuration: `/etc/liveup/agent.json` plus `agent.d/*.json`.
 *
 * Decisions:
 * - Drop-ins are read in byte order of their names (like systemd) and deep-merged:
 *   objects merge key by key, scalars and lists replace, so a drop-in can change
 *   one `fetch` knob without restating the rest, but replaces `mirrors` whole.
 * - We validate once, after merging: a drop-in may complete a half-set object.
 *   Every merged key remembers the file that set it last, and the validator's
 *   errors name that file, so an admin is sent to the file that is wrong.
 * - Paths must be absolute: the daemon's cwd is not something an admin sees.
 * - `channel`, `mirrors` and `keyring` have no defaults: trust and source are
 *   never guessed. Everything else has one (see `AgentConfig`).
 * - `watchConfig` debounces bursts (a package upgrade writes several files),
 *   keeps the old config when the new one is bad, and stays quiet when a
 *   rewrite changes nothing, so the daemon only reacts to real changes.
 */
import { closeSync, existsSync, openSync, readFileSync, readSync, readlinkSync } from 'node:fs';
import { readFile, readdir, stat } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join as joinPath } from 'node:path';
import { validate as validateCron } from 'node-cron';
import { watch, type FSWatcher } from 'chokidar';
import { LiveupError, toLiveupError } from './channel/errors.js';
import { ARCH_RE, CHANNEL_RE } from './channel/schema.js';
import { GRUB_VERIFY_MODES, type GrubVerify } from './core/bootmenu.js';
import { Reader, join, parseJson } from './util/validate.js';

// The default paths live apart so agentctl can name them without loading this
// module's node-cron and chokidar (every agentctl start pays for what it imports).
export { DEFAULT_MAIN_FILE, DEFAULT_DROP_IN_DIR, DEFAULT_LOCAL_DROP_IN_DIR } from './configpaths.js';
import { DEFAULT_DROP_IN_DIR, DEFAULT_LOCAL_DROP_IN_DIR, DEFAULT_MAIN_FILE } from './configpaths.js';

export const REBOOT_STRATEGIES = ['live', 'kexec', 'reboot', 'stage-only'] as const;
export type RebootStrategy = (typeof REBOOT_STRATEGIES)[number];

export const WEEKDAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'] as const;
export type Weekday = (typeof WEEKDAYS)[number];

/** Credentials presented to every mirror (HTTP(S) only; file:// ignores them). */
export interface CredentialsConfig {
  /** Sent as `Authorization: Bearer …`. Exclusive with `bearerTokenFile`. */
  readonly bearerToken?: string;
  /** File holding the bearer token (read at use, so it can rotate); trailing newline ignored. */
  readonly bearerTokenFile?: string;
  /** PEM client certificate for mutual TLS; needs `clientKey`. */
  readonly clientCert?: string;
  /** PEM private key for `clientCert`. */
  readonly clientKey?: string;
  /** PEM CA bundle trusted instead of the system's. */
  readonly ca?: string;
}

/**
 * A weekly window in which disruptive steps (kexec, reboot) may run.
 * `end` before `start` means the window crosses midnight (starting on `days`).
 */
export interface MaintenanceWindow {
  readonly days: readonly Weekday[];
  /** "HH:MM", 24-hour, in `AgentConfig.timeZone`. */
  readonly start: string;
  /** "HH:MM", exclusive. */
  readonly end: string;
}

/** The fleet endpoint this machine reports to (`agentctl enroll` writes it). */
export interface FleetConfig {
  /** Base URL of `liveup fleet serve` (https://, or http:// for tests). */
  readonly url: string;
  /** File holding the bearer token, readable by root only. */
  readonly tokenFile: string;
  /** FleetLock group: at most the endpoint's slots for it reboot at once (default `default`). */
  readonly group: string;
  /** A report is queued at least this often, besides every state change (default 60). */
  readonly reportIntervalMinutes: number;
}

/** Limits of one artifact download; see the fetch adapter. */
export interface FetchConfig {
  /** Whole-download deadline (default 3600). */
  readonly deadlineSeconds: number;
  /** Abort a transfer that stays slower than this (default 1024; 0 = never). */
  readonly minBytesPerSecond: number;
  /** Further attempts after the first, each resuming where the last stopped (default 5). */
  readonly retries: number;
  /** First retry delay, doubled per attempt (default 30). */
  readonly backoffSeconds: number;
}

/** Which D-Bus the daemon serves on: the system bus, the session bus, or an address like `unix:path=/tmp/bus`. */
export type DbusTarget = 'system' | 'session' | `${string}:${string}`;

/** The fully resolved configuration, defaults applied. */
export interface AgentConfig {
  /** Channel to follow, e.g. `stable` (same syntax as the channel index). */
  readonly channel: string;
  /** Repository base URLs tried in order: `http://`, `https://` or `file://`. At least one. */
  readonly mirrors: readonly string[];
  /** Credentials for the mirrors; absent means anonymous. */
  readonly credentials?: CredentialsConfig;
  /** Armored file of pinned OpenPGP public keys that may sign the channel. */
  readonly keyring: string;
  /** How many distinct pinned keys must sign index and manifest (default 1). */
  readonly threshold: number;
  /** Debian architecture of generations to accept (default: this host's). */
  readonly architecture: string;
  /** When to check, a cron expression (node-cron syntax; default `0 *\/4 * * *`). */
  readonly schedule: string;
  /** Random delay 0..N seconds added to each scheduled check, to spread a fleet (default 600). */
  readonly jitterSeconds: number;
  /** Windows for disruptive steps; empty (the default) means any time. */
  readonly maintenanceWindows: readonly MaintenanceWindow[];
  /** IANA time zone for `schedule` and `maintenanceWindows` (default: the host's). */
  readonly timeZone: string;
  /** How a generation that needs more than a live replay is applied (default `live`). */
  readonly rebootStrategy: RebootStrategy;
  /** Generations kept on the boot medium, the running one included (default 3, at least 2 so a fallback exists). */
  readonly keep: number;
  /**
   * `sha512`: GRUB checks a generation's kernel, initrd and squashfs against its
   * SHA512SUMS before booting it, and boots the fallback when they differ
   * (default `off`: the initramfs's check of the squashfs, `liveup.verify=1`,
   * costs less on slow firmware disk reads). `signature`: the disk was made with
   * `liveup disk --grub-verify signature`; GRUB's menu is static and signed
   * boot checks every file it loads, so the agent writes no grub.cfg, only its
   * choices into grubenv (docs/boot.md, "Signed boot").
   */
  readonly grubVerify: GrubVerify;
  /** Mount point of the boot medium holding `live/<version>/` and `grub/` (default /run/liveup/boot). */
  readonly bootDir: string;
  /** Persistent state: journal, downloads (default /var/lib/liveup). */
  readonly stateDir: string;
  /** Directory scanned for offline channel copies (default `<stateDir>/inbox`). */
  readonly inboxDir: string;
  /** Space left free on the boot medium and state dir after staging, in MiB (default 64). */
  readonly freeSpaceReserveMB: number;
  /**
   * Memory spent ahead of a switch decided for later (a window, people logged
   * in), when its target is staged, so the switch's downtime does not pay for
   * it (default 512, 0 turns both off): a soft-reboot's target has at most
   * this many MiB of the files the machine uses (its programs and libraries
   * first) read into memory (adapters/prewarm.ts); a kexec's kernel and
   * initrd are loaded, and held until the switch, when together they are
   * no larger (adapters/kexec.ts).
   */
  readonly prewarmMB: number;
  readonly fetch: FetchConfig;
  /** Bus the daemon serves `org.liveup.Agent1` on (default `system`). */
  readonly dbus: DbusTarget;
  /** grub-editenv binary, a name looked up in PATH or an absolute path (default `grub-editenv`). */
  readonly grubEditenv: string;
  /**
   * The system a live replay changes (default `/`). Another path (tests) is a
   * root dpkg works on with --root; no process runs from it, so nothing is restarted.
   */
  readonly liveRoot: string;
  /**
   * The booted image, read-only: the overlay's lower layer. null (the default):
   * the lower layer of the overlay mounted on `/` — live-boot's
   * `/run/live/rootfs/filesystem.squashfs` after a boot, the agent's
   * `/run/liveup/nextroot/lower` after a soft-reboot — else live-boot's path.
   * `agentctl rollback --live` repacks the booted generation's packages from it.
   */
  readonly liveLowerDir: string | null;
  /** Absent: the machine reports nowhere and takes no fleet reboot slot. */
  readonly fleet?: FleetConfig;
  /** Where the machine's id is read: fleet reports and rollout buckets (default /etc/machine-id). */
  readonly machineIdFile: string;
}

export interface ConfigLocation {
  /** Default /etc/liveup/agent.json; must exist. */
  readonly mainFile?: string;
  /** Default /etc/liveup/agent.d; may be missing. */
  readonly dropInDir?: string;
  /** Default /var/lib/liveup/agent.d, merged last; may be missing. */
  readonly localDropInDir?: string;
}

export interface LoadedConfig {
  readonly config: AgentConfig;
  /** Files read, in merge order (main file first). */
  readonly files: readonly string[];
}

const TOP_KEYS = [
  'channel', 'mirrors', 'credentials', 'keyring', 'threshold', 'architecture', 'schedule', 'jitterSeconds',
  'maintenanceWindows', 'timeZone', 'rebootStrategy', 'keep', 'grubVerify', 'bootDir', 'stateDir', 'inboxDir',
  'freeSpaceReserveMB', 'prewarmMB', 'fetch', 'dbus', 'grubEditenv', 'liveRoot', 'liveLowerDir', 'fleet', 'machineIdFile',
] as const;

const DEFAULT_SCHEDULE = '0 */4 * * *';
const HHMM_RE = /^([01]\d|2[0-3]):[0-5]\d$/;
const DBUS_ADDRESS_RE = /^[a-z][a-z0-9-]*:[A-Za-z0-9_-]+=[^\s]*$/;
const COMMAND_NAME_RE = /^[A-Za-z0-9._+-]+$/;

/** Node's `process.arch` → Debian's name for it. */
export function hostDebianArchitecture(arch: string = process.arch): string {
  const map: Record<string, string> = {
    x64: 'amd64', arm64: 'arm64', arm: 'armhf', ia32: 'i386', ppc64: 'ppc64el',
    s390x: 's390x', riscv64: 'riscv64', loong64: 'loong64', mips64el: 'mips64el',
  };
  return map[arch] ?? arch;
}

/**
 * The host's zone without Intl: Intl maps ICU's locale and zone data (~8 MB of
 * resident memory for the daemon's whole life); the zone's name is in TZ or
 * the /etc/localtime link on Debian.
 */
function hostTimeZone(): string {
  const env = process.env.TZ;
  if (env && !env.startsWith(':') && !env.startsWith('/')) return env;
  try {
    const m = /\/zoneinfo\/(.+)$/.exec(readlinkSync('/etc/localtime'));
    if (m) return m[1]!;
  } catch { /* no link: fall through */ }
  try {
    const name = readFileSync('/etc/timezone', 'utf8').trim();
    if (name) return name;
  } catch { /* none */ }
  return 'UTC';
}

const ZONE_NAME_RE = /^[A-Za-z0-9_+-]+(?:\/[A-Za-z0-9_+-]+)*$/;

/** tzdata's file first (no ICU data mapped); Intl only on hosts without tzdata. */
export function isValidTimeZone(tz: string): boolean {
  if (tz === 'UTC') return true;
  if (!ZONE_NAME_RE.test(tz)) return false;
  try {
    const fd = openSync(`/usr/share/zoneinfo/${tz}`, 'r');
    try {
      const head = Buffer.alloc(4);
      readSync(fd, head, 0, 4, 0);
      if (head.toString('latin1') === 'TZif') return true;
    } finally {
      closeSync(fd);
    }
  } catch { /* no tzdata file: ask ICU */ }
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------- reading

type Json = Record<string, unknown>;

function isPlainObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Merge `src` into `dst`, recording in `origin` which file set each key path.
 * Paths are written the way the Reader names them (`fetch.retries`).
 */
function mergeInto(dst: Json, src: Json, file: string, origin: Map<string, string>, path = ''): void {
  for (const [k, v] of Object.entries(src)) {
    const p = join(path, k);
    const old = dst[k];
    if (isPlainObject(old) && isPlainObject(v)) {
      mergeInto(old, v, file, origin, p);
    } else {
      dst[k] = structuredClone(v);
      recordOrigin(v, file, origin, p);
    }
  }
}

function recordOrigin(v: unknown, file: string, origin: Map<string, string>, path: string): void {
  origin.set(path, file);
  if (isPlainObject(v)) for (const [k, x] of Object.entries(v)) recordOrigin(x, file, origin, join(path, k));
}

/** The file that set `path` or its nearest parent (`a.b[2].c` → `a.b[2]` → `a.b` → `a`). */
function originOf(path: string, origin: Map<string, string>, fallback: string): string {
  let p = path;
  while (p) {
    const f = origin.get(p);
    if (f !== undefined) return f;
    const cut = Math.max(p.lastIndexOf('.'), p.lastIndexOf('['));
    p = cut > 0 ? p.slice(0, cut) : '';
  }
  return fallback;
}

/** A Reader whose errors name the file that contributed the offending key. */
class ConfigReader extends Reader {
  constructor(
    private readonly origin: Map<string, string>,
    private readonly fallback: string,
  ) {
    super(fallback, 'CONFIG_INVALID');
  }

  override fail(path: string, problem: string): never {
    const file = originOf(path, this.origin, this.fallback);
    const where = path ? ` at "${path}"` : '';
    throw new LiveupError('CONFIG_INVALID', `${file}: ${problem}${where}`, { file, key: path });
  }
}

async function readJsonObject(file: string): Promise<Json> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    throw new LiveupError('CONFIG_INVALID', `${file}: cannot read (${code})`, { file });
  }
  const v = parseJson(text, file, 'CONFIG_INVALID');
  if (!isPlainObject(v)) throw new LiveupError('CONFIG_INVALID', `${file}: the top level must be a JSON object`, { file, key: '' });
  return v;
}

/** `*.json` in `dir`, byte-ordered; hidden files skipped (editor and dpkg leftovers). */
async function listDropIns(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new LiveupError('CONFIG_INVALID', `${dir}: cannot list drop-ins (${(e as NodeJS.ErrnoException).code ?? ''})`, { file: dir });
  }
  const files: string[] = [];
  for (const n of names.filter((n) => n.endsWith('.json') && !n.startsWith('.')).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))) {
    const p = joinPath(dir, n);
    // stat follows symlinks, so a drop-in may link to a shared file; directories are skipped.
    if ((await stat(p).catch(() => null))?.isFile()) files.push(p);
  }
  return files;
}

export async function loadConfig(loc: ConfigLocation = {}): Promise<LoadedConfig> {
  const mainFile = loc.mainFile ?? DEFAULT_MAIN_FILE;
  const dropInDir = loc.dropInDir ?? DEFAULT_DROP_IN_DIR;
  const localDir = loc.localDropInDir ?? DEFAULT_LOCAL_DROP_IN_DIR;
  const files = [mainFile, ...(await listDropIns(dropInDir)), ...(localDir === dropInDir ? [] : await listDropIns(localDir))];
  const merged: Json = {};
  const origin = new Map<string, string>();
  for (const f of files) mergeInto(merged, await readJsonObject(f), f, origin);
  return { config: resolveConfig(merged, new ConfigReader(origin, mainFile)), files };
}

// ---------------------------------------------------------------- schema

function resolveConfig(o: Json, r: ConfigReader): AgentConfig {
  r.object(o, '', TOP_KEYS);
  const absPath = (obj: Json, key: string, path: string): string => {
    const v = r.string(obj, key, path, { max: 4096 });
    if (!isAbsolute(v)) r.fail(join(path, key), `"${v}" is not an absolute path`);
    return v;
  };
  const optAbsPath = (obj: Json, key: string, path: string): string | undefined =>
    obj[key] === undefined ? undefined : absPath(obj, key, path);
  const int = (key: string, dflt: number, min: number, max?: number): number =>
    r.optInt(o, key, '', max === undefined ? { min } : { min, max }) ?? dflt;

  const mirrors = r.array(o, 'mirrors', '', { max: 64 }).map((v, i) => {
    const p = join('mirrors', i);
    if (typeof v !== 'string' || v.length > 2048) return r.fail(p, 'expected a URL string');
    let url: URL;
    try {
      url = new URL(v);
    } catch {
      return r.fail(p, `"${v}" is not a URL`);
    }
    if (!['http:', 'https:', 'file:'].includes(url.protocol)) r.fail(p, `"${v}": scheme must be http://, https:// or file://`);
    return v;
  });
  if (mirrors.length === 0) r.fail('mirrors', 'at least one mirror is needed');

  const schedule = r.optString(o, 'schedule', '', { max: 200 }) ?? DEFAULT_SCHEDULE;
  if (!validateCron(schedule)) {
    r.fail('schedule', `"${schedule}" is not a valid cron expression (5 fields "min hour day month weekday", or 6 with seconds first)`);
  }
  const timeZone = r.optString(o, 'timeZone', '', { max: 100 }) ?? hostTimeZone();
  if (!isValidTimeZone(timeZone)) r.fail('timeZone', `"${timeZone}" is not an IANA time zone name (e.g. "Europe/Berlin", "UTC")`);

  const stateDir = optAbsPath(o, 'stateDir', '') ?? '/var/lib/liveup';
  const dbus = o.dbus === undefined ? 'system' : r.string(o, 'dbus', '', { max: 1024 });
  if (dbus !== 'system' && dbus !== 'session' && !DBUS_ADDRESS_RE.test(dbus)) {
    r.fail('dbus', `"${dbus}" is not "system", "session" or a D-Bus address such as "unix:path=/run/bus"`);
  }
  const grubEditenv = r.optString(o, 'grubEditenv', '', { max: 4096 }) ?? 'grub-editenv';
  if (!isAbsolute(grubEditenv) && !COMMAND_NAME_RE.test(grubEditenv)) {
    r.fail('grubEditenv', `"${grubEditenv}" is neither an absolute path nor a plain command name`);
  }

  const credentials = o.credentials === undefined ? undefined : resolveCredentials(r, r.object(o.credentials, 'credentials', CREDENTIAL_KEYS), absPath);
  let fleet: FleetConfig | undefined;
  if (o.fleet !== undefined) {
    const f = r.object(o.fleet, 'fleet', ['url', 'tokenFile', 'group', 'reportIntervalMinutes']);
    const url = r.string(f, 'url', 'fleet', { max: 2048 });
    let parsed: URL | null = null;
    try { parsed = new URL(url); } catch { /* below */ }
    if (!parsed || !['http:', 'https:'].includes(parsed.protocol)) r.fail('fleet.url', `"${url}" is not an http:// or https:// URL`);
    fleet = {
      url: url.endsWith('/') ? url : `${url}/`,
      tokenFile: absPath(f, 'tokenFile', 'fleet'),
      group: r.optString(f, 'group', 'fleet', { pattern: /^[A-Za-z0-9._-]{1,64}$/, what: 'a group name' }) ?? 'default',
      reportIntervalMinutes: r.optInt(f, 'reportIntervalMinutes', 'fleet', { min: 1, max: 7 * 24 * 60 }) ?? 60,
    };
  }

  return {
    channel: r.string(o, 'channel', '', { pattern: CHANNEL_RE, what: 'a channel name ([a-z0-9._-], up to 64)' }),
    mirrors,
    ...(credentials ? { credentials } : {}),
    ...(fleet ? { fleet } : {}),
    keyring: absPath(o, 'keyring', ''),
    threshold: int('threshold', 1, 1, 16),
    architecture: r.optString(o, 'architecture', '', { pattern: ARCH_RE, what: 'a Debian architecture' }) ?? hostDebianArchitecture(),
    schedule,
    jitterSeconds: int('jitterSeconds', 600, 0, 7 * 86400),
    maintenanceWindows: o.maintenanceWindows === undefined
      ? []
      : r.array(o, 'maintenanceWindows', '', { max: 64 }).map((w, i) => resolveWindow(r, w, join('maintenanceWindows', i))),
    timeZone,
    rebootStrategy: o.rebootStrategy === undefined ? 'live' : r.oneOf(o, 'rebootStrategy', '', REBOOT_STRATEGIES),
    keep: int('keep', 3, 2, 100),
    grubVerify: o.grubVerify === undefined ? 'off' : r.oneOf(o, 'grubVerify', '', GRUB_VERIFY_MODES),
    bootDir: optAbsPath(o, 'bootDir', '') ?? '/run/liveup/boot',
    liveRoot: optAbsPath(o, 'liveRoot', '') ?? '/',
    liveLowerDir: optAbsPath(o, 'liveLowerDir', '') ?? null,
    machineIdFile: optAbsPath(o, 'machineIdFile', '') ?? '/etc/machine-id',
    stateDir,
    inboxDir: optAbsPath(o, 'inboxDir', '') ?? joinPath(stateDir, 'inbox'),
    freeSpaceReserveMB: int('freeSpaceReserveMB', 64, 0),
    prewarmMB: int('prewarmMB', 512, 0, 1 << 20),
    fetch: resolveFetch(r, o.fetch === undefined ? {} : r.object(o.fetch, 'fetch', FETCH_KEYS)),
    dbus: dbus as DbusTarget,
    grubEditenv,
  };
}

const CREDENTIAL_KEYS = ['bearerToken', 'bearerTokenFile', 'clientCert', 'clientKey', 'ca'] as const;
const FETCH_KEYS = ['deadlineSeconds', 'minBytesPerSecond', 'retries', 'backoffSeconds'] as const;

function resolveCredentials(
  r: ConfigReader,
  c: Json,
  absPath: (obj: Json, key: string, path: string) => string,
): CredentialsConfig {
  const p = 'credentials';
  const opt = (k: string): string | undefined => (c[k] === undefined ? undefined : absPath(c, k, p));
  const bearerToken = r.optString(c, 'bearerToken', p, { pattern: /^[\x21-\x7e]+$/, what: 'a token of printable ASCII without spaces', max: 8192 });
  const bearerTokenFile = opt('bearerTokenFile');
  if (bearerToken !== undefined && bearerTokenFile !== undefined) r.fail(join(p, 'bearerTokenFile'), 'set bearerToken or bearerTokenFile, not both');
  const clientCert = opt('clientCert');
  const clientKey = opt('clientKey');
  if ((clientCert === undefined) !== (clientKey === undefined)) {
    r.fail(join(p, clientCert === undefined ? 'clientKey' : 'clientCert'), 'clientCert and clientKey go together');
  }
  const ca = opt('ca');
  return {
    ...(bearerToken !== undefined ? { bearerToken } : {}),
    ...(bearerTokenFile !== undefined ? { bearerTokenFile } : {}),
    ...(clientCert !== undefined ? { clientCert } : {}),
    ...(clientKey !== undefined ? { clientKey } : {}),
    ...(ca !== undefined ? { ca } : {}),
  };
}

function resolveWindow(r: ConfigReader, v: unknown, p: string): MaintenanceWindow {
  const w = r.object(v, p, ['days', 'start', 'end']);
  const days = r.array(w, 'days', p, { max: 7 }).map((d, i): Weekday => {
    if (typeof d !== 'string' || !(WEEKDAYS as readonly string[]).includes(d)) {
      return r.fail(join(join(p, 'days'), i), `expected one of ${WEEKDAYS.map((x) => `"${x}"`).join(', ')}`);
    }
    return d as Weekday;
  });
  if (days.length === 0) r.fail(join(p, 'days'), `at least one day is needed (${WEEKDAYS.join(', ')})`);
  if (new Set(days).size !== days.length) r.fail(join(p, 'days'), 'a day is listed twice');
  const hhmm = { pattern: HHMM_RE, what: 'a time "HH:MM" (00:00-23:59)' };
  const start = r.string(w, 'start', p, hhmm);
  const end = r.string(w, 'end', p, hhmm);
  if (start === end) r.fail(join(p, 'end'), 'end equals start (an empty window); omit maintenanceWindows for "any time"');
  return { days, start, end };
}

function resolveFetch(r: ConfigReader, f: Json): FetchConfig {
  const p = 'fetch';
  return {
    deadlineSeconds: r.optInt(f, 'deadlineSeconds', p, { min: 1 }) ?? 3600,
    minBytesPerSecond: r.optInt(f, 'minBytesPerSecond', p, { min: 0 }) ?? 1024,
    retries: r.optInt(f, 'retries', p, { min: 0, max: 100 }) ?? 5,
    backoffSeconds: r.optInt(f, 'backoffSeconds', p, { min: 0, max: 86400 }) ?? 30,
  };
}

// ---------------------------------------------------------------- watching

export interface ConfigWatcher {
  /** The configuration currently in force (the last valid one). */
  current(): AgentConfig;
  close(): Promise<void>;
}

export interface WatchOptions extends ConfigLocation {
  /** The config already in force; loaded now when absent (a bad one throws). */
  readonly initial?: AgentConfig;
  /** Quiet time before a reload, so a burst of writes loads once (default 100 ms). */
  readonly debounceMs?: number;
}

/**
 * Reload on any change to the main file or the drop-in directory. `onChange`
 * gets a new valid config that differs from the one in force; `onError` gets
 * the CONFIG_INVALID error of a refused one, and the old config stays.
 * Resolves once the watcher is ready, so no change after it is missed.
 */
export async function watchConfig(
  opts: WatchOptions,
  onChange: (config: AgentConfig, files: readonly string[]) => void,
  onError: (err: LiveupError) => void,
): Promise<ConfigWatcher> {
  const mainFile = opts.mainFile ?? DEFAULT_MAIN_FILE;
  const dropInDir = opts.dropInDir ?? DEFAULT_DROP_IN_DIR;
  const localDir = opts.localDropInDir ?? DEFAULT_LOCAL_DROP_IN_DIR;
  const loc = { mainFile, dropInDir, localDropInDir: localDir };
  const dirs = [dropInDir, localDir];
  let current = opts.initial ?? (await loadConfig(loc)).config;
  let closed = false;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | null = null;
  let again = false;

  const reload = async (): Promise<void> => {
    try {
      const next = await loadConfig(loc);
      if (closed) return;
      // Both sides are built by resolveConfig in one key order, so JSON equality is value equality.
      if (JSON.stringify(next.config) === JSON.stringify(current)) return;
      current = next.config;
      onChange(current, next.files);
    } catch (e) {
      if (!closed) onError(toLiveupError(e, 'CONFIG_INVALID'));
    }
  };
  // One reload at a time; a change during a reload triggers exactly one more.
  const run = (): void => {
    if (running) {
      again = true;
      return;
    }
    running = reload().finally(() => {
      running = null;
      if (again && !closed) {
        again = false;
        run();
      }
    });
  };
  const schedule = (): void => {
    if (closed) return;
    clearTimeout(timer);
    timer = setTimeout(run, opts.debounceMs ?? 100);
  };

  // Watch the main file's directory rather than the file: editors and dpkg
  // replace files by rename, and a watch on the old inode would go deaf.
  const relevant = (p: string): boolean =>
    p === mainFile || dirs.includes(p) || (dirs.includes(dirname(p)) && p.endsWith('.json') && !basename(p).startsWith('.'));
  // The drop-in directory is reached through its parent (depth 1), not as a
  // root: chokidar never notices a root that is missing at start, and the
  // directory may well be created later.
  // Only roots that exist: chokidar 4 given a missing root stops reporting the
  // others (seen here). The local drop-ins' parent is the state directory,
  // which the daemon creates before it watches.
  const roots = [...new Set([dirname(mainFile), ...dirs.map((d) => dirname(d))])].filter((d, i) => i === 0 || existsSync(d));
  const watcher: FSWatcher = watch(roots, {
    ignoreInitial: true,
    depth: 1,
    // Only stat what matters: the main file's directory may hold keys and other files.
    ignored: (p: string) => !(relevant(p) || roots.includes(p)),
  });
  watcher.on('all', (_event, p) => {
    if (relevant(p)) schedule();
  });
  watcher.on('error', (e) => {
    if (!closed) onError(toLiveupError(e, 'CONFIG_INVALID'));
  });
  await new Promise<void>((resolve) => watcher.once('ready', () => resolve()));

  return {
    current: () => current,
    close: async () => {
      closed = true;
      clearTimeout(timer);
      await watcher.close();
      await running;
    },
  };
}
