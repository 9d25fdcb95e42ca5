/**
 * `liveup publish --boot-key`: the generation carries boot.cfg and detached
 * signatures GRUB can check. Checked here with the real gpg (GnuPG reads them
 * as GRUB's pgp module does: v4, binary document, RSA, the issuer key ID in
 * the unhashed area, where GRUB 2.06 looks for it), and a kernel changed by one
 * byte no longer verifies. That GRUB itself refuses it is test/vm/signedboot.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { tmp } from '../helpers/tmp.js';
import { makeGendir, makeKey } from '../helpers/fixtures.js';
import { runCli } from '../helpers/cli.js';
import { parseManifest } from '../../agent/src/channel/schema.js';
import { grubPublicKeyBytes, loadBootPublicKey } from '../../publisher/src/bootsign.js';

function gpg(home: string, args: string[]): { code: number | null; out: string } {
  const r = spawnSync('gpg', ['--homedir', home, '--batch', '--no-tty', ...args], { encoding: 'utf8' });
  return { code: r.status, out: r.stdout + r.stderr };
}

describe('liveup publish --boot-key', () => {
  it('signs boot.cfg, kernel and initrd so gpg (and GRUB) verify them; a tampered kernel fails', async () => {
    const dir = await tmp();
    const channelKey = await makeKey(join(dir, 'keys'));
    const gen = await r(runCli('liveup', ['key', 'generate', '--type', 'rsa', '--name', 'boot', '--out', join(dir, 'keys'), '--json']));
    const boot = JSON.parse(gen.stdout) as { fingerprint: string; privateKeyPath: string; publicKeyPath: string };
    const repo = join(dir, 'repo');
    const gendir = await makeGendir(join(dir, 'g'));
    await r(runCli('liveup', ['publish', '--repo', repo, '--channel', 'stable', '--key', channelKey.privPath, '--boot-key', boot.privateKeyPath,
      '--cmdline', 'boot=live components quiet', gendir]));

    const g = join(repo, 'generations', '1');
    const manifest = parseManifest(await readFile(join(g, 'manifest.json')));
    const byRole = new Map(manifest.artifacts.map((a) => [a.role, a]));
    expect([...byRole.keys()].sort()).toEqual(['boot-config', 'boot-config-sig', 'initrd', 'initrd-sig', 'kernel', 'kernel-sig', 'squashfs']);
    // Listed like every artifact: exact length and SHA-512 of the bytes on the server.
    for (const a of manifest.artifacts) {
      const bytes = await readFile(join(g, a.path));
      expect([a.path, bytes.length, createHash('sha512').update(bytes).digest('hex')]).toEqual([a.path, a.length, a.sha512]);
    }
    expect(byRole.get('kernel-sig')!.path).toBe('vmlinuz.sig');
    const cfg = await readFile(join(g, 'boot.cfg'), 'utf8');
    expect(cfg).toContain(`linux /live/1/vmlinuz boot=live components quiet live-media-path=/live/1 liveup.generation=1 liveup.squashfs_sha512=${byRole.get('squashfs')!.sha512}\n`);
    execFileSync('grub-script-check', [join(g, 'boot.cfg')]);

    const home = join(dir, 'gnupg');
    await mkdir(home, { mode: 0o700 });
    expect(gpg(home, ['--import', boot.publicKeyPath]).code).toBe(0);
    for (const f of ['boot.cfg', 'vmlinuz', 'initrd.img']) {
      const v = gpg(home, ['--verify', join(g, `${f}.sig`), join(g, f)]);
      expect(v.code, `${f}: ${v.out}`).toBe(0);
      expect(v.out).toMatch(/Good signature/);
      // The GRUB 2.06 requirement gpg does not have: issuer key ID (subpacket 16) unhashed, RSA, v4, binary.
      const packets = gpg(home, ['--list-packets', join(g, `${f}.sig`)]).out;
      expect(packets).toMatch(/:signature packet: algo 1, keyid /);
      expect(packets).toMatch(/version 4, created \d+, md5len 0, sigclass 0x00/);
      // gpg prints unhashed subpackets without the "hashed" prefix.
      expect(packets).toMatch(/^\s+subpkt 16 len 8 \(issuer key ID [0-9A-F]{16}\)$/m);
      expect(packets.match(/:signature packet:/g)).toHaveLength(1);
      expect(packets).not.toMatch(/new-ctb/); // old-format headers, as gpg writes them (GRUB mis-reads new-format lengths)
    }
    // The key as `liveup disk` builds it into GRUB: old-format headers only (GRUB 2.06 cuts a
    // new-format key packet of 192+ bytes short and stops with "error loading initial key"),
    // and still the same key to gpg.
    const grubKey = join(dir, 'grub-key.gpg');
    await writeFile(grubKey, grubPublicKeyBytes(await loadBootPublicKey(boot.publicKeyPath), boot.publicKeyPath));
    const keyPackets = gpg(home, ['--list-packets', grubKey]).out;
    expect(keyPackets).toMatch(/:public key packet:[\s\S]*:public sub key packet:/);
    expect(keyPackets).not.toMatch(/new-ctb/);
    const home2 = join(dir, 'gnupg2');
    await mkdir(home2, { mode: 0o700 });
    expect(gpg(home2, ['--import', grubKey]).code).toBe(0);
    expect(gpg(home2, ['--with-colons', '--list-keys']).out).toContain(`fpr:::::::::${boot.fingerprint.toUpperCase()}:`);
    expect(gpg(home2, ['--verify', join(g, 'vmlinuz.sig'), join(g, 'vmlinuz')]).out).toMatch(/Good signature/);
    const bad = join(dir, 'vmlinuz');
    await copyFile(join(g, 'vmlinuz'), bad);
    const bytes = await readFile(bad);
    bytes[1000] = bytes[1000]! ^ 0xff;
    await writeFile(bad, bytes);
    const v = gpg(home, ['--verify', join(g, 'vmlinuz.sig'), bad]);
    expect(v.code).not.toBe(0);
    expect(v.out).toMatch(/BAD signature/);
  }, 120_000);

  it('refuses a key GRUB cannot check, by name, as a usage error; publishes nothing', async () => {
    const dir = await tmp();
    const channelKey = await makeKey(join(dir, 'keys'));
    const repo = join(dir, 'repo');
    const res = await runCli('liveup', ['publish', '--repo', repo, '--channel', 'stable', '--key', channelKey.privPath, '--boot-key', channelKey.privPath, await makeGendir(join(dir, 'g'))]);
    expect(res.code).toBe(2);
    expect(res.stderr).toMatch(/eddsaLegacy \(ed25519Legacy\) key cannot be a boot key: GRUB's pgp module checks RSA signatures only/);
    expect(spawnSync('ls', [join(repo, 'generations')]).status).not.toBe(0);
    const help = await runCli('liveup', ['publish', '--help']);
    expect(help.stdout).toMatch(/--boot-key RSA\.key\.asc/);
  }, 60_000);
});

async function r(p: Promise<{ code: number | null; stdout: string; stderr: string }>): Promise<{ stdout: string }> {
  const res = await p;
  expect(res.code, res.stderr + res.stdout).toBe(0);
  return res;
}
