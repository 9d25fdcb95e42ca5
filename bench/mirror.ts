/**
 * bench/mirror: `liveup mirror verify` (the in-process verifier, in a child
 * process so its peak RSS is its own) against one `sha256sum -c` over the same
 * files — every index file and every pool file the verifier hashes — in the
 * same run, page cache warm for both, best of N.
 *
 *   node dist/bench/mirror.js [--debs 200] [--size-mb 520] [--runs 3] [--jobs N] [--dir /var/tmp]
 *   node dist/bench/mirror.js --mirror PATH --keyring K      (an existing mirror)
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { availableParallelism } from 'node:os';
import { loadKeyring } from '../agent/src/channel/signature.js';
import { verifyMirror } from '../publisher/src/mirror/verify.js';
import { parseRelease } from '../publisher/src/mirror/release.js';
import { readIndex, indexKind } from '../publisher/src/mirror/packages.js';
import { makeKey } from '../test/helpers/fixtures.js';
import { ARCHES, buildDeb, indexArchive } from '../test/helpers/aptrepo.js';

async function child(root: string, keyringPath: string, jobs: number): Promise<void> {
  const keyring = await loadKeyring(keyringPath);
  const t0 = process.hrtime.bigint();
  const r = await verifyMirror(root, { keyring, jobs });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  process.stdout.write(JSON.stringify({ ms, problems: r.problems.length, files: r.files + r.indices, bytes: r.bytes, maxRssKb: process.resourceUsage().maxRSS }) + '\n');
}

/** `sha256  path` lines for what the verifier hashes: present indices listed in Release, and pool files. */
async function checkList(root: string): Promise<{ lines: string[]; bytes: number }> {
  const lines: string[] = [];
  const seen = new Set<string>();
  let bytes = 0;
  for (const suite of await readdir(join(root, 'dists'))) {
    const rel = parseRelease(await readFile(join(root, 'dists', suite, 'Release'), 'utf8'), 'Release');
    for (const e of rel.entries.values()) {
      const p = `dists/${suite}/${e.path}`;
      const st = await stat(join(root, p)).catch(() => null);
      if (!st) continue;
      lines.push(`${e.sha256}  ${p}`);
      bytes += e.size;
      const kind = indexKind(e.path);
      if (kind && !e.path.endsWith('.gz') && !e.path.endsWith('.xz')) {
        await readIndex(join(root, p), p, kind, (r) => {
          if (seen.has(r.path)) return;
          seen.add(r.path);
          lines.push(`${r.sha256}  ${r.path}`);
          bytes += r.size;
        });
      }
    }
  }
  return { lines, bytes };
}

function time(cmd: string, args: string[], cwd: string): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { cwd, stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0) throw new Error(`${cmd} failed`);
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

async function main(): Promise<void> {
  if (process.argv[2] === '--child') return child(process.argv[3]!, process.argv[4]!, Number(process.argv[5]));
  const { values } = parseArgs({
    options: {
      debs: { type: 'string', default: '200' }, 'size-mb': { type: 'string', default: '520' }, runs: { type: 'string', default: '3' },
      jobs: { type: 'string' }, dir: { type: 'string', default: '/var/tmp' }, mirror: { type: 'string' }, keyring: { type: 'string' },
    },
  });
  const runs = Number(values.runs);
  const jobs = Number(values.jobs ?? availableParallelism());
  let root = values.mirror;
  let keyringPath = values.keyring;
  let tmp: string | null = null;
  try {
    if (!root) {
      tmp = mkdtempSync(join(values.dir!, 'liveup-bench-mirror-'));
      root = join(tmp, 'mirror');
      const n = Number(values.debs);
      const per = Math.ceil((Number(values['size-mb']) * 1e6) / n);
      process.stderr.write(`building a mirror: ${n} .debs of ${(per / 1e6).toFixed(1)} MB…\n`);
      const key = await makeKey(join(tmp, 'keys'));
      keyringPath = key.pubPath;
      for (let i = 0; i < n; i++) await buildDeb(root, { name: `bench${i}`, arch: ARCHES[i % ARCHES.length]!, bytes: per }, join(tmp, 'work'));
      await indexArchive(root, key);
    }
    if (!keyringPath) throw new Error('--keyring is required with --mirror');
    const { lines, bytes } = await checkList(root);
    const sums = join(tmp ?? values.dir!, `liveup-bench-${process.pid}.sha256`);
    writeFileSync(sums, lines.join('\n') + '\n');
    process.stderr.write(`${lines.length} files, ${(bytes / 1e6).toFixed(0)} MB; warming the page cache…\n`);
    execFileSync('sha256sum', ['-c', '--quiet', sums], { cwd: root, stdio: 'ignore' }); // warm-up, and the list must hold
    const self = fileURLToPath(import.meta.url);
    const best = { ours: Infinity, sha256sum: Infinity };
    let rss = 0;
    for (let i = 0; i < runs; i++) {
      const r = spawnSync(process.execPath, [self, '--child', root, keyringPath, String(jobs)], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`verifier failed: ${r.stderr}`);
      const o = JSON.parse(r.stdout) as { ms: number; problems: number; maxRssKb: number };
      if (o.problems !== 0) throw new Error(`the verifier found ${o.problems} problem(s) in the bench mirror`);
      best.ours = Math.min(best.ours, o.ms);
      rss = Math.max(rss, o.maxRssKb);
      best.sha256sum = Math.min(best.sha256sum, time('sha256sum', ['-c', '--quiet', sums], root));
    }
    if (!tmp) rmSync(sums, { force: true });
    const mbps = (ms: number) => (bytes / 1e6 / (ms / 1e3)).toFixed(0);
    process.stdout.write([
      `bench/mirror: ${lines.length} files, ${(bytes / 1e6).toFixed(0)} MB, best of ${runs}, page cache warm, ${availableParallelism()} CPU(s)`,
      `  liveup mirror verify (--jobs ${jobs})  ${mbps(best.ours).padStart(5)} MB/s  (${best.ours.toFixed(0)} ms, peak RSS ${(rss / 1024).toFixed(0)} MB)`,
      `  sha256sum -c                  ${mbps(best.sha256sum).padStart(5)} MB/s  (${best.sha256sum.toFixed(0)} ms)`,
      `  speed-up                      ${(best.sha256sum / best.ours).toFixed(2)}x`,
    ].join('\n') + '\n');
  } finally {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  }
}

await main();
