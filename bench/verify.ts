/**
 * bench/verify: our streaming artifact verifier against `sha512sum` and
 * `openssl dgst -sha512` on the same 1 GiB file, in the same run, page cache
 * warm for all three. Prints throughput, ratios and the verifier's peak RSS
 * (measured in a child process so the benchmark's own memory is not counted).
 *
 *   node dist/bench/verify.js [--size-mb 1024] [--runs 3] [--dir /var/tmp]
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { verifyArtifactFile } from '../agent/src/channel/verify.js';

async function child(file: string, length: number, sha512: string): Promise<void> {
  const t0 = process.hrtime.bigint();
  await verifyArtifactFile(file, { path: 'bench', length, sha512 });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  process.stdout.write(JSON.stringify({ ms, maxRssKb: process.resourceUsage().maxRSS }) + '\n');
}

function timeCmd(cmd: string, args: string[]): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0) throw new Error(`${cmd} failed`);
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

async function main(): Promise<void> {
  if (process.argv[2] === '--child') return child(process.argv[3]!, Number(process.argv[4]), process.argv[5]!);
  const { values } = parseArgs({ options: { 'size-mb': { type: 'string', default: '1024' }, runs: { type: 'string', default: '3' }, dir: { type: 'string', default: '/var/tmp' } } });
  const sizeMb = Number(values['size-mb']);
  const runs = Number(values.runs);
  const dir = mkdtempSync(join(values.dir!, 'liveup-bench-'));
  const file = join(dir, 'image.bin');
  try {
    process.stderr.write(`writing a ${sizeMb} MiB test file…\n`);
    execFileSync('dd', ['if=/dev/urandom', `of=${file}`, 'bs=1M', `count=${sizeMb}`, 'status=none']);
    const length = statSync(file).size;
    const sha512 = execFileSync('openssl', ['dgst', '-sha512', '-r', file]).toString().split(' ')[0]!;
    timeCmd('cat', [file]); // warm the page cache for everyone
    const self = fileURLToPath(import.meta.url);
    const best = { ours: Infinity, sha512sum: Infinity, openssl: Infinity };
    let maxRssKb = 0;
    for (let i = 0; i < runs; i++) {
      const r = spawnSync(process.execPath, [self, '--child', file, String(length), sha512], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`verifier failed: ${r.stderr}`);
      const o = JSON.parse(r.stdout) as { ms: number; maxRssKb: number };
      best.ours = Math.min(best.ours, o.ms);
      maxRssKb = Math.max(maxRssKb, o.maxRssKb);
      best.sha512sum = Math.min(best.sha512sum, timeCmd('sha512sum', [file]));
      best.openssl = Math.min(best.openssl, timeCmd('openssl', ['dgst', '-sha512', file]));
    }
    const mbps = (ms: number) => (length / 1e6 / (ms / 1e3)).toFixed(0);
    const lines = [
      `bench/verify: ${sizeMb} MiB, best of ${runs}, page cache warm`,
      `  liveup verifier     ${mbps(best.ours).padStart(5)} MB/s  (${best.ours.toFixed(0)} ms, peak RSS ${(maxRssKb / 1024).toFixed(0)} MB)`,
      `  sha512sum           ${mbps(best.sha512sum).padStart(5)} MB/s`,
      `  openssl dgst        ${mbps(best.openssl).padStart(5)} MB/s`,
      `  ratio vs sha512sum  ${(best.sha512sum / best.ours).toFixed(2)}x   (goal >= 1.2x)`,
      `  ratio vs openssl    ${(best.openssl / best.ours).toFixed(2)}x   (goal >= 0.8x)`,
      `  peak RSS            ${(maxRssKb / 1024).toFixed(0)} MB   (goal <= 128 MB)`,
    ];
    process.stdout.write(lines.join('\n') + '\n');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
