/**
 * The rig of the live VM files (live.test.ts, live-recovery.test.ts): the
 * agent's generations 1-5 (built and derived once, cached beside generation
 * 1, under the build lock), a channel with what the file needs published, a
 * `liveup disk` image of the generation the machine starts on, and `liveup
 * serve` + `liveup fleet serve` in a network namespace of the file's own
 * (QEMU's user network in it reaches them at 10.0.2.2). Two files, each with
 * its own machine, so the two halves of the story run side by side on two
 * QEMU slots (qemu.ts) instead of one 25-minute file.
 *
 *   1 (agent) ─ 2 = 1 + hello, the test service 1.1 ─ 3 = 2 + a second kernel
 *     ├─ 4 = 3 + sl, cowsay (packages only)
 *     └─ 5 = 3 + libc6 rebuilt as a newer version (same kernel: soft-reboot)
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { buildAgentGeneration, MARKER, REPO, runAsync, VM_CACHE, withBuildLock } from './generation.js';
import { bootVm, waitForShell, type Vm } from './qemu.js';
import { dropRunBulk, newRunDir } from './cache.js';
import { rebuiltDeb, serviceDeb } from './debs.js';
import { PACKAGE_LIST_FORMAT, isInstalled, parsePackageList } from '../../agent/src/adapters/dpkg.js';
import { openFleetStore } from '../../fleet/src/store.js';

export const liveup = join(REPO, 'bin', 'liveup');
const PORT = 8080;
export const FLEET_PORT = 8443;
/** The kernel command line every generation boots with, from GRUB or kexec: the serial console
 * (systemd starts a getty there, which drives the test) and a reboot on panic. */
const CMDLINE = 'boot=live components console=ttyS0,115200 panic=5';

type GenerationJson = { parent: number; kernel: { version: string }; rebootRequired: { required: boolean; reasons: string[] }; changes: { package: string; version: string }[] };
export const generationJson = (dir: string): GenerationJson => JSON.parse(readFileSync(join(dir, 'generation.json'), 'utf8')) as GenerationJson;
export const packagesOf = (dir: string): Record<string, string> => (JSON.parse(readFileSync(join(dir, 'packages.json'), 'utf8')) as { packages: Record<string, string> }).packages;

export interface LiveRig {
  work: string;
  /** Generation directories by version (1-5). */
  gen: Record<1 | 2 | 3 | 4 | 5, string>;
  publish(gendir: string): Promise<string>;
  fleetDb: string;
  fleetToken: string;
  /** Boot the disk (UEFI, network in the rig's namespace); the console goes to work/console.log. */
  boot(): Vm;
  close(): Promise<void>;
}

async function derive(out: string, what: string, args: string[], log: (s: string) => void): Promise<string> {
  if (!existsSync(join(out, 'generation.json'))) {
    log(`deriving ${what}`);
    await withBuildLock(async () => {
      // Derived by the other live file while this one waited for the lock.
      if (!existsSync(join(out, 'generation.json'))) await runAsync(liveup, ['derive', ...args, '--out', out], { timeoutMs: 15 * 60_000 });
    });
  }
  return out;
}

/** Build (or reuse) generations 1-5, publish 1..`startOn`, and make the disk of generation `startOn`. */
export async function setUpLiveRig(name: string, startOn: 1 | 3, log: (s: string) => void): Promise<LiveRig> {
  const built = await buildAgentGeneration(log, `http://10.0.2.2:${PORT}/`);
  const { keys } = built;
  const base = join(VM_CACHE, built.hash);
  const work = newRunDir(name);
  const ns = `liveup-${name}-${process.pid}`;
  const children: ChildProcess[] = [];
  let vm: Vm | null = null;
  // Set up inside the try: a failure anywhere after the run directory exists drops its bulk too.
  try {
    const repo = join(work, 'repo');
    const keyring = join(keys, 'vm.pub.asc');
    const publish = (g: string) => runAsync(liveup, ['publish', '--repo', repo, '--channel', 'stable', '--key', join(keys, 'vm.key.asc'), '--cmdline', CMDLINE, g]);
    const gen1 = built.gendir;
    await publish(gen1);
    // 2 and 3 are derived from the published channel (so each names its parent); 4 and 5 from 3's directory.
    const gen2 = await derive(join(base, 'gen2-hello-svc'), 'generation 2 (+hello, the test service 1.1)',
      ['--from', repo, '--channel', 'stable', '--keyring', keyring, '--install', 'hello', '--deb', serviceDeb(join(VM_CACHE, 'debs'), '1.1')], log);
    await publish(gen2);
    const gen3 = await derive(join(base, 'gen3-kernel'), 'generation 3 (+linux-image-cloud-amd64: a new kernel)',
      ['--from', repo, '--channel', 'stable', '--keyring', keyring, '--install', 'linux-image-cloud-amd64'], log);
    expect(generationJson(gen3)).toMatchObject({ parent: 2, rebootRequired: { required: true, reasons: expect.arrayContaining(['kernel', 'initrd']) } });
    expect(generationJson(gen3).kernel.version).not.toBe(generationJson(gen1).kernel.version);
    // sl and cowsay bring perl: a replay long enough to be killed in the middle; packages only.
    const gen4 = await derive(join(base, 'gen4-sl'), 'generation 4 (+sl, cowsay)', ['--from', gen3, '--parent', '3', '--install', 'sl,cowsay'], log);
    expect(generationJson(gen4)).toMatchObject({ parent: 3, rebootRequired: { required: false } });
    // Nothing newer than generation 3's libc6 exists in trixie: the same package rebuilt with a higher version.
    const libc = packagesOf(gen3).libc6!;
    const gen5 = await derive(join(base, 'gen5-libc6'), 'generation 5 (libc6 rebuilt as a newer version)',
      ['--from', gen3, '--parent', '3', '--deb', await rebuiltDeb(join(VM_CACHE, 'debs'), 'glibc', 'libc6', libc, '+liveup1')], log);
    expect(generationJson(gen5)).toMatchObject({ parent: 3, rebootRequired: { required: true, reasons: ['package:libc6'] } });
    expect(generationJson(gen5).changes.map((c) => c.package)).toEqual(['libc6']);
    if (startOn === 3) await publish(gen3);

    // The machine's disk as an administrator makes one: `liveup disk` (checked against the key), booted with UEFI.
    const image = join(work, 'disk.img');
    await runAsync(liveup, ['disk', '--gendir', join(repo, 'generations', String(startOn)), '--keyring', keyring, '--out', image, '--size', '3072M', '--data-size', '1024M', '--serial']);
    execFileSync('ip', ['netns', 'add', ns]);
    execFileSync('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up']);
    children.push(spawn('ip', ['netns', 'exec', ns, process.execPath, liveup, 'serve', repo, '--listen', `127.0.0.1:${PORT}`, '--quiet'], { stdio: 'inherit' }));
    const fleetDb = `sqlite:${join(work, 'fleet.db')}`;
    const fleetToken = (await runAsync(liveup, ['fleet', 'token', 'create', 'vm-machines', '--db', fleetDb])).trim();
    children.push(spawn('ip', ['netns', 'exec', ns, process.execPath, liveup, 'fleet', 'serve', '--db', fleetDb, '--listen', `127.0.0.1:${FLEET_PORT}`], { stdio: 'inherit' }));
    return {
      work, gen: { 1: gen1, 2: gen2, 3: gen3, 4: gen4, 5: gen5 }, publish, fleetDb, fleetToken,
      boot: () => (vm = bootVm({ image, uefi: true, net: true, netns: ns, allowReboot: true, consoleLog: join(work, 'console.log') })),
      close: async () => {
        await vm?.stop();
        for (const c of children) c.kill('SIGTERM');
        try { execFileSync('ip', ['netns', 'del', ns]); } catch { /* gone */ }
        dropRunBulk(work); // the console log and the fleet's database stay; the disk and the channel go
      },
    };
  } catch (e) {
    for (const c of children) c.kill('SIGTERM');
    try { execFileSync('ip', ['netns', 'del', ns]); } catch { /* the first error is the one to see */ }
    dropRunBulk(work);
    throw e;
  }
}

/** What the guest reports, through its serial console. */
export function guest(vm: Vm, rig: LiveRig) {
  const json = async <T>(cmd: string, timeoutMs?: number): Promise<T> => {
    let r = await vm.sh(cmd, timeoutMs);
    // Right after a boot the shell can be up before the daemon is on the bus:
    // agentctl says DAEMON_UNAVAILABLE (exit 3), and asking again a little later is what a user does.
    for (let i = 0; i < 60 && r.rc === 3 && /DAEMON_UNAVAILABLE/.test(r.out); i++) {
      await new Promise((res) => setTimeout(res, 2000));
      r = await vm.sh(cmd, timeoutMs);
    }
    expect(r.rc, r.out).toBe(0);
    return JSON.parse(r.out.trim().split('\n').pop()!) as T;
  };
  return {
    json,
    status: () => json<Record<string, unknown>>('agentctl status --json'),
    history: () => json<{ kind: string; status: string; version: number | null; message?: string }[]>('agentctl history --limit 500 --json'),
    bootId: async () => (await vm.sh('cat /proc/sys/kernel/random/boot_id')).out.trim(),
    mainPid: async (unit: string) => (await vm.sh(`systemctl show -p MainPID --value ${unit}`)).out.trim(),
    /** What dpkg has installed, as name → version. */
    installed: async () => Object.fromEntries(parsePackageList((await vm.sh(`dpkg-query -W -f '${PACKAGE_LIST_FORMAT.replace(/\t/g, '\\t').replace(/\n/g, '\\n')}'`)).out)
      .filter(isInstalled).map((p) => [p.name, p.version])),
    /** The first boot: generation `v` up, a shell, the agent running. */
    firstBoot: async (v: number) => {
      expect((await vm.waitFor(new RegExp(`${MARKER} booted=(\\S+)\\s*$`, 'm'), 300_000))[1]).toBe(String(v));
      await waitForShell(vm, 0);
      for (let i = 0; i < 60 && (await vm.sh('systemctl is-active liveup-agent')).out.trim() !== 'active'; i++) await new Promise((r) => setTimeout(r, 2000));
    },
    /** Until the boot check ended; asserts it passed. */
    bootCheckPassed: async () => {
      for (let i = 0; i < 60 && (await vm.sh('systemctl is-active liveup-boot-check')).out.trim() === 'activating'; i++) await new Promise((r) => setTimeout(r, 2000));
      expect((await vm.sh('systemctl is-active liveup-boot-check')).out.trim()).toBe('active');
      // Run in the agent's process (BootCheck over D-Bus), not by a second Node.js.
      expect((await vm.sh('journalctl -b -u liveup-boot-check -o cat --no-pager | tail -n 3')).out).toMatch(/liveup-boot-check: good \(checked by liveup-agentd/);
    },
    /** Enrolled with the fleet as an administrator would; the daemon picks the drop-in up by itself. */
    enroll: async () => {
      const r = await vm.sh(`agentctl enroll http://10.0.2.2:${FLEET_PORT}/ --token ${rig.fleetToken} --group vm`);
      expect(r.rc, r.out).toBe(0);
    },
    /** Send a report now, then what the endpoint holds for machine `id`. */
    onEndpoint: async (id: string) => {
      let sent = { rc: 1, out: '' };
      for (let i = 0; i < 10 && sent.rc !== 0; i++) {
        sent = await vm.sh('agentctl report --json', 60_000);
        if (sent.rc !== 0) await new Promise((r) => setTimeout(r, 2000)); // the drop-in is being reloaded
      }
      expect(sent.rc, sent.out).toBe(0);
      const store = await openFleetStore(rig.fleetDb);
      try {
        return (await store.machine(id))!;
      } finally {
        await store.close();
      }
    },
  };
}
