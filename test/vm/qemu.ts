/**
 * VM harness: boot a raw disk in QEMU (TCG) and read its serial console. One
 * VM at a time per slot: slot 0 is /var/lock/liveup-qemu.lock, slot N
 * /var/lock/liveup-qemu-N.lock. LIVEUP_VM_SLOTS (default 1) slots; vitest's
 * worker N takes slot (N-1) mod slots, so `--maxWorkers=2` with two slots runs
 * two test files' VMs side by side and never two VMs of one file.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';

export interface Vm {
  /**
   * Resolves with the first match of `re` on the console (from offset `since`, default the
   * start), or rejects after `timeoutMs`.
   */
  waitFor(re: RegExp, timeoutMs: number, since?: number): Promise<RegExpMatchArray>;
  console(): string;
  /**
   * Run a shell command on the serial console (a root shell must be there,
   * with `stty -echo`): resolves with its output and exit code.
   */
  sh(cmd: string, timeoutMs?: number): Promise<{ out: string; rc: number }>;
  /** Raw bytes to the serial console (control characters included). */
  type(raw: string): void;
  stop(): Promise<void>;
}

/** `allowReboot`: a guest reboot goes through SeaBIOS and GRUB again (default: QEMU exits, -no-reboot). */
/**
 * `image`: a raw disk (virtio); `cdrom`: an ISO on the IDE CD drive; `uefi`:
 * OVMF instead of SeaBIOS (Debian's ovmf package).
 */
/**
 * Wait for the serial console's autologin shell and make it parseable (no
 * echo, no bracketed paste, no kernel messages); `since`: console length before the boot, so a
 * prompt from an earlier boot does not count.
 */
export async function waitForShell(v: Vm, since: number): Promise<void> {
  // This boot's prompt (kernel messages may follow it on the same line).
  await v.waitFor(/:~# /, 120_000, since).catch(() => undefined);
  for (let i = 0; i < 6; i++) {
    // dmesg -n 1: kernel messages (drm, late drivers) would otherwise interleave with command output.
    const r = await v.sh("stty -echo; bind 'set enable-bracketed-paste off' 2>/dev/null; dmesg -n 1; true", 20_000).catch(() => null);
    if (r) return;
    // No answer yet (a slow login, or a line typed before the shell read it): ^C drops a
    // half-read line, then ask again.
    v.type('\x03\n');
  }
  throw new Error(`no shell on the serial console; see the console log`);
}

/** The test generation's console marker once liveup-boot-check.service passed (generation.ts). */
export const BOOT_CHECK_PASSED = /LIVEUP-VM-MARKER boot-check-passed booted=\d+/;

/**
 * Console milestones of a boot, for benches that show where a switch spends
 * its time: the old userspace down, firmware and GRUB, the kernel, the
 * initramfs, systemd, the agent's start, the login prompt.
 */
export const BOOT_MILESTONES: ReadonlyArray<readonly [string, RegExp]> = [
  ['down', /Reached target .*(?:soft-reboot|kexec|reboot)\.target|reboot: Restarting system/],
  ['grub', /GNU GRUB/],
  ['kernel', /Linux version/],
  ['initramfs', /Run \/init as init process/],
  // The kernel's TOMOYO line at the exec of /sbin/init: the initramfs is done. From here to
  // "Welcome" is systemd loading itself; under TCG that took 1.5-17 s (ld.so: 99% opening
  // and mapping its libraries from the cold squashfs).
  ['init-exec', /Not activating Mandatory Access Control/],
  ['systemd', /Welcome to/],
  // When systemd starts the agent (not when it is up: once the serial getty owns the
  // console, systemd prints no more "Started" lines there; systemd-analyze has that).
  ['agent', /Starting .*liveup-agent\.service/],
  ['login', /login: root \(automatic login\)/],
];

/** Seconds from `t0` (ms) to each milestone seen on the console after offset `since`; filled in as they come. */
export function timeMilestones(vm: Vm, t0: number, since = 0, timeoutMs = 900_000): Record<string, number> {
  const at: Record<string, number> = {};
  for (const [name, re] of BOOT_MILESTONES) vm.waitFor(re, timeoutMs, since).then(() => { at[name] = (Date.now() - t0) / 1000; }, () => undefined);
  return at;
}

/** This process's QEMU lock (see the top of this file). */
export function qemuLock(env: NodeJS.ProcessEnv = process.env): string {
  const slots = Math.max(1, Math.floor(Number(env.LIVEUP_VM_SLOTS ?? 1)) || 1);
  const worker = Math.max(1, Math.floor(Number(env.VITEST_POOL_ID ?? 1)) || 1);
  const slot = (worker - 1) % slots;
  return slot === 0 ? '/var/lock/liveup-qemu.lock' : `/var/lock/liveup-qemu-${slot}.lock`;
}

export function bootVm(opts: {
  image?: string; cdrom?: string; uefi?: boolean; consoleLog: string; memMiB?: number; allowReboot?: boolean;
  /** QEMU user networking (the guest reaches the netns' 127.0.0.1 as 10.0.2.2); QEMU runs inside `netns` when given. */
  net?: boolean; netns?: string;
  /** The disk on virtio-scsi (sda) instead of virtio-blk: the guest can detach it (`/sys/block/sda/device/delete`). */
  scsi?: boolean;
  /** A kernel panic is part of the scenario: waitFor does not fail on one. */
  allowPanic?: boolean;
  /**
   * A GRUB error is part of the scenario: an entry that printed one pauses 10 s at
   * "Press any key to continue..." and then GRUB runs its fallback (a refused
   * signature does this), so waitFor does not fail on the pause.
   */
  allowGrubError?: boolean;
}): Vm {
  writeFileSync(opts.consoleLog, '');
  // When each piece of the console arrived (host ms, then the console's length after it): the
  // guest's own timestamps restart with each kernel and stop between them (a kexec, a reboot).
  const timesLog = `${opts.consoleLog}.times`;
  writeFileSync(timesLog, '');
  // A QMP socket, only read when a wait times out (see diagnoseHang).
  // (A unix socket's path has ~107 bytes at most: a longer one goes without.)
  const qmpSocket = `${opts.consoleLog}.qmp`;
  const qmp = Buffer.byteLength(qmpSocket) < 100;
  rmSync(qmpSocket, { force: true });
  // flock holds the lock for QEMU's lifetime; -no-reboot makes a guest reboot end QEMU.
  const child: ChildProcess = spawn(opts.netns ? 'ip' : 'flock', [
    ...(opts.netns ? ['netns', 'exec', opts.netns, 'flock'] : []),
    // --no-fork: flock execs QEMU holding the lock, so stopping QEMU releases it (a forked flock would leave QEMU running).
    '--no-fork', qemuLock(), 'qemu-system-x86_64',
    '-accel', 'tcg', '-cpu', 'qemu64', '-smp', '1', '-m', String(opts.memMiB ?? 2048),
    ...(opts.image && !opts.scsi ? ['-drive', `file=${opts.image},format=raw,if=virtio`] : []),
    ...(opts.image && opts.scsi ? ['-device', 'virtio-scsi-pci,id=scsi0', '-drive', `file=${opts.image},format=raw,if=none,id=disk0`, '-device', 'scsi-hd,drive=disk0,bus=scsi0.0'] : []),
    ...(opts.cdrom ? ['-cdrom', opts.cdrom] : []),
    ...(opts.uefi ? ['-bios', '/usr/share/ovmf/OVMF.fd'] : []),
    '-display', 'none', '-serial', 'stdio', '-monitor', 'none',
    ...(qmp ? ['-qmp', `unix:${qmpSocket},server=on,wait=off`] : []),
    ...(opts.net ? ['-nic', 'user,model=virtio-net-pci'] : ['-nic', 'none']),
    ...(opts.allowReboot ? [] : ['-no-reboot']),
  ], { stdio: ['pipe', 'pipe', 'pipe'] });
  let text = '';
  let commands = 0;
  let exited: string | null = null;
  const waiters = new Set<() => void>();
  const poke = (): void => { for (const w of [...waiters]) w(); };
  const onData = (b: Buffer): void => {
    const s = b.toString('latin1');
    text += s;
    appendFileSync(opts.consoleLog, s);
    appendFileSync(timesLog, `${Date.now()} ${text.length}\n`);
    poke();
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  child.on('exit', (code, sig) => { exited = `QEMU exited (${code ?? sig})`; poke(); });
  /**
   * Resolve with `probe`'s first non-undefined answer as the console grows;
   * reject when it throws, when QEMU exits, or after `timeoutMs`.
   */
  const watch = <T>(probe: () => T | undefined, timeoutMs: number, what: string): Promise<T> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        try {
          const v = probe();
          if (v !== undefined) return done(() => resolve(v));
        } catch (e) {
          return done(() => reject(e as Error));
        }
        if (exited) return done(() => reject(new Error(`${exited} ${what}; see ${opts.consoleLog}`)));
      };
      const timer = setTimeout(() => {
        done(() => undefined);
        // A silent console says nothing about where the guest is: record its CPU and screen first.
        void (qmp ? diagnoseHang(qmpSocket, opts.consoleLog) : Promise.resolve(null)).then((diag) =>
          reject(new Error(`timed out after ${timeoutMs} ms ${what}; see ${opts.consoleLog}${diag ? ` and ${diag}` : ''}`)));
      }, timeoutMs);
      const done = (f: () => void): void => { clearTimeout(timer); waiters.delete(check); f(); };
      waiters.add(check);
      check();
    });
  return {
    console: () => text,
    waitFor(re, timeoutMs, since = 0) {
      return watch(() => {
        const m = text.slice(since).match(re);
        if (m) return m;
        // Both GRUB entries failed: GRUB waits for a key forever (vm-boot-facts.md).
        if (!opts.allowGrubError && /Press any key to continue/.test(text)) throw new Error(`GRUB failed to boot; see ${opts.consoleLog}`);
        if (!opts.allowPanic && /Kernel panic/.test(text)) throw new Error(`kernel panic; see ${opts.consoleLog}`);
        return undefined;
      }, timeoutMs, `waiting for ${re}`);
    },
    sh(cmd, timeoutMs = 120_000) {
      const n = ++commands;
      const from = text.length;
      // printf with the tag split in two, so the typed command never matches its own end marker.
      child.stdin!.write(`printf '@@%s%d\\n' B ${n}; ${cmd}; printf '@@%s%d rc=%d\\n' E ${n} $?\n`);
      const re = new RegExp(`@@B${n}\\r?\\n([\\s\\S]*?)@@E${n} rc=(\\d+)`);
      return watch(() => {
        const m = re.exec(text.slice(from));
        // The test generation's boot markers are echoed to the console by units while a command
        // may be printing (generation.ts): they are not the command's output.
        return m ? { out: m[1]!.replace(/\r/g, '').replace(/LIVEUP-VM-MARKER (boot-check-passed )?booted=\S+\n/g, ''), rc: Number(m[2]) } : undefined;
      }, timeoutMs, `running ${cmd}`);
    },
    type(raw) {
      child.stdin!.write(raw);
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      await new Promise<void>((r) => { child.once('exit', () => r()); child.kill('SIGTERM'); });
    },
  };
}

/**
 * What a guest that stopped talking is doing, for a timed-out wait: the vCPU's
 * registers sampled three times a second apart (a RIP that never moves is a
 * wait loop, one that wanders is work or a spin), and the screen (GRUB and the
 * firmware also draw there). Written to `<console log>.hang.txt` and `.ppm`;
 * resolves with the text file's path, or null when QEMU could not be asked.
 * (Added after a CI run whose guest sat silent after "Welcome to GRUB!" for
 * 13 minutes and left nothing else to read.)
 */
export async function diagnoseHang(qmpSocket: string, consoleLog: string): Promise<string | null> {
  const out = `${consoleLog}.hang.txt`;
  try {
    const ask = await qmpSession(qmpSocket);
    try {
      const parts: string[] = [`at ${new Date().toISOString()}`];
      parts.push(`status: ${JSON.stringify(await ask('query-status'))}`);
      for (let i = 0; i < 3; i++) {
        if (i > 0) await new Promise((r) => setTimeout(r, 1000));
        parts.push(`--- info registers (${i + 1}/3)`, String(await ask('human-monitor-command', { 'command-line': 'info registers' })));
      }
      await ask('screendump', { filename: `${consoleLog}.ppm` }).catch(() => undefined);
      writeFileSync(out, parts.join('\n') + '\n');
      return out;
    } finally {
      ask.close();
    }
  } catch {
    return null;
  }
}

type QmpAsk = ((execute: string, args?: Record<string, unknown>) => Promise<unknown>) & { close(): void };

/** A minimal QMP client: one command at a time, 10 s each. */
async function qmpSession(path: string): Promise<QmpAsk> {
  const sock = connect(path);
  let buf = '';
  const lines: string[] = [];
  let wake: (() => void) | null = null;
  sock.on('data', (b) => {
    buf += b.toString();
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) { lines.push(buf.slice(0, i)); buf = buf.slice(i + 1); }
    wake?.();
  });
  // A refused connection or QEMU gone: the waiting answer fails now, not after its 10 s.
  sock.on('error', () => wake?.());
  sock.on('close', () => wake?.());
  const next = (): Promise<Record<string, unknown>> => new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('QMP: no answer')), 10_000);
    const take = (): void => {
      while (lines.length > 0) {
        const msg = JSON.parse(lines.shift()!) as Record<string, unknown>;
        if ('event' in msg) continue;
        clearTimeout(timer); wake = null; resolve(msg); return;
      }
      if (sock.destroyed) { clearTimeout(timer); reject(new Error('QMP: closed')); return; }
      wake = take;
    };
    take();
  });
  await next(); // the greeting
  const ask = (async (execute: string, args?: Record<string, unknown>) => {
    sock.write(JSON.stringify(args ? { execute, arguments: args } : { execute }) + '\n');
    const r = await next();
    if ('error' in r) throw new Error(`QMP ${execute}: ${JSON.stringify(r.error)}`);
    return r.return;
  }) as QmpAsk;
  ask.close = () => sock.destroy();
  await ask('qmp_capabilities');
  return ask;
}
