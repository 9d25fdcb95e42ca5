/**
 * Live replay as an administrator meets it: the compiled daemon and
 * `agentctl update --apply-live`, on a "running system" that is a real
 * overlay (tmpfs upper) over generation 1's squashfs — a Debian 13 minbase
 * root — with real dpkg replaying the signed .debs the channel serves.
 *
 * The packages are small real .debs built here with dpkg-deb (offline and
 * deterministic): demo-a 1.0 → 2.0 (upgrade), demo-b (removed), demo-c
 * (new, depends on demo-a >= 2.0), demo-d (a second generation in the chain),
 * demo-conflict (conflicts with demo-a), demo-slow (a postinst that sleeps,
 * to be killed in). Needs root (mounts, dpkg --root).
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { tmp } from '../helpers/tmp.js';
import { baseTarball } from '../helpers/trixie.js';
import { buildDeb, dpkgRoot, gendir, machine as liveMachine, packageList, type Pkg } from '../helpers/livemachine.js';

const skip = process.getuid?.() !== 0;
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  while (cleanups.length) await Promise.resolve(cleanups.pop()!()).catch(() => undefined);
});

const machine = (dir: string, gens: string[]) => liveMachine(dir, gens, cleanups);

describe.skipIf(skip)('live replay onto a running overlay (real dpkg)', () => {
  let debs: Record<string, string>;
  let base: string;

  beforeAll(async () => {
    base = await baseTarball();
    const dir = await mkdtemp(join(tmpdir(), 'liveup-debs-'));
    const pkgs: Pkg[] = [
      { name: 'demo-a', version: '1.0', file: ['usr/bin/demo-a', '#!/bin/sh\necho a 1.0\n'] },
      { name: 'demo-a', version: '2.0', file: ['usr/bin/demo-a', '#!/bin/sh\necho a 2.0\n'] },
      { name: 'demo-b', version: '1.0', file: ['usr/share/demo-b/data', 'b\n'] },
      { name: 'demo-c', version: '1.0', depends: 'demo-a (>= 2.0)', file: ['usr/bin/demo-c', '#!/bin/sh\necho c\n'] },
      { name: 'demo-d', version: '1.0', file: ['usr/bin/demo-d', '#!/bin/sh\necho d\n'] },
      { name: 'demo-conflict', version: '1.0', conflicts: 'demo-a', file: ['usr/bin/demo-conflict', '#!/bin/sh\n'] },
      { name: 'demo-slow', version: '1.0', postinst: 'touch /var/lib/demo-slow.started; sleep 4; echo configured > /var/lib/demo-slow', file: ['usr/bin/demo-slow', '#!/bin/sh\n'] },
    ];
    debs = {};
    for (const p of pkgs) debs[`${p.name}_${p.version}`] = await buildDeb(dir, p);
    return () => rm(dir, { recursive: true, force: true });
  }, 300_000);

  /** Generation 1: minbase + demo-a 1.0 + demo-b, as a tree to derive from. */
  async function tree1(dir: string): Promise<string> {
    const tree = join(dir, 'tree');
    await mkdir(tree);
    execFileSync('tar', ['--zstd', '-xpf', base, '-C', tree]);
    dpkgRoot(tree, ['-i', debs['demo-a_1.0']!, debs['demo-b_1.0']!]);
    return tree;
  }

  it('replays a chain 1 → 2 → 3 without a reboot: upgrade, install, remove, converged, journalled', async () => {
    const dir = await tmp();
    const tree = await tree1(dir);
    const g1 = await gendir(dir, tree, 1, null, []);
    dpkgRoot(tree, ['-i', debs['demo-a_2.0']!, debs['demo-c_1.0']!]);
    dpkgRoot(tree, ['--remove', 'demo-b']);
    const g2 = await gendir(dir, tree, 2, 1, [
      { action: 'upgrade', package: 'demo-a', from: '1.0', version: '2.0', deb: debs['demo-a_2.0']! },
      { action: 'install', package: 'demo-c', version: '1.0', deb: debs['demo-c_1.0']! },
      { action: 'remove', package: 'demo-b', from: '1.0' },
    ]);
    dpkgRoot(tree, ['-i', debs['demo-d_1.0']!]);
    const g3 = await gendir(dir, tree, 3, 2, [{ action: 'install', package: 'demo-d', version: '1.0', deb: debs['demo-d_1.0']! }]);
    const m = await machine(dir, [g1, g2, g3]);
    expect(packageList(m.root)).toMatchObject({ 'demo-a': '1.0', 'demo-b': '1.0' });

    const r = await m.json<{ outcome: string; version: number; message: string }>(['update', '--apply-live']);
    expect(r).toMatchObject({ outcome: 'applied-live', version: 3 });
    expect(r.message).toMatch(/2 → 3/);
    // The running system is generation 3's package set, exactly.
    const want = JSON.parse(readFileSync(join(g3, 'packages.json'), 'utf8')) as { packages: Record<string, string> };
    expect(packageList(m.root)).toEqual(want.packages);
    expect(execFileSync('chroot', [m.root, '/usr/bin/demo-a']).toString()).toBe('a 2.0\n');
    expect(existsSync(join(m.root, 'usr/share/demo-b/data'))).toBe(false);
    expect(execFileSync('dpkg', ['--root', m.root, '--audit']).toString()).toBe('');

    const s = await m.json<{ bootedVersion: number; runningVersion: number; stagedVersion: number; needsReboot: unknown }>(['status']);
    expect(s).toMatchObject({ bootedVersion: 1, runningVersion: 3, stagedVersion: 3, needsReboot: null });
    // Generation 3's image is what boots next, so a reboot yields the same system from a clean image.
    expect(readFileSync(join(m.boot, 'grub', 'grub.cfg'), 'utf8')).toMatch(/live\/3\/vmlinuz/);
    const history = await m.json<{ kind: string; status: string; version: number | null; message: string | null }[]>(['history']);
    expect(history.find((h) => h.kind === 'apply')).toMatchObject({ status: 'succeeded', version: 3 });
    expect(history.some((h) => h.kind === 'decision' && /live-apply/.test(h.message ?? ''))).toBe(true);
    // Up to date now: nothing more to replay.
    const again = await m.json<{ outcome: string }>(['update', '--apply-live']);
    expect(again.outcome).toBe('up-to-date');
  }, 300_000);

  it('refuses before any change: a hand-modified system (drift) and a change dpkg would refuse (conflict)', async () => {
    const dir = await tmp();
    const tree = await tree1(dir);
    const g1 = await gendir(dir, tree, 1, null, []);
    dpkgRoot(tree, ['--remove', 'demo-a']);
    dpkgRoot(tree, ['-i', debs['demo-conflict_1.0']!]);
    // Recorded as dpkg would run it on the publisher… but replayed in this order the install comes first and conflicts.
    const g2 = await gendir(dir, tree, 2, 1, [
      { action: 'install', package: 'demo-conflict', version: '1.0', deb: debs['demo-conflict_1.0']! },
      { action: 'remove', package: 'demo-a', from: '1.0' },
    ]);
    const m = await machine(dir, [g1, g2]);
    const before = packageList(m.root);

    dpkgRoot(m.root, ['-i', debs['demo-d_1.0']!]); // someone installed a package by hand
    const drift = await m.ctl(['update', '--apply-live']);
    expect(drift.code).not.toBe(0);
    expect(drift.stderr).toMatch(/LIVE_APPLY_REFUSED: .*nothing was changed.*not in the generation demo-d/);
    dpkgRoot(m.root, ['--purge', 'demo-d']);

    const conflict = await m.ctl(['update', '--apply-live']);
    expect(conflict.code).not.toBe(0);
    expect(conflict.stderr).toMatch(/LIVE_APPLY_REFUSED: .*nothing was changed: simulated install: .*conflicts with demo-a/);
    expect(packageList(m.root)).toEqual(before);
    const s = await m.json<{ runningVersion: number; needsReboot: unknown; stagedVersion: number }>(['status']);
    expect(s).toMatchObject({ runningVersion: 1, needsReboot: null, stagedVersion: 2 });
  }, 300_000);

  it('kill -9 in the middle: the journal says so, dpkg is repaired at start, the machine needs a reboot into the target', async () => {
    const dir = await tmp();
    const tree = await tree1(dir);
    const g1 = await gendir(dir, tree, 1, null, []);
    dpkgRoot(tree, ['-i', debs['demo-slow_1.0']!]);
    const g2 = await gendir(dir, tree, 2, 1, [{ action: 'install', package: 'demo-slow', version: '1.0', deb: debs['demo-slow_1.0']! }]);
    const m = await machine(dir, [g1, g2]);

    const update = m.ctl(['update', '--apply-live']);
    // Wait until dpkg runs demo-slow's postinst in this machine's root (it then sleeps), and kill the agent's whole unit.
    for (let i = 0; i < 600 && !existsSync(join(m.root, 'var/lib/demo-slow.started')); i++) await new Promise((r) => setTimeout(r, 50));
    expect(existsSync(join(m.root, 'var/lib/demo-slow.started'))).toBe(true);
    await m.kill();
    expect((await update).code).not.toBe(0);
    expect(execFileSync('dpkg', ['--root', m.root, '--audit']).toString()).toMatch(/demo-slow/);

    await m.start();
    expect(execFileSync('dpkg', ['--root', m.root, '--audit']).toString()).toBe('');
    expect(readFileSync(join(m.root, 'var/lib/demo-slow'), 'utf8')).toBe('configured\n');
    const s = await m.json<{ runningVersion: number; needsReboot: { version: number; reason: string } | null }>(['status']);
    expect(s.runningVersion).toBe(1); // nothing claims success
    expect(s.needsReboot).toMatchObject({ version: 2 });
    expect(s.needsReboot!.reason).toMatch(/interrupted/);
    const history = await m.json<{ kind: string; status: string; message: string | null }[]>(['history']);
    expect(history.find((h) => h.kind === 'apply')).toMatchObject({ status: 'failed' });
    expect(history.some((h) => h.kind === 'recovery' && /live replay to 2 .*was interrupted/.test(h.message ?? ''))).toBe(true);
    const human = await m.ctl(['status']);
    expect(human.stdout).toMatch(/Needs reboot: into 2/);
  }, 300_000);
});
