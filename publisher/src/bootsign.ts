/**
 * The publisher's boot key: detached signatures that GRUB's `pgp` module can
 * check under `check_signatures=enforce` (docs/boot.md, "Signed boot").
 *
 * GRUB 2.06 is narrower than any OpenPGP tool, and each limit below is one it
 * would otherwise hit at boot, on a machine, as "bad signature":
 * - RSA (or DSA) keys only: the channel key is Ed25519, hence a second key;
 * - v4 keys and v4 signatures over binary documents (type 0x00);
 * - the issuer key ID is looked up *only* in the unhashed subpackets, where
 *   openpgp.js (v6) no longer puts it (it sends it hashed): we add it there,
 *   as gpg does. Unhashed data is not covered by the signature, so adding it
 *   changes nothing that is signed;
 * - one signature per file (GRUB reads the first packet only);
 * - old-format packet headers: GRUB's reader decodes a new-format two-octet
 *   length without RFC 4880's `+ 192` (pgp.c, read_packet_header), so a key
 *   packet of 192..8383 bytes (any RSA key) is cut short and the rest of the
 *   key read as garbage: the image stops with "error loading initial key: bad
 *   signature" before any menu (seen in QEMU). gpg writes old-format headers;
 *   openpgp.js writes new-format ones, so we rewrite them. Only the framing
 *   changes: signatures cover packet bodies, never headers.
 */
import * as openpgp from 'openpgp';
import { LiveupError } from '../../agent/src/channel/errors.js';
import { loadKeyring, loadPrivateKey } from '../../agent/src/channel/signature.js';

const ISSUER_KEY_ID = 16; // signature subpacket type "Issuer" (RFC 4880 5.2.3.5)
const RSA_ALGORITHMS: readonly string[] = ['rsaEncryptSign', 'rsaSign'];
const MIN_RSA_BITS = 2048;

/**
 * Refuses a key GRUB could not check: by its algorithm's name, so the message
 * says what to make instead. Every key packet counts (primary and subkeys):
 * openpgp.js may pick any signing-capable one.
 */
export function assertGrubKey(key: openpgp.Key, source: string): void {
  for (const k of [key, ...key.getSubkeys()]) {
    const info = k.getAlgorithmInfo();
    const version = k.keyPacket.version;
    if (!RSA_ALGORITHMS.includes(info.algorithm)) {
      const what = info.curve ? `${info.algorithm} (${info.curve})` : info.algorithm;
      throw new LiveupError('INVALID_ARGUMENT',
        `${source}: a ${what} key cannot be a boot key: GRUB's pgp module checks RSA signatures only (make one with \`liveup key generate --type rsa\`)`,
        { file: source, algorithm: info.algorithm });
    }
    if ((info.bits ?? 0) < MIN_RSA_BITS) {
      throw new LiveupError('INVALID_ARGUMENT', `${source}: RSA key of ${info.bits ?? 0} bits; a boot key needs at least ${MIN_RSA_BITS}`, { file: source });
    }
    if (version !== 4) throw new LiveupError('INVALID_ARGUMENT', `${source}: a v${version} key; GRUB reads v4 keys only`, { file: source });
  }
}

/** The armored private boot key, checked for GRUB. */
export async function loadBootKey(path: string): Promise<openpgp.PrivateKey> {
  const key = await loadPrivateKey(path);
  assertGrubKey(key, path);
  return key;
}

/** The boot public key (armored or binary, one key), checked for GRUB. */
export async function loadBootPublicKey(path: string): Promise<openpgp.PublicKey> {
  const ring = await loadKeyring(path);
  if (ring.keys.length !== 1) throw new LiveupError('INVALID_ARGUMENT', `${path}: holds ${ring.keys.length} keys; a boot key file holds one`, { file: path });
  const key = ring.keys[0]!;
  assertGrubKey(key, path);
  return key;
}

/** A detached, binary signature of `data` that GRUB 2.06 verifies (see the top of this file). */
export async function signForGrub(data: Uint8Array, key: openpgp.PrivateKey, date = new Date()): Promise<Uint8Array> {
  const message = await openpgp.createMessage({ binary: data });
  const signed = await openpgp.sign({ message, signingKeys: [key], detached: true, format: 'binary', date });
  const sig = await openpgp.readSignature({ binarySignature: signed });
  for (const p of sig.packets) {
    if (p.version !== 4) throw new LiveupError('INTERNAL', `boot signature: openpgp.js made a v${p.version} signature; GRUB reads v4 only`);
    if (!p.unhashedSubpackets.some((s) => s.type === ISSUER_KEY_ID)) {
      p.unhashedSubpackets.push({ type: ISSUER_KEY_ID, critical: false, body: Buffer.from(p.issuerKeyID.toHex(), 'hex') });
    }
  }
  return oldFormatPackets(sig.write(), 'boot signature');
}

/**
 * The same packets with old-format headers (RFC 4880 4.2.1), the framing gpg
 * writes and GRUB 2.06 decodes right (see the top of this file). Refuses what
 * has no old-format form: tags above 15, partial body lengths.
 */
export function oldFormatPackets(bytes: Uint8Array, what: string): Uint8Array {
  const out: Uint8Array[] = [];
  const bad = (m: string): never => { throw new LiveupError('INTERNAL', `${what}: ${m}`); };
  let i = 0;
  while (i < bytes.length) {
    const ctb = bytes[i]!;
    if ((ctb & 0x80) === 0) bad(`byte ${i} is not an OpenPGP packet header`);
    let tag: number; let len: number; let hlen: number;
    if (ctb & 0x40) {
      tag = ctb & 0x3f;
      const l0 = bytes[i + 1] ?? bad('truncated header');
      if (l0 < 192) { len = l0; hlen = 2; }
      else if (l0 < 224) { len = ((l0 - 192) << 8) + (bytes[i + 2] ?? bad('truncated header')) + 192; hlen = 3; }
      else if (l0 === 255) { len = new DataView(bytes.buffer, bytes.byteOffset + i + 2, 4).getUint32(0); hlen = 6; }
      else return bad(`packet at byte ${i} uses a partial body length`);
    } else {
      tag = (ctb >> 2) & 0xf;
      const lt = ctb & 3;
      if (lt === 3) bad(`packet at byte ${i} has an indeterminate length`);
      const n = 1 << lt;
      if (i + 1 + n > bytes.length) bad('truncated header');
      len = 0;
      for (let k = 0; k < n; k++) len = len * 256 + bytes[i + 1 + k]!;
      hlen = 1 + n;
    }
    if (tag > 15) bad(`packet tag ${tag} has no old-format header`);
    const body = bytes.subarray(i + hlen, i + hlen + len);
    if (body.length !== len) bad(`packet at byte ${i} is truncated`);
    const lt = len < 0x100 ? 0 : len < 0x10000 ? 1 : 2;
    const n = 1 << lt;
    const head = new Uint8Array(1 + n);
    head[0] = 0x80 | (tag << 2) | lt;
    for (let k = 0; k < n; k++) head[n - k] = (len >>> (8 * k)) & 0xff;
    out.push(head, body);
    i += hlen + len;
  }
  return Buffer.concat(out);
}

/**
 * The public key as GRUB wants it for `grub-mkimage --pubkey`: binary OpenPGP
 * packets, not armored (GRUB's reader takes no armor). Private parts are
 * never written: a private key passed by mistake is reduced to its public half.
 */
export function grubPublicKeyBytes(key: openpgp.Key, source: string): Uint8Array {
  assertGrubKey(key, source);
  return oldFormatPackets((key.isPrivate() ? key.toPublic() : key).write(), `${source}: boot public key`);
}
