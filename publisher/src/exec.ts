/**
 * The factory's process runner: the agent's one execa call site
 * (agent/src/adapters/exec.ts) with a build's defaults — no timeout (apt and
 * debootstrap legitimately take minutes; builds are cancelled by signal
 * instead) and room for their verbose output.
 */
import { run as runProcess, type RunOptions, type RunResult } from '../../agent/src/adapters/exec.js';

export type { RunOptions, RunResult };

export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return runProcess(cmd, args, { timeoutMs: 0, maxBuffer: 256 * 1024 * 1024, ...opts });
}
