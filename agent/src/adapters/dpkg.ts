/**
 * dpkg on the running system (or on `root`, which tests point at a throwaway
 * overlay of a real generation). Running a command is kept apart from reading
 * its output: the parsers are exported and unit-tested.
 *
 * dpkg rather than apt: the publisher recorded exactly which .deb files its
 * apt run installed and which packages it removed, so the agent replays that
 * record — nothing is resolved again on the machine, and no package source is
 * needed there. Every call is non-interactive and keeps the machine's own
 * configuration files (`--force-confdef --force-confold`), as an unattended
 * upgrade must.
 */
import { run as defaultRun, type Runner } from './exec.js';
import { LiveupError, isLiveupError } from '../channel/errors.js';

export interface DpkgOptions {
  /** `/` on a machine; the root of a test system otherwise (dpkg --root: maintainer scripts run chrooted there). */
  readonly root: string;
  readonly runner?: Runner;
  readonly log?: (line: string) => void;
}

export interface InstalledPackage {
  readonly name: string;
  readonly version: string;
  /** dpkg's status abbreviation (`ii`, `hi` held, `rc` config files only, …). */
  readonly status: string;
}

/** The second letter of the abbreviation is the current state: `i`, installed (held or not). */
export const isInstalled = (p: InstalledPackage): boolean => p.status[1] === 'i';

/** The format string parsePackageList reads. */
export const PACKAGE_LIST_FORMAT = '${Package}\t${Version}\t${db:Status-Abbrev}\n';

const ENV = {
  DEBIAN_FRONTEND: 'noninteractive',
  DEBCONF_NONINTERACTIVE_SEEN: 'true',
  // dpkg looks for its helpers (ldconfig, start-stop-daemon) in PATH; a service's PATH may be minimal.
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
};
const CONF = ['--force-confdef', '--force-confold'];
/** Maintainer scripts may restart services or rebuild caches: minutes, not seconds. */
const APPLY_TIMEOUT_MS = 30 * 60_000;

/** `dpkg-query -W -f '${Package}\t${Version}\t${db:Status-Abbrev}\n'` → packages, architecture qualifiers dropped. */
export function parsePackageList(text: string): InstalledPackage[] {
  const out: InstalledPackage[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const [name, version, status] = line.split('\t');
    if (!name || version === undefined) continue;
    out.push({ name: name.replace(/:[a-z0-9]+$/, ''), version, status: (status ?? '').trim() });
  }
  return out;
}

/**
 * The difference between what is installed and what a generation lists
 * (name → version). Only installed packages count (not config-files leftovers).
 */
export function packageDrift(installed: readonly InstalledPackage[], expected: Readonly<Record<string, string>>): {
  missing: string[]; unexpected: string[]; differing: { name: string; installed: string; expected: string }[];
} {
  const have = new Map(installed.filter(isInstalled).map((p) => [p.name, p.version]));
  const missing = Object.keys(expected).filter((n) => !have.has(n)).sort();
  const unexpected = [...have.keys()].filter((n) => !(n in expected)).sort();
  const differing = Object.entries(expected)
    .filter(([n, v]) => have.has(n) && have.get(n) !== v)
    .map(([name, v]) => ({ name, installed: have.get(name)!, expected: v }))
    .sort((a, b) => a.name.localeCompare(b.name));
  return { missing, unexpected, differing };
}

export function describeDrift(d: ReturnType<typeof packageDrift>): string | null {
  const parts = [
    ...(d.missing.length ? [`missing ${d.missing.join(', ')}`] : []),
    ...(d.unexpected.length ? [`not in the generation ${d.unexpected.join(', ')}`] : []),
    ...(d.differing.length ? [`other versions ${d.differing.map((x) => `${x.name} ${x.installed} (expected ${x.expected})`).join(', ')}`] : []),
  ];
  return parts.length ? parts.join('; ') : null;
}

export interface InstallHow {
  /**
   * Unpack only (`--unpack`), configure later (`configurePending`): a live
   * rollback puts the booted versions in place, removes what the booted
   * image did not have, and only then configures — so neither a package the
   * replay installed that Breaks an old version, nor a new dependency of a
   * newer version, stands in the way.
   */
  readonly unpackOnly?: boolean;
  /**
   * Let a package take over files another package owns (`--force-overwrite`):
   * only when the caller has checked every such file belongs to a package it
   * removes next (a live rollback undoing a package split).
   */
  readonly forceOverwrite?: boolean;
}

const installFlags = (how: InstallHow): string[] => [...(how.forceOverwrite ? ['--force-overwrite'] : []), how.unpackOnly ? '--unpack' : '-i'];

export function createDpkg(o: DpkgOptions) {
  const runner = o.runner ?? defaultRun;
  const root = ['--root', o.root];
  const dpkg = (args: readonly string[], timeoutMs = APPLY_TIMEOUT_MS) =>
    runner('dpkg', [...root, ...args], { env: ENV, timeoutMs, ...(o.log ? { log: o.log } : {}) });

  /** A refused simulation or step names what dpkg said, not just its exit code. */
  const wrap = async <T>(what: string, f: () => Promise<T>): Promise<T> => {
    try {
      return await f();
    } catch (e) {
      if (isLiveupError(e) && e.code === 'COMMAND_FAILED') {
        const said = String(e.details.stderr ?? '').trim().split('\n').filter(Boolean).slice(-6).join(' | ');
        throw new LiveupError('LIVE_APPLY_FAILED', `${what}: ${said || e.message}`, { step: what }, { cause: e });
      }
      throw e;
    }
  };

  return {
    async installed(): Promise<InstalledPackage[]> {
      const r = await runner('dpkg-query', ['--admindir', `${o.root.replace(/\/$/, '')}/var/lib/dpkg`, '-W', '-f', PACKAGE_LIST_FORMAT], { env: ENV });
      return parsePackageList(r.stdout);
    },
    /** Packages dpkg considers half-installed or unconfigured; empty when the system is consistent. */
    async audit(): Promise<string> {
      return (await dpkg(['--audit'], 60_000)).stdout.trim();
    },
    /** Would installing these .debs (in one dpkg run) succeed? Throws LIVE_APPLY_FAILED with dpkg's words otherwise. */
    simulateInstall: (debs: readonly string[], how: InstallHow = {}) =>
      wrap('simulated install', () => dpkg(['--simulate', ...CONF, ...installFlags(how), ...debs], 120_000)).then(() => undefined),
    simulateRemove: (pkgs: readonly string[]) => wrap('simulated removal', () => dpkg(['--simulate', '--remove', ...pkgs], 120_000)).then(() => undefined),
    install: (debs: readonly string[], how: InstallHow = {}) => wrap(how.unpackOnly ? 'unpack' : 'install', () => dpkg([...CONF, ...installFlags(how), ...debs])).then(() => undefined),
    remove: (pkgs: readonly string[]) => wrap('removal', () => dpkg(['--remove', ...pkgs])).then(() => undefined),
    /** The recovery after an interrupted run: finish configuring whatever was unpacked. */
    configurePending: () => wrap('dpkg --configure -a', () => dpkg([...CONF, '--configure', '-a'])).then(() => undefined),
    /** Files a package owns (`dpkg -L`), for finding the processes that mapped them. */
    async files(pkg: string): Promise<string[]> {
      const r = await runner('dpkg-query', ['--admindir', `${o.root.replace(/\/$/, '')}/var/lib/dpkg`, '-L', pkg], { env: ENV, okExitCodes: [0, 1] });
      return r.exitCode === 0 ? r.stdout.split('\n').filter((l) => l.startsWith('/')) : [];
    },
  };
}

export type Dpkg = ReturnType<typeof createDpkg>;
