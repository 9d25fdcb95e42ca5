/** `liveup key generate`: an Ed25519 OpenPGP signing key pair for a channel. */
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

export async function generateKey(opts: { outDir: string; name: string; email?: string; force?: boolean; createdAt?: Date }): Promise<GeneratedKey> {
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
  const { privateKey, publicKey } = await openpgp.generateKey({
    type: 'ecc',
    curve: 'ed25519Legacy',
    userIDs: [{ name: `liveup ${opts.name}`, ...(opts.email ? { email: opts.email } : {}) }],
    format: 'armored',
    ...(opts.createdAt ? { date: opts.createdAt } : {}),
  });
  const key = await openpgp.readKey({ armoredKey: publicKey });
  await writeFileAtomic(privateKeyPath, privateKey, { mode: 0o600 });
  await writeFileAtomic(publicKeyPath, publicKey, { mode: 0o644 });
  return { fingerprint: key.getFingerprint().toUpperCase(), privateKeyPath, publicKeyPath };
}
