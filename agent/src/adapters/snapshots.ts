/**
 * The startup snapshots of agentctl and liveup-agentd (packaging/README.md,
 * "Startup snapshots"), built by the daemon on the machine that runs them.
 *
 * Why here and not at package install: a V8 snapshot loads only on the CPU
 * features and the node build that wrote it (node exits 14 otherwise), and an
 * image is built in the factory's chroot on another CPU. So each machine
 * builds its own, into the persistent state directory: the blobs outlive the
 * overlay and serve every later generation with the same node and agent,
 * which is what a soft-reboot or kexec starts. The launchers decide whether a
 * blob matches (`LIVEUP_SNAPSHOT=status`); this only asks them, and builds
 * what does not, one program at a time, at the daemon's background CPU weight.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { run, type Runner } from './exec.js';

export const SNAPSHOT_PROGRAMS = ['liveup-agentd', 'agentctl'] as const;

export interface SnapshotRefresh {
  readonly program: string;
  readonly outcome: 'valid' | 'built' | 'failed';
  readonly detail?: string;
}

/**
 * For each program installed with a snapshot launcher (`<libDir>/app/snapshot/<p>.cjs`
 * beside `<libDir>/bin/<p>`; none when running from a checkout): build its
 * snapshot unless the launcher says the one there matches.
 */
export async function refreshStartupSnapshots(opts: { libDir?: string; runner?: Runner } = {}): Promise<SnapshotRefresh[]> {
  const libDir = opts.libDir ?? '/usr/lib/liveup';
  const runner = opts.runner ?? run;
  const out: SnapshotRefresh[] = [];
  for (const program of SNAPSHOT_PROGRAMS) {
    if (!existsSync(join(libDir, 'app', 'snapshot', `${program}.cjs`))) continue;
    const launcher = join(libDir, 'bin', program);
    const status = await runner(launcher, [], { env: { LIVEUP_SNAPSHOT: 'status' }, okExitCodes: [0, 1] });
    if (status.exitCode === 0) {
      out.push({ program, outcome: 'valid' });
      continue;
    }
    // Under TCG a build takes ~6 s of CPU; on real hardware well under one.
    const built = await runner(launcher, [], { env: { LIVEUP_SNAPSHOT: 'build' }, okExitCodes: [0, 1], timeoutMs: 600_000 });
    out.push(built.exitCode === 0
      ? { program, outcome: 'built' }
      : { program, outcome: 'failed', detail: built.stderr.trim().split('\n').slice(-3).join(' | ') });
  }
  return out;
}
