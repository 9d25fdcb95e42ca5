/**
 * `liveup verify`: check a whole channel repository the way an agent would —
 * the index, every manifest it names, every artifact and .deb — and report
 * every problem, not just the first.
 */
import { fetchVerifiedIndex, fetchVerifiedManifest } from '../../agent/src/channel/client.js';
import { toLiveupError, type ErrorCode } from '../../agent/src/channel/errors.js';
import { artifactPath } from '../../agent/src/channel/layout.js';
import type { ArtifactRef } from '../../agent/src/channel/schema.js';
import type { PinnedKeyring } from '../../agent/src/channel/signature.js';
import type { RepoSource } from '../../agent/src/channel/source.js';
import { verifyArtifactStream } from '../../agent/src/channel/verify.js';

export interface Problem {
  readonly code: ErrorCode;
  readonly path: string;
  readonly message: string;
}

export interface RepoReport {
  readonly channels: { channel: string; sequence: number | null; generations: number; artifacts: number; bytes: number }[];
  readonly problems: Problem[];
}

export async function verifyRepo(
  src: RepoSource,
  opts: { keyring: PinnedKeyring; threshold: number; channels: readonly string[]; now?: Date; log?: (line: string) => void },
): Promise<RepoReport> {
  const now = opts.now ?? new Date();
  const log = opts.log ?? (() => undefined);
  const problems: Problem[] = [];
  const channels: RepoReport['channels'] = [];
  const note = (path: string, e: unknown) => {
    const err = toLiveupError(e);
    problems.push({ code: err.code, path, message: err.message });
  };
  for (const channel of opts.channels) {
    const summary = { channel, sequence: null as number | null, generations: 0, artifacts: 0, bytes: 0 };
    channels.push(summary);
    let index;
    try {
      index = await fetchVerifiedIndex(src, { keyring: opts.keyring, threshold: opts.threshold, now, channel, minSequence: 0 });
    } catch (e) {
      note(`channels/${channel}/index.json`, e);
      continue;
    }
    summary.sequence = index.index.sequence;
    log(`channel ${channel}: index sequence ${index.index.sequence} signed by ${index.signers.join(', ')}, ${index.index.generations.length} generation(s)`);
    for (const entry of index.index.generations) {
      let vm;
      try {
        vm = await fetchVerifiedManifest(src, entry, {
          keyring: opts.keyring, threshold: opts.threshold, now, channel, architecture: entry.architecture, minVersion: 0,
        });
      } catch (e) {
        note(entry.manifest.path, e);
        continue;
      }
      summary.generations++;
      const m = vm.manifest;
      const refs: [string, ArtifactRef][] = [
        ...m.artifacts.map((a): [string, ArtifactRef] => [a.path, a]),
        ...m.changes.flatMap((c): [string, ArtifactRef][] => (c.action === 'remove' ? [] : [[c.deb.path, c.deb]])),
      ];
      let ok = 0;
      for (const [rel, ref] of refs) {
        const path = artifactPath(m.version, rel);
        try {
          const stream = await src.openStream(path);
          await verifyArtifactStream(stream, ref, path, path);
          summary.artifacts++;
          summary.bytes += ref.length;
          ok++;
        } catch (e) {
          note(path, e);
        }
      }
      log(`  version ${m.version} (${m.name}): manifest ok, ${ok} of ${refs.length} artifact(s) ok`);
    }
  }
  return { channels, problems };
}
