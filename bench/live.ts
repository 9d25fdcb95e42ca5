/**
 * bench/live: what a switch costs on one machine in QEMU TCG, each measured
 * in the same run against a full reboot (SeaBIOS + GRUB + kernel + initramfs)
 * of the same kind of generation:
 *
 *   live apply   `agentctl update --apply-live` of a 5-package change (four
 *                new packages and an upgraded service), staged (simulate,
 *                dpkg, restarts) until the command returns
 *   interruption how long the upgraded service was down during the live
 *                apply (systemd's ActiveExit → ActiveEnter timestamps)
 *   full reboot  `systemctl reboot` into the generation just applied live,
 *                until its boot check passed; three times, and the ratios
 *                are against the median (one TCG boot can be 38 s off
 *                another: GRUB alone took 6-66 s, a silence while it draws
 *                its menu: docs/testing.md)
 *                — the live apply's and the soft-reboot's yardstick
 *   soft-reboot  a libc6-only generation: the agent's Update with `apply_now`
 *                (what `agentctl update --now` calls) until the new
 *                userspace's boot check passed
 *   kexec        a kernel change: the same call until the new kernel's boot
 *                check passed; its ratio is against three full reboots into
 *                the generation it landed on (its cloud kernel and 19 MB
 *                initrd boot faster than generation 2's generic kernel and
 *                41 MB initrd: runs 1-33 compared it with those, which
 *                flattered it), measured after it in the same run
 *   agentctl     its own start, connect and one call (`agentctl status`,
 *                median of 3): what typing `agentctl update --now` adds
 *
 * The switches are asked for with `busctl call … Update`, a C client, as the
 * baseline's `systemctl reboot` is one: the ratios compare what the switches
 * do, not how fast a CLI starts. The agent's own schedule (a window opening)
 * makes the same call in-process. Runs 1-27 typed `agentctl update --now`;
 * the "with agentctl" ratios add its measured start to each switch.
 *
 * Each target is staged first (`agentctl update --download-only`: fetch,
 * SHA-512, signature, staging), as the agent does on its schedule before a
 * window opens; that time is printed on its own rows. For the soft-reboot's
 * target, staging includes the agent's prewarm (adapters/prewarm.ts: what
 * the machine runs and has read of its image, read from the target's image
 * into memory so the new userspace does not read it cold); a switch long after staging may
 * find those pages reclaimed, and is then as slow as without. For the kexec's
 * target, staging includes loading its kernel and initrd (adapters/kexec.ts
 * ensureKexecLoaded), so the switch itself only starts kexec.target.
 *
 * The generations are the VM suite's (cached under /var/cache/liveup/vm):
 * 1 with the agent, 2 = 1 + hello sl figlet tree and the test service 1.1, 3 = 2 + libc6 rebuilt
 * as a newer version, 4 = 3 + linux-image-cloud-amd64. The channel is served
 * by `liveup serve` in a network namespace, as in the suite.
 *
 * Storage: this sandbox's host keeps only ~3.5 GB of page cache (21 GB
 * free), so QEMU's reads of disk.img come from RAM or from the backing store
 * by chance. Before each measured switch, the baseline's included, the whole
 * image is read once on the host (not timed), so every variant meets the same
 * warm storage, as a machine's local disk would be; `--no-warm` leaves it to
 * chance. (It did not remove the bimodal start of systemd, 1.5 s or 14 s,
 * which was QEMU TCG's cost of rewriting pages that held translated code; the
 * VM images now neutralise it for every boot path: docs/testing.md.)
 *
 *   node dist/bench/live.js [--json] [--no-warm]
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createReadStream, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { buildAgentGeneration, REPO, runAsync, VM_CACHE, withBuildLock } from '../test/vm/generation.js';
import { dropRunBulk, newRunDir } from '../test/vm/cache.js';
import { BOOT_CHECK_PASSED, BOOT_MILESTONES, bootVm, timeMilestones, waitForShell, type Vm } from '../test/vm/qemu.js';
import { median } from './median.js';
import { rebuiltDeb, serviceDeb, SVC } from '../test/vm/debs.js';

const PORT = 8080;
const liveup = join(REPO, 'bin', 'liveup');
const log = (s: string) => process.stderr.write(`${s}\n`);

/** Derive (or reuse) a generation cached beside generation 1. */
async function derived(dir: string, args: string[]): Promise<string> {
  if (!existsSync(join(dir, 'generation.json'))) await withBuildLock(() => runAsync(liveup, ['derive', ...args, '--out', dir], { timeoutMs: 15 * 60_000 }));
  return dir;
}

/** Resolve when the boot check passed after console offset `since`; seconds since `t0`. */
async function checkPassed(vm: Vm, since: number, t0: number): Promise<number> {
  await vm.waitFor(BOOT_CHECK_PASSED, 900_000, since);
  return (Date.now() - t0) / 1000;
}

/** Reads `image` once (its holes cost nothing), so QEMU's reads of it come from RAM; seconds taken. */
async function warmHostCache(image: string): Promise<string> {
  const t = Date.now();
  for await (const chunk of createReadStream(image, { highWaterMark: 4 << 20 })) void chunk;
  return ((Date.now() - t) / 1000).toFixed(1);
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { json: { type: 'boolean', default: false }, 'no-warm': { type: 'boolean', default: false } } });
  const gen = await buildAgentGeneration(log, `http://10.0.2.2:${PORT}/`);
  const keys = gen.keys;
  const work = newRunDir('bench-live');
  const ns = `liveup-bench-${process.pid}`;
  let server: ChildProcess | null = null;
  let vm: Vm | null = null;
  // Inside the try from here: a failure anywhere after the run directory exists drops its bulk too.
  try {
    const repo = join(work, 'repo');
    const cmdline = 'boot=live components console=ttyS0,115200 panic=5';
    const publish = (g: string) => runAsync(liveup, ['publish', '--repo', repo, '--channel', 'stable', '--key', join(keys, 'vm.key.asc'), '--cmdline', cmdline, g]);
    await publish(gen.gendir);
    const base = join(VM_CACHE, gen.hash);
    const five = await derived(join(base, 'bench-five-svc'), ['--from', repo, '--channel', 'stable', '--install', 'hello,sl,figlet,tree',
      '--deb', serviceDeb(join(VM_CACHE, 'debs'), '1.1')]);
    const fiveMeta = JSON.parse(readFileSync(join(five, 'generation.json'), 'utf8')) as { changes: unknown[] };
    const libc = (JSON.parse(readFileSync(join(five, 'packages.json'), 'utf8')) as { packages: Record<string, string> }).packages.libc6!;
    const libcDeb = await rebuiltDeb(join(VM_CACHE, 'debs'), 'glibc', 'libc6', libc, '+liveup1');
    const soft = await derived(join(base, 'bench-libc6'), ['--from', five, '--parent', '2', '--deb', libcDeb]);
    const kernel = await derived(join(base, 'bench-kernel'), ['--from', soft, '--parent', '3', '--install', 'linux-image-cloud-amd64']);
    const image = join(work, 'disk.img');
    await runAsync(liveup, ['disk', '--gendir', join(repo, 'generations', '1'), '--keyring', join(keys, 'vm.pub.asc'), '--out', image, '--size', '3072M', '--data-size', '1024M', '--serial', '--bios-only']);

    execFileSync('ip', ['netns', 'add', ns]);
    execFileSync('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up']);
    server = spawn('ip', ['netns', 'exec', ns, process.execPath, liveup, 'serve', repo, '--listen', `127.0.0.1:${PORT}`, '--quiet'], { stdio: 'inherit' });
    vm = bootVm({ image, net: true, netns: ns, allowReboot: true, consoleLog: join(work, 'console.log') });
    await vm.waitFor(BOOT_CHECK_PASSED, 900_000);
    await waitForShell(vm, 0);
    for (let i = 0; i < 60 && (await vm.sh('systemctl is-active liveup-agent')).out.trim() !== 'active'; i++) await new Promise((r) => setTimeout(r, 2000));
    // The machine's steady state: its first boot builds the startup snapshots once (the daemon,
    // after its start); every start measured below, the reboots' as the switches', uses them.
    const snapT = Date.now();
    const snap = await vm.sh(`timeout 300 sh -c 'until LIVEUP_SNAPSHOT=status agentctl >/dev/null && LIVEUP_SNAPSHOT=status liveup-agentd >/dev/null; do sleep 3; done'`, 320_000);
    if (snap.rc !== 0) throw new Error(`the startup snapshots were not built: ${(await vm.sh('LIVEUP_SNAPSHOT=status agentctl; LIVEUP_SNAPSHOT=status liveup-agentd; journalctl -b -u liveup-agent -o cat | grep -i snapshot')).out}`);
    log(`startup snapshots ready (${((Date.now() - snapT) / 1000).toFixed(0)} s after the first boot's shell; not timed)`);

    // The switches are timed from a staged generation, as the agent runs them (it stages on its
    // schedule and switches in the window): fetch, verify and staging are timed apart.
    const stage = async (): Promise<number> => {
      const t = Date.now();
      const r = await vm!.sh('agentctl update --download-only --json', 900_000);
      if (r.rc !== 0) throw new Error(`staging failed: ${r.out}`);
      const said = /"message":\s*"([^"]*)"/.exec(r.out)?.[1];
      if (said) log(`  staged: ${said}`);
      return (Date.now() - t) / 1000;
    };

    log(`live apply of ${fiveMeta.changes.length} package change(s)…`);
    await publish(five);
    const liveStageS = await stage();
    const t0 = Date.now();
    const applied = await vm.sh('agentctl update --apply-live --json', 900_000);
    const liveS = (Date.now() - t0) / 1000;
    if (applied.rc !== 0 || !/"applied-live"/.test(applied.out)) throw new Error(`live apply failed: ${applied.out}`);
    // The upgraded service's downtime: from systemd's "stopping" to "active again" (monotonic µs).
    const shown = (await vm.sh(`systemctl show -p ActiveExitTimestampMonotonic -p ActiveEnterTimestampMonotonic ${SVC}`)).out;
    const stamp = (k: string): number => Number(new RegExp(`${k}=(\\d+)`).exec(shown)?.[1] ?? NaN);
    const exitUs = stamp('ActiveExitTimestampMonotonic');
    const downS = (stamp('ActiveEnterTimestampMonotonic') - exitUs) / 1e6;
    if (!(exitUs > 0 && downS > 0)) throw new Error(`${SVC} was not restarted by the live apply: ${shown}`);

    log('full reboot into the same generation…');
    /** Run `cmd` (it may never answer: the switch cuts it off); seconds until the boot check passed, and the console since. */
    const phases: { what: string; at: Record<string, number>; seconds: number; agent: string | null }[] = [];
    const switchBy = async (name: string, cmd: string): Promise<{ seconds: number; console: string }> => {
      if (name === 'soft-reboot') {
        // The journal from just before the command, for the soft-reboot's timeline below: /run
        // outlives a soft-reboot, the old userspace's persistent journal (on its overlay) does not.
        // journalctl runs as a transient unit without default dependencies, so the shutdown's
        // transaction does not stop it with the serial getty: it follows until the final kill.
        // Started before the clock, so it costs the switch nothing.
        await vm!.sh('systemd-run -q --unit=liveup-bench-journal -p DefaultDependencies=no -p StandardOutput=file:/run/liveup-bench-journal journalctl -f -n 0 -o short-monotonic && sleep 2');
      }
      if (!values['no-warm']) log(`${name}: read disk.img into the host's page cache (${await warmHostCache(image)} s, not timed)`);
      const mark = vm!.console().length;
      const start = Date.now();
      const at = timeMilestones(vm!, start, mark);
      // The guest's clock at the command, for the journal's timeline.
      void vm!.sh(`cut -d' ' -f1 /proc/uptime > /run/liveup-bench-t0; ${cmd}`, 900_000).catch(() => undefined);
      const seconds = await checkPassed(vm!, mark, start);
      await waitForShell(vm!, mark);
      // Where the new userspace spent its time (the same for all three paths, so
      // it is where the ratios are won or lost): kept beside the console log.
      const analyze = await vm!.sh('systemd-analyze critical-chain liveup-boot-check.service --no-pager; echo; systemd-analyze blame --no-pager | head -20', 120_000);
      writeFileSync(join(work, `${name}.analyze.txt`), analyze.out);
      if (name === 'soft-reboot') {
        // The same kernel boot, so one clock for both userspaces: every journal line since the
        // command, in seconds from it (what the agent did before going down, what stopped when,
        // what started). The new journal also holds the old userspace's last lines, stamped
        // when it read them: the first part has their true times.
        const rel = `awk -v t0="$t0" 'match($0, /[0-9]+[.][0-9]+/) { t = substr($0, RSTART, RLENGTH) + 0; if (t >= t0) printf "%+8.2f %s\\n", t - t0, substr($0, index($0, "]") + 2) }'`;
        const since = await vm!.sh(`t0=$(cat /run/liveup-bench-t0); ${rel} /run/liveup-bench-journal | head -400; echo '--- the new userspace ---'; journalctl -b -o short-monotonic --no-pager | ${rel} | head -600`, 120_000);
        writeFileSync(join(work, `${name}.journal.txt`), since.out);
      }
      // The agent's own timeline before systemd took over (journalled with its switch step).
      const history = !name.startsWith('reboot') ? (await vm!.sh('agentctl history --limit 10 --json', 120_000)).out : '[]';
      const agent = ((JSON.parse(history.slice(history.indexOf('['))) as { message: string }[]).map((e) => /\[([^\]]*\d s)\]$/.exec(e.message)?.[1]).find(Boolean)) ?? null;
      phases.push({ what: name, at: { ...at }, seconds, agent });
      return { seconds, console: vm!.console().slice(mark) };
    };
    const reboots: number[] = [];
    for (const name of ['reboot', 'reboot-2', 'reboot-3']) reboots.push((await switchBy(name, 'systemctl reboot')).seconds);
    const rebootS = median(reboots);

    // What `agentctl` itself costs before its call reaches the daemon (node's start under TCG).
    const cli: number[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await vm.sh(`s=$(date +%s.%N); agentctl status >/dev/null; e=$(date +%s.%N); awk "BEGIN { print $e - $s }"`, 120_000);
      cli.push(Number(r.out.trim().split('\n').pop()));
    }
    const cliS = median(cli);
    if (!(cliS > 0)) throw new Error(`agentctl status was not timed: ${cli.join(', ')}`);
    // The call `agentctl update --now` makes; busctl's default 25 s timeout would cut a long one.
    const NOW = "busctl --timeout=1h call org.liveup.Agent1 /org/liveup/Agent1 org.liveup.Agent1 Update 'a{sv}' 1 apply_now b true";

    log('soft-reboot into the libc6 generation…');
    await publish(soft);
    const softStageS = await stage();
    const softS = (await switchBy('soft-reboot', NOW)).seconds;
    if ((await vm.sh('cat /run/liveup/booted')).out.trim() !== '3') throw new Error('the soft-reboot did not land on generation 3');

    log('kexec into the kernel generation…');
    await publish(kernel);
    const kexecStageS = await stage();
    const kexec = await switchBy('kexec', NOW);
    const kexecS = kexec.seconds;
    /** The generation the running kernel was booted into (GRUB's entry or the kexec put it on its command line). */
    const bootedGeneration = async (): Promise<string | undefined> => /liveup\.generation=(\d+)/.exec((await vm!.sh('cat /proc/cmdline')).out)?.[1];
    if ((await bootedGeneration()) !== '4') throw new Error('kexec did not land on generation 4');
    if (/SeaBIOS|GNU GRUB/.test(kexec.console)) throw new Error('the kexec went through firmware');

    // The kexec's own yardstick: full reboots into the generation it landed on (its kernel and
    // initrd, through firmware and GRUB), measured after it in the same run. The reboots above
    // boot generation 2's generic kernel and 41 MB initrd; generation 4 boots the cloud kernel
    // with a 19 MB initrd, which starts faster, so comparing the kexec with them flattered it.
    log('full reboot into the kexec\'s generation (4)…');
    const reboots4: number[] = [];
    for (const name of ['reboot-gen4', 'reboot-gen4-2', 'reboot-gen4-3']) {
      reboots4.push((await switchBy(name, 'systemctl reboot')).seconds);
      if ((await bootedGeneration()) !== '4') throw new Error(`${name} did not boot generation 4 (the kexec'ed generation was not made GRUB's default)`);
    }
    const reboot4S = median(reboots4);

    // Each row's ratio is against the reboot into the generation it lands on: generation 2 for
    // the live apply and the soft-reboot (its kernel and initrd are generation 3's), 4 for the kexec.
    const vs2 = { base: rebootS, of: 'full reboot (gen 2)' };
    const vs4 = { base: reboot4S, of: 'full reboot (gen 4)' };
    const rows = [
      { what: 'full reboot, gen 2 (median of 3)', seconds: rebootS, ...vs2 },
      ...reboots.map((seconds, i) => ({ what: `  reboot ${i + 1}`, seconds, ...vs2 })),
      { what: 'full reboot, gen 4 (median of 3)', seconds: reboot4S, ...vs4 },
      ...reboots4.map((seconds, i) => ({ what: `  reboot ${i + 1}`, seconds, ...vs4 })),
      { what: 'live apply', seconds: liveS, ...vs2 },
      { what: `  ${SVC} down during it`, seconds: downS, ...vs2 },
      { what: 'soft-reboot', seconds: softS, ...vs2 },
      { what: 'kexec', seconds: kexecS, ...vs4 },
      { what: '  kexec vs the gen 2 reboots', seconds: kexecS, ...vs2 },
      { what: 'agentctl start (status, med. of 3)', seconds: cliS, ...vs2 },
      { what: '  soft-reboot with agentctl', seconds: softS + cliS, ...vs2 },
      { what: '  kexec with agentctl', seconds: kexecS + cliS, ...vs4 },
      { what: 'stage (live-apply generation)', seconds: liveStageS, ...vs2 },
      { what: 'stage (soft-reboot generation)', seconds: softStageS, ...vs2 },
      { what: 'stage (kexec generation)', seconds: kexecStageS, ...vs4 },
    ].map((r) => ({ ...r, ratio: r.seconds / r.base }));
    if (values.json) process.stdout.write(JSON.stringify({ rows, phases }) + '\n');
    else {
      process.stdout.write('switch to a ready machine (boot check passed; live apply: command returned), QEMU TCG, one run:\n');
      for (const r of rows) process.stdout.write(`  ${r.what.padEnd(36)} ${r.seconds.toFixed(1).padStart(6)} s  ${r.ratio.toFixed(2)}x ${r.of}\n`);
      // Where each switch's time goes, from the command: the same phases after the kernel for all three.
      process.stdout.write(`seconds from the command to each milestone: ${BOOT_MILESTONES.map(([n]) => n).join(' / ')} / check\n`);
      for (const p of phases) {
        const cols = BOOT_MILESTONES.map(([n]) => (p.at[n] === undefined ? '-' : p.at[n]!.toFixed(1)).padStart(6));
        process.stdout.write(`  ${p.what.padEnd(12)} ${cols.join(' ')} ${p.seconds.toFixed(1).padStart(6)}\n`);
      }
      process.stdout.write('the agent\'s work from the command until systemd took over:\n');
      for (const p of phases.filter((x) => x.agent)) process.stdout.write(`  ${p.what.padEnd(12)} ${p.agent}\n`);
      process.stdout.write(`console log: ${join(work, 'console.log')}; systemd-analyze after each switch: ${join(work, '*.analyze.txt')}; the soft-reboot's journal from the command: ${join(work, 'soft-reboot.journal.txt')}\n`);
    }
  } finally {
    await vm?.stop();
    server?.kill('SIGTERM');
    try { execFileSync('ip', ['netns', 'del', ns]); } catch { /* not created */ }
    dropRunBulk(work); // the console log, journals and analyses stay; the 3 GB disk and the channel go
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`bench/live: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
