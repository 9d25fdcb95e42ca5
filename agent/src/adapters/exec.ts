/**
 * The one place liveup spawns processes (the card's single execa call site,
 * and a lean twin for the boot check: see runLean).
 *
 * Keeping every spawn here means timeouts, environment, error shape and
 * logging are decided once, and tests of adapters can swap `Runner` for a
 * fake without monkey-patching child_process. Running a command is kept apart
 * from parsing its output: callers get raw text and parse it themselves.
 */
import type { execa as Execa } from 'execa';
import { spawn } from 'node:child_process';
import { LiveupError } from '../channel/errors.js';

export interface RunOptions {
  /**
   * Kill the process (SIGTERM) after this long (default 60 s; nothing the agent
   * runs may hang it). 0 means no limit: a factory build step may take minutes.
   */
  readonly timeoutMs?: number;
  /** Each line of stdout/stderr as it comes (long apt/debootstrap runs); output is captured either way. */
  readonly log?: (line: string) => void;
  /** Aborting kills the child (SIGTERM) and makes run() throw COMMAND_FAILED with `interrupted`. */
  readonly signal?: AbortSignal;
  /** Written to the child's stdin, which is then closed. */
  readonly input?: string | Uint8Array;
  /** Added to the inherited environment (after LC_ALL=C, so callers may override). */
  readonly env?: Readonly<Record<string, string>>;
  readonly cwd?: string;
  /**
   * Exit codes that are not failures. Default `[0]`. Tools such as `grub-script-check`
   * or `dpkg --compare-versions` answer through their exit code.
   */
  readonly okExitCodes?: readonly number[];
  /** Cap on captured stdout/stderr, in bytes each. */
  readonly maxBuffer?: number;
}

export interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
  readonly exitCode: number;
}

export type Runner = (cmd: string, args: readonly string[], opts?: RunOptions) => Promise<RunResult>;

export const DEFAULT_TIMEOUT_MS = 60_000;

/**
 * execa is loaded on the first spawn, not at start: it and its dependencies
 * cost the daemon ~12 MB of resident memory (bench/agent), and an idle daemon
 * that only checks the channel never spawns anything.
 */
let execaLoaded: Promise<typeof Execa> | null = null;
const loadExeca = (): Promise<typeof Execa> => (execaLoaded ??= import('execa').then((m) => m.execa));
const STDERR_IN_MESSAGE = 2_000;

/**
 * Run `cmd` with `args` (no shell: arguments are never re-parsed) and capture
 * its output. Throws COMMAND_FAILED when it cannot be spawned, times out, is
 * killed by a signal, or exits with a code outside `okExitCodes`; the error's
 * details carry the command, exit code and stderr for logs and `--json`.
 */
export const run: Runner = async (cmd, args, opts = {}) => {
  const shown = [cmd, ...args].join(' ');
  if (opts.signal?.aborted) throw new LiveupError('COMMAND_FAILED', `${shown}: not started, interrupted`, { command: shown, interrupted: true });
  const execa = await loadExeca();
  const child = execa(cmd, [...args], {
    reject: false,
    timeout: opts.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    // Tools' messages are parsed in places (and quoted in errors): pin the locale.
    env: { LC_ALL: 'C', ...opts.env },
    extendEnv: true,
    stripFinalNewline: false,
    encoding: 'utf8',
    maxBuffer: opts.maxBuffer ?? 16 * 1024 * 1024,
    ...(opts.signal ? { cancelSignal: opts.signal } : {}),
    ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
    ...(opts.input !== undefined ? { input: opts.input } : { stdin: 'ignore' as const }),
  });
  // A grandchild still holding stdout/stderr (a maintainer script or check that backgrounds
  // something) keeps execa waiting for the pipes to end, long after the child exited or was
  // killed on timeout: once the child exited, its pipes get 2 s.
  child.on('exit', () => {
    setTimeout(() => { child.stdout?.destroy(); child.stderr?.destroy(); }, 2_000).unref();
  });
  const log = opts.log;
  if (log) {
    // Line-split both streams for the callback; execa still captures them for the result.
    for (const s of [child.stdout, child.stderr]) {
      let buf = '';
      s?.on('data', (d: Buffer | string) => {
        buf += d.toString();
        const lines = buf.split('\n');
        buf = lines.pop() ?? '';
        for (const l of lines) if (l.trim()) log(l);
      });
      s?.on('end', () => { if (buf.trim()) log(buf); });
    }
  }
  const r = await child;
  return settle(shown, opts, {
    stdout: typeof r.stdout === 'string' ? r.stdout : '',
    stderr: typeof r.stderr === 'string' ? r.stderr : '',
    exitCode: r.exitCode,
    interrupted: r.isCanceled || Boolean(opts.signal?.aborted),
    timedOut: r.timedOut,
    overflow: r.isMaxBuffer,
    ...(r.signal ? { signal: r.signal } : {}),
    ...(r.code ? { code: r.code } : {}),
    ...(r.cause !== undefined ? { cause: r.cause } : {}),
  });
};

/** How a child ended, whichever way it was spawned. */
interface Ended {
  readonly stdout: string;
  readonly stderr: string;
  /** Undefined when it did not exit on its own (not started, killed, timed out). */
  readonly exitCode: number | undefined;
  readonly interrupted: boolean;
  readonly timedOut: boolean;
  readonly overflow: boolean;
  readonly signal?: string;
  /** The spawn error's code (ENOENT, EACCES…). */
  readonly code?: string;
  readonly cause?: unknown;
}

/** The result, or the one COMMAND_FAILED shape both runners throw. */
function settle(shown: string, opts: RunOptions, r: Ended): RunResult {
  const ok = opts.okExitCodes ?? [0];
  const { stdout, stderr } = r;
  // Some tools (apt, debootstrap) report on stdout: quote whichever said something.
  const tail = (stderr.trim() || stdout.trim()).slice(-STDERR_IN_MESSAGE);
  const details = (extra: Record<string, string | number | boolean>) => ({
    command: shown,
    stderr: stderr.slice(0, 64 * 1024),
    ...extra,
  });
  if (r.interrupted) {
    throw new LiveupError('COMMAND_FAILED', `${shown}: interrupted`, details({ interrupted: true }));
  }
  if (r.exitCode === undefined || r.timedOut || r.overflow) {
    const why = r.timedOut
      ? `timed out after ${opts.timeoutMs ?? DEFAULT_TIMEOUT_MS} ms`
      : r.overflow
        ? 'produced more output than allowed'
        : r.signal
          ? `was killed by ${r.signal}`
          : `could not be started (${r.code ?? 'unknown error'})`;
    throw new LiveupError('COMMAND_FAILED', `${shown} ${why}`, details({ timedOut: r.timedOut, ...(r.signal ? { signal: r.signal } : {}) }), {
      cause: r.cause,
    });
  }
  if (!ok.includes(r.exitCode)) {
    throw new LiveupError('COMMAND_FAILED', `${shown} exited with ${r.exitCode}${tail ? `: ${tail}` : ''}`, details({ exitCode: r.exitCode }));
  }
  return { stdout, stderr, exitCode: r.exitCode };
}

/**
 * The same contract as `run` on node:child_process alone, for the boot-critical
 * one-shot program (liveup-boot-check): execa pulls ~175 module files, three
 * times what the boot check itself loads; on a cold squashfs under emulation
 * that was seconds on the path every boot waits for (bench/live's
 * systemd-analyze). No `log` streaming; everything else behaves as `run`.
 */
export const runLean: Runner = (cmd, args, opts = {}) => {
  const shown = [cmd, ...args].join(' ');
  if (opts.signal?.aborted) return Promise.reject(new LiveupError('COMMAND_FAILED', `${shown}: not started, interrupted`, { command: shown, interrupted: true }));
  const max = opts.maxBuffer ?? 16 * 1024 * 1024;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, [...args], {
      env: { ...process.env, LC_ALL: 'C', ...opts.env },
      stdio: [opts.input !== undefined ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let size = 0;
    let timedOut = false;
    let overflow = false;
    let spawnError: NodeJS.ErrnoException | null = null;
    // As execa does: SIGTERM, then SIGKILL after 5 s for a child that ignores it.
    let forceKill: NodeJS.Timeout | null = null;
    const kill = () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      forceKill ??= setTimeout(() => child.kill('SIGKILL'), 5_000);
    };
    const collect = (into: Buffer[]) => (d: Buffer) => {
      size += d.length;
      if (size > max) { overflow = true; kill(); } else into.push(d);
    };
    child.stdout!.on('data', collect(out));
    child.stderr!.on('data', collect(err));
    const timer = (opts.timeoutMs ?? DEFAULT_TIMEOUT_MS) > 0 ? setTimeout(() => { timedOut = true; kill(); }, opts.timeoutMs ?? DEFAULT_TIMEOUT_MS) : null;
    const onAbort = () => kill();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    child.on('error', (e) => { spawnError = e; });
    // A grandchild still holding stdout/stderr (a check that backgrounds something)
    // would keep 'close' from ever coming: once the child exited, give its pipes 2 s.
    child.on('exit', () => {
      if (forceKill) clearTimeout(forceKill);
      setTimeout(() => { child.stdout!.destroy(); child.stderr!.destroy(); }, 2_000).unref();
    });
    if (opts.input !== undefined) child.stdin!.on('error', () => undefined).end(opts.input);
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      const e = spawnError as NodeJS.ErrnoException | null;
      try {
        resolve(settle(shown, opts, {
          stdout: Buffer.concat(out).toString('utf8'),
          stderr: Buffer.concat(err).toString('utf8'),
          exitCode: e || code === null ? undefined : code,
          interrupted: Boolean(opts.signal?.aborted),
          timedOut,
          overflow,
          ...(signal ? { signal } : {}),
          ...(e?.code ? { code: e.code } : {}),
          ...(e ? { cause: e } : {}),
        }));
      } catch (x) {
        reject(x);
      }
    });
  });
};
