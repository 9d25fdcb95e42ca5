/**
 * VM suite (LIVEUP_VM_TESTS=1), the live story's first half: the real agent
 * inside a generation built by `liveup build` (its .deb from
 * packaging/build), on a disk made by `liveup disk` and booted with UEFI
 * (OVMF), the channel and the fleet endpoint served in a network namespace
 * the test creates (liverig.ts; the guest reaches them at 10.0.2.2). The
 * second half, from generation 3, is live-recovery.test.ts.
 *
 * 1. Generation 1 boots; the agent is up with the boot medium writable.
 * 2. Generation 2 = `liveup derive` of 1 installing `hello` and upgrading the
 *    test service: `agentctl update --apply-live` stages it and replays it
 *    without a reboot — boot_id unchanged, `hello` installed, the service
 *    restarted and nothing else, status says running 2; `agentctl rollback
 *    --live` takes the machine back to 1 (no reboot), then 2 is replayed again.
 * 3. A reboot boots generation 2's image from GRUB (the trial), the boot check
 *    passes, and `hello` is there from the clean image.
 * 4. Persistence: the disk's LIVEUP-DATA partition is /var/lib/liveup — the
 *    journal, the enrollment and a file written there survive the reboot, a
 *    file written elsewhere on / does not, and the machine keeps its id.
 * 5. `agentctl rollback --now`: generation 1's image boots again (through
 *    systemd's reboot), the rollback is journalled, and 2 is not taken again
 *    on its own.
 * 6. kexec: generation 3 adds a kernel package; with the machine's policy set
 *    to kexec, `agentctl update --download-only` stages it and loads its
 *    kernel (`/sys/kernel/kexec_loaded`), a changed policy unloads it, and
 *    `agentctl update --now` switches with the loaded kernel, without firmware
 *    or GRUB; 3's kernel runs and passes its boot check.
 * Throughout, the machine is enrolled with `liveup fleet serve` and shows
 * there with what it runs, before and after the reboot, as one machine.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { MARKER } from './generation.js';
import { waitForShell, type Vm } from './qemu.js';
import { SVC } from './debs.js';
import { generationJson, guest, packagesOf, setUpLiveRig, type LiveRig } from './liverig.js';

const RUN = process.env.LIVEUP_VM_TESTS === '1';

describe.skipIf(!RUN)('VM: the agent replays an update live, then the image boots', () => {
  let rig: LiveRig | null = null;
  const log = (s: string) => console.log(s);

  beforeAll(async () => {
    rig = await setUpLiveRig('live', 1, log);
  }, 60 * 60_000);

  afterAll(async () => {
    await rig?.close();
  });

  test('live replay and undo without a reboot; generation 2 boots from its image; rollback --now; kexec into a new kernel', async () => {
    const { gen, publish } = rig!;
    const vm: Vm = rig!.boot();
    const g = guest(vm, rig!);
    await g.firstBoot(1);
    // The agent runs, and the boot medium is writable where it stages.
    expect((await vm.sh('systemctl is-active liveup-agent liveup-boot-medium')).out.trim().split('\n')).toEqual(['active', 'active']);
    expect((await vm.sh('findmnt -no OPTIONS /run/liveup/boot')).out).toMatch(/^rw/);
    // First boot of this disk: no startup snapshot yet; the daemon builds both on this
    // machine's CPU, onto the data partition, after its start (packaging/README.md).
    expect((await vm.sh('journalctl -b -u liveup-agent -o cat --no-pager | grep -m1 "agent started"')).out).toMatch(/"startup":"modules"/);
    const built = await vm.sh(`timeout 240 sh -c 'until journalctl -b -u liveup-agent -o cat | grep -q "\\"program\\":\\"agentctl\\",\\"outcome\\":\\"built\\""; do sleep 3; done'`, 260_000);
    expect(built.rc, 'the daemon built the startup snapshots').toBe(0);
    expect((await vm.sh('LIVEUP_SNAPSHOT=status agentctl; LIVEUP_SNAPSHOT=status liveup-agentd')).out)
      .toMatch(/^agentctl: starts from its startup snapshot \/var\/lib\/liveup\/snapshot\/agentctl\.blob\nliveup-agentd: starts from its startup snapshot /);
    // The data partition is the agent's state directory, mounted by the initramfs.
    expect((await vm.sh('findmnt -no SOURCE,FSTYPE /var/lib/liveup')).out.trim()).toMatch(/^\/dev\/\S+2 ext4$/);
    const bootId = (await vm.sh('cat /proc/sys/kernel/random/boot_id')).out.trim();
    expect((await vm.sh('dpkg-query -W hello')).rc).not.toBe(0);
    await g.enroll();
    const machineId = (await vm.sh('cat /etc/machine-id')).out.trim();
    expect((await vm.sh('cat /var/lib/liveup/machine-id')).out.trim()).toBe(machineId);
    const onEndpoint = () => g.onEndpoint(machineId);
    expect((await onEndpoint())?.machine.report).toMatchObject({ bootedVersion: 1, channel: 'stable' });

    // The running services: ours (its binary is upgraded by 2) and one 2 does not touch.
    const { mainPid, installed, history } = g;
    const [svcPid, networkdPid] = [await mainPid(`${SVC}.service`), await mainPid('systemd-networkd.service')];
    expect(Number(svcPid)).toBeGreaterThan(0);
    expect(Number(networkdPid)).toBeGreaterThan(0);
    const upd = await vm.sh('agentctl update --apply-live --json', 900_000);
    expect(upd.rc, upd.out).toBe(0);
    const result = JSON.parse(upd.out.trim().split('\n').pop()!) as { outcome: string; version: number; message: string };
    expect(result).toMatchObject({ outcome: 'applied-live', version: 2 });
    // What the upgrade replaced was restarted, and only that.
    expect(result.message).toMatch(new RegExp(`restarted [^;]*${SVC}\\.service`));
    expect(result.message).not.toMatch(/systemd-networkd/);
    expect(await mainPid(`${SVC}.service`)).not.toBe(svcPid);
    expect((await vm.sh(`systemctl is-active ${SVC}`)).out.trim()).toBe('active');
    expect(await mainPid('systemd-networkd.service')).toBe(networkdPid);
    expect((await vm.sh(`dpkg-query -W -f '\${Version}' ${SVC}`)).out.trim()).toBe('1.1');
    // Converged: what dpkg has installed is exactly generation 2's package list.
    const gen2Packages = packagesOf(gen[2]);
    expect(await installed()).toEqual(gen2Packages);
    expect((await vm.sh('cat /proc/sys/kernel/random/boot_id')).out.trim()).toBe(bootId); // no reboot
    expect((await vm.sh('hello')).out).toMatch(/Hello, world!/);
    const status = (await g.status()) as { bootedVersion: number; runningVersion: number; stagedVersion: number };
    expect(status).toMatchObject({ bootedVersion: 1, runningVersion: 2, stagedVersion: 2 });
    const seen = (await onEndpoint())!;
    expect(seen.machine.report).toMatchObject({ bootedVersion: 1, runningVersion: 2, stagedVersion: 2, agentVersion: expect.any(String) });
    expect(seen.machine.hostname).toBe((await vm.sh('hostname')).out.trim());
    // Every report the machine queued arrived once, in sequence.
    const seqs = seen.history.map((h) => h.seq).sort((a, b) => a - b);
    expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, i) => i + 1));

    // Live undo: back to the booted generation 1 without a reboot — the packages repacked from 1's
    // image (the lower layer of /), the upgraded service restarted on its old binary — then 2 again.
    const svcPid2 = await mainPid(`${SVC}.service`);
    const undo = await vm.sh('agentctl rollback --live --json', 900_000);
    expect(undo.rc, undo.out).toBe(0);
    expect(JSON.parse(undo.out.trim().split('\n').pop()!)).toMatchObject({ outcome: 'rolled-back-live', version: 1 });
    const gen1Packages = packagesOf(gen[1]);
    expect(await installed()).toEqual(gen1Packages);
    expect((await vm.sh('dpkg --audit')).out.trim()).toBe('');
    expect((await vm.sh(`dpkg-query -W -f '\${Version}' ${SVC}`)).out.trim()).toBe('1.0');
    expect(await mainPid(`${SVC}.service`)).not.toBe(svcPid2);
    expect((await vm.sh(`systemctl is-active ${SVC}`)).out.trim()).toBe('active');
    expect((await vm.sh('cat /proc/sys/kernel/random/boot_id')).out.trim()).toBe(bootId);
    expect(await g.status()).toMatchObject({ bootedVersion: 1, runningVersion: 1, stagedVersion: null, needsReboot: null });
    const replayed = await vm.sh('agentctl update --apply-live --json', 900_000);
    expect(replayed.rc, replayed.out).toBe(0);
    expect(JSON.parse(replayed.out.trim().split('\n').pop()!)).toMatchObject({ outcome: 'applied-live', version: 2 });
    expect(await installed()).toEqual(gen2Packages);
    expect(await g.status()).toMatchObject({ bootedVersion: 1, runningVersion: 2, stagedVersion: 2 });

    // Reboot: GRUB tries generation 2's image; its boot check passes.
    await vm.sh('echo kept > /var/lib/liveup/probe; echo gone > /root/probe; sync');
    const before = vm.console().length;
    await vm.sh('systemctl reboot', 10_000).catch(() => undefined);
    const m = await vm.waitFor(new RegExp(`${MARKER} booted=2\\s*$`, 'm'), 400_000);
    expect(m).toBeTruthy();
    await waitForShell(vm, before);
    expect((await vm.sh('cat /proc/cmdline')).out).toMatch(/liveup\.generation=2/);
    expect((await vm.sh('cat /proc/sys/kernel/random/boot_id')).out.trim()).not.toBe(bootId);
    expect((await vm.sh('hello')).out).toMatch(/Hello, world!/);
    expect(await installed()).toEqual(gen2Packages); // the same package set, from the clean image
    await g.bootCheckPassed();
    // The snapshots built under generation 1 serve generation 2 (same node and agent).
    expect((await vm.sh('journalctl -b -u liveup-agent -o cat --no-pager | grep -m1 "agent started"')).out).toMatch(/"startup":"snapshot"/);
    expect((await vm.sh('grub-editenv /run/liveup/boot/grub/grubenv list')).out).not.toMatch(/liveup_try_version=2/);

    // Persistence: what is on the data partition stayed, the rest of / is the clean image again.
    expect((await vm.sh('cat /var/lib/liveup/probe')).out.trim()).toBe('kept');
    expect((await vm.sh('test -e /root/probe')).rc).not.toBe(0);
    expect((await vm.sh('cat /etc/machine-id')).out.trim()).toBe(machineId);
    // The same journal: the live replay of the previous boot is in its history, and 2 is now good.
    expect(await history()).toContainEqual(expect.objectContaining({ kind: 'apply', status: 'succeeded', version: 2 }));
    const after = (await g.status()) as { bootedVersion: number; lastGoodVersion: number };
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
    await waitForShell(vm, beforeRollback);
    expect((await vm.sh('cat /proc/cmdline')).out).toMatch(/liveup\.generation=1\b/);
    expect((await vm.sh('dpkg-query -W hello')).rc).not.toBe(0); // generation 1's clean image
    const rolled = (await g.status()) as { bootedVersion: number };
    expect(rolled.bootedVersion).toBe(1);
    expect(await history()).toContainEqual(expect.objectContaining({ kind: 'rollback', status: 'succeeded', version: 1 }));
    const recheck = JSON.parse((await vm.sh('agentctl check --json', 120_000)).out.trim().split('\n').pop()!) as { updateAvailable: boolean };
    expect(recheck.updateAvailable).toBe(false); // held back after a rollback until an operator says otherwise
    expect((await onEndpoint())!.machine.report).toMatchObject({ bootedVersion: 1 });

    // kexec: generation 3 changes the kernel package, so it cannot be replayed live. With the machine's own
    // policy set to kexec (a local drop-in, on the data partition), `agentctl update --now` starts
    // kexec.target with 3's kernel and initrd, loaded when 3 was staged: no firmware, no GRUB.
    await publish(gen[3]);
    const policy = async (p: string) => expect((await vm.sh(`echo '{"rebootStrategy": "${p}"}' > /var/lib/liveup/agent.d/60-kexec.json && sleep 2`)).rc).toBe(0);
    await policy('kexec');
    // Staged for later (`--download-only`; a closed window does the same), the kexec's kernel and initrd
    // are loaded at once, so the switch's downtime has no `kexec -l`; a changed plan unloads them.
    const kexecLoaded = async () => (await vm.sh('cat /sys/kernel/kexec_loaded')).out.trim();
    const preloaded = /its kernel and initrd \(\d+ MiB\) now loaded for the kexec/;
    expect((await vm.sh('agentctl update --download-only --json', 900_000)).out).toMatch(preloaded);
    expect(await kexecLoaded()).toBe('1');
    await policy('reboot');
    const replanned = await vm.sh('agentctl update --download-only --json', 300_000);
    expect(replanned.rc, replanned.out).toBe(0);
    expect(await kexecLoaded()).toBe('0');
    await policy('kexec');
    expect((await vm.sh('agentctl update --download-only --json', 300_000)).out).toMatch(preloaded);
    expect(await kexecLoaded()).toBe('1');
    const beforeKexec = vm.console().length;
    const kexecStart = Date.now();
    const kexec = vm.sh('agentctl update --now --json', 900_000).catch(() => null);
    await vm.waitFor(new RegExp(`${MARKER} booted=1[\\s\\S]*${MARKER} booted=3\\s*$`, 'm'), 900_000);
    void kexec; // its answer went down with the old kernel; the pending read times out on its own
    const kexecBoot = vm.console().slice(beforeKexec);
    expect(kexecBoot).toMatch(/kexec/i);
    expect(kexecBoot).not.toMatch(/SeaBIOS|GNU GRUB/); // no firmware, no boot loader on the way
    await waitForShell(vm, beforeKexec);
    log(`kexec: agentctl update --now (staged and preloaded before) to a shell on generation 3 in ${((Date.now() - kexecStart) / 1000).toFixed(0)} s (TCG)`);
    expect((await vm.sh('cat /proc/cmdline')).out).toMatch(/liveup\.generation=3\b/);
    expect((await vm.sh('uname -r')).out.trim()).toBe(generationJson(gen[3]).kernel.version); // generation 3's kernel runs
    await g.bootCheckPassed();
    // And generation 3's daemon, after the kexec.
    expect((await vm.sh('journalctl -b -u liveup-agent -o cat --no-pager | grep -m1 "agent started"')).out).toMatch(/"startup":"snapshot"/);
    expect(await g.status()).toMatchObject({ bootedVersion: 3, lastGoodVersion: 3 });
    expect(await history()).toContainEqual(expect.objectContaining({ kind: 'update', version: 3 }));
    expect(await history()).toContainEqual(expect.objectContaining({
      kind: 'apply', version: 3, status: 'succeeded', message: expect.stringMatching(/^kexec into 3.*\[check \d+\.\d\d s, decide \d+\.\d\d s, (fleet-lock \d+\.\d\d s, )?kexec-preloaded \d+\.\d\d s, start-kexec\.target/),
    }));
  }, 120 * 60_000);
});
