/**
 * bench/boot: time from QEMU start to the boot check passing
 * (`liveup-boot-check.service` finished, so the generation is marked good),
 * for the same generation booted five ways in the same run:
 *
 *   baseline          GRUB loads, the initramfs mounts the squashfs as is
 *   initramfs-sha512  the initramfs hashes the squashfs first (liveup.verify=1)
 *   grub-sha512       GRUB hashes kernel, initrd and squashfs first (liveup disk --grub-verify sha512)
 *   toram             live-boot copies the squashfs to RAM
 *   grub-sha512+toram both
 *
 * Each variant is the real path: the VM suite's cached generation with the
 * agent, published with the variant's command line, written by `liveup disk`
 * and booted with SeaBIOS in QEMU TCG (`-cpu qemu64 -smp 1`, one VM at a
 * time). Prints seconds and the ratio to the baseline, then when each boot
 * reached GRUB, the kernel, the initramfs, systemd and the login prompt.
 *
 *   node dist/bench/boot.js [--runs 1] [--json]
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { buildAgentGeneration, REPO, runAsync } from '../test/vm/generation.js';
import { median } from './median.js';
import { newRunDir } from '../test/vm/cache.js';
import { BOOT_CHECK_PASSED, BOOT_MILESTONES, bootVm, timeMilestones } from '../test/vm/qemu.js';

interface Variant {
  readonly name: string;
  readonly cmdline: string;
  readonly grubVerify: 'off' | 'sha512';
}

const BASE = 'boot=live components console=ttyS0,115200 panic=5';
const VARIANTS: readonly Variant[] = [
  { name: 'baseline', cmdline: BASE, grubVerify: 'off' },
  { name: 'initramfs-sha512', cmdline: `${BASE} liveup.verify=1`, grubVerify: 'off' },
  { name: 'grub-sha512', cmdline: BASE, grubVerify: 'sha512' },
  { name: 'toram', cmdline: `${BASE} toram`, grubVerify: 'off' },
  { name: 'grub-sha512+toram', cmdline: `${BASE} toram`, grubVerify: 'sha512' },
];



interface Boot {
  readonly seconds: number;
  /** Seconds from QEMU's start to each milestone seen. */
  readonly at: Record<string, number>;
}

async function bootOnce(work: string, v: Variant, run: number, gendir: string, keys: string): Promise<Boot> {
  const liveup = join(REPO, 'bin', 'liveup');
  const repo = join(work, `repo-${v.name}`);
  const image = join(work, `disk-${v.name}.img`);
  try {
    // The command line is part of the signed manifest: a variant is a publication of its own.
    await runAsync(liveup, ['publish', '--repo', repo, '--channel', 'stable', '--key', join(keys, 'vm.key.asc'), '--cmdline', v.cmdline, gendir]);
    await runAsync(liveup, ['disk', '--gendir', join(repo, 'generations', '1'), '--keyring', join(keys, 'vm.pub.asc'), '--out', image,
      '--size', '2048M', '--data-size', '512M', '--serial', '--bios-only', '--grub-verify', v.grubVerify, '--force']);
    // The clock starts with QEMU (power-on): run the bench alone, bootVm waits for the QEMU lock.
    const t0 = Date.now();
    const vm = bootVm({ image, consoleLog: join(work, `console-${v.name}-${run}.log`) });
    const at = timeMilestones(vm, t0, 0, 600_000);
    try {
      await vm.waitFor(BOOT_CHECK_PASSED, 600_000);
      return { seconds: (Date.now() - t0) / 1000, at };
    } finally {
      await vm.stop();
    }
  } finally {
    rmSync(repo, { recursive: true, force: true });
    rmSync(image, { force: true });
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { runs: { type: 'string', default: '1' }, json: { type: 'boolean', default: false } } });
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs ${values.runs}: expected a whole number >= 1`);
  const log = (s: string) => process.stderr.write(`${s}\n`);
  // No channel is served: the agent's checks run on its schedule, not during these boots.
  const gen = await buildAgentGeneration(log, 'http://10.0.2.2:8080/');
  const work = newRunDir('bench-boot');
  const results: { variant: string; seconds: number[]; milestones: Record<string, number>[] }[] = [];
  for (const v of VARIANTS) {
    const seconds: number[] = [];
    const milestones: Record<string, number>[] = [];
    for (let r = 0; r < runs; r++) {
      log(`booting ${v.name} (run ${r + 1}/${runs})…`);
      const b = await bootOnce(work, v, r, gen.gendir, gen.keys);
      seconds.push(b.seconds);
      milestones.push(b.at);
    }
    results.push({ variant: v.name, seconds, milestones });
  }
  const base = median(results[0]!.seconds);
  if (values.json) {
    process.stdout.write(JSON.stringify(results.map((r) => ({ ...r, median: median(r.seconds), ratio: median(r.seconds) / base }))) + '\n');
    return;
  }
  process.stdout.write(`firmware start to boot check passed (QEMU TCG, SeaBIOS, median of ${runs}):\n`);
  for (const r of results) {
    const m = median(r.seconds);
    process.stdout.write(`  ${r.variant.padEnd(18)} ${m.toFixed(1).padStart(6)} s  ${(m / base).toFixed(2)}x baseline\n`);
  }
  // The last run's milestones: the same phases for every variant, so where a variant's time goes shows.
  const shown = BOOT_MILESTONES.filter(([n]) => n !== 'down');
  process.stdout.write(`seconds from QEMU start (last run): ${shown.map(([n]) => n).join(' / ')} / check\n`);
  for (const r of results) {
    const at = r.milestones[r.milestones.length - 1]!;
    const cols = shown.map(([n]) => (at[n] === undefined ? '-' : at[n]!.toFixed(1)).padStart(6));
    process.stdout.write(`  ${r.variant.padEnd(18)} ${cols.join(' ')} ${r.seconds[r.seconds.length - 1]!.toFixed(1).padStart(6)}\n`);
  }
  process.stdout.write(`console logs: ${work}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`bench/boot: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
