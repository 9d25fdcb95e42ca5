/**
 * A build chroot: the API filesystems mounted into it, commands run inside it,
 * and — the part that matters — everything unmounted again on every exit path.
 *
 * Why so careful: a build tree with the host's /dev bind-mounted into it is a
 * loaded gun. `rm -rf` on it deletes the host's device nodes. So removal always
 * goes through removeTree(), which unmounts whatever /proc/self/mountinfo shows
 * under the tree first and then removes with `rm --one-file-system`.
 */
import { readFile, writeFile, chmod, rm, lstat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { LiveupError } from '../../../agent/src/channel/errors.js';
import { run, type RunOptions, type RunResult } from '../exec.js';
import { PACKAGE_LIST_FORMAT, isInstalled, parsePackageList } from '../../../agent/src/adapters/dpkg.js';

export interface StepContext {
  readonly log: (line: string) => void;
  /** Aborted on SIGINT/SIGTERM: running commands are killed, cleanup still runs. */
  readonly signal: AbortSignal;
}

/** Mount points at or under `dir`, deepest first (so nested mounts go before their parents). */
export async function mountsUnder(dir: string): Promise<string[]> {
  const root = resolve(dir);
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const points = text.split('\n').filter(Boolean).map((l) => unescapeMount(l.split(' ')[4] ?? ''));
  return [...new Set(points.filter((p) => p === root || p.startsWith(root + '/')))].sort((a, b) => b.length - a.length);
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Unmount everything at or under `dir`; lazily if a normal unmount fails (a process still holds it). */
export async function unmountUnder(dir: string, log?: (l: string) => void): Promise<void> {
  // Repeat: a lazy unmount of a parent can reveal nothing new, but a mount stacked twice shows twice.
  for (let round = 0; round < 5; round++) {
    const points = await mountsUnder(dir);
    if (points.length === 0) return;
    for (const p of points) {
      try {
        await run('umount', [p]);
      } catch {
        log?.(`umount ${p} failed; detaching it lazily`);
        await run('umount', ['--lazy', p]).catch(() => undefined);
      }
    }
  }
  const left = await mountsUnder(dir);
  if (left.length) throw new LiveupError('BUILD_FAILED', `could not unmount ${left.join(', ')}`, { path: dir });
}

/** Remove a build tree safely: unmount first, never cross into another filesystem. */
export async function removeTree(dir: string, log?: (l: string) => void): Promise<void> {
  if (!(await lstat(dir).then(() => true, () => false))) return;
  await unmountUnder(dir, log);
  await run('rm', ['-rf', '--one-file-system', '--', dir]);
}

export class Chroot {
  private readonly mounts: string[] = [];

  constructor(readonly root: string, private readonly ctx: StepContext) {}

  path(p: string): string {
    return join(this.root, p);
  }

  /** proc, sys, dev and dev/pts: what apt, dpkg maintainer scripts and update-initramfs need. */
  async mountApi(): Promise<void> {
    await this.mount(['-t', 'proc', 'proc'], 'proc');
    await this.mount(['-t', 'sysfs', 'sysfs'], 'sys');
    await this.mount(['--bind', '/dev'], 'dev');
    await this.mount(['--bind', '/dev/pts'], 'dev/pts');
  }

  async bind(hostDir: string, inside: string): Promise<void> {
    await run('mkdir', ['-p', this.path(inside)]);
    await this.mount(['--bind', hostDir], inside);
    // apt takes a non-blocking lock on its archive directory: two builds sharing
    // the host's cache would fail at once ("Could not get lock"). Queue them
    // behind a host-side flock instead.
    if (inside === 'var/cache/apt/archives') this.aptLock = join(hostDir, '.liveup-apt.flock');
  }

  private aptLock: string | null = null;

  private async mount(args: string[], inside: string): Promise<void> {
    const target = this.path(inside);
    await run('mount', [...args, target], { signal: this.ctx.signal });
    this.mounts.push(target);
  }

  /** Unmount what this chroot mounted, then anything else left under the root. Safe to call twice. */
  async unmountAll(): Promise<void> {
    while (this.mounts.length) {
      const m = this.mounts.pop()!;
      await run('umount', [m]).catch(() => run('umount', ['--lazy', m]).catch(() => undefined));
    }
    await unmountUnder(this.root, this.ctx.log);
  }

  /** Run a command inside the chroot, non-interactively, output streamed to the log. */
  exec(cmd: string, args: readonly string[], opts: Omit<RunOptions, 'signal'> & { quiet?: boolean; lock?: string | null } = {}): Promise<RunResult> {
    const argv = ['chroot', this.root, cmd, ...args];
    const [prog, ...rest] = opts.lock ? ['flock', '--wait', '1800', opts.lock, ...argv] : argv;
    return run(prog!, rest, {
      ...opts,
      env: {
        DEBIAN_FRONTEND: 'noninteractive',
        DEBCONF_NONINTERACTIVE_SEEN: 'true',
        PATH: '/usr/sbin:/usr/bin:/sbin:/bin',
        HOME: '/root',
        ...opts.env,
      },
      signal: this.ctx.signal,
      log: opts.quiet ? undefined : (l) => this.ctx.log(`  ${l}`),
    });
  }

  apt(args: readonly string[]): Promise<RunResult> {
    return this.exec('apt-get', [
      '-y', '-q', '-o', 'Dpkg::Options::=--force-confdef', '-o', 'Dpkg::Options::=--force-confold',
      // The archive cache may be a bind mount from the host: _apt cannot always write there.
      '-o', 'APT::Sandbox::User=root', ...args,
    ], { lock: this.aptLock });
  }

  /** Stop maintainer scripts from starting daemons inside the chroot (invoke-rc.d honours exit 101). */
  async denyDaemons(): Promise<void> {
    const p = this.path('usr/sbin/policy-rc.d');
    await writeFile(p, '#!/bin/sh\n# liveup build: no daemons in the build chroot\nexit 101\n');
    await chmod(p, 0o755);
  }

  async allowDaemons(): Promise<void> {
    await rm(this.path('usr/sbin/policy-rc.d'), { force: true });
  }

  /** Installed packages: name → version (only fully installed ones, not config-files leftovers). */
  async installed(): Promise<Map<string, string>> {
    const r = await this.exec('dpkg-query', ['-W', '-f', PACKAGE_LIST_FORMAT], { quiet: true });
    return new Map(parsePackageList(r.stdout).filter(isInstalled).map((p) => [p.name, p.version]));
  }
}

/**
 * Run `fn` with SIGINT/SIGTERM turned into an abort: the running command is
 * killed, `fn`'s finally-blocks unmount and remove, then we report the signal.
 */
export async function withInterrupts<T>(log: (l: string) => void, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const ac = new AbortController();
  let got: NodeJS.Signals | undefined;
  const onSignal = (s: NodeJS.Signals) => {
    if (got) return void log(`${s} again: still cleaning up (unmounting), please wait`);
    got = s;
    log(`${s}: stopping the build, unmounting and removing the temporary tree`);
    ac.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const r = await fn(ac.signal);
    if (got) throw new LiveupError('BUILD_FAILED', `interrupted by ${got}`, { signal: got });
    return r;
  } catch (e) {
    if (got) throw new LiveupError('BUILD_FAILED', `interrupted by ${got}; nothing was left behind`, { signal: got }, { cause: e });
    throw e;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** Print a step and its duration; the duration is also returned for --json. */
export async function timed<T>(ctx: StepContext, timings: Record<string, number>, name: string, fn: () => Promise<T>): Promise<T> {
  if (ctx.signal.aborted) throw new LiveupError('BUILD_FAILED', `interrupted before ${name}`);
  ctx.log(`==> ${name}`);
  const t0 = Date.now();
  const r = await fn();
  const s = (Date.now() - t0) / 1000;
  timings[name] = s;
  ctx.log(`<== ${name} (${s.toFixed(1)} s)`);
  return r;
}
