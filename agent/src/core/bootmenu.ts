/**
 * The boot menu: `grub.cfg` rendered from the journal's kept generations.
 *
 * Pure: model in, text out. The adapter that writes the file (atomically, on
 * the boot partition) and the one that edits `grubenv` live elsewhere.
 *
 * How a boot is chosen, in order (each step only narrows what the previous allowed):
 * 1. `default` is the last good generation, set *before* grubenv is read, so a
 *    missing or corrupt grubenv (load_env fails, variables stay empty) still boots it.
 * 2. `next_entry` (grub-reboot's one-shot variable) picks one entry for one boot.
 * 3. Otherwise a trial: `liveup_try_version` names the generation on trial and
 *    `liveup_tries_left` how many boots it still gets. GRUB has no arithmetic, so
 *    the decrement is an if/elif ladder over 1..MAX_TRIES.
 * 4. `fallback` lists the good entries by index (GRUB 2.06 ignores ids there)
 *    for when the chosen entry's kernel or initrd cannot be loaded.
 * 5. With `verify: 'sha512'` an entry loads its kernel and initrd only after
 *    GRUB's `hashsum` checked them and the squashfs against the generation's
 *    SHA512SUMS; otherwise the entry returns without loading anything, which
 *    GRUB counts as a failed boot: the fallback entry runs, in the same boot.
 *
 * Everything read from grubenv is compared against values this renderer wrote
 * itself (ids, indexes, versions, digits) and never used as-is: a damaged block
 * can at worst be ignored, never choose a failed or non-existent entry.
 * `load_env` is given a whitelist so a tampered grubenv cannot set `root`,
 * `prefix`, `default` or anything else.
 */
import { LiveupError } from '../channel/errors.js';
import { type GenerationState, assertVersion, byVersionDesc } from './generation.js';

/** Where GRUB finds the boot partition holding `/live/<version>/`. */
export type BootRoot =
  | { readonly kind: 'uuid'; readonly uuid: string }
  | { readonly kind: 'label'; readonly label: string }
  /** `search --file`: a marker file only the liveup boot medium has. */
  | { readonly kind: 'file'; readonly path: string };

export interface SerialConsole {
  readonly unit: number;
  readonly speed: number;
}

export interface BootMenuGeneration {
  readonly version: number;
  readonly name: string;
  readonly kernelVersion: string;
  /** The manifest's kernel command line; liveup appends its own parameters. */
  readonly cmdline: string;
  readonly state: GenerationState;
}

export interface BootMenuModel {
  /** Generations on the boot medium (any order; rendered newest first). */
  readonly generations: readonly BootMenuGeneration[];
  /** Last known good generation: the default entry and first fallback. */
  readonly defaultVersion: number;
  /** Newly staged generation on trial (boot counting through grubenv), or null. */
  readonly tryVersion: number | null;
  readonly root: BootRoot;
  readonly timeoutSeconds: number;
  /** `true` for ttyS0 at 115200 baud. GRUB then speaks on serial and on the screen. */
  readonly serial: boolean | SerialConsole;
  /** Directory on the boot partition holding one sub-directory per version. Default `/live`. */
  readonly liveDir?: string;
  /** `insmod` before `search`. Default: partition tables and ext2/3/4. */
  readonly modules?: readonly string[];
  /**
   * `sha512`: GRUB checks each entry's files against `<liveDir>/<v>/SHA512SUMS`
   * before loading them (catches a corrupt or truncated kernel, initrd or
   * squashfs before it runs; the list is as trusted as the medium it is on).
   * Default `off`.
   */
  readonly verify?: BootVerify;
}

export type BootVerify = 'off' | 'sha512';
export const BOOT_VERIFY_MODES: readonly BootVerify[] = ['off', 'sha512'];
/**
 * The agent's `grubVerify`: the two modes of this rendered menu, or
 * `signature`, where GRUB's menu is a static one inside the signed-boot GRUB
 * image (core/signedboot.ts) and the agent writes only grubenv.
 */
export type GrubVerify = BootVerify | 'signature';
export const GRUB_VERIFY_MODES: readonly GrubVerify[] = ['off', 'sha512', 'signature'];
/**
 * Journal setting holding the agent's `grubVerify`, so liveup-boot-check (which
 * re-renders the menu without the agent's config) keeps the same mode.
 */
export const VERIFY_SETTING = 'boot-menu-verify';
/** A generation's hash list on the boot medium, in `sha512sum` format (GRUB's `hashsum --check` reads it). */
export const SHA512SUMS_FILE = 'SHA512SUMS';

export interface BootMenuEntry {
  readonly index: number;
  readonly id: string;
  readonly version: number;
  readonly title: string;
}

export interface RenderedBootMenu {
  readonly text: string;
  /** In menu order: index i is GRUB's entry number i. */
  readonly entries: readonly BootMenuEntry[];
  readonly defaultIndex: number;
  /** First is the last good entry, then the older good ones, newest first. */
  readonly fallbackIndexes: readonly number[];
  readonly tryIndex: number | null;
}

/** Names of the grubenv variables the menu reads. The grubenv adapter and the agent use these. */
export const ENV_NEXT_ENTRY = 'next_entry';
export const ENV_TRY_VERSION = 'liveup_try_version';
export const ENV_TRIES_LEFT = 'liveup_tries_left';
/** The decrement ladder in grub.cfg covers 1..MAX_TRIES; one digit keeps it short. */
export const MAX_TRIES = 9;

export const DEFAULT_LIVE_DIR = '/live';
const DEFAULT_MODULES = ['part_msdos', 'part_gpt', 'ext2'] as const;
/** Kernel parameters liveup owns: any copy in a manifest's cmdline is dropped. */
const OWNED_PARAMS = ['live-media-path=', 'liveup.generation='] as const;

export function entryId(version: number): string {
  return `liveup-${version}`;
}

/** The grubenv variables that start a trial of `version` with `tries` boot attempts. */
export function trialEnv(version: number, tries: number): Record<string, string> {
  assertVersion(version, 'trial version');
  if (!Number.isInteger(tries) || tries < 1 || tries > MAX_TRIES) {
    throw new LiveupError('INVALID_ARGUMENT', `boot tries must be an integer from 1 to ${MAX_TRIES}, got ${tries}`);
  }
  return { [ENV_TRY_VERSION]: String(version), [ENV_TRIES_LEFT]: String(tries) };
}

/**
 * GRUB single-quoting: nothing inside '…' is special; a quote itself is written
 * as `'\''` (close, escaped quote, reopen), as grub-mkconfig does.
 */
export function grubQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

// Characters no GRUB word and no kernel parameter needs; a newline would end a command.
const CONTROL_RE = /[\u0000-\u001f\u007f]/;
const BARE_WORD_RE = /^[A-Za-z0-9._,:/=+@%-]+$/;

function bad(message: string, details: Record<string, string | number | boolean> = {}): never {
  throw new LiveupError('INVALID_ARGUMENT', `boot menu: ${message}`, details);
}

/**
 * Kernel parameters as GRUB words. GRUB's `linux` joins its arguments with spaces,
 * so a parameter with quotes or backslashes would reach the kernel re-escaped in
 * version-dependent ways: we refuse those rather than guess. Anything else that
 * GRUB's lexer would interpret (`$`, `;`, `{`, `#`…) is single-quoted.
 */
export function cmdlineWords(cmdline: string, version: number, liveDir: string = DEFAULT_LIVE_DIR): string[] {
  if (/["'\\]/.test(cmdline)) bad(`generation ${version}: quotes and backslashes are not supported in the kernel command line`, { version });
  return kernelParams(cmdline, version, liveDir).map((w) => (BARE_WORD_RE.test(w) ? w : grubQuote(w)));
}

/**
 * The kernel parameters a generation boots with — the same for its GRUB entry
 * and for a kexec into it: the manifest's command line (liveup's own
 * parameters dropped) then `live-media-path` and `liveup.generation`.
 */
export function kernelParams(cmdline: string, version: number, liveDir: string = DEFAULT_LIVE_DIR): string[] {
  if (CONTROL_RE.test(cmdline.replace(/[\t\n]/g, ' '))) bad(`generation ${version}: control character in kernel command line`, { version });
  return [
    ...cmdline.split(/\s+/).filter((w) => w.length > 0 && !OWNED_PARAMS.some((p) => w.startsWith(p))),
    `live-media-path=${liveDir}/${version}`,
    `liveup.generation=${version}`,
  ];
}

function titleFor(g: BootMenuGeneration): string {
  const clean = (s: string) => s.replace(/[\u0000-\u001f\u007f]+/g, ' ').trim();
  const kernel = clean(g.kernelVersion);
  return `liveup ${g.version}: ${clean(g.name) || 'unnamed'}${kernel ? ` (kernel ${kernel})` : ''} [${g.state}]`;
}

function searchCommand(root: BootRoot): string {
  switch (root.kind) {
    case 'uuid':
      if (!/^[0-9A-Fa-f-]{1,64}$/.test(root.uuid)) bad(`file system UUID ${JSON.stringify(root.uuid)} is not a UUID`);
      return `search --no-floppy --set=root --fs-uuid ${root.uuid}`;
    case 'label':
      if (root.label.length === 0 || CONTROL_RE.test(root.label)) bad('file system label is empty or has control characters');
      return `search --no-floppy --set=root --label ${grubQuote(root.label)}`;
    case 'file':
      if (!root.path.startsWith('/') || CONTROL_RE.test(root.path)) bad(`marker file ${JSON.stringify(root.path)} must be an absolute path`);
      return `search --no-floppy --set=root --file ${grubQuote(root.path)}`;
  }
}

/**
 * The console and menu lines both menus share (this one and signed boot's
 * static menu): GRUB on the serial port as well as the screen when asked,
 * and the menu's timeout.
 */
export function consoleLines(serial: SerialConsole | null, timeoutSeconds: number): string[] {
  return [
    ...(serial
      ? [
          `serial --unit=${serial.unit} --speed=${serial.speed} --word=8 --parity=no --stop=1`,
          'terminal_input serial console',
          'terminal_output serial console',
        ]
      : []),
    'set timeout_style=menu',
    `set timeout=${timeoutSeconds}`,
  ];
}

export function serialOf(s: boolean | SerialConsole): SerialConsole | null {
  if (s === false) return null;
  const c = s === true ? { unit: 0, speed: 115200 } : s;
  if (!Number.isInteger(c.unit) || c.unit < 0 || c.unit > 31) bad(`serial unit ${c.unit} out of range`);
  if (!Number.isInteger(c.speed) || c.speed < 50 || c.speed > 4_000_000) bad(`serial speed ${c.speed} out of range`);
  return c;
}

function validate(model: BootMenuModel): void {
  const seen = new Set<number>();
  for (const g of model.generations) {
    assertVersion(g.version, 'generation version');
    if (seen.has(g.version)) bad(`generation ${g.version} is listed twice`, { version: g.version });
    seen.add(g.version);
  }
  const find = (v: number) => model.generations.find((g) => g.version === v);
  assertVersion(model.defaultVersion, 'default version');
  const def = find(model.defaultVersion);
  if (!def) bad(`default generation ${model.defaultVersion} is not among the kept generations`, { version: model.defaultVersion });
  // Only a generation that passed its boot check may be what the machine boots unattended.
  if (def.state !== 'good') bad(`default generation ${def.version} is ${def.state}, not good`, { version: def.version, state: def.state });
  if (model.tryVersion !== null) {
    assertVersion(model.tryVersion, 'trial version');
    const t = find(model.tryVersion);
    if (!t) bad(`trial generation ${model.tryVersion} is not among the kept generations`, { version: model.tryVersion });
    if (t.version === def.version) bad(`trial generation ${t.version} is already the default`, { version: t.version });
    if (t.state !== 'staged' && t.state !== 'booted') bad(`trial generation ${t.version} is ${t.state}; only staged or booted ones are tried`, { version: t.version, state: t.state });
  }
  if (!Number.isInteger(model.timeoutSeconds) || model.timeoutSeconds < 0 || model.timeoutSeconds > 3600) {
    bad(`timeout ${model.timeoutSeconds} must be whole seconds from 0 to 3600`);
  }
  const liveDir = model.liveDir ?? DEFAULT_LIVE_DIR;
  if (!/^(\/[A-Za-z0-9._-]+)+$/.test(liveDir)) bad(`live directory ${JSON.stringify(liveDir)} must be an absolute path of plain names`);
  for (const m of model.modules ?? []) if (!/^[a-z0-9_]+$/.test(m)) bad(`module name ${JSON.stringify(m)} is not a GRUB module name`);
  if (model.verify !== undefined && !BOOT_VERIFY_MODES.includes(model.verify)) bad(`verify must be one of ${BOOT_VERIFY_MODES.join(', ')}, got ${JSON.stringify(model.verify)}`);
}

export function renderBootMenu(model: BootMenuModel): RenderedBootMenu {
  validate(model);
  const liveDir = model.liveDir ?? DEFAULT_LIVE_DIR;
  const gens = [...model.generations].sort(byVersionDesc);
  const entries: BootMenuEntry[] = gens.map((g, index) => ({ index, id: entryId(g.version), version: g.version, title: titleFor(g) }));
  const indexOf = (v: number): number => gens.findIndex((g) => g.version === v);
  const defaultIndex = indexOf(model.defaultVersion);
  const tryIndex = model.tryVersion === null ? null : indexOf(model.tryVersion);
  const fallbackIndexes = [defaultIndex, ...gens.flatMap((g, i) => (g.state === 'good' && i !== defaultIndex ? [i] : []))];
  const serial = serialOf(model.serial);

  const L: string[] = [];
  const add = (...lines: string[]) => L.push(...lines);
  add(
    '# Generated by liveup from its journal; rewritten on every change. Do not edit.',
    '# Entries, newest first:',
    ...entries.map((e) => `#   ${e.index} ${e.id} ${gens[e.index]?.state ?? ''}`),
    '',
    ...(model.modules ?? DEFAULT_MODULES).map((m) => `insmod ${m}`),
    searchCommand(model.root),
  );
  add(
    ...consoleLines(serial, model.timeoutSeconds),
    '',
    '# The last good generation, chosen before grubenv is read: if load_env fails',
    '# (block missing or corrupt) the variables below stay empty and this boots.',
    `set default=${defaultIndex}`,
    `set fallback="${fallbackIndexes.join(' ')}"`,
    `set ${ENV_NEXT_ENTRY}=`,
    `set ${ENV_TRY_VERSION}=`,
    `set ${ENV_TRIES_LEFT}=`,
    'if [ -s "${prefix}/grubenv" ] ; then',
    `  load_env ${ENV_NEXT_ENTRY} ${ENV_TRY_VERSION} ${ENV_TRIES_LEFT}`,
    'fi',
    '',
    '# One-shot choice, grub-reboot compatible (an entry id or index). It is only',
    '# honoured once clearing it is saved, so a read-only or broken grubenv cannot',
    '# make a one-shot boot permanent. Unknown values are ignored.',
    `if [ "\${${ENV_NEXT_ENTRY}}" ] ; then`,
    `  set liveup_next="\${${ENV_NEXT_ENTRY}}"`,
    `  set ${ENV_NEXT_ENTRY}=`,
    `  if save_env ${ENV_NEXT_ENTRY} ; then`,
  );
  let first = true;
  for (const e of entries) {
    add(
      `    ${first ? 'if' : 'elif'} [ "\${liveup_next}" = "${e.id}" ] ; then`,
      `      set default=${e.index}`,
      `    elif [ "\${liveup_next}" = "${e.index}" ] ; then`,
      `      set default=${e.index}`,
    );
    first = false;
  }
  if (entries.length > 0) add('    fi');
  add('  fi');
  if (model.tryVersion !== null && tryIndex !== null) {
    add(
      `elif [ "\${${ENV_TRY_VERSION}}" = "${model.tryVersion}" ] ; then`,
      '  # Boot counting for the trial. grub.cfg and grubenv must agree on the version:',
      '  # a stale trial left in grubenv after the menu moved on is ignored. An attempt',
      '  # is only made once its decrement is saved, so a trial can never loop forever;',
      '  # with no tries left the last good generation boots.',
    );
    for (let n = MAX_TRIES; n >= 1; n--) {
      add(
        `  ${n === MAX_TRIES ? 'if' : 'elif'} [ "\${${ENV_TRIES_LEFT}}" = "${n}" ] ; then`,
        `    set ${ENV_TRIES_LEFT}=${n - 1}`,
        `    if save_env ${ENV_TRIES_LEFT} ; then set default=${tryIndex} ; fi`,
      );
    }
    add('  fi');
  }
  add('fi', '');

  for (const [i, g] of gens.entries()) {
    const e = entries[i]!;
    const dir = `${liveDir}/${g.version}`;
    const words = cmdlineWords(g.cmdline, g.version, liveDir);
    const load = [`linux ${dir}/vmlinuz ${words.join(' ')}`, `initrd ${dir}/initrd.img`];
    add(
      `menuentry ${grubQuote(e.title)} --id ${e.id} --class gnu-linux --class os {`,
      `  echo ${grubQuote(`liveup: loading generation ${g.version}`)}`,
    );
    if (model.verify === 'sha512') {
      add(
        `  if hashsum --hash sha512 --prefix ${dir} --check ${dir}/${SHA512SUMS_FILE} ; then`,
        `    echo ${grubQuote(`liveup: generation ${g.version} passed its SHA-512 check`)}`,
        ...load.map((l) => `    ${l}`),
        '  else',
        // Nothing loaded: GRUB treats the entry as failed and runs the fallback.
        `    echo ${grubQuote(`liveup: generation ${g.version} failed its SHA-512 check; not booting it`)}`,
        '  fi',
      );
    } else {
      add(...load.map((l) => `  ${l}`));
    }
    add('}');
  }
  return { text: L.join('\n') + '\n', entries, defaultIndex, fallbackIndexes, tryIndex };
}
