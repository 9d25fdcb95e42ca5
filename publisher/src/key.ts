/**
 * `liveup key generate`: an OpenPGP signing key pair. Ed25519 for a channel
 * (the default); RSA for a boot key, the only kind GRUB's pgp module checks
 * (publisher/src/bootsign.ts).
 */
import * as openpgp from 'openpgp';
import { access, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { LiveupError } from '../../agent/src/channel/errors.js';
import { writeFileAtomic } from '../../agent/src/util/fsatomic.js';

export interface GeneratedKey {
  readonly fingerprint: string;
  readonly privateKeyPath: string;
  readonly publicKeyPath: string;
}

export type KeyType = 'ed25519' | 'rsa';
export const KEY_TYPES: readonly KeyType[] = ['ed25519', 'rsa'];
/** RSA size for boot keys: GRUB verifies any size; 3072 bits is NIST's level for keys used past 2030. */
export const BOOT_RSA_BITS = 3072;

export async function generateKey(opts: { outDir: string; name: string; email?: string; force?: boolean; createdAt?: Date; type?: KeyType; rsaBits?: number }): Promise<GeneratedKey> {
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(opts.name)) {
    throw new LiveupError('INVALID_ARGUMENT', `key name "${opts.name}" may only hold letters, digits, ".", "_" and "-"`);
  }
  await mkdir(opts.outDir, { recursive: true, mode: 0o700 });
  const privateKeyPath = join(opts.outDir, `${opts.name}.key.asc`);
  const publicKeyPath = join(opts.outDir, `${opts.name}.pub.asc`);
  if (!opts.force) {
    for (const p of [privateKeyPath, publicKeyPath]) {
      const exists = await access(p).then(() => true, () => false);
      if (exists) throw new LiveupError('ALREADY_EXISTS', `${p} already exists; refusing to overwrite a key (use --force)`, { file: p });
    }
  }
  // ed25519Legacy (EdDSA, a v4 key) rather than RFC 9580's new Ed25519: the
  // legacy form is what gpg 2.2 (Debian 12) and sqv read, so administrators
  // can check our signatures with the tools they already have.
  // RSA keys are v4 too (openpgp.js makes v6 keys only when asked), which GRUB requires.
  const algorithm = opts.type === 'rsa'
    ? { type: 'rsa' as const, rsaBits: opts.rsaBits ?? BOOT_RSA_BITS }
    : { type: 'ecc' as const, curve: 'ed25519Legacy' as const };
  const { privateKey, publicKey } = await openpgp.generateKey({
    ...algorithm,
    userIDs: [{ name: `liveup ${opts.name}`, ...(opts.email ? { email: opts.email } : {}) }],
    format: 'armored',
    ...(opts.createdAt ? { date: opts.createdAt } : {}),
  });
  const key = await openpgp.readKey({ armoredKey: publicKey });
  await writeFileAtomic(privateKeyPath, privateKey, { mode: 0o600 });
  await writeFileAtomic(publicKeyPath, publicKey, { mode: 0o644 });
  return { fingerprint: key.getFingerprint().toUpperCase(), privateKeyPath, publicKeyPath };
}
