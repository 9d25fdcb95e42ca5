/**
 * Signed boot (`grubVerify: "signature"`): GRUB with the publisher's RSA boot
 * key built in and `check_signatures=enforce` loads only files that carry a
 * valid detached signature (`<file>.sig`) by that key.
 *
 * Three pieces, each written by a different party, meet here:
 * - `boot.cfg` per generation, written and signed by the publisher
 *   (`liveup publish --boot-key`): the `linux`/`initrd` lines, with the
 *   squashfs's SHA-512 on the kernel command line so the initramfs can check
 *   the squashfs against a signed value (GRUB → kernel/initrd → squashfs).
 * - the static menu, inside the GRUB image `liveup disk` builds (a memdisk in
 *   the core image, as trusted as the embedded config and the key beside it):
 *   it never changes on the machine, so nothing on the machine has to sign it.
 * - grubenv, written by the agent (unsigned: GRUB reads it with `load_env
 *   --skip-sig` and a whitelist). It can only choose *which* signed generation
 *   boots, never what a generation boots.
 *
 * Pure: text in, text out.
 */
import { LiveupError } from '../channel/errors.js';
import { type BootMenuModel, consoleLines, DEFAULT_LIVE_DIR, ENV_NEXT_ENTRY, ENV_TRIES_LEFT, ENV_TRY_VERSION, MAX_TRIES, cmdlineWords, grubQuote, serialOf, trialEnv, type SerialConsole } from './bootmenu.js';
import { assertVersion } from './generation.js';

/** Per generation, beside vmlinuz: what the static menu `source`s. */
export const BOOT_CFG_FILE = 'boot.cfg';
/** The kernel parameter carrying the squashfs's signed SHA-512 (checked by initramfs liveup-verify). */
export const SQUASHFS_SHA512_PARAM = 'liveup.squashfs_sha512';
/** grubenv variables the static menu reads besides the trial ones. */
export const ENV_DEFAULT = 'liveup_default';
export const ENV_FALLBACK = 'liveup_fallback';
/**
 * A second environment block beside grubenv holding only the good choice. GRUB
 * never writes it (its `save_env` only touches grubenv, for the trial count),
 * so a grubenv torn by a power cut during `save_env` still leaves the last good
 * generation known. The agent replaces both atomically.
 */
export const GOOD_ENV_FILE = 'liveup-good.env';
/** The GRUB image's memdisk holds only the static menu, at its root. */
export const STATIC_MENU_FILE = 'grub.cfg';

const SHA512_RE = /^[0-9a-f]{128}$/;
/** GRUB regexp for a generation number: what every grubenv value must match before use. */
const VERSION_GRUB_RE = "'^[1-9][0-9]{0,15}$'";

function bad(message: string): never {
  throw new LiveupError('INVALID_ARGUMENT', `signed boot: ${message}`);
}

/**
 * `live/<v>/boot.cfg`. The initrd's and then the kernel's signatures are
 * checked with `verify_detached` *before* the kernel is loaded:
 * - once a kernel is loaded GRUB boots it even when the `initrd` line then
 *   fails, and a kernel without its initrd cannot boot (nor reach the boot
 *   check that would end a trial);
 * - a refusal inside an `if` prints no error: a `linux` refused by GRUB's
 *   verifier prints "bad signature", and an entry that printed an error makes
 *   GRUB wait 10 s at "Press any key to continue..." before its fallback (seen
 *   in QEMU). Here the entry returns at once with our own message.
 * `linux` and `initrd` are still checked again by GRUB's verifier as they
 * load (enforce): a file swapped between the two reads is refused too.
 */
export function renderBootCfg(o: { readonly version: number; readonly cmdline: string; readonly squashfsSha512: string; readonly liveDir?: string }): string {
  assertVersion(o.version, 'generation version');
  if (!SHA512_RE.test(o.squashfsSha512)) bad(`squashfs SHA-512 ${JSON.stringify(o.squashfsSha512)} is not lower-case hex`);
  const liveDir = o.liveDir ?? DEFAULT_LIVE_DIR;
  const dir = `${liveDir}/${o.version}`;
  // Our own parameter last: a copy in the manifest's command line is dropped, so the signed value is the only one.
  const cmdline = o.cmdline.split(/\s+/).filter((w) => !w.startsWith(`${SQUASHFS_SHA512_PARAM}=`)).join(' ');
  const words = [...cmdlineWords(cmdline, o.version, liveDir), `${SQUASHFS_SHA512_PARAM}=${o.squashfsSha512}`];
  return [
    `# liveup generation ${o.version}, signed by the publisher's boot key (${BOOT_CFG_FILE}.sig).`,
    '# GRUB sources it under check_signatures=enforce: every file below is checked against its .sig.',
    `if verify_detached ${dir}/initrd.img ${dir}/initrd.img.sig ; then`,
    `  if verify_detached ${dir}/vmlinuz ${dir}/vmlinuz.sig ; then`,
    `    echo ${grubQuote(`liveup: generation ${o.version}: kernel and initrd signatures good; loading them`)}`,
    `    linux ${dir}/vmlinuz ${words.join(' ')}`,
    `    initrd ${dir}/initrd.img`,
    '  else',
    `    echo ${grubQuote(`liveup: generation ${o.version}: vmlinuz failed its signature check; not booting it`)}`,
    '  fi',
    'else',
    `  echo ${grubQuote(`liveup: generation ${o.version}: initrd.img failed its signature check; not booting it`)}`,
    'fi',
    '',
  ].join('\n');
}

export interface StaticMenuOptions {
  readonly serial: boolean | SerialConsole;
  readonly timeoutSeconds: number;
  /**
   * The generation the disk was written with: the last resort when neither
   * grubenv nor the good block holds a valid default. The agent may remove it
   * later; then that entry fails too and GRUB stops at its menu.
   */
  readonly diskVersion: number;
  readonly liveDir?: string;
}

/**
 * The config built into the GRUB image. GRUB runs it with its rescue parser
 * (one command a line, no `if`, no menu), before normal mode. Signatures are
 * off only while it finds the boot partition (`search --file` opens the
 * marker, which has no .sig) and while normal mode reads the static menu from
 * the memdisk (part of this same image); the menu's first line turns them on.
 */
export function renderEarlyConfig(marker: string): string {
  if (!/^\/[A-Za-z0-9._/-]+$/.test(marker)) bad(`marker file ${JSON.stringify(marker)} must be an absolute path of plain names`);
  return [
    'set check_signatures=no',
    `search --no-floppy --set=root --file ${marker}`,
    'set prefix=(memdisk)',
    '',
  ].join('\n');
}

/**
 * The static menu (normal mode's grub.cfg, from the memdisk). Entries, in
 * GRUB's order: 0 the generation chosen for this boot (one-shot, trial or the
 * last good), 1 the last good, 2 the previous good, 3 the disk's own. `default`
 * is 0 and `fallback` "1 2 3": an entry whose boot.cfg, kernel or initrd fails
 * its signature check returns without loading a kernel, which GRUB counts as a
 * failed boot and runs the next. Every grubenv value is matched against a
 * generation number before use; anything else is ignored.
 */
export function renderStaticMenu(o: StaticMenuOptions): string {
  assertVersion(o.diskVersion, 'disk generation');
  if (!Number.isInteger(o.timeoutSeconds) || o.timeoutSeconds < 0 || o.timeoutSeconds > 3600) bad(`timeout ${o.timeoutSeconds} must be whole seconds from 0 to 3600`);
  const liveDir = o.liveDir ?? DEFAULT_LIVE_DIR;
  if (!/^(\/[A-Za-z0-9._-]+)+$/.test(liveDir)) bad(`live directory ${JSON.stringify(liveDir)} must be an absolute path of plain names`);
  const serial = serialOf(o.serial);
  const env = '"(${root})/grub/grubenv"';
  const good = `"(\${root})/grub/${GOOD_ENV_FILE}"`;
  const L: string[] = [
    '# liveup signed boot: the static menu inside the GRUB image (liveup disk --grub-verify signature).',
    '# Everything GRUB loads from here on must carry a valid signature by the built-in boot key.',
    'set check_signatures=enforce',
  ];
  L.push(
    ...consoleLines(serial, o.timeoutSeconds),
    '',
    '# The agent\'s choices. grubenv and the good block are not signed: read with a',
    '# whitelist, every value checked to be a generation number below. The good block',
    '# (never written by GRUB) wins over grubenv for the good generations.',
    `set ${ENV_DEFAULT}=`,
    `set ${ENV_FALLBACK}=`,
    `set ${ENV_NEXT_ENTRY}=`,
    `set ${ENV_TRY_VERSION}=`,
    `set ${ENV_TRIES_LEFT}=`,
    `load_env --skip-sig -f ${env} ${ENV_DEFAULT} ${ENV_FALLBACK} ${ENV_NEXT_ENTRY} ${ENV_TRY_VERSION} ${ENV_TRIES_LEFT}`,
    `load_env --skip-sig -f ${good} ${ENV_DEFAULT} ${ENV_FALLBACK}`,
    `if ! regexp ${VERSION_GRUB_RE} "\${${ENV_DEFAULT}}" ; then set ${ENV_DEFAULT}=${o.diskVersion} ; fi`,
    `if ! regexp ${VERSION_GRUB_RE} "\${${ENV_FALLBACK}}" ; then set ${ENV_FALLBACK}="\${${ENV_DEFAULT}}" ; fi`,
    `set liveup_chosen="\${${ENV_DEFAULT}}"`,
    '',
    '# One-shot (grub-reboot style, `liveup-<N>`), honoured only once clearing it is',
    '# saved; else a trial, each attempt only once its decrement is saved (save_env',
    '# needs no signature: grubenv is the one file GRUB writes).',
    `if [ "\${${ENV_NEXT_ENTRY}}" ] ; then`,
    `  set liveup_next="\${${ENV_NEXT_ENTRY}}"`,
    `  set ${ENV_NEXT_ENTRY}=`,
    `  if save_env -f ${env} ${ENV_NEXT_ENTRY} ; then`,
    `    if regexp --set=1:liveup_chosen '^liveup-([1-9][0-9]{0,15})$' "\${liveup_next}" ; then echo "liveup: one-shot boot of generation \${liveup_chosen}" ; fi`,
    '  fi',
    `elif regexp ${VERSION_GRUB_RE} "\${${ENV_TRY_VERSION}}" ; then`,
  );
  for (let n = MAX_TRIES; n >= 1; n--) {
    L.push(
      `  ${n === MAX_TRIES ? 'if' : 'elif'} [ "\${${ENV_TRIES_LEFT}}" = "${n}" ] ; then`,
      `    set ${ENV_TRIES_LEFT}=${n - 1}`,
      `    if save_env -f ${env} ${ENV_TRIES_LEFT} ; then set liveup_chosen="\${${ENV_TRY_VERSION}}" ; fi`,
    );
  }
  L.push(
    '  fi',
    'fi',
    `export liveup_chosen ${ENV_DEFAULT} ${ENV_FALLBACK}`,
    '',
    '# Boots generation $1 through its signed boot.cfg. A refused boot.cfg, kernel or',
    '# initrd loads nothing: the entry returns and GRUB runs the fallback entry.',
    'function liveup_boot {',
    `  if regexp ${VERSION_GRUB_RE} "\$1" ; then`,
    '    echo "liveup: loading generation $1 (signed boot)"',
    // Checked first for the same reason as the kernel in boot.cfg: a refused `source` prints an error and GRUB waits 10 s.
    `    if verify_detached "${liveDir}/\$1/${BOOT_CFG_FILE}" "${liveDir}/\$1/${BOOT_CFG_FILE}.sig" ; then`,
    `      source "${liveDir}/\$1/${BOOT_CFG_FILE}"`,
    '    else',
    `      echo "liveup: generation \$1: ${BOOT_CFG_FILE} failed its signature check; not booting it"`,
    '    fi',
    '  fi',
    '}',
    '',
    ...menuentry(`liveup \${liveup_chosen}: this boot's choice`, 'liveup-chosen', '"${liveup_chosen}"'),
    ...menuentry(`liveup \${${ENV_DEFAULT}}: last good`, 'liveup-default', `"\${${ENV_DEFAULT}}"`),
    ...menuentry(`liveup \${${ENV_FALLBACK}}: previous good`, 'liveup-fallback', `"\${${ENV_FALLBACK}}"`),
    ...menuentry(`liveup ${o.diskVersion}: written with this disk`, 'liveup-disk', String(o.diskVersion)),
    'set default=0',
    'set fallback="1 2 3"',
    '',
  );
  return L.join('\n');
}

/** A static entry: the title is expanded when the menu is read (values already checked), the body when it runs. */
function menuentry(title: string, id: string, versionWord: string): string[] {
  return [`menuentry "${title}" --id ${id} --class gnu-linux --class os {`, `  liveup_boot ${versionWord}`, '}'];
}

/**
 * What the agent writes for the static menu, from the same model the rendered
 * menu takes: the good choice (into both grubenv and the good block) and, when
 * a generation is on trial, its boot count (grubenv only).
 */
export interface SignedBootEnv {
  readonly good: Readonly<Record<string, string>>;
  readonly trial: Readonly<Record<string, string>> | null;
}

export function signedBootEnv(model: Pick<BootMenuModel, 'generations' | 'defaultVersion' | 'tryVersion'>, tries: number): SignedBootEnv {
  const def = model.generations.find((g) => g.version === model.defaultVersion);
  if (!def) bad(`default generation ${model.defaultVersion} is not among the kept generations`);
  if (def.state !== 'good') bad(`default generation ${def.version} is ${def.state}, not good`);
  // The newest other good one; else the default again (the entry then just repeats it).
  const older = model.generations.filter((g) => g.state === 'good' && g.version !== def.version).sort((a, b) => b.version - a.version)[0];
  const good = { [ENV_DEFAULT]: String(def.version), [ENV_FALLBACK]: String(older?.version ?? def.version) };
  if (model.tryVersion === null) return { good, trial: null };
  const t = model.generations.find((g) => g.version === model.tryVersion);
  if (!t) bad(`trial generation ${model.tryVersion} is not among the kept generations`);
  if (t.version === def.version) bad(`trial generation ${t.version} is already the default`);
  if (t.state !== 'staged' && t.state !== 'booted') bad(`trial generation ${t.version} is ${t.state}; only staged or booted ones are tried`);
  return { good, trial: trialEnv(t.version, tries) };
}
