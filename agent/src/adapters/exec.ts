/**
 * The one place liveup spawns processes (the card's single execa call site).
 *
 * Keeping every spawn here means timeouts, environment, error shape and
 * logging are decided once, and tests of adapters can swap `Runner` for a
 * fake without monkey-patching child_process. Running a command is kept apart
 * from parsing its output: callers get raw text and parse it themselves.
 */
import { execa } from 'execa';
import { LiveupError } from '../channel/errors.js';

export interface RunOptions {
  /** Kill the process (SIGTERM) after this long. Required in spirit: nothing liveup runs may hang the agent. */
  readonly timeoutMs?: number;
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
const STDERR_IN_MESSAGE = 2_000;

/**
 * Run `cmd` with `args` (no shell: arguments are never re-parsed) and capture
 * its output. Throws COMMAND_FAILED when it cannot be spawned, times out, is
 * killed by a signal, or exits with a code outside `okExitCodes`; the error's
 * details carry the command, exit code and stderr for logs and `--json`.
 */
export const run: Runner = async (cmd, args, opts = {}) => {
  const ok = opts.okExitCodes ?? [0];
  const r = await execa(cmd, [...args], {
    reject: false,
    timeout: opts.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    // Tools' messages are parsed in places (and quoted in errors): pin the locale.
    env: { LC_ALL: 'C', ...opts.env },
    extendEnv: true,
    stripFinalNewline: false,
    encoding: 'utf8',
    maxBuffer: opts.maxBuffer ?? 16 * 1024 * 1024,
    ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
    ...(opts.input !== undefined ? { input: opts.input } : { stdin: 'ignore' as const }),
  });
  const stdout = typeof r.stdout === 'string' ? r.stdout : '';
  const stderr = typeof r.stderr === 'string' ? r.stderr : '';
  const shown = [cmd, ...args].join(' ');
  const details = (extra: Record<string, string | number | boolean>) => ({
    command: shown,
    stderr: stderr.slice(0, 64 * 1024),
    ...extra,
  });
  if (r.exitCode === undefined || r.timedOut || r.isMaxBuffer) {
    const why = r.timedOut
      ? `timed out after ${opts.timeoutMs ?? DEFAULT_TIMEOUT_MS} ms`
      : r.isMaxBuffer
        ? 'produced more output than allowed'
        : r.signal
          ? `was killed by ${r.signal}`
          : `could not be started (${r.code ?? 'unknown error'})`;
    throw new LiveupError('COMMAND_FAILED', `${shown} ${why}`, details({ timedOut: r.timedOut, ...(r.signal ? { signal: r.signal } : {}) }), {
      cause: r.cause,
    });
  }
  if (!ok.includes(r.exitCode)) {
    const tail = stderr.trim().slice(-STDERR_IN_MESSAGE);
    throw new LiveupError('COMMAND_FAILED', `${shown} exited with ${r.exitCode}${tail ? `: ${tail}` : ''}`, details({ exitCode: r.exitCode }));
  }
  return { stdout, stderr, exitCode: r.exitCode };
};
