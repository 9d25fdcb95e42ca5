/**
 * Detached OpenPGP signatures over channel metadata, with pinned keys only.
 *
 * We never trust `signatures[i].verified` as a value: it is a promise that
 * rejects on a bad signature, and a truthy check on it passes for every
 * signature (the mistake behind several openpgp.js advisories). Each one is
 * awaited in a try, and only a pinned key whose signature resolves counts.
 * Keys are counted by primary fingerprint, so one key signing twice is one
 * vote toward the threshold.
 */
import type * as OpenPGP from 'openpgp';
import { readFile } from 'node:fs/promises';
import { LiveupError } from './errors.js';

/**
 * openpgp.js is the largest module the agent loads (~0.25 s of a native
 * start, several seconds under QEMU TCG) and is needed only when a key or a
 * signature is read: imported on first use, so the daemon and the boot
 * check come up (and a soft-reboot or kexec reaches its boot check) without it.
 */
let loaded: Promise<typeof OpenPGP> | null = null;
const pgp = (): Promise<typeof OpenPGP> => (loaded ??= import('openpgp'));

export interface PinnedKeyring {
  readonly keys: readonly OpenPGP.PublicKey[];
  /** Upper-case hex primary-key fingerprints, in file order. */
  readonly fingerprints: readonly string[];
  readonly source: string;
}

/**
 * A keyring is either armored text (what `liveup key generate` writes, one or
 * more blocks) or a binary OpenPGP packet stream (Debian's
 * /usr/share/keyrings/*.gpg, `gpg --export`). Bytes are classified by their
 * start: an armor header after optional whitespace means armored; a first
 * byte with the OpenPGP packet-tag bit (0x80) set means binary; anything else
 * (GnuPG's keybox `pubring.kbx`, text) is refused with a clear message.
 */
export async function parseKeyring(data: string | Uint8Array, source: string): Promise<PinnedKeyring> {
  const openpgp = await pgp();
  const keys: OpenPGP.Key[] = [];
  const armored = typeof data === 'string' ? data : isArmored(data) ? Buffer.from(data).toString('utf8') : null;
  try {
    if (armored !== null) {
      // A keyring file is often several armored blocks pasted one after another;
      // openpgp.readKeys reads only the first block, so split them ourselves.
      const blocks = armored.match(/-----BEGIN PGP (?:PUBLIC|PRIVATE) KEY BLOCK-----[\s\S]*?-----END PGP (?:PUBLIC|PRIVATE) KEY BLOCK-----/g) ?? [armored];
      for (const b of blocks) keys.push(...(await openpgp.readKeys({ armoredKeys: b })));
    } else {
      const bytes = data as Uint8Array;
      if (bytes.length >= 12 && Buffer.from(bytes.subarray(8, 12)).toString('latin1') === 'KBXf') {
        throw new Error('a GnuPG keybox (pubring.kbx); export it with `gpg --export KEYID > keyring.gpg`');
      }
      if (bytes.length === 0 || (bytes[0]! & 0x80) === 0) throw new Error('neither armored text nor binary OpenPGP packets');
      keys.push(...(await openpgp.readKeys({ binaryKeys: bytes })));
    }
  } catch (e) {
    throw new LiveupError('KEYRING_INVALID', `${source}: not an OpenPGP public keyring (${(e as Error).message})`, { file: source });
  }
  if (keys.length === 0) throw new LiveupError('KEYRING_INVALID', `${source}: holds no key`, { file: source });
  const pub = keys.map((k) => (k.isPrivate() ? k.toPublic() : (k as OpenPGP.PublicKey)));
  const fps = new Set(pub.map((k) => k.getFingerprint()));
  if (fps.size !== pub.length) throw new LiveupError('KEYRING_INVALID', `${source}: the same key is listed twice`, { file: source });
  return { keys: pub, fingerprints: pub.map((k) => k.getFingerprint().toUpperCase()), source };
}

function isArmored(bytes: Uint8Array): boolean {
  return /^\s*-----BEGIN PGP /.test(Buffer.from(bytes.subarray(0, 256)).toString('latin1'));
}

/** Armored or binary keyring file (see parseKeyring). */
export async function loadKeyring(path: string): Promise<PinnedKeyring> {
  let data: Uint8Array;
  try {
    data = await readFile(path);
  } catch (e) {
    throw new LiveupError('KEYRING_INVALID', `cannot read keyring ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { file: path });
  }
  return parseKeyring(data, path);
}

export async function loadPrivateKey(path: string): Promise<OpenPGP.PrivateKey> {
  const openpgp = await pgp();
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new LiveupError('KEYRING_INVALID', `cannot read private key ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { file: path });
  }
  try {
    const key = await openpgp.readPrivateKey({ armoredKey: text });
    if (!key.isDecrypted()) {
      throw new Error('the key is passphrase-protected; liveup signs with an unencrypted key kept at mode 0600 (or on a signing host)');
    }
    return key;
  } catch (e) {
    throw new LiveupError('KEYRING_INVALID', `${path}: not a usable OpenPGP private key (${(e as Error).message})`, { file: path });
  }
}

/** One binary detached signature packet per key, concatenated (what `gpg --detach-sign` makes). */
export async function signDetached(data: Uint8Array, keys: readonly OpenPGP.PrivateKey[], date = new Date()): Promise<Uint8Array> {
  const openpgp = await pgp();
  const message = await openpgp.createMessage({ binary: data });
  return openpgp.sign({ message, signingKeys: [...keys], detached: true, format: 'binary', date });
}

export interface SignatureCheck {
  /** Fingerprints of the distinct pinned keys whose signature holds. */
  readonly signers: readonly string[];
}

const ARMOR_HEADER = /^-----BEGIN PGP ([A-Z ,0-9/]+)-----/;

async function readDetached(sig: Uint8Array, source: string): Promise<OpenPGP.Signature> {
  const openpgp = await pgp();
  const head = Buffer.from(sig.subarray(0, 64)).toString('latin1').trimStart();
  const armor = ARMOR_HEADER.exec(head);
  try {
    if (armor) {
      if (armor[1] !== 'SIGNATURE') throw new Error(`an armored "${armor[1]}" block is not a detached signature`);
      return await openpgp.readSignature({ armoredSignature: Buffer.from(sig).toString('utf8') });
    }
    return await openpgp.readSignature({ binarySignature: sig });
  } catch (e) {
    throw new LiveupError('SIGNATURE_INVALID', `${source}: unreadable signature (${(e as Error).message})`, { file: source });
  }
}

export async function verifyDetached(
  data: Uint8Array,
  sig: Uint8Array,
  keyring: PinnedKeyring,
  opts: { threshold: number; now: Date; source: string },
): Promise<SignatureCheck> {
  const openpgp = await pgp();
  const { source } = opts;
  if (!Number.isInteger(opts.threshold) || opts.threshold < 1) {
    throw new LiveupError('INVALID_ARGUMENT', `signature threshold must be a positive integer, got ${opts.threshold}`);
  }
  const signature = await readDetached(sig, source);
  const packets = [...signature.packets];
  if (packets.length === 0) throw new LiveupError('SIGNATURE_INVALID', `${source}: the signature file holds no signature`, { file: source });
  for (const p of packets) {
    // Only signatures over a binary document: a key certification or a
    // cleartext/text signature over the same bytes is not what we asked for.
    if (p.signatureType !== openpgp.enums.signature.binary) {
      throw new LiveupError('SIGNATURE_INVALID', `${source}: not a detached signature over binary data (type ${String(p.signatureType)})`, { file: source });
    }
  }
  const message = await openpgp.createMessage({ binary: data });
  const result = await openpgp.verify({
    message,
    signature,
    verificationKeys: [...keyring.keys],
    date: opts.now,
    format: 'binary',
  });
  const signers = new Set<string>();
  let pinnedButBad = 0;
  let lastError = '';
  for (const s of result.signatures) {
    const key = keyring.keys.find((k) => k.getKeys(s.keyID).length > 0);
    if (!key) continue;
    try {
      await s.verified;
      signers.add(key.getFingerprint().toUpperCase());
    } catch (e) {
      pinnedButBad++;
      lastError = (e as Error).message;
    }
  }
  if (signers.size === 0) {
    if (pinnedButBad > 0) {
      throw new LiveupError('SIGNATURE_INVALID', `${source}: signature does not verify (${lastError})`, { file: source });
    }
    const ids = result.signatures.map((s) => s.keyID.toHex().toUpperCase()).join(', ');
    throw new LiveupError('KEY_NOT_TRUSTED', `${source}: signed by key ${ids}, which is not in the pinned keyring ${keyring.source}`, { file: source, keyIds: ids });
  }
  if (signers.size < opts.threshold) {
    throw new LiveupError(
      'SIGNATURE_THRESHOLD',
      `${source}: ${signers.size} distinct trusted key(s) signed, ${opts.threshold} required`,
      { file: source, signers: signers.size, threshold: opts.threshold },
    );
  }
  return { signers: [...signers] };
}
