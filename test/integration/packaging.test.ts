/**
 * `packaging/build` as a release engineer runs it, then the .debs as an admin
 * installs them: contents, control fields, conffile, lintian, and `dpkg -i`
 * into a Debian 13 (trixie) chroot where the commands run.
 *
 * The chroot: a trixie base (the factory's cached minbase tarball when
 * `liveup build` made one, else debootstrap, cached under
 * /var/cache/liveup/pkgtest/), with the packages' Depends installed by apt,
 * cached as a tarball keyed by that package list. First run ~1-2 min, reruns
 * ~20 s. Needs root (chroot, mounts) and, the first time, deb.debian.org.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { ROOT } from '../helpers/cli.js';
import { MIRROR, PKGTEST_CACHE, baseTarball, removeTree, run, unmountAll } from '../helpers/trixie.js';

const isRoot = process.getuid?.() === 0;

const sh = (script: string, opts?: { allowFail?: boolean }) => run('sh', ['-ec', script], opts);

/** Debian's Depends syntax → the first alternative of each, without version. */
function dependsNames(depends: string): string[] {
  return depends.split(',').map((d) => d.split('|')[0]!.trim().split(/[\s(]/)[0]!).filter(Boolean);
}

function controlField(control: string, field: string): string {
  const m = new RegExp(`^${field}: (.*)$`, 'm').exec(control);
  return m ? m[1]! : '';
}

/** Runs `fn` with proc, sys and dev bound into `root`; always unmounts. */
async function withMounts<T>(root: string, fn: () => Promise<T>): Promise<T> {
  try {
    await run('mount', ['-t', 'proc', 'proc', join(root, 'proc')]);
    await run('mount', ['--bind', '/sys', join(root, 'sys')]);
    await run('mount', ['--bind', '/dev', join(root, 'dev')]);
    return await fn();
  } finally {
    await unmountAll(join(root, 'proc'));
    await unmountAll(join(root, 'sys'));
    await unmountAll(join(root, 'dev'));
  }
}

const inChroot = (root: string, script: string, opts?: { allowFail?: boolean }) =>
  run('chroot', [root, '/bin/sh', '-ec', script], {
    ...opts,
    env: { DEBIAN_FRONTEND: 'noninteractive', PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C.UTF-8' },
  });

/** trixie with `packages` installed (services kept from starting), cached by the list. */
async function preparedChroot(packages: string[], into: string): Promise<void> {
  const base = await baseTarball();
  const key = createHash('sha256').update(JSON.stringify([basename(base), [...packages].sort()])).digest('hex').slice(0, 16);
  const cached = join(PKGTEST_CACHE, `trixie-prepared-${key}.tar.zst`);
  if (existsSync(cached)) {
    await run('tar', ['--zstd', '-C', into, '-xf', cached]);
    return;
  }
  await run('tar', ['--zstd', '-C', into, '-xf', base]);
  // Nothing starts in the chroot (invoke-rc.d / deb-systemd-invoke honour it).
  await writeFile(join(into, 'usr/sbin/policy-rc.d'), '#!/bin/sh\nexit 101\n');
  await chmod(join(into, 'usr/sbin/policy-rc.d'), 0o755);
  await copyFile('/etc/resolv.conf', join(into, 'etc/resolv.conf')).catch(() => undefined);
  if (!existsSync(join(into, 'etc/apt/sources.list')) && !existsSync(join(into, 'etc/apt/sources.list.d/debian.sources'))) {
    await writeFile(join(into, 'etc/apt/sources.list'), `deb ${MIRROR} trixie main\n`);
  }
  await withMounts(into, () =>
    inChroot(into, `apt-get update -qq && apt-get install -y -qq --no-install-recommends ${packages.join(' ')} && apt-get clean`));
  await mkdir(PKGTEST_CACHE, { recursive: true });
  await run('tar', ['--zstd', '-C', into, '-cf', `${cached}.tmp`, '.']);
  await rename(`${cached}.tmp`, cached);
}

describe.skipIf(!isRoot || !existsSync('/usr/bin/dpkg-deb'))('packaging/build', () => {
  let out: string;
  let agentDeb: string;
  let publisherDeb: string;

  beforeAll(async () => {
    if (!existsSync(join(ROOT, 'dist'))) throw new Error('dist/ is missing: run `npm run build` (the README test command does)');
    out = await mkdtemp(join(tmpdir(), 'liveup-pkg-'));
    const r = await run(join(ROOT, 'packaging/build'), ['--no-tsc', '--out', out, '--version', '0.1.0~test1']);
    const debs = r.stdout.trim().split('\n');
    agentDeb = debs.find((d) => basename(d).startsWith('liveup-agent_'))!;
    publisherDeb = debs.find((d) => basename(d).startsWith('liveup-publisher_'))!;
  }, 240_000);

  afterAll(async () => {
    if (out) await rm(out, { recursive: true, force: true });
  });

  it('prints the paths of liveup-agent_<version>_amd64.deb and liveup-publisher_<version>_amd64.deb', () => {
    expect(basename(agentDeb)).toBe('liveup-agent_0.1.0~test1_amd64.deb');
    // amd64: the fleet endpoint (liveup fleet serve) stores in SQLite through better-sqlite3's addon.
    expect(basename(publisherDeb)).toBe('liveup-publisher_0.1.0~test1_amd64.deb');
    expect(existsSync(agentDeb) && existsSync(publisherDeb)).toBe(true);
  });

  it('liveup-agent holds the bundled agent, launchers, units, D-Bus policy and a conffile', async () => {
    const list = (await run('dpkg-deb', ['-c', agentDeb])).stdout;
    const paths = list.split('\n').map((l) => l.split(/\s+/).slice(5).join(' ')).filter(Boolean);
    const has = (p: string) => expect(paths.some((x) => x === `./${p}` || x.startsWith(`./${p} -> `))).toBe(true);
    has('usr/bin/agentctl');
    has('usr/sbin/liveup-agentd');
    has('usr/lib/liveup/bin/agentctl');
    has('usr/lib/liveup/bin/liveup-agentd');
    has('usr/lib/liveup/package.json');
    // One ES module per program (packaging/inline.mjs), openpgp still a chunk of its own (loaded on first use).
    has('usr/lib/liveup/app/liveup-agentd.js');
    has('usr/lib/liveup/app/agentctl.js');
    has('usr/lib/liveup/app/liveup-boot-check.js');
    has('usr/lib/liveup/bin/liveup-boot-check-via-agent');
    expect(paths.some((p) => /^\.\/usr\/lib\/liveup\/app\/chunks\/openpgp-[\w-]+\.js$/.test(p))).toBe(true);
    // The startup snapshot entries of the two programs on the switches' critical path (packaging/snapshot.mjs).
    has('usr/lib/liveup/app/snapshot/agentctl.cjs');
    has('usr/lib/liveup/app/snapshot/liveup-agentd.cjs');
    // The native addon stays a package; an inlined one keeps only its licence.
    has('usr/lib/liveup/node_modules/better-sqlite3/build/Release/better_sqlite3.node');
    has('usr/lib/liveup/node_modules/dbus-next/LICENSE');
    expect(paths.filter((p) => p.startsWith('./usr/lib/liveup/node_modules/dbus-next/') && !p.endsWith('/'))).toEqual(['./usr/lib/liveup/node_modules/dbus-next/LICENSE']);
    has('usr/lib/systemd/system/liveup-agent.service');
    // Prefix drop-ins keeping systemd from unmounting what the running (or next) root sits on.
    has('usr/lib/systemd/system/run-live-.mount.d/liveup.conf');
    has('usr/lib/systemd/system/run-liveup-.mount.d/liveup.conf');
    has('usr/lib/tmpfiles.d/liveup.conf');
    has('usr/share/dbus-1/system.d/org.liveup.Agent1.conf');
    has('etc/liveup/agent.json');
    has('usr/share/doc/liveup-agent/copyright');
    has('usr/share/man/man8/agentctl.8.gz');
    // Only runtime: no dev dependencies, no install-time tools, no build intermediates.
    for (const p of paths) {
      expect(p).not.toMatch(/node_modules\/(typescript|vitest|@types|prebuild-install|node-gyp)\//);
      expect(p).not.toMatch(/better-sqlite3\/(deps|src)\/|build\/Release\/obj/);
    }
    expect(paths.some((p) => p.startsWith('./usr/lib/liveup/dist/'))).toBe(false);
    // Every initramfs-hooks/ file is shipped where initramfs-tools looks.
    const hooksDir = join(ROOT, 'initramfs-hooks/hooks');
    if (existsSync(hooksDir)) for (const f of readdirSync(hooksDir)) has(`usr/share/initramfs-tools/hooks/${f}`);
    expect(list).toMatch(/-rwxr-xr-x root\/root .* \.\/usr\/lib\/liveup\/bin\/agentctl/);

    const info = (await run('dpkg-deb', ['-I', agentDeb])).stdout.replace(/^ /gm, '');
    expect(controlField(info, 'Package')).toBe('liveup-agent');
    expect(controlField(info, 'Architecture')).toBe('amd64');
    const depends = dependsNames(controlField(info, 'Depends'));
    for (const d of ['nodejs', 'kexec-tools', 'squashfs-tools', 'grub-common', 'dbus', 'live-boot', 'util-linux-extra', 'libc6']) expect(depends).toContain(d);
    expect(controlField(info, 'Depends')).toMatch(/nodejs \(>= 20\.19~\), nodejs \(<< 21~\)/);

    const ctl = await mkdtemp(join(tmpdir(), 'liveup-ctl-'));
    try {
      await run('dpkg-deb', ['-e', agentDeb, ctl]);
      expect((await readFile(join(ctl, 'conffiles'), 'utf8')).trim().split('\n')).toEqual(['/etc/liveup/agent.json']);
      const postinst = await readFile(join(ctl, 'postinst'), 'utf8');
      expect(postinst).toMatch(/addgroup --system --quiet liveup/);
      expect(postinst).toMatch(/deb-systemd-helper enable/);
      expect(postinst).toMatch(/daemon-reload/);
      expect(await readFile(join(ctl, 'postrm'), 'utf8')).toMatch(/"\$1" = "purge"[\s\S]*rm -rf \/var\/lib\/liveup/);
      const triggers = await readFile(join(ctl, 'triggers'), 'utf8');
      if (existsSync(hooksDir) && readdirSync(hooksDir).length) expect(triggers).toMatch(/activate-noawait update-initramfs/);
      expect(triggers).toMatch(/^interest-noawait \/usr\/bin\/node$/m);
      await run('sh', ['-n', join(ctl, 'postinst')]);
      await run('sh', ['-n', join(ctl, 'prerm')]);
      await run('sh', ['-n', join(ctl, 'postrm')]);
    } finally {
      await rm(ctl, { recursive: true, force: true });
    }
    // The conffile is a template the daemon's parser accepts once completed.
    const tmpl = JSON.parse((await sh(`dpkg-deb --fsys-tarfile '${agentDeb}' | tar -xOf - ./etc/liveup/agent.json`)).stdout) as Record<string, unknown>;
    expect(tmpl).toMatchObject({ channel: expect.any(String), keyring: '/etc/liveup/keyring.asc' });
  });

  it('liveup-publisher holds the liveup command, the fleet endpoint\'s SQLite addon, and the agent .deb the factory installs', async () => {
    const list = (await run('dpkg-deb', ['-c', publisherDeb])).stdout;
    expect(list).toMatch(/\.\/usr\/bin\/liveup -> \.\.\/lib\/liveup-publisher\/bin\/liveup/);
    expect(list).toMatch(/\.\/usr\/lib\/liveup-publisher\/dist\/publisher\/src\/cli\.js/);
    expect(list).toMatch(/\.\/usr\/lib\/liveup-publisher\/node_modules\/openpgp\//);
    expect(list).toMatch(/\.\/usr\/lib\/liveup-publisher\/node_modules\/better-sqlite3\/build\/Release\/better_sqlite3\.node$/m);
    expect(list).toMatch(new RegExp(`\\./usr/share/liveup/${basename(agentDeb).replace(/[.~+]/g, '\\$&')}$`, 'm'));
    const info = (await run('dpkg-deb', ['-f', publisherDeb, 'Architecture', 'Depends'])).stdout;
    expect(info).toMatch(/Architecture: amd64/);
    expect(info).toMatch(/Depends: nodejs \(>= 20\.19~\)/);
    for (const d of ['debootstrap', 'squashfs-tools', 'zstd']) expect(info).toContain(d);
  });

  it.skipIf(!existsSync('/usr/bin/lintian'))('lintian reports no errors and no warnings (the deliberate ones are overridden, with reasons)', async () => {
    const r = await run('lintian', ['--no-tag-display-limit', agentDeb, publisherDeb], { allowFail: true });
    const errors = r.stdout.split('\n').filter((l) => /^[EW]: /.test(l));
    expect(errors).toEqual([]);
    // lintian fails (exit 1) on errors by default, and exits 2 when it breaks.
    expect(r.code, r.stderr).toBe(0);
  }, 120_000);

  it('installs with dpkg -i into a trixie chroot, where agentctl, liveup-agentd and liveup run; purge cleans up', async () => {
    const agentDepends = dependsNames((await run('dpkg-deb', ['-f', agentDeb, 'Depends'])).stdout.replace(/^Depends: /, ''));
    const pubDepends = dependsNames((await run('dpkg-deb', ['-f', publisherDeb, 'Depends'])).stdout.replace(/^Depends: /, ''));
    const packages = [...new Set([...agentDepends, ...pubDepends])].sort();
    const root = await mkdtemp(join(tmpdir(), 'liveup-chroot-'));
    try {
      await preparedChroot(packages, root);
      await copyFile(agentDeb, join(root, 'tmp', basename(agentDeb)));
      await copyFile(publisherDeb, join(root, 'tmp', basename(publisherDeb)));
      await withMounts(root, async () => {
        // Depends are all there already: dpkg -i alone must succeed (no apt -f).
        await inChroot(root, `dpkg -i /tmp/${basename(agentDeb)} /tmp/${basename(publisherDeb)}`);
        const status = await inChroot(root, "dpkg-query -W -f='${Status} ${Version}\\n' liveup-agent liveup-publisher");
        expect(status.stdout).toBe('install ok installed 0.1.0~test1\ninstall ok installed 0.1.0~test1\n');

        const ctl = await inChroot(root, 'agentctl --help');
        expect(ctl.stdout).toMatch(/^Usage: agentctl <command>/);
        expect(ctl.stdout).toMatch(/rollback/);
        // The version comes from the package.json the bundled program finds above app/.
        expect((await inChroot(root, 'agentctl --version')).stdout).toBe('agentctl 0.1.0\n');
        // Startup snapshots: none until built on the machine (liveup-agentd builds them
        // after its start); then the launchers start from them, and the programs answer
        // the same from the snapshot and from the bundle.
        const missing = await inChroot(root, 'LIVEUP_SNAPSHOT=status agentctl', { allowFail: true });
        expect(missing.code).toBe(1);
        expect(missing.stdout).toMatch(/^agentctl: its startup snapshot \/var\/lib\/liveup\/snapshot\/agentctl\.blob is missing: starts from the bundle/);
        for (const p of ['agentctl', 'liveup-agentd']) {
          await inChroot(root, `LIVEUP_SNAPSHOT=build /usr/lib/liveup/bin/${p}`);
          const snap = await inChroot(root, `LIVEUP_SNAPSHOT=status ${p}`, { allowFail: true });
          expect(snap.code, snap.stdout + snap.stderr).toBe(0);
          expect(snap.stdout).toBe(`${p}: starts from its startup snapshot /var/lib/liveup/snapshot/${p}.blob\n`);
        }
        expect((await inChroot(root, 'agentctl --version')).stdout).toBe('agentctl 0.1.0\n');
        expect((await inChroot(root, 'LIVEUP_SNAPSHOT=off agentctl --version')).stdout).toBe('agentctl 0.1.0\n');
        // What an image's mksquashfs does to files (new inode numbers, mtimes clamped) keeps it valid.
        await inChroot(root, 'for f in /usr/bin/node /var/lib/liveup/snapshot/agentctl.blob /usr/lib/liveup/app/snapshot/agentctl.cjs; do cp -p $f $f.new && mv $f.new $f && touch -d @0 $f; done');
        expect((await inChroot(root, 'LIVEUP_SNAPSHOT=status agentctl')).stdout).toMatch(/starts from its startup snapshot/);
        // A snapshot that no longer matches what it was built for (here the blob was
        // overwritten; a new node, agent or CPU does the same) is not run: the bundle is.
        await inChroot(root, 'echo junk > /var/lib/liveup/snapshot/agentctl.blob');
        const stale = await inChroot(root, 'LIVEUP_SNAPSHOT=status agentctl', { allowFail: true });
        expect(stale.code).toBe(1);
        expect(stale.stdout).toMatch(/^agentctl: its startup snapshot \S+ is stale .*: starts from the bundle; LIVEUP_SNAPSHOT=build \S+ rebuilds it\n$/);
        expect((await inChroot(root, 'agentctl --version')).stdout).toBe('agentctl 0.1.0\n');
        // A new node (its package's files under /usr/bin/node) triggers the rebuild of those there.
        await inChroot(root, 'dpkg-trigger --no-await /usr/bin/node && dpkg --triggers-only --pending');
        expect((await inChroot(root, 'LIVEUP_SNAPSHOT=status agentctl')).stdout).toMatch(/starts from its startup snapshot/);
        expect((await inChroot(root, 'LIVEUP_SNAPSHOT=bogus agentctl', { allowFail: true })).code).toBe(2);
        const daemon = await inChroot(root, 'liveup-agentd --help');
        expect(daemon.stdout).toMatch(/^Usage: liveup-agentd/);
        expect(daemon.stdout).toMatch(/\/etc\/liveup\/agent\.json/);
        const pub = await inChroot(root, 'liveup --help');
        expect(pub.stdout).toMatch(/^Usage: liveup <command>/);
        // The addon loads under Debian's own node (same ABI as the build's).
        const sqlite = await inChroot(root, "cd /usr/lib/liveup && node -e \"const D=require('better-sqlite3'); const d=new D(':memory:'); console.log(d.prepare('select 1 as one').get().one)\"");
        expect(sqlite.stdout.trim()).toBe('1');
        // No daemon is reachable in a chroot: agentctl says so with exit 3.
        const st = await inChroot(root, 'agentctl status', { allowFail: true });
        expect(st.code).toBe(3);

        // The unit's ExecStart exists and systemd accepts the unit.
        const verify = await inChroot(root, 'systemd-analyze verify --man=no /usr/lib/systemd/system/liveup-agent.service', { allowFail: true });
        expect(verify.code, verify.stdout + verify.stderr).toBe(0);
        expect((await inChroot(root, "sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/liveup-agent.service")).stdout.trim()).toBe('/usr/sbin/liveup-agentd');

        // postinst: group, state dirs, unit enabled (not started: policy-rc.d, no systemd).
        expect((await inChroot(root, 'getent group liveup')).stdout).toMatch(/^liveup:x:\d+:/);
        expect((await inChroot(root, "stat -c '%a %U %G' /var/lib/liveup /var/lib/liveup/inbox")).stdout).toBe('750 root liveup\n770 root liveup\n');
        expect((await inChroot(root, 'readlink /etc/systemd/system/multi-user.target.wants/liveup-agent.service')).stdout.trim())
          .toBe('/usr/lib/systemd/system/liveup-agent.service');
        // The writable boot medium and the boot check are enabled with it.
        expect((await inChroot(root, 'readlink /etc/systemd/system/local-fs.target.wants/liveup-boot-medium.service')).stdout.trim())
          .toBe('/usr/lib/systemd/system/liveup-boot-medium.service');
        expect((await inChroot(root, 'readlink /etc/systemd/system/boot-complete.target.requires/liveup-boot-check.service')).stdout.trim())
          .toBe('/usr/lib/systemd/system/liveup-boot-check.service');
        for (const u of ['liveup-boot-medium.service', 'liveup-boot-check.service']) {
          const v = await inChroot(root, `systemd-analyze verify --man=no /usr/lib/systemd/system/${u}`, { allowFail: true });
          expect(v.code, v.stdout + v.stderr).toBe(0);
        }
        // The boot check unit's program: no agent answers in a chroot, so the check runs itself
        // (nothing was booted by liveup here: it says so and passes).
        const unitProgram = (await inChroot(root, "sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/liveup-boot-check.service")).stdout.trim();
        expect(unitProgram).toBe('/usr/lib/liveup/bin/liveup-boot-check-via-agent');
        const alone = await inChroot(root, `DBUS_SYSTEM_BUS_ADDRESS=unix:path=/nonexistent ${unitProgram}`, { allowFail: true });
        expect(alone.code, alone.stdout + alone.stderr).toBe(0);
        expect(alone.stderr).toMatch(/the agent did not run the check \(.+\); running it here/);
        expect(alone.stdout).toMatch(/not a liveup generation/);

        // remove keeps config and state; purge removes both and the enablement.
        await inChroot(root, 'echo journal > /var/lib/liveup/journal.db && dpkg -r liveup-agent');
        expect((await inChroot(root, 'ls /etc/liveup/agent.json /var/lib/liveup/journal.db')).stdout).toMatch(/journal\.db/);
        expect((await inChroot(root, 'ls -d /var/lib/liveup/snapshot 2>&1 || true')).stdout).toMatch(/No such file or directory/); // caches of the removed programs
        await inChroot(root, 'dpkg -P liveup-agent');
        const gone = await inChroot(root, 'ls -d /etc/liveup /var/lib/liveup /etc/systemd/system/multi-user.target.wants/liveup-agent.service /usr/lib/liveup 2>&1 || true');
        expect(gone.stdout.match(/No such file or directory/g)?.length).toBe(4);
      });
    } finally {
      await removeTree(root);
    }
  }, 300_000);
});
