/** Pure parts of the mirror tools: deb822, Release, config, keyring formats. */
import { describe, expect, it } from 'vitest';
import * as openpgp from 'openpgp';
import { parseStanzas } from '../../publisher/src/mirror/deb822.js';
import { isSafeRelative, parseRelease } from '../../publisher/src/mirror/release.js';
import { debmirrorArgs, parseMirrorConfig } from '../../publisher/src/mirror/sync.js';
import { indexKind } from '../../publisher/src/mirror/packages.js';
import { parseKeyring } from '../../agent/src/channel/signature.js';

const H = 'a'.repeat(64);

describe('deb822 and Release', () => {
  it('reads fields case-insensitively with continuation lines', () => {
    const s = parseStanzas('Package: a\nDescription: x\n more\n\nPACKAGE: b\n', 't');
    expect(s.map((x) => x.get('package'))).toEqual(['a', 'b']);
    expect(s[0]!.get('description')).toBe('x\nmore');
  });

  it('parses the SHA256 section, Valid-Until, By-Hash; refuses paths that leave the suite', () => {
    const r = parseRelease(`Suite: stable\nValid-Until: Sat, 01 Jan 2000 00:00:00 UTC\nAcquire-By-Hash: yes\nComponents: main\nArchitectures: amd64 i386\nSHA256:\n ${H} 12 main/binary-amd64/Packages\n`, 'R');
    expect(r.entries.get('main/binary-amd64/Packages')).toEqual({ path: 'main/binary-amd64/Packages', size: 12, sha256: H });
    expect(r.validUntil?.toISOString()).toBe('2000-01-01T00:00:00.000Z');
    expect(r).toMatchObject({ acquireByHash: true, architectures: ['amd64', 'i386'], components: ['main'] });
    expect(() => parseRelease(`SHA256:\n ${H} 1 ../../etc/passwd\n`, 'R')).toThrow(/leaves the suite/);
    expect(() => parseRelease('MD5Sum:\n x 1 a\n', 'R')).toThrow(/no SHA256 field/);
    expect(isSafeRelative('pool/main/a.deb')).toBe(true);
    expect(isSafeRelative('/etc/x')).toBe(false);
    expect(indexKind('main/debian-installer/binary-amd64/Packages.xz')).toBe('packages');
    expect(indexKind('main/i18n/Translation-en.bz2')).toBeNull();
  });
});

describe('mirror sync config', () => {
  it('fills the profile architectures, resolves paths against the config file, maps to debmirror', () => {
    const c = parseMirrorConfig(JSON.stringify({ upstream: 'http://deb.example:8080/debian/', suites: ['bookworm'], keyring: 'k.gpg', dest: 'm' }), '/etc/liveup/mirror.json');
    expect(c).toMatchObject({ architectures: ['amd64', 'arm64', 'armhf', 'i386'], components: ['main'], keyring: '/etc/liveup/k.gpg', dest: '/etc/liveup/m', keep: 2 });
    const a = debmirrorArgs(c, '/k.gpg', '/t');
    expect(a).toEqual(expect.arrayContaining(['--host=deb.example:8080', '--method=http', '--root=debian', '--dist=bookworm', '--arch=amd64,arm64,armhf,i386', '--nosource']));
    expect(() => parseMirrorConfig(JSON.stringify({ upstream: 'http://x', suites: [], keyring: 'k', dest: 'd' }), 'c.json')).toThrow(/c\.json: suites: must not be empty/);
    expect(() => parseMirrorConfig(JSON.stringify({ upstream: 'http://x', suites: ['a'], keyring: 'k', dest: 'd', bogus: 1 }), 'c.json')).toThrow(/unknown key "bogus"/);
  });
});

describe('keyrings', () => {
  it('reads binary keyrings as well as armored ones, and names a keybox', async () => {
    const { publicKey } = await openpgp.generateKey({ type: 'ecc', curve: 'ed25519Legacy', userIDs: [{ name: 't' }], format: 'object' });
    const armored = await parseKeyring(publicKey.armor(), 'a.asc');
    const binary = await parseKeyring(publicKey.write(), 'b.gpg');
    expect(binary.fingerprints).toEqual(armored.fingerprints);
    const asBytes = await parseKeyring(Buffer.from(publicKey.armor()), 'c.asc');
    expect(asBytes.fingerprints).toEqual(armored.fingerprints);
    const kbx = Buffer.alloc(32);
    kbx.write('KBXf', 8, 'latin1');
    await expect(parseKeyring(kbx, 'pubring.kbx')).rejects.toThrow(/KBX|keybox/i);
    await expect(parseKeyring(Buffer.from('hello'), 'x')).rejects.toThrow(/neither armored text nor binary/);
  });
});
