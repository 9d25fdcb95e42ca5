/**
 * `agentctl rollback --live` as an administrator meets it: the compiled
 * daemon on a real overlay (tmpfs upper) over generation 1's squashfs, a
 * live replay 1 → 2 with real dpkg, then the undo — the booted versions
 * repacked from the squashfs (the overlay's lower layer) and reinstalled,
 * the new package removed — and the refusals, which change nothing.
 *
 * Generation 1: minbase + demo-a 1.0 (a postinst recording its version,
 * failing on request) + demo-b 1.0 (a conffile). Generation 2: demo-a 2.0
 * (upgrade, with a new dependency demo-lib: it can go only once demo-a 1.0
 * is back), demo-c (new, depends on demo-a >= 2.0), demo-e (new, Breaks
 * demo-a << 2.0: it must be gone before demo-a 1.0 is configured), demo-b
 * removed. A second world splits demo-f into demo-f + demo-f-data.
 * Needs root (mounts, dpkg --root).
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { tmp } from '../helpers/tmp.js';
import { baseTarball } from '../helpers/trixie.js';
import { buildDeb, dpkgRoot, gendir, machine, packageList, type Pkg } from '../helpers/livemachine.js';

const skip = process.getuid?.() !== 0;
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  while (cleanups.length) await Promise.resolve(cleanups.pop()!()).catch(() => undefined);
});

const grubenv = (boot: string): Record<string, string> => Object.fromEntries(
  execFileSync('grub-editenv', [join(boot, 'grub', 'grubenv'), 'list']).toString().split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
);
const query = (root: string, pkg: string, format: string) => execFileSync('dpkg-query', ['--admindir', join(root, 'var/lib/dpkg'), '-W', '-f', format, pkg]).toString();

interface Status { bootedVersion: number; runningVersion: number; stagedVersion: number | null; needsReboot: { version: number; reason: string } | null }
interface History { kind: string; status: string; version: number | null; message: string | null }

describe.skipIf(skip)('rollback --live on a running overlay (real dpkg, packages repacked from the booted image)', () => {
  let debs: Record<string, string>;
  let base: string;

  beforeAll(async () => {
    base = await baseTarball();
    const dir = await mkdtemp(join(tmpdir(), 'liveup-rollback-debs-'));
    const pkgs: Pkg[] = [
      // Its postinst fails while /etc/demo-a.fail exists (a maintainer script failing mid-rollback), and
      // sleeps while /etc/demo-a.slow exists (to be killed in).
      {
        name: 'demo-a', version: '1.0', file: ['usr/bin/demo-a', '#!/bin/sh\necho a 1.0\n'],
        postinst: 'if [ -e /etc/demo-a.fail ]; then exit 1; fi\nif [ -e /etc/demo-a.slow ]; then touch /var/lib/demo-a.started; sleep 4; fi\necho 1.0 > /var/lib/demo-a.version',
      },
      { name: 'demo-a', version: '2.0', depends: 'demo-lib', postinst: 'echo 2.0 > /var/lib/demo-a.version', file: ['usr/bin/demo-a', '#!/bin/sh\necho a 2.0\n'] },
      { name: 'demo-b', version: '1.0', conffile: ['etc/demo-b.conf', 'setting=1\n'], file: ['usr/share/demo-b/data', 'b\n'] },
      { name: 'demo-c', version: '1.0', depends: 'demo-a (>= 2.0)', file: ['usr/bin/demo-c', '#!/bin/sh\necho c\n'] },
      { name: 'demo-lib', version: '1.0', file: ['usr/lib/demo-lib.so', 'lib\n'] },
      { name: 'demo-f', version: '1.0', file: ['usr/bin/demo-f', '#!/bin/sh\necho f 1.0\n'], more: [['usr/share/demo-f/data', 'f data 1.0\n']] },
      { name: 'demo-f', version: '2.0', file: ['usr/bin/demo-f', '#!/bin/sh\necho f 2.0\n'] },
      { name: 'demo-f-data', version: '2.0', breaks: 'demo-f (<< 2.0)', replaces: 'demo-f (<< 2.0)', file: ['usr/share/demo-f/data', 'f data 2.0\n'] },
      { name: 'demo-e', version: '1.0', breaks: 'demo-a (<< 2.0)', file: ['usr/bin/demo-e', '#!/bin/sh\necho e\n'] },
    ];
    debs = {};
    for (const p of pkgs) debs[`${p.name}_${p.version}`] = await buildDeb(dir, p);
    return () => rm(dir, { recursive: true, force: true });
  }, 300_000);

  /** Generations 1 and 2, published; the machine boots 1. */
  async function world(dir: string) {
    const tree = join(dir, 'tree');
    await mkdir(tree);
    execFileSync('tar', ['--zstd', '-xpf', base, '-C', tree]);
    dpkgRoot(tree, ['-i', debs['demo-a_1.0']!, debs['demo-b_1.0']!]);
    const g1 = await gendir(dir, tree, 1, null, []);
    dpkgRoot(tree, ['-i', debs['demo-lib_1.0']!, debs['demo-a_2.0']!, debs['demo-c_1.0']!, debs['demo-e_1.0']!]);
    dpkgRoot(tree, ['--remove', 'demo-b']);
    const g2 = await gendir(dir, tree, 2, 1, [
      { action: 'install', package: 'demo-lib', version: '1.0', deb: debs['demo-lib_1.0']! },
      { action: 'upgrade', package: 'demo-a', from: '1.0', version: '2.0', deb: debs['demo-a_2.0']! },
      { action: 'install', package: 'demo-c', version: '1.0', deb: debs['demo-c_1.0']! },
      { action: 'remove', package: 'demo-b', from: '1.0' },
      // Its own step, after demo-a 2.0 is in: dpkg --simulate of one -i run checks each .deb against the system before the run.
      { action: 'install', package: 'demo-e', version: '1.0', deb: debs['demo-e_1.0']! },
    ]);
    const list = (g: string) => (JSON.parse(readFileSync(join(g, 'packages.json'), 'utf8')) as { packages: Record<string, string> }).packages;
    return { m: await machine(dir, [g1, g2], cleanups), list1: list(g1), list2: list(g2) };
  }

  it('after a replay 1 → 2, goes back to exactly 1 without a reboot; 1 boots next, 2 is held back', async () => {
    const dir = await tmp();
    await mkdir(join(dir, 'agent.d'));
    const { m, list1, list2 } = await world(dir);
    const applied = await m.json<{ outcome: string; version: number }>(['update', '--apply-live']);
    expect(applied).toMatchObject({ outcome: 'applied-live', version: 2 });
    expect(packageList(m.root)).toEqual(list2);

    // Only the booted generation can be reached live; another target is refused, nothing changed.
    const other = await m.ctl(['rollback', '2', '--live']);
    expect(other.code).not.toBe(0);
    expect(other.stderr).toMatch(/LIVE_APPLY_REFUSED: .*nothing was changed: a live rollback goes back only to the booted generation 1, not 2; use `agentctl rollback 2`/);
    expect(packageList(m.root)).toEqual(list2);

    const r = await m.json<{ outcome: string; version: number; message: string }>(['rollback', '--live']);
    expect(r).toMatchObject({ outcome: 'rolled-back-live', version: 1 });
    expect(r.message).toMatch(/from 2 to the booted generation 1 \(2 reinstalled, 3 removed\)/);

    // The package set is generation 1's, exactly, and dpkg is consistent.
    expect(packageList(m.root)).toEqual(list1);
    expect(execFileSync('dpkg', ['--root', m.root, '--audit']).toString()).toBe('');
    // The package the replay installed is gone with its files.
    expect(existsSync(join(m.root, 'usr/bin/demo-c'))).toBe(false);
    expect(existsSync(join(m.root, 'usr/bin/demo-e'))).toBe(false);
    expect(existsSync(join(m.root, 'usr/lib/demo-lib.so'))).toBe(false);
    // The upgraded package's files are the booted image's again, and its (repacked) maintainer script ran.
    expect(readFileSync(join(m.root, 'usr/bin/demo-a'))).toEqual(readFileSync(join(m.lower, 'usr/bin/demo-a')));
    expect(execFileSync('chroot', [m.root, '/usr/bin/demo-a']).toString()).toBe('a 1.0\n');
    expect(readFileSync(join(m.root, 'var/lib/demo-a.version'), 'utf8')).toBe('1.0\n');
    // The removed package is back, files and conffile, and dpkg knows the conffile as one.
    expect(readFileSync(join(m.root, 'usr/share/demo-b/data'), 'utf8')).toBe('b\n');
    expect(readFileSync(join(m.root, 'etc/demo-b.conf'), 'utf8')).toBe('setting=1\n');
    expect(query(m.root, 'demo-b', '${Conffiles}')).toMatch(/\/etc\/demo-b\.conf [0-9a-f]{32}/);
    // Ownership and mode as in the image.
    expect(execFileSync('stat', ['-c', '%u:%g %a', join(m.root, 'usr/bin/demo-a')]).toString()).toBe(execFileSync('stat', ['-c', '%u:%g %a', join(m.lower, 'usr/bin/demo-a')]).toString());

    // The machine says it runs 1 again; no reboot is needed; 1 boots next with no trial of 2 armed.
    const s = await m.json<Status>(['status']);
    expect(s).toMatchObject({ bootedVersion: 1, runningVersion: 1, needsReboot: null, stagedVersion: null });
    expect(grubenv(m.boot).liveup_try_version).toBeUndefined();
    const history = await m.json<History[]>(['history']);
    expect(history.find((h) => h.kind === 'rollback')).toMatchObject({ status: 'succeeded', version: 1 });
    expect(history.find((h) => h.kind === 'rollback')!.message).toMatch(/rolled back live: 2 → 1/);
    // Nothing applied live any more: a second undo is refused.
    const again = await m.ctl(['rollback', '--live']);
    expect(again.stderr).toMatch(/LIVE_APPLY_REFUSED: .*nothing was applied live in this boot/);

    // Scheduled checks (policy `live`) neither try nor replay 2 again: every 2 s for a while.
    const checks = async () => (await m.json<History[]>(['history'])).filter((h) => h.kind === 'check').length;
    const before = await checks();
    await writeFile(join(dir, 'agent.d', '60-often.json'), JSON.stringify({ schedule: '*/2 * * * * *', jitterSeconds: 0 }));
    for (let i = 0; i < 100 && (await checks()) < before + 3; i++) await new Promise((res) => setTimeout(res, 200));
    expect(await checks()).toBeGreaterThanOrEqual(before + 3);
    expect(packageList(m.root)).toEqual(list1);
    expect(await m.json<Status>(['status'])).toMatchObject({ runningVersion: 1, stagedVersion: null });
    expect(grubenv(m.boot).liveup_try_version).toBeUndefined();
    await rm(join(dir, 'agent.d', '60-often.json'));

    // An explicit update lifts the hold: 2 replays again on top of the rolled-back system.
    let reapplied = { outcome: '', version: 0 };
    for (let i = 0; i < 20; i++) {
      const u = await m.ctl(['update', '--apply-live', '--json']);
      if (u.code === 0) { reapplied = JSON.parse(u.stdout) as typeof reapplied; break; }
      expect(u.stderr).toMatch(/UPDATE_IN_PROGRESS/); // a scheduled check still running
      await new Promise((res) => setTimeout(res, 500));
    }
    expect(reapplied).toMatchObject({ outcome: 'applied-live', version: 2 });
    expect(packageList(m.root)).toEqual(list2);
    // …and 2 is the next boot's trial again, so a reboot keeps what the replay gave (seen in QEMU:
    // without it the machine rebooted into 1).
    expect(grubenv(m.boot).liveup_try_version).toBe('2');
    expect(await m.json<Status>(['status'])).toMatchObject({ runningVersion: 2, stagedVersion: 2 });
  }, 300_000);

  it('refuses with nothing applied live, and --live with --now, changing nothing', async () => {
    const dir = await tmp();
    const { m, list1 } = await world(dir);
    // 2 is staged and armed as the next boot's trial: a refused rollback must leave that alone.
    expect(await m.json<{ outcome: string }>(['update', '--download-only'])).toMatchObject({ outcome: 'staged' });
    const cfgBefore = readFileSync(join(m.boot, 'grub', 'grub.cfg'), 'utf8');
    const envBefore = grubenv(m.boot);

    const r = await m.ctl(['rollback', '--live']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/LIVE_APPLY_REFUSED: live rollback refused, nothing was changed: nothing was applied live in this boot: the system runs the booted generation 1; use `agentctl rollback`/);
    const both = await m.ctl(['rollback', '--live', '--now']);
    expect(both.code).toBe(2);
    expect(both.stderr).toMatch(/--live and --now exclude each other/);

    expect(packageList(m.root)).toEqual(list1);
    expect(readFileSync(join(m.boot, 'grub', 'grub.cfg'), 'utf8')).toBe(cfgBefore);
    expect(grubenv(m.boot)).toEqual(envBefore);
    expect(envBefore.liveup_try_version).toBe('2');
    const s = await m.json<Status>(['status']);
    expect(s).toMatchObject({ runningVersion: 1, needsReboot: null, stagedVersion: 2 });
    const history = await m.json<History[]>(['history']);
    expect(history.some((h) => h.kind === 'rollback')).toBe(false);
  }, 300_000);

  it('refuses before any change when the image at liveLowerDir is not the booted one, or missing with no copy on the boot medium; reads the medium\'s copy when it is there', async () => {
    const dir = await tmp();
    // liveLowerDir names another generation's image (what a stale mount after a soft-reboot would be): generation 2's squashfs.
    const stale = join(dir, 'stale-lower');
    await mkdir(join(dir, 'agent.d'));
    await writeFile(join(dir, 'agent.d', '50-lower.json'), JSON.stringify({ liveLowerDir: stale }));
    const { m, list1, list2 } = await world(dir);
    await mkdir(stale);
    execFileSync('mount', ['-t', 'squashfs', '-o', 'loop,ro', join(dir, 'repo', 'generations', '2', 'filesystem.squashfs'), stale]);
    cleanups.push(() => { try { execFileSync('umount', ['-l', stale]); } catch { /* the test unmounted it */ } });
    expect(await m.json<{ outcome: string }>(['update', '--apply-live'])).toMatchObject({ outcome: 'applied-live' });
    const envBefore = grubenv(m.boot);
    const cfgBefore = readFileSync(join(m.boot, 'grub', 'grub.cfg'), 'utf8');

    const wrong = await m.ctl(['rollback', '--live']);
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toMatch(/LIVE_APPLY_REFUSED: live rollback refused, nothing was changed: the booted image \(liveLowerDir\) is not generation 1's: missing demo-b; not in the generation demo-c, demo-e, demo-lib; other versions demo-a 2\.0 \(expected 1\.0\); a reboot is needed/);
    // An unreachable lower layer (after a soft-reboot: a mount of the old userspace) and no
    // squashfs of 1 on the boot medium either: refused, nothing changed.
    execFileSync('umount', [stale]);
    const onMedium = join(m.boot, 'live', '1', 'filesystem.squashfs');
    await rename(onMedium, `${onMedium}.away`);
    const r = await m.ctl(['rollback', '--live']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/LIVE_APPLY_REFUSED: live rollback refused, nothing was changed: the booted image \(liveLowerDir\) is not generation 1's: it has no dpkg status file; a reboot is needed: `agentctl rollback 1 --now`/);
    expect(packageList(m.root)).toEqual(list2);
    expect(execFileSync('chroot', [m.root, '/usr/bin/demo-a']).toString()).toBe('a 2.0\n');
    // The boot side is untouched too: 2 is still what boots next.
    expect(grubenv(m.boot)).toEqual(envBefore);
    expect(readFileSync(join(m.boot, 'grub', 'grub.cfg'), 'utf8')).toBe(cfgBefore);
    const s = await m.json<Status>(['status']);
    expect(s).toMatchObject({ bootedVersion: 1, runningVersion: 2, needsReboot: null, stagedVersion: 2 });

    // With 1's squashfs on the boot medium, the booted image is read from there: the undo works.
    await rename(`${onMedium}.away`, onMedium);
    const ok = await m.json<{ outcome: string; version: number }>(['rollback', '--live']);
    expect(ok).toMatchObject({ outcome: 'rolled-back-live', version: 1 });
    expect(packageList(m.root)).toEqual(list1);
    expect(execFileSync('chroot', [m.root, '/usr/bin/demo-a']).toString()).toBe('a 1.0\n');
    expect(execFileSync('dpkg', ['--root', m.root, '--audit']).toString()).toBe('');
    // Read, then unmounted: nothing of it is left mounted.
    expect(readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(join(m.state, 'rollback-image'));
  }, 300_000);

  it('undoes a package split across a chain 1 → 2 → 3: the booted package takes its file back from the one the replay installed', async () => {
    const dir = await tmp();
    const tree = join(dir, 'tree');
    await mkdir(tree);
    execFileSync('tar', ['--zstd', '-xpf', base, '-C', tree]);
    dpkgRoot(tree, ['-i', debs['demo-f_1.0']!]);
    const g1 = await gendir(dir, tree, 1, null, []);
    dpkgRoot(tree, ['-i', debs['demo-f_2.0']!]);
    const g2 = await gendir(dir, tree, 2, 1, [{ action: 'upgrade', package: 'demo-f', from: '1.0', version: '2.0', deb: debs['demo-f_2.0']! }]);
    dpkgRoot(tree, ['-i', debs['demo-f-data_2.0']!]);
    const g3 = await gendir(dir, tree, 3, 2, [{ action: 'install', package: 'demo-f-data', version: '2.0', deb: debs['demo-f-data_2.0']! }]);
    const m = await machine(dir, [g1, g2, g3], cleanups);
    expect(await m.json<{ outcome: string; version: number }>(['update', '--apply-live'])).toMatchObject({ outcome: 'applied-live', version: 3 });
    expect(execFileSync('dpkg-query', ['--admindir', join(m.root, 'var/lib/dpkg'), '-S', '/usr/share/demo-f/data']).toString()).toMatch(/^demo-f-data: /);

    const r = await m.json<{ outcome: string; message: string }>(['rollback', '--live']);
    expect(r).toMatchObject({ outcome: 'rolled-back-live' });
    expect(r.message).toMatch(/from 3 to the booted generation 1 \(1 reinstalled, 1 removed\)/);
    expect(packageList(m.root)).toEqual((JSON.parse(readFileSync(join(g1, 'packages.json'), 'utf8')) as { packages: Record<string, string> }).packages);
    // The file is there, the image's, and dpkg says demo-f owns it again (the removal of demo-f-data left it).
    expect(readFileSync(join(m.root, 'usr/share/demo-f/data'), 'utf8')).toBe('f data 1.0\n');
    expect(execFileSync('dpkg-query', ['--admindir', join(m.root, 'var/lib/dpkg'), '-S', '/usr/share/demo-f/data']).toString()).toBe('demo-f: /usr/share/demo-f/data\n');
    expect(execFileSync('dpkg', ['--root', m.root, '--audit']).toString()).toBe('');
    expect(await m.json<Status>(['status'])).toMatchObject({ runningVersion: 1, needsReboot: null });
  }, 300_000);

  it('a failure after the first change: needs reboot into the booted generation, which boots next; fixed by hand, the undo completes', async () => {
    const dir = await tmp();
    const { m, list1 } = await world(dir);
    expect(await m.json<{ outcome: string }>(['update', '--apply-live'])).toMatchObject({ outcome: 'applied-live' });
    await writeFile(join(m.root, 'etc/demo-a.fail'), '');

    const r = await m.ctl(['rollback', '--live']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/LIVE_APPLY_FAILED: live rollback to 1 failed after changing the system: dpkg --configure -a: .*demo-a.*; reboot into generation 1/);
    const s = await m.json<Status>(['status']);
    expect(s.needsReboot).toMatchObject({ version: 1 });
    // The boot side was settled before the first change: 1 boots next, no trial of 2.
    expect(s.stagedVersion).toBeNull();
    expect(grubenv(m.boot).liveup_try_version).toBeUndefined();
    expect((await m.ctl(['status'])).stdout).toMatch(/Needs reboot: into 1/);
    const history = await m.json<History[]>(['history']);
    expect(history.find((h) => h.kind === 'rollback')).toMatchObject({ status: 'failed', version: 1 });

    // dpkg is not consistent now: another attempt is refused until it is.
    const again = await m.ctl(['rollback', '--live']);
    expect(again.stderr).toMatch(/LIVE_APPLY_REFUSED: live rollback refused, nothing was changed: dpkg reports unfinished packages/);
    // The administrator fixes the cause and lets dpkg finish; the undo then completes live.
    await rm(join(m.root, 'etc/demo-a.fail'));
    dpkgRoot(m.root, ['--configure', '-a']);
    expect(await m.json<{ outcome: string }>(['rollback', '--live'])).toMatchObject({ outcome: 'rolled-back-live' });
    expect(packageList(m.root)).toEqual(list1);
    expect(await m.json<Status>(['status'])).toMatchObject({ runningVersion: 1, needsReboot: null });
  }, 300_000);

  it('kill -9 during the undo: recovered at start, dpkg finished, needs reboot into the booted generation', async () => {
    const dir = await tmp();
    const { m, list1 } = await world(dir);
    expect(await m.json<{ outcome: string }>(['update', '--apply-live'])).toMatchObject({ outcome: 'applied-live' });
    await writeFile(join(m.root, 'etc/demo-a.slow'), '');

    const undo = m.ctl(['rollback', '--live']);
    for (let i = 0; i < 600 && !existsSync(join(m.root, 'var/lib/demo-a.started')); i++) await new Promise((res) => setTimeout(res, 50));
    expect(existsSync(join(m.root, 'var/lib/demo-a.started'))).toBe(true);
    await m.kill();
    expect((await undo).code).not.toBe(0);
    await rm(join(m.root, 'etc/demo-a.slow'));

    await m.start();
    // dpkg was asked to finish at start: demo-a 1.0 configured, the package set is generation 1's.
    expect(execFileSync('dpkg', ['--root', m.root, '--audit']).toString()).toBe('');
    expect(readFileSync(join(m.root, 'var/lib/demo-a.version'), 'utf8')).toBe('1.0\n');
    expect(packageList(m.root)).toEqual(list1);
    const s = await m.json<Status>(['status']);
    expect(s.needsReboot).toMatchObject({ version: 1 });
    expect(s.needsReboot!.reason).toMatch(/live rollback to 1 .*was interrupted/);
    expect(s.stagedVersion).toBeNull();
    const history = await m.json<History[]>(['history']);
    expect(history.find((h) => h.kind === 'rollback')).toMatchObject({ status: 'failed' });
    expect(history.some((h) => h.kind === 'recovery' && /live rollback to 1 .*was interrupted/.test(h.message ?? ''))).toBe(true);
  }, 300_000);
});
