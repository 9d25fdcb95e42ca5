/** Run the compiled CLIs (`npm run build` first: the test command does it) as a user would. */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, realpath } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { basename, join } from 'node:path';

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

/**
 * A copy of the compiled programs (bin/, package.json, node_modules, and dist/
 * unless the caller compiles its own there) that every user can read, for
 * tests that run a client as another user (`setpriv` nobody): the checkout
 * itself may sit where only root may enter (/root, or a `mktemp -d` folder,
 * 0700). node_modules is hard-linked (`cp -al`: no 134 MB copy, and the
 * originals' modes are left alone), or copied when /tmp is another file
 * system. The caller removes the directory.
 */
export async function copyForOtherUsers(opts: { dist: boolean }): Promise<string> {
  const dir = await realpath(await mkdtemp(join(tmpdir(), 'liveup-for-others-')));
  await chmod(dir, 0o755);
  const cp = (args: string[]): boolean => spawnSync('cp', args, { stdio: 'ignore' }).status === 0;
  const own = [join(ROOT, 'bin'), join(ROOT, 'package.json'), ...(opts.dist ? [join(ROOT, 'dist')] : [])];
  if (!cp(['-a', ...own, dir])) throw new Error(`copying ${own.join(', ')} to ${dir} failed`);
  const modules = await realpath(join(ROOT, 'node_modules'));
  if (!cp(['-al', modules, join(dir, 'node_modules')]) && !cp(['-a', modules, join(dir, 'node_modules')])) {
    throw new Error(`copying ${modules} to ${dir} failed`);
  }
  if (spawnSync('chmod', ['-R', 'a+rX', ...own.map((o) => join(dir, basename(o)))]).status !== 0) throw new Error(`chmod in ${dir} failed`);
  return dir;
}
