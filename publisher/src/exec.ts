/**
 * The factory's one execa call site. (The agent grows its own adapter in
 * agent/src/adapters/exec.ts on another branch; this one adds what a build
 * needs — streamed output for long apt/debootstrap runs and cancellation on
 * SIGINT/SIGTERM — and keeps the same shape so the two can be unified.)
 */
import { execa } from 'execa';
import { LiveupError } from '../../agent/src/channel/errors.js';

export interface RunOptions {
  readonly cwd?: string;
  /** Added to the inherited environment, after LC_ALL=C (callers may override). */
  readonly env?: Readonly<Record<string, string>>;
  readonly input?: string;
  /** Each line of stdout/stderr as it comes; when unset, output is only captured. */
  readonly log?: (line: string) => void;
  /** Aborting kills the child (SIGTERM) and makes run() throw COMMAND_FAILED. */
  readonly signal?: AbortSignal;
  readonly okExitCodes?: readonly number[];
  /** Kill after this long; default none (a build step may legitimately take minutes). */
  readonly timeoutMs?: number;
}

export interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
  readonly exitCode: number;
}

const TAIL = 2_000;

/** Run `cmd args` without a shell; throw COMMAND_FAILED (command, exit code, stderr tail) unless it exits OK. */
export async function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const shown = [cmd, ...args].join(' ');
  if (opts.signal?.aborted) throw new LiveupError('COMMAND_FAILED', `${shown}: not started, the build was interrupted`, { command: shown, interrupted: true });
  const child = execa(cmd, [...args], {
    reject: false,
    env: { LC_ALL: 'C', ...opts.env },
    extendEnv: true,
    encoding: 'utf8',
    maxBuffer: 256 * 1024 * 1024,
    ...(opts.timeoutMs !== undefined ? { timeout: opts.timeoutMs } : {}),
    ...(opts.signal ? { cancelSignal: opts.signal } : {}),
    ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
    ...(opts.input !== undefined ? { input: opts.input } : { stdin: 'ignore' as const }),
  });
  const log = opts.log;
  if (log) {
    // Line-split both streams for the log callback; execa still captures them for the result.
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
  const stdout = typeof r.stdout === 'string' ? r.stdout : '';
  const stderr = typeof r.stderr === 'string' ? r.stderr : '';
  const tail = (stderr.trim() || stdout.trim()).slice(-TAIL);
  const details = { command: shown, stderr: tail };
  if (r.isCanceled || opts.signal?.aborted) {
    throw new LiveupError('COMMAND_FAILED', `${shown}: interrupted`, { ...details, interrupted: true });
  }
  if (r.exitCode === undefined) {
    const why = r.timedOut ? 'timed out' : r.signal ? `was killed by ${r.signal}` : `could not be started (${r.code ?? 'unknown error'})`;
    throw new LiveupError('COMMAND_FAILED', `${shown} ${why}`, details, { cause: r.cause });
  }
  if (!(opts.okExitCodes ?? [0]).includes(r.exitCode)) {
    throw new LiveupError('COMMAND_FAILED', `${shown} exited with ${r.exitCode}${tail ? `:\n${tail}` : ''}`, { ...details, exitCode: r.exitCode });
  }
  return { stdout, stderr, exitCode: r.exitCode };
}
