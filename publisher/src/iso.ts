/**
 * `liveup iso`: a hybrid ISO 9660 image (BIOS and UEFI, CD/DVD or USB stick)
 * that boots one generation — the way to install or rescue a machine before
 * it has a boot partition of its own.
 *
 * The image's layout is the boot medium's (docs/formats.md): the generation
 * under `live/<version>/` and a `grub.cfg` rendered by the agent's own
 * renderer, so an ISO boots exactly as a staged generation does (live-boot's
 * `live-media-path`, `liveup.generation=`). grub-mkrescue does the El Torito
 * and hybrid MBR/GPT work with xorriso: it is what Debian's own tooling
 * (live-build, debian-cd) relies on, and it knows which GRUB platforms are
 * installed. Written to a temporary name and renamed: an interrupted or failed
 * run leaves no ISO behind.
 */
import { copyFile, link, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { LiveupError } from '../../agent/src/channel/errors.js';
import { renderBootMenu } from '../../agent/src/core/bootmenu.js';
import { BOOT_MEDIUM_FILES, GENDIR_FILES, SERIAL_CONSOLES, readGendirMeta, requireGendirFiles } from './generation.js';
import { run } from './exec.js';
import { onPath } from '../../agent/src/util/path.js';

/** GRUB platform directories the ISO can boot with, and the Debian package that ships each. */
export const GRUB_PLATFORMS = [
  { platform: 'i386-pc', firmware: 'bios', dir: '/usr/lib/grub/i386-pc', pkg: 'grub-pc-bin' },
  { platform: 'x86_64-efi', firmware: 'uefi', dir: '/usr/lib/grub/x86_64-efi', pkg: 'grub-efi-amd64-bin' },
] as const;

export interface IsoOptions {
  readonly gendir: string;
  readonly out: string;
  /**
   * The number the generation boots as (`live/<version>/`, `liveup.generation=`).
   * Default: the version of the published manifest in GENDIR, else 1.
   */
  readonly version?: number;
  /** GRUB and the kernel also on ttyS0 at 115200 baud (servers, QEMU). */
  readonly serial?: boolean;
  /** Extra kernel parameters, after the generation's own (e.g. `toram`). */
  readonly append?: string;
  readonly force?: boolean;
  readonly log?: (line: string) => void;
  /** Where GRUB's platform directories are looked up (tests); default GRUB_PLATFORMS' dirs. */
  readonly platformDirs?: Readonly<Record<'i386-pc' | 'x86_64-efi', string>>;
}

export interface IsoResult {
  readonly path: string;
  readonly bytes: number;
  readonly version: number;
  /** Firmware the image boots with, as its El Torito catalogue says. */
  readonly firmware: readonly ('bios' | 'uefi')[];
  readonly seconds: number;
}

/** The version of a published generation directory (REPO/generations/<v>/ holds its manifest). */
async function publishedVersion(gendir: string): Promise<number | undefined> {
  let text: string;
  try {
    text = await readFile(join(gendir, 'manifest.json'), 'utf8');
  } catch {
    return undefined;
  }
  const v = (JSON.parse(text) as { version?: unknown }).version;
  return typeof v === 'number' && Number.isInteger(v) && v > 0 ? v : undefined;
}

async function linkOrCopy(from: string, to: string): Promise<void> {
  try {
    await link(from, to);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'EXDEV' && code !== 'EPERM') throw e;
    await copyFile(from, to);
  }
}

/** `xorriso -report_el_torito plain` → the platforms of its boot images. */
export function parseElTorito(report: string): ('bios' | 'uefi')[] {
  const out = new Set<'bios' | 'uefi'>();
  for (const line of report.split('\n')) {
    const m = /^El Torito boot img\s*:\s*\d+\s+(\S+)/.exec(line);
    if (m?.[1] === 'BIOS') out.add('bios');
    if (m?.[1] === 'UEFI') out.add('uefi');
  }
  return [...out].sort();
}

export async function writeIso(o: IsoOptions): Promise<IsoResult> {
  const t0 = Date.now();
  const log = o.log ?? (() => undefined);
  const gendir = resolve(o.gendir);
  const out = resolve(o.out);
  await requireGendirFiles(gendir);
  if (!o.force && existsSync(out)) {
    throw new LiveupError('ALREADY_EXISTS', `${out} exists; pass --force to replace it`, { file: out });
  }
  const dirs = o.platformDirs ?? { 'i386-pc': GRUB_PLATFORMS[0].dir, 'x86_64-efi': GRUB_PLATFORMS[1].dir };
  const have = GRUB_PLATFORMS.filter((p) => existsSync(dirs[p.platform]));
  const lacking = GRUB_PLATFORMS.filter((p) => !have.includes(p));
  // A "hybrid" image that silently lacks one firmware would fail on the machine, not here.
  if (lacking.length) {
    throw new LiveupError('COMMAND_FAILED',
      `a BIOS and UEFI image needs GRUB for ${lacking.map((p) => p.platform).join(' and ')}: apt-get install ${lacking.map((p) => p.pkg).join(' ')}`,
      { missing: lacking.map((p) => p.pkg).join(',') });
  }
  for (const tool of ['grub-mkrescue', 'xorriso', 'mformat']) {
    if (!(await onPath(tool))) {
      const pkg = tool === 'mformat' ? 'mtools' : tool === 'xorriso' ? 'xorriso' : 'grub-common';
      throw new LiveupError('COMMAND_FAILED', `${tool} is needed to write an ISO: apt-get install ${pkg}`, { tool });
    }
  }

  const meta = await readGendirMeta(gendir);
  const version = o.version ?? (await publishedVersion(gendir)) ?? 1;
  if (!Number.isInteger(version) || version < 1) throw new LiveupError('INVALID_ARGUMENT', `--version must be a positive integer, got ${version}`);
  const kernelVersion = meta.kernel?.version ?? 'unknown';
  const consoles = o.serial ? SERIAL_CONSOLES : '';
  const cmdline = [meta.kernel?.cmdline ?? 'boot=live components', consoles, o.append ?? ''].join(' ').replace(/\s+/g, ' ').trim();

  const tree = join(dirname(out), `.${basename(out)}.tree-${process.pid}`);
  const tmp = join(dirname(out), `.${basename(out)}.tmp-${process.pid}`);
  try {
    await rm(tree, { recursive: true, force: true });
    const live = join(tree, 'live', String(version));
    await mkdir(live, { recursive: true });
    for (const f of BOOT_MEDIUM_FILES) {
      if (existsSync(join(gendir, f))) await linkOrCopy(join(gendir, f), join(live, f));
    }
    const menu = renderBootMenu({
      generations: [{ version, name: meta.name ?? basename(gendir), kernelVersion, cmdline, state: 'good' }],
      defaultVersion: version,
      tryVersion: null,
      // The one medium that has this generation: the ISO itself, as CD or as USB stick.
      root: { kind: 'file', path: `/live/${version}/${GENDIR_FILES.kernel}` },
      timeoutSeconds: 3,
      serial: o.serial === true,
      modules: ['part_msdos', 'part_gpt', 'iso9660'],
    });
    await mkdir(join(tree, 'boot', 'grub'), { recursive: true });
    await writeFile(join(tree, 'boot', 'grub', 'grub.cfg'), menu.text);

    log(`writing ${out} (generation ${version}, ${have.map((p) => p.firmware).join(' + ')}) with grub-mkrescue`);
    const volid = `LIVEUP_${version}`.slice(0, 32);
    await run('grub-mkrescue', ['-o', tmp, tree, '--', '-volid', volid], { log });
    const report = await run('xorriso', ['-indev', tmp, '-report_el_torito', 'plain']);
    const firmware = parseElTorito(report.stdout + report.stderr);
    const missing = have.filter((p) => !firmware.includes(p.firmware));
    if (missing.length) {
      throw new LiveupError('COMMAND_FAILED', `grub-mkrescue wrote no ${missing.map((p) => p.firmware).join('/')} boot image into ${out}`, { file: out });
    }
    await rename(tmp, out);
    const { size } = await stat(out);
    return { path: out, bytes: size, version, firmware, seconds: (Date.now() - t0) / 1000 };
  } finally {
    await rm(tree, { recursive: true, force: true });
    await rm(tmp, { force: true });
  }
}
