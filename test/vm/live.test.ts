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
 * 6. kexec: generation 3 adds a kernel package; with the machine's policy set
 *    to kexec, `agentctl update --now` switches without firmware or GRUB, and
 *    3's kernel runs and passes its boot check.
 * 7. Outside the maintenance window (policy reboot), generation 4 is staged
 *    and the reboot waits; `agentctl status` says until when.
 * 8. kill -9 of the agent's unit while dpkg replays 4 live: after systemd
 *    restarts it, the interruption is journalled, `dpkg --audit` is clean and
 *    status says a reboot into 4 is needed.
 * 9. That reboot: generation 4's required health check fails (on request),
 *    the boot check marks it failed and reboots, GRUB boots 3 on its own (the
 *    trial's tries are spent), 3's clean image runs, 4 is not taken again and
 *    the endpoint shows it as failed.
 * Throughout, the machine is enrolled with `liveup fleet serve` (in the same
 * namespace, 10.0.2.2:8443) and shows there with what it runs, before and
 * after the reboot, as one machine.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { buildAgentGeneration, MARKER, REPO, runAsync, VM_CACHE } from './generation.js';
import { bootVm, waitForShell, type Vm } from './qemu.js';
import { serviceDeb, SVC } from './debs.js';
import { PACKAGE_LIST_FORMAT, isInstalled, parsePackageList } from '../../agent/src/adapters/dpkg.js';
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
  let gen3Kernel = '';
  let gen4 = '';
  let publish: (g: string) => Promise<string> = async () => '';
  const log = (s: string) => console.log(s);

  beforeAll(async () => {
    const built = await buildAgentGeneration(log, `http://10.0.2.2:${PORT}/`);
    const keys = built.keys;
    gen1 = built.gendir;
    gen2 = join(VM_CACHE, built.hash, 'gen2-hello-svc');
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
      await runAsync(liveup, ['derive', '--from', repo, '--channel', 'stable', '--keyring', join(keys, 'vm.pub.asc'), '--install', 'hello',
        '--deb', serviceDeb(join(VM_CACHE, 'debs'), '1.1'), '--out', gen2], { timeoutMs: 15 * 60_000 });
    }
    await publish(gen2);
    // Generation 3 = 2 + a second kernel package (linux-image-cloud-amd64, which /vmlinuz then
    // points at): the kernel and its initrd change, a reboot is required, and kexec does it.
    // Published later in the test; derived from 2 here (cached).
    gen3 = join(VM_CACHE, built.hash, 'gen3-kernel');
    if (!existsSync(join(gen3, 'generation.json'))) {
      log('deriving generation 3 (+linux-image-cloud-amd64: a new kernel)');
      await runAsync(liveup, ['derive', '--from', repo, '--channel', 'stable', '--keyring', join(keys, 'vm.pub.asc'), '--install', 'linux-image-cloud-amd64', '--out', gen3], { timeoutMs: 15 * 60_000 });
    }
    const g3 = JSON.parse(readFileSync(join(gen3, 'generation.json'), 'utf8')) as { rebootRequired: { required: boolean; reasons: string[] }; parent: number; kernel: { version: string } };
    expect(g3).toMatchObject({ parent: 2, rebootRequired: { required: true, reasons: expect.arrayContaining(['kernel', 'initrd']) } });
    gen3Kernel = g3.kernel.version;
    const g1 = JSON.parse(readFileSync(join(gen1, 'generation.json'), 'utf8')) as { kernel: { version: string } };
    expect(gen3Kernel).not.toBe(g1.kernel.version);
    // Generation 4 = 3 + sl and cowsay (perl with it: a replay long enough to be killed in the middle),
    // packages only: replayable live. Derived from 3's directory before 3 is published (--parent 3).
    gen4 = join(VM_CACHE, built.hash, 'gen4-sl');
    if (!existsSync(join(gen4, 'generation.json'))) {
      log('deriving generation 4 (+sl, cowsay)');
      await runAsync(liveup, ['derive', '--from', gen3, '--parent', '3', '--install', 'sl,cowsay', '--out', gen4], { timeoutMs: 15 * 60_000 });
    }
    expect(JSON.parse(readFileSync(join(gen4, 'generation.json'), 'utf8'))).toMatchObject({ parent: 3, rebootRequired: { required: false } });
    // The machine's disk as an administrator makes one: `liveup disk` (checked against the key), booted with UEFI.
    image = join(work, 'disk.img');
    await runAsync(liveup, ['disk', '--gendir', join(repo, 'generations', '1'), '--keyring', join(keys, 'vm.pub.asc'), '--out', image, '--size', '3072M', '--data-size', '1024M', '--serial']);
    execFileSync('ip', ['netns', 'add', ns]);
    execFileSync('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up']);
    server = spawn('ip', ['netns', 'exec', ns, process.execPath, liveup, 'serve', repo, '--listen', `127.0.0.1:${PORT}`, '--quiet'], { stdio: 'inherit' });
    fleetDb = `sqlite:${join(work, 'fleet.db')}`;
    fleetToken = (await runAsync(liveup, ['fleet', 'token', 'create', 'vm-machines', '--db', fleetDb])).trim();
    fleet = spawn('ip', ['netns', 'exec', ns, process.execPath, liveup, 'fleet', 'serve', '--db', fleetDb, '--listen', `127.0.0.1:${FLEET_PORT}`], { stdio: 'inherit' });
  }, 60 * 60_000);

  afterAll(async () => {
    await vm?.stop();
    server?.kill('SIGTERM');
    fleet?.kill('SIGTERM');
    try { execFileSync('ip', ['netns', 'del', ns]); } catch { /* not created */ }
    if (image) rmSync(image, { force: true }); // console logs stay beside it
  });

  test('live replay without a reboot, then generation 2 boots from its image and passes its boot check', async () => {
    vm = bootVm({ image, uefi: true, net: true, netns: ns, allowReboot: true, consoleLog: join(work, 'console.log') });
    expect((await vm.waitFor(new RegExp(`${MARKER} booted=(\\S+)\\s*$`, 'm'), 300_000))[1]).toBe('1');
    await waitForShell(vm, 0);
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

    // The running services: ours (its binary is upgraded by 2) and one 2 does not touch.
    const mainPid = async (unit: string) => (await vm!.sh(`systemctl show -p MainPID --value ${unit}`)).out.trim();
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
    const gen2Packages = (JSON.parse(readFileSync(join(gen2, 'packages.json'), 'utf8')) as { packages: Record<string, string> }).packages;
    const installed = async () => Object.fromEntries(parsePackageList((await vm!.sh(`dpkg-query -W -f '${PACKAGE_LIST_FORMAT.replace(/\t/g, '\\t').replace(/\n/g, '\\n')}'`)).out)
      .filter(isInstalled).map((p) => [p.name, p.version]));
    expect(await installed()).toEqual(gen2Packages);
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
    await waitForShell(vm, before);
    expect((await vm.sh('cat /proc/cmdline')).out).toMatch(/liveup\.generation=2/);
    expect((await vm.sh('cat /proc/sys/kernel/random/boot_id')).out.trim()).not.toBe(bootId);
    expect((await vm.sh('hello')).out).toMatch(/Hello, world!/);
    expect(await installed()).toEqual(gen2Packages); // the same package set, from the clean image
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
    await waitForShell(vm, beforeRollback);
    expect((await vm.sh('cat /proc/cmdline')).out).toMatch(/liveup\.generation=1\b/);
    expect((await vm.sh('dpkg-query -W hello')).rc).not.toBe(0); // generation 1's clean image
    const rolled = JSON.parse((await vm.sh('agentctl status --json')).out.trim()) as { bootedVersion: number };
    expect(rolled.bootedVersion).toBe(1);
    expect(await history()).toContainEqual(expect.objectContaining({ kind: 'rollback', status: 'succeeded', version: 1 }));
    const recheck = JSON.parse((await vm.sh('agentctl check --json', 120_000)).out.trim().split('\n').pop()!) as { updateAvailable: boolean };
    expect(recheck.updateAvailable).toBe(false); // held back after a rollback until an operator says otherwise
    expect((await onEndpoint())!.machine.report).toMatchObject({ bootedVersion: 1 });

    // kexec: generation 3 changes the kernel package, so it cannot be replayed live. With the machine's own
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
    await waitForShell(vm, beforeKexec);
    log(`kexec: agentctl update --now (fetch, verify, stage, kexec) to a shell on generation 3 in ${((Date.now() - kexecStart) / 1000).toFixed(0)} s (TCG)`);
    expect((await vm.sh('cat /proc/cmdline')).out).toMatch(/liveup\.generation=3\b/);
    expect((await vm.sh('uname -r')).out.trim()).toBe(gen3Kernel); // generation 3's kernel runs
    for (let i = 0; i < 60 && (await vm.sh('systemctl is-active liveup-boot-check')).out.trim() === 'activating'; i++) await new Promise((r) => setTimeout(r, 2000));
    expect((await vm.sh('systemctl is-active liveup-boot-check')).out.trim()).toBe('active');
    expect(JSON.parse((await vm.sh('agentctl status --json')).out.trim())).toMatchObject({ bootedVersion: 3, lastGoodVersion: 3 });
    expect(await history()).toContainEqual(expect.objectContaining({ kind: 'update', version: 3 }));
    const statusJson = async () => JSON.parse((await vm!.sh('agentctl status --json')).out.trim()) as Record<string, unknown>;

    // Outside the maintenance window a disruptive step waits, and status says until when. The
    // machine's policy is now `reboot` within a window that opens in two hours (guest clock, UTC).
    await publish(gen4);
    const inHours = async (h: number) => (await vm!.sh(`date -u -d '+${h} hour' +%H:%M`)).out.trim();
    const opens = await inHours(2);
    const windowed = { rebootStrategy: 'reboot', timeZone: 'UTC', maintenanceWindows: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], start: opens, end: await inHours(3) }] };
    expect((await vm.sh(`rm /var/lib/liveup/agent.d/60-kexec.json && echo '${JSON.stringify(windowed)}' > /var/lib/liveup/agent.d/60-window.json && sleep 2`)).rc).toBe(0);
    const bootIdOn3 = (await vm.sh('cat /proc/sys/kernel/random/boot_id')).out.trim();
    const waiting = await vm.sh('agentctl update --json', 900_000);
    expect(waiting.rc, waiting.out).toBe(0);
    const waitResult = JSON.parse(waiting.out.trim().split('\n').pop()!) as { outcome: string; version: number; message: string };
    expect(waitResult).toMatchObject({ outcome: 'staged', version: 4 });
    expect(waitResult.message).toMatch(/reboot to 4 waits: outside the maintenance window/);
    const held = await statusJson();
    expect(held).toMatchObject({ bootedVersion: 3, runningVersion: 3, stagedVersion: 4, decision: 'wait (then reboot)' });
    const until = new Date(String(held.decisionUntil));
    expect(until.toISOString().slice(11, 16)).toBe(opens);
    expect(until.getTime() - Date.parse((await vm.sh('date -u -Iseconds')).out.trim())).toBeGreaterThan(100 * 60_000);
    expect((await vm.sh('agentctl status')).out).toMatch(new RegExp(`waits: outside the maintenance window, next .*${until.toISOString().slice(0, 16)}`));
    expect((await vm.sh('cat /proc/sys/kernel/random/boot_id')).out.trim()).toBe(bootIdOn3); // it waited: no reboot

    // kill -9 in the middle of a live replay (policy live again): the whole unit is killed while the
    // real dpkg run (not its --simulate) installs 4's packages. A tight loop in the guest catches it.
    expect((await vm.sh('rm /var/lib/liveup/agent.d/60-window.json && sleep 2')).rc).toBe(0);
    await vm.sh('(agentctl update --apply-live --json > /root/apply.out 2>&1 &)');
    const killed = await vm.sh(
      // (minbase has no pgrep: /proc with shell builtins only, so one pass forks almost nothing)
      'for i in $(seq 1 20000); do for p in /proc/[0-9]*; do { read -r c < $p/comm; } 2>/dev/null || continue; [ "$c" = dpkg ] || continue; a=$(tr "\\0" " " < $p/cmdline 2>/dev/null); case "$a" in *--simulate*) ;; *" -i "*) systemctl kill -s KILL liveup-agent; echo killed-during-dpkg; break 2;; esac; done; [ -s /root/apply.out ] && break; done; true',
      900_000);
    expect(killed.out).toMatch(/killed-during-dpkg/);
    // systemd restarts the agent (Restart=on-failure); its start recovers the interrupted replay.
    let after9: Record<string, unknown> = {};
    for (let i = 0; i < 90 && !after9.needsReboot; i++) {
      const r = await vm.sh('agentctl status --json', 60_000);
      after9 = r.rc === 0 ? JSON.parse(r.out.trim()) as Record<string, unknown> : {};
      if (!after9.needsReboot) await new Promise((r) => setTimeout(r, 2000));
    }
    expect(after9).toMatchObject({ bootedVersion: 3, runningVersion: 3, needsReboot: { version: 4, reason: expect.stringMatching(/interrupted/) } });
    expect(await history()).toContainEqual(expect.objectContaining({ kind: 'recovery', version: 4 }));
    const audit = await vm.sh('dpkg --audit');
    expect(audit).toEqual({ out: '', rc: 0 }); // dpkg --configure -a finished what was unpacked
    expect((await vm.sh('agentctl status')).out).toMatch(/Needs reboot:\s+into 4/);

    // A reboot gives a clean generation. Generation 4 is the armed trial, but its required health
    // check fails (the image's check, asked to by a file on the data partition): the boot check marks
    // it failed and reboots, GRUB's trial has no tries left, and generation 3 boots on its own.
    const beforeFail = vm.console().length;
    await vm.sh('touch /var/lib/liveup/fail-generation-4 && sync && systemctl reboot', 10_000).catch(() => undefined);
    await vm.waitFor(/liveup: loading generation 4[\s\S]*liveup: loading generation 3/, 900_000);
    expect(vm.console().lastIndexOf('liveup: loading generation 4')).toBeGreaterThan(beforeFail);
    await vm.waitFor(new RegExp(`liveup: loading generation 3[\\s\\S]*${MARKER} booted=3\\s*$`, 'm'), 400_000);
    await waitForShell(vm, beforeFail);
    expect((await vm.sh('cat /proc/cmdline')).out).toMatch(/liveup\.generation=3\b/);
    expect((await vm.sh('dpkg-query -W sl')).rc).not.toBe(0); // 3's clean image: nothing of the killed replay
    expect(await vm.sh('dpkg --audit')).toEqual({ out: '', rc: 0 });
    // The check's own words went to the journal; the history names the check that failed.
    expect(await history()).toContainEqual(expect.objectContaining({ kind: 'boot', status: 'failed', version: 4, message: expect.stringMatching(/50-vm-fail-on-request/) }));
    expect(await statusJson()).toMatchObject({ bootedVersion: 3, lastGoodVersion: 3, needsReboot: null });
    const again = JSON.parse((await vm.sh('agentctl check --json', 120_000)).out.trim().split('\n').pop()!) as { updateAvailable: boolean; availableVersion: number };
    expect(again).toMatchObject({ availableVersion: 4, updateAvailable: false }); // a failed generation is not taken again
    expect((await vm.sh('grub-editenv /run/liveup/boot/grub/grubenv list')).out).not.toMatch(/liveup_try_version=4/);
    expect((await onEndpoint())!.machine.report).toMatchObject({ bootedVersion: 3, failedVersion: 4 });

  }, 120 * 60_000);
});
