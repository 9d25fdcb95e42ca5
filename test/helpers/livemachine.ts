/**
 * A live machine for replay and rollback tests: generation 1's squashfs
 * mounted read-only as the lower layer of a tmpfs overlay (as live-boot
 * mounts it), the compiled daemon, agentctl, and small real .debs built with
 * dpkg-deb. Needs root (mounts, dpkg --root).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmod, cp, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeKey } from './fixtures.js';
import { agentWorld } from './machine.js';
import { bin, collect } from './cli.js';
import { publish } from '../../publisher/src/publish.js';
import { PACKAGE_LIST_FORMAT, isInstalled, parsePackageList } from '../../agent/src/adapters/dpkg.js';

export type Cleanups = (() => Promise<void> | void)[];

export interface Pkg {
  name: string; version: string; depends?: string; conflicts?: string; breaks?: string; replaces?: string; postinst?: string; file: [string, string];
  /** More files (path, content). */
  more?: [string, string][];
  /** A configuration file (path under /etc, content), listed in DEBIAN/conffiles. */
  conffile?: [string, string];
}

/** A real .deb, built with dpkg-deb. */
export async function buildDeb(dir: string, p: Pkg): Promise<string> {
  const root = join(dir, `${p.name}-${p.version}`);
  await mkdir(join(root, 'DEBIAN'), { recursive: true });
  await writeFile(join(root, 'DEBIAN', 'control'), [
    `Package: ${p.name}`, `Version: ${p.version}`, 'Architecture: all', 'Maintainer: liveup tests <tests@liveup.invalid>',
    ...(p.depends ? [`Depends: ${p.depends}`] : []), ...(p.conflicts ? [`Conflicts: ${p.conflicts}`] : []), ...(p.breaks ? [`Breaks: ${p.breaks}`] : []), ...(p.replaces ? [`Replaces: ${p.replaces}`] : []),
    `Description: liveup live-replay test package ${p.name}`, '',
  ].join('\n'));
  if (p.postinst) {
    await writeFile(join(root, 'DEBIAN', 'postinst'), `#!/bin/sh\nset -e\n${p.postinst}\n`);
    await chmod(join(root, 'DEBIAN', 'postinst'), 0o755);
  }
  if (p.conffile) {
    await mkdir(join(root, p.conffile[0], '..'), { recursive: true });
    await writeFile(join(root, p.conffile[0]), p.conffile[1]);
    await writeFile(join(root, 'DEBIAN', 'conffiles'), `/${p.conffile[0]}\n`);
  }
  for (const [path, content] of [p.file, ...(p.more ?? [])]) {
    await mkdir(join(root, path, '..'), { recursive: true });
    await writeFile(join(root, path), content, { mode: 0o755 });
  }
  const out = join(dir, `${p.name}_${p.version}_all.deb`);
  execFileSync('dpkg-deb', ['--root-owner-group', '-Zxz', '--build', root, out], { stdio: 'ignore' });
  return out;
}

export const dpkgRoot = (root: string, args: string[]) => execFileSync('dpkg', ['--root', root, '--force-confdef', '--force-confold', ...args], { stdio: 'pipe', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive', PATH: '/usr/sbin:/usr/bin:/sbin:/bin' } }).toString();
export const packageList = (root: string): Record<string, string> => Object.fromEntries(
  parsePackageList(execFileSync('dpkg-query', ['--admindir', join(root, 'var/lib/dpkg'), '-W', '-f', PACKAGE_LIST_FORMAT]).toString())
    .filter(isInstalled).map((p) => [p.name, p.version]),
);

export type Change = { action: 'install' | 'upgrade' | 'remove'; package: string; version?: string; from?: string; deb?: string };

/** Squash the tree as generation `version` (parent, recorded changes), with its real package list. */
export async function gendir(dir: string, tree: string, version: number, parent: number | null, changes: Change[]): Promise<string> {
  const g = join(dir, `gen${version}`);
  await mkdir(join(g, 'debs'), { recursive: true });
  execFileSync('mksquashfs', [tree, join(g, 'filesystem.squashfs'), '-noappend', '-quiet', '-no-progress', '-comp', 'zstd', '-Xcompression-level', '1']);
  await writeFile(join(g, 'vmlinuz'), 'kernel 6.12-test\n');
  await writeFile(join(g, 'initrd.img'), 'initrd\n');
  await writeFile(join(g, 'packages.json'), JSON.stringify({ format: 1, packages: packageList(tree) }));
  const recorded = await Promise.all(changes.map(async (c) => {
    if (!c.deb) return c;
    await cp(c.deb, join(g, 'debs', c.deb.split('/').pop()!));
    return { ...c, deb: `debs/${c.deb.split('/').pop()!}` };
  }));
  await writeFile(join(g, 'generation.json'), JSON.stringify({
    name: `live-${version}`, kernel: { version: '6.12-test', cmdline: 'boot=live' }, parent, changes: recorded,
    rebootRequired: { required: parent === null, reasons: parent === null ? ['full-image'] : [] },
  }));
  return g;
}

export interface LiveMachine {
  root: string;
  /** The booted image: generation 1's squashfs, mounted read-only (the overlay's lower layer). */
  lower: string;
  boot: string;
  state: string;
  ctl(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }>;
  json<T>(args: string[]): Promise<T>;
  start(): Promise<void>;
  /** SIGKILL the daemon's whole process group, as systemd kills a unit's cgroup. */
  kill(): Promise<void>;
}

/** A machine running generation 1 on an overlay of its squashfs; the channel holds `gens` (published in order). */
export async function machine(dir: string, gens: string[], cleanups: Cleanups): Promise<LiveMachine> {
  const key = await makeKey(join(dir, 'keys'));
  const repo = join(dir, 'repo');
  for (const g of gens) await publish({ repo, channel: 'stable', gendir: g, keys: [key.priv], indexTtlMs: 86400e3, manifestTtlMs: 86400e3 });
  // The running system: generation 1's squashfs under a tmpfs overlay, as live-boot mounts it.
  const lower = join(dir, 'lower');
  const rw = join(dir, 'rw');
  const root = join(dir, 'root');
  for (const d of [lower, rw, root]) await mkdir(d);
  execFileSync('mount', ['-t', 'squashfs', '-o', 'loop,ro', join(repo, 'generations', '1', 'filesystem.squashfs'), lower]);
  cleanups.push(() => void execFileSync('umount', ['-l', lower]));
  execFileSync('mount', ['-t', 'tmpfs', 'liveup-test-rw', rw]);
  cleanups.push(() => void execFileSync('umount', ['-l', rw]));
  await mkdir(join(rw, 'upper'));
  await mkdir(join(rw, 'work'));
  execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lower},upperdir=${rw}/upper,workdir=${rw}/work`, root]);
  cleanups.push(() => void execFileSync('umount', ['-l', root]));

  const { boot, runDir, state, configFile, bus } = await agentWorld(dir, repo, key.pubPath, cleanups, { liveRoot: root, liveLowerDir: lower });
  let daemon: ChildProcess | null = null;
  const m: LiveMachine = {
    root, lower, boot, state,
    ctl: (args) => collect(spawn(bin('agentctl'), ['--bus', bus.address, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })),
    async json<T>(args: string[]) {
      const r = await m.ctl([...args, '--json']);
      if (r.code !== 0) throw new Error(`agentctl ${args.join(' ')} failed (${r.code}): ${r.stdout}${r.stderr}`);
      return JSON.parse(r.stdout) as T;
    },
    async start() {
      // Its own process group: kill() takes dpkg and its maintainer scripts down with it.
      const d = spawn(bin('liveup-agentd'), ['--config', configFile, '--config-dir', join(dir, 'agent.d'), '--run-dir', runDir], { stdio: 'ignore', detached: true });
      daemon = d;
      cleanups.push(() => { if (d.exitCode === null && d.signalCode === null) process.kill(-d.pid!, 'SIGKILL'); });
      for (let i = 0; i < 200 && (await m.ctl(['status'])).code !== 0; i++) await new Promise((r) => setTimeout(r, 100));
    },
    async kill() {
      const d = daemon!;
      const closed = new Promise((r) => d.once('close', r));
      process.kill(-d.pid!, 'SIGKILL');
      await closed;
    },
  };
  await m.start();
  return m;
}
