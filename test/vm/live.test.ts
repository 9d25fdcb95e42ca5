/**
 * VM suite (LIVEUP_VM_TESTS=1): the real agent inside a generation built by
 * `liveup build` (its .deb from packaging/build), on a disk made by `liveup
 * disk` and booted with UEFI (OVMF), a channel served by
 * `liveup serve` in a network namespace the test creates, QEMU's user
 * network in the same namespace (the guest reaches it at 10.0.2.2).
 *
 * 1. Generation 1 boots; the agent is up with the boot medium writable.
 * 2. Generation 2 = `liveup derive` of 1 installing `hello`: `agentctl update
 *    --apply-live` stages it and replays it without a reboot — boot_id
 *    unchanged, `hello` installed, status says running 2.
 * 3. A reboot boots generation 2's image from GRUB (the trial), the boot check
 *    passes, and `hello` is there from the clean image.
 * 4. Persistence: the disk's LIVEUP-DATA partition is /var/lib/liveup — the
 *    journal, the enrollment and a file written there survive the reboot, a
 *    file written elsewhere on / does not, and the machine keeps its id.
 * 5. `agentctl rollback --now`: generation 1's image boots again (through
 *    systemd's reboot), the rollback is journalled, and 2 is not taken again
 *    on its own.
 * Throughout, the machine is enrolled with `liveup fleet serve` (in the same
 * namespace, 10.0.2.2:8443) and shows there with what it runs, before and
 * after the reboot, as one machine.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { buildTestGeneration, MARKER, REPO, runAsync, VM_CACHE } from './generation.js';
import { bootVm, type Vm } from './qemu.js';
import { openFleetStore } from '../../fleet/src/store.js';

const RUN = process.env.LIVEUP_VM_TESTS === '1';
const liveup = join(REPO, 'bin', 'liveup');
const PORT = 8080;
const FLEET_PORT = 8443;

describe.skipIf(!RUN)('VM: the agent replays an update live, then the image boots', () => {
  const ns = `liveup-vm-${process.pid}`;
  let work = '';
  let image = '';
  let server: ChildProcess | null = null;
  let fleet: ChildProcess | null = null;
  let fleetDb = '';
  let fleetToken = '';
  let vm: Vm | null = null;
  let gen1 = '';
  let gen2 = '';
  let gen3 = '';
  let publish: (g: string) => Promise<string> = async () => '';
  const log = (s: string) => console.log(s);

  beforeAll(async () => {
    // The agent as shipped: packaging/build's .deb (dist/ is built by the test command).
    const debDir = join(VM_CACHE, 'debs');
    mkdirSync(debDir, { recursive: true });
    const deb = (await runAsync(join(REPO, 'packaging', 'build'), ['--only', 'agent', '--no-tsc', '--out', debDir])).trim().split('\n').pop()!;
    // One signing key for the cached generations (their keyring is baked in).
    const keys = join(VM_CACHE, 'keys');
    if (!existsSync(join(keys, 'vm.pub.asc'))) await runAsync(liveup, ['key', 'generate', '--out', keys, '--name', 'vm']);
    const built = await buildTestGeneration(log, { deb, keyringAsc: join(keys, 'vm.pub.asc'), channelUrl: `http://10.0.2.2:${PORT}/` });
    gen1 = built.gendir;
    gen2 = join(VM_CACHE, built.hash, 'gen2-hello');
    work = join(VM_CACHE, 'runs', `live-${Date.now()}`);
    mkdirSync(work, { recursive: true });
    const repo = join(work, 'repo');
    // The kernel command line every generation boots with, from GRUB or kexec: the serial console
    // (systemd then starts a getty there, which drives the test) and a reboot on panic.
    const cmdline = 'boot=live components console=ttyS0,115200 panic=5';
    publish = (g: string) => runAsync(liveup, ['publish', '--repo', repo, '--channel', 'stable', '--key', join(keys, 'vm.key.asc'), '--cmdline', cmdline, g]);
    await publish(gen1);
    // Derived from the published generation 1 (so its parent is 1); cached with generation 1.
    if (!existsSync(join(gen2, 'generation.json'))) {
      log('deriving generation 2 (+hello)');
      await runAsync(liveup, ['derive', '--from', repo, '--channel', 'stable', '--keyring', join(keys, 'vm.pub.asc'), '--install', 'hello', '--out', gen2], { timeoutMs: 15 * 60_000 });
    }
    await publish(gen2);
    // Generation 3 = 2 + lvm2: its initramfs-tools hook triggers update-initramfs, so the
    // initrd changes while the kernel does not — a reboot is required, and kexec does it.
    // Published later in the test; derived from 2 here (cached).
    gen3 = join(VM_CACHE, built.hash, 'gen3-lvm2');
    if (!existsSync(join(gen3, 'generation.json'))) {
      log('deriving generation 3 (+lvm2: a new initrd)');
      await runAsync(liveup, ['derive', '--from', repo, '--channel', 'stable', '--keyring', join(keys, 'vm.pub.asc'), '--install', 'lvm2', '--out', gen3], { timeoutMs: 15 * 60_000 });
    }
    const g3 = JSON.parse(readFileSync(join(gen3, 'generation.json'), 'utf8')) as { rebootRequired: { required: boolean; reasons: string[] }; parent: number };
    expect(g3).toMatchObject({ parent: 2, rebootRequired: { required: true, reasons: expect.arrayContaining(['initrd']) } });
    // The machine's disk as an administrator makes one: `liveup disk` (checked against the key), booted with UEFI.
    image = join(work, 'disk.img');
    await runAsync(liveup, ['disk', '--gendir', join(repo, 'generations', '1'), '--keyring', join(keys, 'vm.pub.asc'), '--out', image, '--size', '3072M', '--data-size', '1024M', '--serial']);
    execFileSync('ip', ['netns', 'add', ns]);
    execFileSync('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up']);
    server = spawn('ip', ['netns', 'exec', ns, process.execPath, liveup, 'serve', repo, '--listen', `127.0.0.1:${PORT}`, '--quiet'], { stdio: 'inherit' });
    fleetDb = `sqlite:${join(work, 'fleet.db')}`;
    fleetToken = (await runAsync(liveup, ['fleet', 'token', 'create', 'vm-machines', '--db', fleetDb])).trim();
    fleet = spawn('ip', ['netns', 'exec', ns, process.execPath, liveup, 'fleet', 'serve', '--db', fleetDb, '--listen', `127.0.0.1:${FLEET_PORT}`], { stdio: 'inherit' });
  }, 40 * 60_000);

  afterAll(async () => {
    await vm?.stop();
    server?.kill('SIGTERM');
    fleet?.kill('SIGTERM');
    try { execFileSync('ip', ['netns', 'del', ns]); } catch { /* not created */ }
    if (image) rmSync(image, { force: true }); // console logs stay beside it
  });

  /** Wait for the autologin shell and make it parseable. */
  async function shell(v: Vm, since: number): Promise<void> {
    await v.waitFor(/:~# $|:~# \S*$/m, 120_000).catch(() => undefined);
    for (let i = 0; i < 5; i++) {
      const r = await v.sh("stty -echo; bind 'set enable-bracketed-paste off' 2>/dev/null; true", 20_000).catch(() => null);
      if (r && v.console().length > since) return;
    }
    throw new Error('no shell on the serial console');
  }

  test('live replay without a reboot, then generation 2 boots from its image and passes its boot check', async () => {
    vm = bootVm({ image, uefi: true, net: true, netns: ns, allowReboot: true, consoleLog: join(work, 'console.log') });
    expect((await vm.waitFor(new RegExp(`${MARKER} booted=(\\S+)\\s*$`, 'm'), 300_000))[1]).toBe('1');
    await shell(vm, 0);
    // The agent runs, and the boot medium is writable where it stages.
    for (let i = 0; i < 60 && (await vm.sh('systemctl is-active liveup-agent')).out.trim() !== 'active'; i++) await new Promise((r) => setTimeout(r, 2000));
    expect((await vm.sh('systemctl is-active liveup-agent liveup-boot-medium')).out.trim().split('\n')).toEqual(['active', 'active']);
    expect((await vm.sh('findmnt -no OPTIONS /run/liveup/boot')).out).toMatch(/^rw/);
    // The data partition is the agent's state directory, mounted by the initramfs.
    expect((await vm.sh('findmnt -no SOURCE,FSTYPE /var/lib/liveup')).out.trim()).toMatch(/^\/dev\/\S+2 ext4$/);
    const bootId = (await vm.sh('cat /proc/sys/kernel/random/boot_id')).out.trim();
    expect((await vm.sh('dpkg-query -W hello')).rc).not.toBe(0);
    // Enrolled with the fleet as an administrator would; the daemon picks the drop-in up by itself.
    const enroll = await vm.sh(`agentctl enroll http://10.0.2.2:${FLEET_PORT}/ --token ${fleetToken} --group vm`);
    expect(enroll.rc, enroll.out).toBe(0);
    const machineId = (await vm.sh('cat /etc/machine-id')).out.trim();
    expect((await vm.sh('cat /var/lib/liveup/machine-id')).out.trim()).toBe(machineId);
    /** Send now, then what the endpoint holds for this machine. */
    const onEndpoint = async () => {
      let sent = { rc: 1, out: '' };
      for (let i = 0; i < 10 && sent.rc !== 0; i++) {
        sent = await vm!.sh('agentctl report --json', 60_000);
        if (sent.rc !== 0) await new Promise((r) => setTimeout(r, 2000)); // the drop-in is being reloaded
      }
      expect(sent.rc, sent.out).toBe(0);
      const store = await openFleetStore(fleetDb);
      try {
        return await store.machine(machineId);
      } finally {
        await store.close();
      }
    };
    expect((await onEndpoint())?.machine.report).toMatchObject({ bootedVersion: 1, channel: 'stable' });

    const upd = await vm.sh('agentctl update --apply-live --json', 900_000);
    expect(upd.rc, upd.out).toBe(0);
    const result = JSON.parse(upd.out.trim().split('\n').pop()!) as { outcome: string; version: number; message: string };
    expect(result).toMatchObject({ outcome: 'applied-live', version: 2 });
    expect((await vm.sh('cat /proc/sys/kernel/random/boot_id')).out.trim()).toBe(bootId); // no reboot
    expect((await vm.sh('hello')).out).toMatch(/Hello, world!/);
    const status = JSON.parse((await vm.sh('agentctl status --json')).out.trim()) as { bootedVersion: number; runningVersion: number; stagedVersion: number };
    expect(status).toMatchObject({ bootedVersion: 1, runningVersion: 2, stagedVersion: 2 });
    const seen = (await onEndpoint())!;
    expect(seen.machine.report).toMatchObject({ bootedVersion: 1, runningVersion: 2, stagedVersion: 2, agentVersion: expect.any(String) });
    expect(seen.machine.hostname).toBe((await vm.sh('hostname')).out.trim());
    // Every report the machine queued arrived once, in sequence.
    const seqs = seen.history.map((h) => h.seq).sort((a, b) => a - b);
    expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, i) => i + 1));

    // Reboot: GRUB tries generation 2's image; its boot check passes.
    await vm.sh('echo kept > /var/lib/liveup/probe; echo gone > /root/probe; sync');
    const before = vm.console().length;
    await vm.sh('systemctl reboot', 10_000).catch(() => undefined);
    const m = await vm.waitFor(new RegExp(`${MARKER} booted=2\\s*$`, 'm'), 400_000);
    expect(m).toBeTruthy();
    await shell(vm, before);
    expect((await vm.sh('cat /proc/cmdline')).out).toMatch(/liveup\.generation=2/);
    expect((await vm.sh('cat /proc/sys/kernel/random/boot_id')).out.trim()).not.toBe(bootId);
    expect((await vm.sh('hello')).out).toMatch(/Hello, world!/);
    for (let i = 0; i < 60 && (await vm.sh('systemctl is-active liveup-boot-check')).out.trim() === 'activating'; i++) await new Promise((r) => setTimeout(r, 2000));
    expect((await vm.sh('systemctl is-active liveup-boot-check')).out.trim()).toBe('active');
    expect((await vm.sh('grub-editenv /run/liveup/boot/grub/grubenv list')).out).not.toMatch(/liveup_try_version=2/);

    // Persistence: what is on the data partition stayed, the rest of / is the clean image again.
    expect((await vm.sh('cat /var/lib/liveup/probe')).out.trim()).toBe('kept');
    expect((await vm.sh('test -e /root/probe')).rc).not.toBe(0);
    expect((await vm.sh('cat /etc/machine-id')).out.trim()).toBe(machineId);
    // The same journal: the live replay of the previous boot is in its history, and 2 is now good.
    const history = async () => JSON.parse((await vm!.sh('agentctl history --limit 500 --json')).out.trim()) as { kind: string; status: string; version: number | null }[];
    expect(await history()).toContainEqual(expect.objectContaining({ kind: 'apply', status: 'succeeded', version: 2 }));
    const after = JSON.parse((await vm.sh('agentctl status --json')).out.trim()) as { bootedVersion: number; lastGoodVersion: number };
    expect(after).toMatchObject({ bootedVersion: 2, lastGoodVersion: 2 });
    // Still enrolled (the enrollment is on the data partition): the endpoint sees the same machine on 2, healthy.
    const seenAfter = (await onEndpoint())!;
    expect(seenAfter.machine.report).toMatchObject({ bootedVersion: 2, health: 'good', lastGoodVersion: 2 });
    const allSeqs = seenAfter.history.map((h) => h.seq).sort((a, b) => a - b);
    expect(allSeqs).toEqual(Array.from({ length: allSeqs.length }, (_, i) => i + 1));

    // Rollback, now: systemd reboots the machine into generation 1's image.
    const beforeRollback = vm.console().length;
    const rollback = vm.sh('agentctl rollback --now --json', 60_000).catch(() => null); // the reboot may cut the answer off
    await vm.waitFor(new RegExp(`${MARKER} booted=2[\\s\\S]*${MARKER} booted=1\\s*$`, 'm'), 400_000);
    await rollback;
    await shell(vm, beforeRollback);
    expect((await vm.sh('cat /proc/cmdline')).out).toMatch(/liveup\.generation=1\b/);
    expect((await vm.sh('dpkg-query -W hello')).rc).not.toBe(0); // generation 1's clean image
    const rolled = JSON.parse((await vm.sh('agentctl status --json')).out.trim()) as { bootedVersion: number };
    expect(rolled.bootedVersion).toBe(1);
    expect(await history()).toContainEqual(expect.objectContaining({ kind: 'rollback', status: 'succeeded', version: 1 }));
    const recheck = JSON.parse((await vm.sh('agentctl check --json', 120_000)).out.trim().split('\n').pop()!) as { updateAvailable: boolean };
    expect(recheck.updateAvailable).toBe(false); // held back after a rollback until an operator says otherwise
    expect((await onEndpoint())!.machine.report).toMatchObject({ bootedVersion: 1 });

    // kexec: generation 3 changes the initrd (lvm2's hook), so it cannot be replayed live. With the machine's own
    // policy set to kexec (a local drop-in, on the data partition), `agentctl update --now` loads
    // 3's kernel and initrd and starts kexec.target: no firmware, no GRUB.
    await publish(gen3);
    expect((await vm.sh(`echo '{"rebootStrategy": "kexec"}' > /var/lib/liveup/agent.d/60-kexec.json && sleep 2`)).rc).toBe(0);
    const beforeKexec = vm.console().length;
    const kexecStart = Date.now();
    const kexec = vm.sh('agentctl update --now --json', 900_000).catch(() => null);
    await vm.waitFor(new RegExp(`${MARKER} booted=1[\\s\\S]*${MARKER} booted=3\\s*$`, 'm'), 900_000);
    void kexec; // its answer went down with the old kernel; the pending read times out on its own
    const kexecBoot = vm.console().slice(beforeKexec);
    expect(kexecBoot).toMatch(/kexec/i);
    expect(kexecBoot).not.toMatch(/SeaBIOS|GNU GRUB/); // no firmware, no boot loader on the way
    await shell(vm, beforeKexec);
    log(`kexec: agentctl update --now (fetch, verify, stage, kexec) to a shell on generation 3 in ${((Date.now() - kexecStart) / 1000).toFixed(0)} s (TCG)`);
    expect((await vm.sh('cat /proc/cmdline')).out).toMatch(/liveup\.generation=3\b/);
    expect((await vm.sh('command -v lvm')).rc).toBe(0);
    for (let i = 0; i < 60 && (await vm.sh('systemctl is-active liveup-boot-check')).out.trim() === 'activating'; i++) await new Promise((r) => setTimeout(r, 2000));
    expect((await vm.sh('systemctl is-active liveup-boot-check')).out.trim()).toBe('active');
    expect(JSON.parse((await vm.sh('agentctl status --json')).out.trim())).toMatchObject({ bootedVersion: 3, lastGoodVersion: 3 });
    expect(await history()).toContainEqual(expect.objectContaining({ kind: 'update', version: 3 }));
  }, 60 * 60_000);
});
