/** Run the compiled CLIs (`npm run build` first: the test command does it) as a user would. */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export function bin(name: 'liveup' | 'agentctl' | 'liveup-agentd' | 'liveup-boot-check-via-agent'): string {
  const p = join(ROOT, 'bin', name);
  if (!existsSync(join(ROOT, 'dist'))) throw new Error('dist/ is missing: run `npm run build` (the README test command does)');
  return p;
}

/** Runs the launcher itself, as a user does: its shebang (and the daemon's V8 flags in it) apply. */
export function startCli(name: 'liveup' | 'agentctl' | 'liveup-agentd', args: string[], env: NodeJS.ProcessEnv = {}): ChildProcess {
  return spawn(bin(name), args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
}

export function runCli(name: 'liveup' | 'agentctl' | 'liveup-agentd', args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  const child = startCli(name, args, env);
  return collect(child);
}

export function collect(child: ChildProcess): Promise<CliResult> {
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((ok) => child.on('close', (code, signal) => ok({ code, signal, stdout, stderr })));
}
