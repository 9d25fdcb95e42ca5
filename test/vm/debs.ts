/**
 * Packages the VM scenarios need and Debian cannot give them (every package
 * in trixie is already at its newest version in generation 1):
 * - `liveup-vm-svc`, a small service of our own, 1.0 in generation 1 and 1.1
 *   in generation 2, so a live replay upgrades what a running service maps;
 * - libc6 rebuilt with a higher version (the same files), so a generation
 *   changes libc6 only — what the decision engine switches with soft-reboot.
 * Built with dpkg-deb, deterministic for the same inputs (SOURCE_DATE_EPOCH).
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';

/** A fixed build time for every .deb the VM suite makes: same inputs, same bytes, same cache key. */
export const DPKG_ENV = { ...process.env, SOURCE_DATE_EPOCH: '1700000000' };

/** The service's unit: its own binary, so a replay that replaces it must restart it. */
export const SVC = 'liveup-vm-svc';

/**
 * Build `out` in a directory of this process's own and rename it into place:
 * two test files (two VM slots) may want the same .deb at once, and neither may
 * see the other's half-written tree or file (a shared tree once made both fail).
 */
function buildAtomically(outDir: string, out: string, build: (work: string, tmpOut: string) => void): string {
  mkdirSync(outDir, { recursive: true });
  const work = mkdtempSync(join(outDir, '.build-'));
  try {
    const tmpOut = join(work, basename(out));
    build(work, tmpOut);
    renameSync(tmpOut, out);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return out;
}

export function serviceDeb(outDir: string, version: string): string {
  const out = join(outDir, `${SVC}_${version}_amd64.deb`);
  if (existsSync(out)) return out;
  return buildAtomically(outDir, out, (work, tmpOut) => {
    const root = join(work, 'tree');
    mkdirSync(join(root, 'DEBIAN'), { recursive: true });
    writeFileSync(join(root, 'DEBIAN', 'control'), [
      `Package: ${SVC}`, `Version: ${version}`, 'Architecture: amd64', 'Maintainer: liveup tests <tests@liveup.invalid>',
      'Depends: libc6', `Description: liveup VM test service (${version})`, '',
    ].join('\n'));
    // The daemon is a copy of sleep(1) with the version appended (an ELF ignores trailing bytes):
    // a real executable the service's process maps, with different bytes in each version.
    const bin = join(root, 'usr', 'libexec', SVC, `${SVC}d`);
    mkdirSync(join(bin, '..'), { recursive: true });
    copyFileSync('/bin/sleep', bin);
    writeFileSync(bin, Buffer.concat([readFileSync(bin), Buffer.from(`\nliveup-vm-svc ${version}\n`)]));
    chmodSync(bin, 0o755);
    const unitDir = join(root, 'usr', 'lib', 'systemd', 'system');
    mkdirSync(unitDir, { recursive: true });
    writeFileSync(join(unitDir, `${SVC}.service`), [
      '[Unit]', `Description=liveup VM test service`, '[Service]', `ExecStart=/usr/libexec/${SVC}/${SVC}d infinity`, '[Install]', 'WantedBy=multi-user.target', '',
    ].join('\n'));
    // Enabled by the package itself (no maintainer script needed, in the build chroot or live).
    const wants = join(root, 'etc', 'systemd', 'system', 'multi-user.target.wants');
    mkdirSync(wants, { recursive: true });
    symlinkSync(`/usr/lib/systemd/system/${SVC}.service`, join(wants, `${SVC}.service`));
    execFileSync('dpkg-deb', ['--root-owner-group', '-Zxz', '--build', root, tmpOut], { stdio: 'ignore', env: DPKG_ENV });
  });
}

/**
 * `pkg` (from source package `source`) at `version`, downloaded from Debian's pool
 * (debootstrap's packages are not in the factory's archive cache), rebuilt as
 * `version+suffix` with the same files and control data: an upgrade apt and dpkg
 * take like any other.
 */
export async function rebuiltDeb(outDir: string, source: string, pkg: string, version: string, suffix: string): Promise<string> {
  const enc = version.replace(/:/g, '%3a');
  const newVersion = `${version}${suffix}`;
  const out = join(outDir, `${pkg}_${newVersion.replace(/:/g, '%3a')}_amd64.deb`);
  if (existsSync(out)) return out;
  const prefix = source.startsWith('lib') ? source.slice(0, 4) : source[0]!;
  const url = `http://deb.debian.org/debian/pool/main/${prefix}/${source}/${pkg}_${version.replace(/^\d+:/, '')}_amd64.deb`;
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status} (is ${pkg} ${version} still in Debian's pool?)`);
  const bytes = Buffer.from(await res.arrayBuffer());
  return buildAtomically(outDir, out, (work, tmpOut) => {
    const orig = join(work, `${pkg}_${enc}_amd64.deb`);
    writeFileSync(orig, bytes);
    const root = join(work, 'tree');
    execFileSync('dpkg-deb', ['-R', orig, root]);
    const control = join(root, 'DEBIAN', 'control');
    writeFileSync(control, readFileSync(control, 'utf8').replace(/^Version: .*$/m, `Version: ${newVersion}`));
    execFileSync('dpkg-deb', ['-Zxz', '--build', root, tmpOut], { stdio: 'ignore', env: DPKG_ENV });
  });
}
