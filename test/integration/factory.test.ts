/**
 * `liveup build` and `liveup derive` as a user runs them: a real debootstrap,
 * apt against deb.debian.org, real mounts and a real squashfs. Slow, so one
 * build is shared by the file; the minbase tarball and the .deb files are
 * cached in /var/cache/liveup/factory, which makes reruns much faster.
 * Needs root and the Debian archive; set LIVEUP_SKIP_FACTORY=1 to skip.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { collect, runCli, startCli } from '../helpers/cli.js';
import { mountsUnder } from '../../publisher/src/factory/chroot.js';

const skip = process.getuid?.() !== 0 || process.env.LIVEUP_SKIP_FACTORY === '1';
const LONG = 600_000;

interface Change { action: string; package: string; version?: string; from?: string; deb?: string }
interface GenJson { name: string; parent: number | null; kernel: { version: string; cmdline: string }; changes: Change[]; rebootRequired: { required: boolean; reasons: string[] }; squashfs: { algorithm: string; level?: number } }

async function genJson(dir: string): Promise<GenJson> {
  return JSON.parse(await readFile(join(dir, 'generation.json'), 'utf8')) as GenJson;
}

function listing(squashfs: string): string[] {
  return execFileSync('unsquashfs', ['-lls', squashfs], { maxBuffer: 256 << 20 }).toString().split('\n').map((x) => x.replace(' squashfs-root/', ' /'));
}

function cli(args: string[]) {
  return runCli('liveup', args);
}

describe.skipIf(skip)('liveup build / derive (real debootstrap and apt)', () => {
  let dir: string;
  let gen1: string;
  let kver: string;
  let built: { name: string; kernel: string; resolved: Record<string, string>; timings: Record<string, number> };
  const repo = () => join(dir, 'repo');

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'liveup-factory-'));
    await mkdir(join(dir, 'profile', 'hooks'), { recursive: true });
    await writeFile(join(dir, 'profile', 'hooks', 'stamp.sh'), '#!/bin/sh\nset -e\necho "$LIVEUP_PROFILE_NAME $LIVEUP_PROFILE_VERSION" > /etc/liveup-stamp\n', { mode: 0o755 });
    await writeFile(join(dir, 'profile', 'test.json'), JSON.stringify({
      format: 1, name: 'factory-test', version: '1.0', machine: 'virtual',
      packages: ['less>=1'], persistent: ['/etc/ssh', '/var/lib/app'], hooks: ['hooks/stamp.sh'],
      // Level 3: the test is about content, not ratio; it keeps mksquashfs fast.
      compression: { algorithm: 'zstd', level: 3 },
    }));
    gen1 = join(dir, 'gen1');
    const r = await cli(['build', '--profile', join(dir, 'profile', 'test.json'), '--out', gen1, '--json']);
    if (r.code !== 0) throw new Error(`build failed (${r.code}):\n${r.stderr.slice(-4000)}\n${r.stdout}`);
    built = JSON.parse(r.stdout) as typeof built;
    kver = built.kernel;
    process.stderr.write(`factory test build timings (s): ${JSON.stringify(built.timings)}\n`);
  }, LONG);

  afterAll(async () => {
    if (dir) {
      expect(await mountsUnder(dir)).toEqual([]);
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('builds a GENDIR whose squashfs holds the kernel modules, live-boot, the profile package and persistence links', async () => {
    expect((await readdir(gen1)).sort()).toEqual(['filesystem.squashfs', 'generation.json', 'initrd.img', 'packages.json', 'vmlinuz']);
    expect(kver).toMatch(/^\d+\.\d+\.\d+.*-amd64$/);
    const l = listing(join(gen1, 'filesystem.squashfs'));
    const has = (re: RegExp) => l.some((x) => re.test(x));
    expect(has(new RegExp(`^d\\S+ .* /(usr/)?lib/modules/${kver.replace(/[.+]/g, '\\$&')}$`))).toBe(true);
    expect(has(/ \/usr\/lib\/live\/boot\/9990-overlay\.sh$/)).toBe(true);
    expect(has(/ \/usr\/share\/initramfs-tools\/scripts\/live$/)).toBe(true);
    expect(has(/ \/usr\/bin\/less$/)).toBe(true);
    // The factory installed the agent (profile "agent" defaults to true): daemon, CLI, units, initramfs hooks.
    expect(has(/ \/usr\/sbin\/liveup-agentd -> /)).toBe(true);
    expect(has(/ \/usr\/lib\/systemd\/system\/liveup-agent\.service$/)).toBe(true);
    expect(has(/ \/usr\/share\/initramfs-tools\/scripts\/init-bottom\/liveup$/)).toBe(true);
    expect(built.resolved['liveup-agent']).toMatch(/^\d/);
    expect(has(/^l\S+ .* \/etc\/ssh -> \/var\/lib\/liveup\/persist\/etc\/ssh$/)).toBe(true);
    expect(has(/^l\S+ .* \/var\/lib\/app -> \/var\/lib\/liveup\/persist\/var\/lib\/app$/)).toBe(true);
    expect(has(/ \/usr\/lib\/tmpfiles\.d\/liveup-persist\.conf$/)).toBe(true);
    expect(has(/ \/etc\/liveup-stamp$/)).toBe(true);
    // Cleaned: no apt lists, no build resolver, no policy-rc.d; API filesystems empty.
    expect(has(/ \/var\/lib\/apt\/lists\/deb\.debian\.org/)).toBe(false);
    expect(has(/ \/usr\/sbin\/policy-rc\.d$/)).toBe(false);
    expect(has(/ \/proc\/./)).toBe(false);
    // Timestamps are all 0 (-all-time 0): reproducible images.
    expect(l.filter((x) => x.includes(' /etc/')).every((x) => x.includes('1970-01-01'))).toBe(true);
    // With every mtime 0 systemd would rebuild the linker cache and the journal catalog at every
    // boot (ConditionNeedsUpdate): rebuilt at build time, the units masked.
    for (const unit of ['ldconfig', 'systemd-journal-catalog-update', 'systemd-update-done']) {
      expect(has(new RegExp(`^l\\S+ .* /etc/systemd/system/${unit}\\.service -> /dev/null$`)), unit).toBe(true);
    }
    expect(has(/ \/etc\/ld\.so\.cache$/)).toBe(true);

    const pk = JSON.parse(await readFile(join(gen1, 'packages.json'), 'utf8')) as { format: number; packages: Record<string, string> };
    expect(pk.format).toBe(1);
    for (const p of ['less', 'linux-image-amd64', 'live-boot', 'kmod', 'udev', 'systemd-sysv']) expect(pk.packages[p], p).toBeTruthy();
    expect(built.resolved.less).toBe(pk.packages.less);

    const g = await genJson(gen1);
    expect(g).toMatchObject({ name: 'factory-test-1.0', parent: null, kernel: { version: kver, cmdline: 'boot=live components quiet' }, squashfs: { algorithm: 'zstd', level: 3 } });
    // vmlinuz is the real bzImage, not a symlink copy of something else.
    expect((await readFile(join(gen1, 'vmlinuz'))).toString('latin1', 0x202, 0x206)).toBe('HdrS');
    expect(readdirSafe(dir).filter((n) => n.includes('.tmp-'))).toEqual([]);
  });

  it('publishes the build, then derives from the channel (verified): install hello, remove less', async () => {
    expect((await cli(['key', 'generate', '--out', join(dir, 'keys'), '--name', 'ops'])).code).toBe(0);
    const pub = await cli(['publish', '--repo', repo(), '--channel', 'stable', '--key', join(dir, 'keys', 'ops.key.asc'), gen1]);
    expect(pub.code, pub.stderr).toBe(0);

    const gen2 = join(dir, 'gen2');
    const r = await cli(['derive', '--from', repo(), '--channel', 'stable', '--keyring', join(dir, 'keys', 'ops.pub.asc'),
      '--install', 'hello', '--remove', 'less', '--out', gen2, '--json']);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    expect(r.stderr).toContain('verified against the pinned key');
    const g = await genJson(gen2);
    expect(g.parent).toBe(1);
    const hello = g.changes.find((c) => c.package === 'hello');
    const less = g.changes.find((c) => c.package === 'less');
    expect(hello).toMatchObject({ action: 'install', version: expect.stringMatching(/^\d/), deb: expect.stringMatching(/^debs\/hello_.*\.deb$/) });
    expect(execFileSync('dpkg-deb', ['-f', join(gen2, hello!.deb!), 'Package', 'Version']).toString())
      .toBe(`Package: hello\nVersion: ${hello!.version}\n`);
    const pk1 = JSON.parse(await readFile(join(gen1, 'packages.json'), 'utf8')) as { packages: Record<string, string> };
    expect(less).toEqual({ action: 'remove', package: 'less', from: pk1.packages.less });
    expect(g.changes).toHaveLength(2);
    expect(g.rebootRequired).toEqual({ required: false, reasons: [] });
    expect(g.squashfs).toMatchObject({ algorithm: 'zstd', level: 3 });
    const l = listing(join(gen2, 'filesystem.squashfs'));
    expect(l.some((x) => / \/usr\/bin\/hello$/.test(x))).toBe(true);
    expect(l.some((x) => / \/usr\/bin\/less$/.test(x))).toBe(false);
    expect(l.some((x) => / \/etc\/systemd\/system\/ldconfig\.service -> \/dev\/null$/.test(x))).toBe(true);
    // The child is publishable: its parent is in the channel and every .deb is there.
    const pub2 = await cli(['publish', '--repo', repo(), '--channel', 'stable', '--key', join(dir, 'keys', 'ops.key.asc'), gen2]);
    expect(pub2.code, pub2.stderr).toBe(0);
    const manifest = JSON.parse(await readFile(join(repo(), 'generations', '2', 'manifest.json'), 'utf8')) as { changes: { action: string }[]; parent: number };
    expect(manifest.parent).toBe(1);
    expect(manifest.changes.map((c) => c.action)).toEqual(g.changes.map((c) => c.action));
  }, LONG);

  it('derives a kernel change: a second kernel flavour makes rebootRequired true with reason kernel', async () => {
    const gen3 = join(dir, 'gen3');
    const r = await cli(['derive', '--from', join(repo(), 'generations', '2'), '--install', 'linux-image-cloud-amd64', '--out', gen3]);
    expect(r.code, r.stderr.slice(-3000) + r.stdout.slice(-3000)).toBe(0);
    const g = await genJson(gen3);
    expect(g.parent).toBe(2);
    expect(g.rebootRequired.required).toBe(true);
    expect(g.rebootRequired.reasons).toContain('kernel');
    const imgs = g.changes.filter((c) => c.package.startsWith('linux-image-'));
    expect(imgs.map((c) => c.package)).toContain('linux-image-cloud-amd64');
    expect(imgs.every((c) => c.action === 'install' && existsSync(join(gen3, c.deb!)))).toBe(true);
    // The unversioned metapackage depends on the versioned image: dpkg unpacked that first.
    expect(g.changes.findIndex((c) => c.package === 'linux-image-cloud-amd64'))
      .toBeGreaterThan(g.changes.findIndex((c) => /^linux-image-\d/.test(c.package)));
  }, LONG);

  it('derives from a local .deb: apt brings its dependency from the archive, both are recorded with their files', async () => {
    // A publisher's own package: one file, depending on a package from Debian (sl).
    const root = join(dir, 'ours-tree');
    await mkdir(join(root, 'DEBIAN'), { recursive: true });
    await mkdir(join(root, 'usr', 'share', 'ours'), { recursive: true });
    await writeFile(join(root, 'DEBIAN', 'control'), 'Package: ours\nVersion: 2.0-1\nArchitecture: all\nMaintainer: t <t@liveup.invalid>\nDepends: sl\nDescription: a local package\n');
    await writeFile(join(root, 'usr', 'share', 'ours', 'README'), 'ours 2.0\n');
    const deb = join(dir, 'ours-2.0.deb'); // not apt's file name: the record must not depend on it
    execFileSync('dpkg-deb', ['--root-owner-group', '--build', root, deb], { stdio: 'ignore' });
    const out = join(dir, 'gen-local');
    const r = await cli(['derive', '--from', join(repo(), 'generations', '2'), '--deb', deb, '--out', out]);
    expect(r.code, r.stderr.slice(-3000) + r.stdout.slice(-3000)).toBe(0);
    const g = await genJson(out);
    // sl (and what it needs, libncurses6) from the archive, then ours: dpkg's order, dependencies first.
    expect(g.changes.every((c) => c.action === 'install')).toBe(true);
    expect(g.changes.map((c) => c.package)).toContain('sl');
    expect(g.changes.at(-1)!.package).toBe('ours');
    const ours = g.changes.find((c) => c.package === 'ours')!;
    expect(ours).toMatchObject({ version: '2.0-1', deb: expect.stringMatching(/^debs\/ours_2\.0-1_all\.deb$/) });
    expect(execFileSync('dpkg-deb', ['-f', join(out, ours.deb!), 'Package', 'Version']).toString()).toBe('Package: ours\nVersion: 2.0-1\n');
    expect(g.rebootRequired).toEqual({ required: false, reasons: [] });
    const l = listing(join(out, 'filesystem.squashfs'));
    expect(l.some((x) => / \/usr\/share\/ours\/README$/.test(x))).toBe(true);
    expect(l.some((x) => /liveup-derive-debs/.test(x))).toBe(false); // the copy for apt is not in the image
    await rm(out, { recursive: true, force: true });
  }, LONG);

  it('refuses a --deb that is not a Debian package before unpacking anything', async () => {
    await writeFile(join(dir, 'broken.deb'), 'not an ar archive');
    const out = join(dir, 'gen-broken');
    const r = await cli(['derive', '--from', gen1, '--deb', join(dir, 'broken.deb'), '--out', out]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/broken\.deb: not a readable Debian package/);
    const missing = await cli(['derive', '--from', gen1, '--deb', join(dir, 'nope.deb'), '--out', out]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/nope\.deb: no such file/);
    expect(existsSync(out)).toBe(false);
    expect(readdirSafe(dir).filter((n) => n.startsWith('gen-broken'))).toEqual([]);
  });

  it('a physical machine gets firmware and CPU microcode from non-free-firmware', async () => {
    await writeFile(join(dir, 'profile', 'physical.json'), JSON.stringify({
      format: 1, name: 'factory-physical', version: '1.0', machine: 'physical', agent: false, compression: { algorithm: 'zstd', level: 1 },
    }));
    const out = join(dir, 'physical');
    const r = await cli(['build', '--profile', join(dir, 'profile', 'physical.json'), '--out', out, '--json']);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    const { packages } = JSON.parse(await readFile(join(out, 'packages.json'), 'utf8')) as { packages: Record<string, string> };
    expect(Object.keys(packages)).toEqual(expect.arrayContaining(['firmware-linux-free', 'intel-microcode', 'amd64-microcode', 'linux-image-amd64', 'live-boot']));
    const l = listing(join(out, 'filesystem.squashfs'));
    expect(l.some((x) => /\/lib\/firmware\/intel-ucode\//.test(x))).toBe(true);
    expect(l.some((x) => /\/lib\/firmware\/amd-ucode\//.test(x))).toBe(true);
    await rm(out, { recursive: true, force: true });
  }, 2 * LONG);

  it('a failed build leaves no GENDIR, no temporary tree and no mounts, and removes a leftover tmp', async () => {
    await writeFile(join(dir, 'profile', 'bad.json'), JSON.stringify({ format: 1, name: 'bad', version: '1', machine: 'container', packages: ['no-such-package-liveup'] }));
    const out = join(dir, 'bad');
    await mkdir(`${out}.tmp-999999/rootfs`, { recursive: true });
    const r = await cli(['build', '--profile', join(dir, 'profile', 'bad.json'), '--out', out]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/BUILD_FAILED: .*no-such-package-liveup/s);
    expect(r.stdout).toContain('removing the leftover of an interrupted run');
    expect(readdirSafe(dir).filter((n) => n.startsWith('bad'))).toEqual([]);
    expect(await mountsUnder(dir)).toEqual([]);
  }, LONG);

  it('SIGINT during the package install unmounts everything and leaves nothing', async () => {
    await writeFile(join(dir, 'profile', 'int.json'), JSON.stringify({ format: 1, name: 'int', version: '1', machine: 'container', packages: ['less'] }));
    const out = join(dir, 'int');
    const child = startCli('liveup', ['build', '--profile', join(dir, 'profile', 'int.json'), '--out', out]);
    const done = collect(child);
    await new Promise<void>((ok) => {
      let seen = '';
      child.stdout!.on('data', (d: Buffer) => {
        seen += d.toString();
        if (seen.includes('==> install packages')) ok();
      });
    });
    // Mounts exist now; the signal must take them down.
    expect((await mountsUnder(dir)).length).toBeGreaterThan(0);
    child.kill('SIGINT');
    const r = await done;
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/BUILD_FAILED: interrupted by SIGINT/);
    expect(await mountsUnder(dir)).toEqual([]);
    expect(readdirSafe(dir).filter((n) => n.startsWith('int'))).toEqual([]);
  }, LONG);
});

function readdirSafe(d: string): string[] {
  try {
    return execFileSync('ls', ['-A', d]).toString().split('\n').filter(Boolean);
  } catch {
    return [];
  }
}
