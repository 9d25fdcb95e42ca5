/**
 * `liveup disk --grub-verify signature`: what a signed-boot disk adds to the
 * plain one (disk.ts). The GRUB images carry the boot public key, every module
 * they need (under `enforce` GRUB would demand a signature for a module loaded
 * from disk, and nothing on the disk is signed but the generations' files),
 * a memdisk holding the static menu, and the early config that reaches it
 * (core/signedboot.ts). On the boot partition: each generation's boot.cfg and
 * .sig files, grubenv and the good block; no grub.cfg and no module
 * directories, since GRUB reads neither in this mode.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type * as openpgp from 'openpgp';
import { LiveupError } from '../../agent/src/channel/errors.js';
import { SIG_SUFFIX } from '../../agent/src/channel/layout.js';
import { verifyDetached } from '../../agent/src/channel/signature.js';
import { BOOT_CFG_FILE, ENV_DEFAULT, ENV_FALLBACK, GOOD_ENV_FILE, STATIC_MENU_FILE, renderEarlyConfig, renderStaticMenu } from '../../agent/src/core/signedboot.js';
import { grubPublicKeyBytes } from './bootsign.js';
import { run } from './exec.js';
import { GENDIR_FILES } from './generation.js';

/** The files GRUB opens under `enforce`, each checked against `<file>.sig`. */
export const SIGNED_FILES = [BOOT_CFG_FILE, GENDIR_FILES.kernel, GENDIR_FILES.initrd] as const;
/** What a signed-boot generation has on the boot medium besides the plain files. */
export const SIGNED_BOOT_MEDIUM_FILES = SIGNED_FILES.flatMap((f) => (f === BOOT_CFG_FILE ? [f, `${f}${SIG_SUFFIX}`] : [`${f}${SIG_SUFFIX}`]));

/**
 * Built into the image, with the plain disk's own list: signature checking
 * (pgp pulls in verifiers, mpi, crypto), RSA, the hashes openpgp.js and gpg
 * sign with, `regexp` for the menu's checks of grubenv values, the memdisk
 * with its tar reader, `boot` (the menu boots through it; normally
 * autoloaded from disk). `efi_gop` on UEFI, so a kernel gets a
 * framebuffer from GRUB as it would with the modules on disk.
 */
export const SIGNED_GRUB_MODULES = ['pgp', 'gcry_rsa', 'gcry_sha256', 'gcry_sha512', 'regexp', 'memdisk', 'tar', 'boot', 'part_gpt'] as const;
export const SIGNED_GRUB_MODULES_EFI = ['efi_gop'] as const;

/**
 * Every signed file of the generation checked against the boot key before the
 * disk is written: a disk whose key does not match its generations' signatures
 * would boot nothing.
 */
export async function checkBootSignatures(dir: string, version: number, key: openpgp.PublicKey, source: string): Promise<void> {
  const keyring = { keys: [key], fingerprints: [key.getFingerprint().toUpperCase()], source };
  for (const f of SIGNED_FILES) {
    const file = join(dir, f);
    const [data, sig] = await Promise.all([readFile(file), readFile(`${file}${SIG_SUFFIX}`)]).catch((e: NodeJS.ErrnoException) => {
      throw new LiveupError('NOT_FOUND', `generation ${version}: ${e.path ?? file} is missing: publish it with \`liveup publish --boot-key\` for a signed-boot disk`, { file });
    });
    await verifyDetached(data, sig, keyring, { threshold: 1, now: new Date(), source: `${file}${SIG_SUFFIX}` });
  }
}

/** grubenv (the agent's, GRUB's save_env target) and the good block, naming the disk's generation. */
export async function writeSignedBootEnv(grubDir: string, version: number): Promise<void> {
  for (const f of ['grubenv', GOOD_ENV_FILE]) {
    await run('grub-editenv', [join(grubDir, f), 'create']);
    await run('grub-editenv', [join(grubDir, f), 'set', `${ENV_DEFAULT}=${version}`, `${ENV_FALLBACK}=${version}`]);
  }
}

/** The extra grub-mkimage arguments and the early config for a signed-boot image (files written into workDir). */
export async function signedImageInputs(o: {
  workDir: string; key: openpgp.PublicKey; keySource: string; marker: string; serial: boolean; timeoutSeconds: number; diskVersion: number;
}): Promise<{ earlyConfig: string; args: string[] }> {
  const pub = join(o.workDir, 'boot-key.gpg');
  // Binary, not armored: GRUB's key reader takes OpenPGP packets only.
  await writeFile(pub, grubPublicKeyBytes(o.key, o.keySource));
  const memdisk = join(o.workDir, 'memdisk');
  await run('mkdir', ['-p', memdisk]);
  await writeFile(join(memdisk, STATIC_MENU_FILE), renderStaticMenu({ serial: o.serial, timeoutSeconds: o.timeoutSeconds, diskVersion: o.diskVersion }));
  const tar = join(o.workDir, 'memdisk.tar');
  await run('tar', ['--format=ustar', '-cf', tar, '-C', memdisk, STATIC_MENU_FILE]);
  return { earlyConfig: renderEarlyConfig(o.marker), args: ['--pubkey', pub, '-m', tar] };
}
