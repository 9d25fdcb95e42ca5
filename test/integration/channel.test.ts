/**
 * The channel contract, attacked: every case ends in its specific error code
 * and nothing is accepted. Real keys, real signatures, real files, and a real
 * HTTP server on 127.0.0.1.
 */
import { describe, expect, it } from 'vitest';
import http from 'node:http';
import { readFile, writeFile, appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmp } from '../helpers/tmp.js';
import { makeGendir, makeKey, publishN, type TestKey } from '../helpers/fixtures.js';
import { publish } from '../../publisher/src/publish.js';
import { serve } from '../../publisher/src/serve.js';
import { fetchVerifiedIndex, fetchVerifiedManifest } from '../../agent/src/channel/client.js';
import { openSource } from '../../agent/src/channel/source.js';
import { verifyArtifactFile, verifyArtifactStream, verifyIndex, verifyManifest, type TrustContext } from '../../agent/src/channel/verify.js';
import { parseKeyring, signDetached } from '../../agent/src/channel/signature.js';
import { artifactPath, indexPath, manifestPath } from '../../agent/src/channel/layout.js';
import type { ErrorCode } from '../../agent/src/channel/errors.js';

async function expectCode(p: Promise<unknown>, code: ErrorCode): Promise<void> {
  await expect(p).rejects.toMatchObject({ code });
}

async function setup(count = 2): Promise<{ repo: string; key: TestKey; ctx: TrustContext; dir: string }> {
  const dir = await tmp();
  const key = await makeKey(join(dir, 'keys'));
  const repo = join(dir, 'repo');
  await publishN(repo, dir, key, count);
  return { repo, key, dir, ctx: { keyring: key.keyring, threshold: 1, now: new Date() } };
}

const read = (repo: string, rel: string) => readFile(join(repo, rel));

describe('channel index and manifest verification', () => {
  it('accepts the published channel and every artifact (happy path over HTTP)', async () => {
    const { repo, ctx } = await setup(2);
    const server = await serve({ root: repo, host: '127.0.0.1', port: 0 });
    try {
      const src = openSource(server.url);
      const vi = await fetchVerifiedIndex(src, { ...ctx, channel: 'stable', minSequence: 2 });
      expect(vi.index.sequence).toBe(2);
      expect(vi.index.latest).toBe(2);
      expect(vi.signers).toEqual(ctx.keyring.fingerprints);
      const entry = vi.index.generations.find((g) => g.version === 2)!;
      const vm = await fetchVerifiedManifest(src, entry, { ...ctx, channel: 'stable', architecture: entry.architecture, minVersion: 2 });
      expect(vm.manifest.version).toBe(2);
      for (const a of vm.manifest.artifacts) {
        const rel = artifactPath(2, a.path);
        const va = await verifyArtifactStream(await src.openStream(rel), a, rel, rel);
        expect(va.ref.sha512).toBe(a.sha512);
      }
    } finally {
      await server.close();
    }
  });

  it('refuses a signature with one bit flipped: SIGNATURE_INVALID', async () => {
    const { repo, ctx } = await setup(1);
    const bytes = await read(repo, indexPath('stable'));
    const sig = Buffer.from(await read(repo, indexPath('stable') + '.sig'));
    sig[sig.length - 3]! ^= 0x01; // inside the EdDSA signature value
    await expectCode(verifyIndex(bytes, sig, { ...ctx, channel: 'stable', minSequence: 0 }), 'SIGNATURE_INVALID');
  });

  it('refuses a signature by a key that is not pinned: KEY_NOT_TRUSTED', async () => {
    const { repo, ctx, dir } = await setup(1);
    const other = await makeKey(join(dir, 'other'), 'other');
    const bytes = await read(repo, indexPath('stable'));
    const sig = await signDetached(bytes, [other.priv]);
    await expectCode(verifyIndex(bytes, sig, { ...ctx, channel: 'stable', minSequence: 0 }), 'KEY_NOT_TRUSTED');
  });

  it('refuses a missing .sig: SIGNATURE_MISSING', async () => {
    const { repo, ctx } = await setup(1);
    await writeFile(join(repo, indexPath('stable') + '.sig'), ''); // replaced below by a real absence
    const { rm } = await import('node:fs/promises');
    await rm(join(repo, indexPath('stable') + '.sig'));
    await expectCode(fetchVerifiedIndex(openSource(repo), { ...ctx, channel: 'stable', minSequence: 0 }), 'SIGNATURE_MISSING');
  });

  it('refuses an armored non-signature block in place of a detached signature', async () => {
    const { repo, ctx, key } = await setup(1);
    const bytes = await read(repo, indexPath('stable'));
    const armoredKey = Buffer.from(await readFile(key.pubPath));
    await expectCode(verifyIndex(bytes, armoredKey, { ...ctx, channel: 'stable', minSequence: 0 }), 'SIGNATURE_INVALID');
  });

  it('refuses a manifest edited after signing: SIGNATURE_INVALID alone, HASH_MISMATCH against the index', async () => {
    const { repo, ctx } = await setup(1);
    const rel = manifestPath(1);
    const edited = Buffer.from((await read(repo, rel)).toString().replace('"boot=live components"', '"boot=live componentz"'));
    const sig = await read(repo, rel + '.sig');
    await expectCode(verifyManifest(edited, sig, { ...ctx, channel: 'stable', architecture: 'amd64', minVersion: 0 }), 'SIGNATURE_INVALID');
    await writeFile(join(repo, rel), edited);
    const vi = await fetchVerifiedIndex(openSource(repo), { ...ctx, channel: 'stable', minSequence: 0 });
    await expectCode(
      fetchVerifiedManifest(openSource(repo), vi.index.generations[0]!, { ...ctx, channel: 'stable', architecture: 'amd64', minVersion: 0 }),
      'HASH_MISMATCH',
    );
  });

  it('refuses an expired manifest and an expired index: METADATA_EXPIRED', async () => {
    const dir = await tmp();
    const key = await makeKey(join(dir, 'keys'));
    const repo = join(dir, 'repo');
    const gen = await makeGendir(join(dir, 'g'));
    const past = new Date(Date.now() - 2 * 86400e3);
    await publish({ repo, channel: 'stable', gendir: gen, keys: [key.priv], indexTtlMs: 3600e3, manifestTtlMs: 3600e3, now: past });
    const ctx = { keyring: key.keyring, threshold: 1, now: new Date() };
    await expectCode(fetchVerifiedIndex(openSource(repo), { ...ctx, channel: 'stable', minSequence: 0 }), 'METADATA_EXPIRED');
    const m = await read(repo, manifestPath(1));
    await expectCode(verifyManifest(m, await read(repo, manifestPath(1) + '.sig'), { ...ctx, channel: 'stable', architecture: 'amd64', minVersion: 0 }), 'METADATA_EXPIRED');
    // The same files were valid at the time they were made: expiry is judged against the fixed `now`.
    await expect(verifyManifest(m, await read(repo, manifestPath(1) + '.sig'), { ...ctx, now: past, channel: 'stable', architecture: 'amd64', minVersion: 0 })).resolves.toBeDefined();
  });

  it('refuses an older version and an older index sequence: VERSION_ROLLBACK', async () => {
    const { repo, ctx } = await setup(2);
    await expectCode(fetchVerifiedIndex(openSource(repo), { ...ctx, channel: 'stable', minSequence: 3 }), 'VERSION_ROLLBACK');
    const m = await read(repo, manifestPath(1));
    await expectCode(verifyManifest(m, await read(repo, manifestPath(1) + '.sig'), { ...ctx, channel: 'stable', architecture: 'amd64', minVersion: 2 }), 'VERSION_ROLLBACK');
  });

  it('refuses a manifest and an index for another channel, and another architecture', async () => {
    const dir = await tmp();
    const key = await makeKey(join(dir, 'keys'));
    const repo = join(dir, 'repo');
    await publish({ repo, channel: 'beta', gendir: await makeGendir(join(dir, 'b')), keys: [key.priv], indexTtlMs: 3600e3, manifestTtlMs: 3600e3, architecture: 'arm64' });
    const ctx = { keyring: key.keyring, threshold: 1, now: new Date() };
    const idx = await read(repo, indexPath('beta'));
    await expectCode(verifyIndex(idx, await read(repo, indexPath('beta') + '.sig'), { ...ctx, channel: 'stable', minSequence: 0 }), 'WRONG_CHANNEL');
    const m = await read(repo, manifestPath(1));
    const sig = await read(repo, manifestPath(1) + '.sig');
    await expectCode(verifyManifest(m, sig, { ...ctx, channel: 'stable', architecture: 'arm64', minVersion: 0 }), 'WRONG_CHANNEL');
    await expectCode(verifyManifest(m, sig, { ...ctx, channel: 'beta', architecture: 'amd64', minVersion: 0 }), 'WRONG_ARCHITECTURE');
  });

  it('refuses an index response larger than the cap: TOO_LARGE, with and without Content-Length', async () => {
    const { repo, ctx } = await setup(1);
    const server = await serve({ root: repo, host: '127.0.0.1', port: 0 });
    const size = (await read(repo, indexPath('stable'))).length;
    try {
      await expectCode(fetchVerifiedIndex(openSource(server.url), { ...ctx, channel: 'stable', minSequence: 0, indexCap: size - 1 }), 'TOO_LARGE');
    } finally {
      await server.close();
    }
    // A server that streams without announcing a length (an endless body) is cut at the cap.
    let sent = 0;
    const endless = http.createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      const chunk = Buffer.alloc(64 * 1024, 0x20);
      const pump = () => {
        while (sent < 64 << 20 && res.write(chunk)) sent += chunk.length;
        if (sent < 64 << 20) res.once('drain', pump);
        else res.end();
      };
      pump();
      res.on('close', () => undefined);
    });
    await new Promise<void>((ok) => endless.listen(0, '127.0.0.1', ok));
    const port = (endless.address() as { port: number }).port;
    try {
      await expectCode(fetchVerifiedIndex(openSource(`http://127.0.0.1:${port}/`), { ...ctx, channel: 'stable', minSequence: 0, indexCap: 1 << 20 }), 'TOO_LARGE');
      expect(sent).toBeLessThan(32 << 20);
    } finally {
      endless.closeAllConnections();
      await new Promise((ok) => endless.close(ok));
    }
  });

  it('refuses an artifact with one byte changed (HASH_MISMATCH) and one byte longer (LENGTH_MISMATCH)', async () => {
    const { repo, ctx } = await setup(1);
    const vm = await fetchVerifiedManifest(
      openSource(repo),
      (await fetchVerifiedIndex(openSource(repo), { ...ctx, channel: 'stable', minSequence: 0 })).index.generations[0]!,
      { ...ctx, channel: 'stable', architecture: 'amd64', minVersion: 0 },
    );
    const kernel = vm.manifest.artifacts.find((a) => a.role === 'kernel')!;
    const p = join(repo, artifactPath(1, kernel.path));
    await expect(verifyArtifactFile(p, kernel)).resolves.toBeDefined();
    const orig = await readFile(p);
    const changed = Buffer.from(orig);
    changed[1000]! ^= 0xff;
    await writeFile(p, changed);
    await expectCode(verifyArtifactFile(p, kernel), 'HASH_MISMATCH');
    await writeFile(p, orig);
    await appendFile(p, Buffer.from([0]));
    await expectCode(verifyArtifactFile(p, kernel), 'LENGTH_MISMATCH');
  });

  it('counts distinct keys: threshold 2 with one key signing twice is SIGNATURE_THRESHOLD; two keys pass', async () => {
    const { repo, ctx, key, dir } = await setup(1);
    const second = await makeKey(join(dir, 'k2'), 'second');
    const both = await parseKeyring(
      (await readFile(key.pubPath, 'utf8')) + (await readFile(second.pubPath, 'utf8')),
      'two-keys.asc',
    );
    const bytes = await read(repo, indexPath('stable'));
    const twiceSame = Buffer.concat([await signDetached(bytes, [key.priv]), await signDetached(bytes, [key.priv])]);
    await expectCode(verifyIndex(bytes, twiceSame, { ...ctx, now: new Date(), keyring: both, threshold: 2, channel: 'stable', minSequence: 0 }), 'SIGNATURE_THRESHOLD');
    const two = await signDetached(bytes, [key.priv, second.priv]);
    // `now` after signing: signature times are whole seconds, and setup's `now`
    // can be a second older than a signature made after makeKey.
    const ok = await verifyIndex(bytes, two, { ...ctx, now: new Date(), keyring: both, threshold: 2, channel: 'stable', minSequence: 0 });
    expect(new Set(ok.signers)).toEqual(new Set(both.fingerprints));
  });
});
