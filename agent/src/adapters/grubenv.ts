/**
 * The GRUB environment block (`grubenv`), edited with the real `grub-editenv`.
 *
 * We keep grub-editenv rather than writing the format ourselves because GRUB's
 * own reader is the one that matters at boot; the tool is its reference writer.
 * But grub-editenv rewrites the file in place, and a power cut in the middle
 * leaves a block GRUB rejects. So every write edits a copy beside the file and
 * renames it over: a crash leaves the old block or the new one, both valid.
 *
 * GRUB's `save_env` writes into the file's existing blocks on disk (it cannot
 * allocate), which is also why the block must stay exactly 1024 bytes: we check
 * the copy before it replaces the original.
 *
 * Writers are not serialised here: the agent's transaction lock is the one
 * writer. Two concurrent writers would each replace the whole block (last wins).
 */
import { copyFile, open, readFile, rename, rm, stat } from 'node:fs/promises';
import { constants } from 'node:fs';
import { dirname } from 'node:path';
import { LiveupError, isLiveupError } from '../channel/errors.js';
import { fsyncDir, fsyncPath, tempNameFor } from '../util/fsatomic.js';
import { ENV_NEXT_ENTRY } from '../core/bootmenu.js';
import { run as defaultRun, type Runner } from './exec.js';

export const GRUBENV_SIZE = 1024;
const HEADER = '# GRUB Environment Block\n';
const NAME_RE = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;

export interface GrubEnvOptions {
  /** Path of the grub-editenv binary. Default: `grub-editenv` from PATH. */
  readonly editenv?: string;
  readonly timeoutMs?: number;
  /** For tests of callers; the default spawns through exec.ts. */
  readonly runner?: Runner;
}

export interface GrubEnv {
  /** All variables. NOT_FOUND if the file is missing, BOOT_ENV_INVALID if it is not a valid block. */
  read(file: string): Promise<Record<string, string>>;
  /** Set variables, creating the block if the file is missing. */
  set(file: string, vars: Readonly<Record<string, string>>): Promise<void>;
  /** Remove variables; a missing file has none, so nothing is written. */
  unset(file: string, names: readonly string[]): Promise<void>;
  /** Write a fresh, empty block, replacing whatever is there: the recovery for BOOT_ENV_INVALID. */
  create(file: string): Promise<void>;
  /** One-shot boot of a menu entry (id or index), as `grub-reboot` does. */
  setNextEntry(file: string, entry: string): Promise<void>;
}

function validName(n: string): void {
  if (!NAME_RE.test(n)) throw new LiveupError('INVALID_ARGUMENT', `${JSON.stringify(n)} is not a GRUB variable name`, { name: n });
}

function validValue(n: string, v: string): void {
  // grub-editenv escapes a newline, but `list` prints it raw and GRUB's lexer
  // would see two lines: no value of ours needs one.
  if (/[\n\r\u0000]/.test(v)) throw new LiveupError('INVALID_ARGUMENT', `value of ${n} contains a newline or NUL`, { name: n });
}

/** The cheap structural check GRUB itself makes: exact size and the header line. */
async function checkBlock(file: string, shownAs = file): Promise<void> {
  const fh = await open(file, constants.O_RDONLY);
  try {
    const { size } = await fh.stat();
    const head = Buffer.alloc(HEADER.length);
    await fh.read(head, 0, HEADER.length, 0);
    if (size !== GRUBENV_SIZE || head.toString('latin1') !== HEADER) {
      throw new LiveupError(
        'BOOT_ENV_INVALID',
        `${shownAs} is not a GRUB environment block (${size} bytes${head.toString('latin1') === HEADER ? '' : ', wrong header'}); ` +
          'recreate it (the one-shot and trial variables in it are lost, so the last good generation boots)',
        { file: shownAs, size },
      );
    }
  } finally {
    await fh.close();
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}

/**
 * `grub-editenv … list` output: `name=value` lines. A line without `=` is
 * dropped: we never write multi-line values, so it can only be damage (GRUB
 * only checks the header and size, so a damaged body still "loads").
 */
export function parseEnvList(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return out;
}

/**
 * Reads an environment block the way GRUB's `grub_envblk_iterate` does: after
 * the header, `name=value` lines where a backslash escapes the next byte
 * (grub-editenv writes `\\` and backslash-newline), `#` lines and the `#`
 * padding ignored. Reading is parsed here rather than through `grub-editenv
 * list` so that a check spawns nothing (and the daemon never loads the
 * process-spawning code unless it writes); writing still goes through
 * grub-editenv, whose output GRUB is known to accept. Tested against it.
 */
export function parseEnvBlock(block: Buffer): Record<string, string> {
  const text = block.subarray(HEADER.length).toString('latin1');
  const out: Record<string, string> = {};
  let i = 0;
  while (i < text.length) {
    if (text[i] === '#' || text[i] === '\n') {
      const nl = text.indexOf('\n', i);
      i = nl < 0 ? text.length : nl + 1;
      continue;
    }
    let line = '';
    let escaped = false;
    for (; i < text.length; i++) {
      const c = text[i]!;
      if (escaped) { line += c; escaped = false; continue; }
      if (c === '\\') { escaped = true; continue; }
      if (c === '\n') { i++; break; }
      line += c;
    }
    const eq = line.indexOf('=');
    // No '=': damage (GRUB checks only the header and size); GRUB skips it too.
    if (eq > 0) out[line.slice(0, eq)] = Buffer.from(line.slice(eq + 1), 'latin1').toString('utf8');
  }
  return out;
}

export function createGrubEnv(opts: GrubEnvOptions = {}): GrubEnv {
  const bin = opts.editenv ?? 'grub-editenv';
  const runner = opts.runner ?? defaultRun;
  const timeoutMs = opts.timeoutMs ?? 10_000;

  async function editenv(file: string, args: readonly string[], shownAs: string): Promise<string> {
    try {
      return (await runner(bin, [file, ...args], { timeoutMs })).stdout;
    } catch (e) {
      const stderr = isLiveupError(e) ? String(e.details.stderr ?? '') : '';
      if (/invalid environment block/.test(stderr)) {
        throw new LiveupError('BOOT_ENV_INVALID', `${shownAs} is not a valid GRUB environment block; recreate it`, { file: shownAs }, { cause: e });
      }
      if (/environment block too small/.test(stderr)) {
        throw new LiveupError('INVALID_ARGUMENT', `the variables do not fit in the ${GRUBENV_SIZE}-byte environment block ${shownAs}`, { file: shownAs }, { cause: e });
      }
      throw e;
    }
  }

  /**
   * Copy → edit the copy → check → fsync → rename → fsync dir. `fresh` starts
   * from an empty block instead of the current file.
   */
  async function replace(file: string, fresh: boolean, args: readonly string[]): Promise<void> {
    const tmp = tempNameFor(file);
    try {
      if (fresh) {
        await editenv(tmp, ['create'], file);
      } else {
        await copyFile(file, tmp, constants.COPYFILE_EXCL);
        // Refuse to edit a damaged block: grub-editenv might "repair" it into one that loses state silently.
        await checkBlock(tmp, file);
      }
      if (args.length > 0) await editenv(tmp, args, file);
      await checkBlock(tmp, file);
      await fsyncPath(tmp);
      await rename(tmp, file);
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
    await fsyncDir(dirname(file));
  }

  const env: GrubEnv = {
    async read(file) {
      // `grub-editenv FILE list` creates a missing FILE: check first, so reading never writes.
      if (!(await exists(file))) throw new LiveupError('NOT_FOUND', `GRUB environment block ${file} does not exist`, { file });
      await checkBlock(file);
      return parseEnvBlock(await readFile(file));
    },
    async set(file, vars) {
      const entries = Object.entries(vars);
      for (const [n, v] of entries) {
        validName(n);
        validValue(n, v);
      }
      if (entries.length === 0) return;
      await replace(file, !(await exists(file)), ['set', ...entries.map(([n, v]) => `${n}=${v}`)]);
    },
    async unset(file, names) {
      names.forEach(validName);
      if (names.length === 0 || !(await exists(file))) return;
      await replace(file, false, ['unset', ...names]);
    },
    async create(file) {
      await replace(file, true, []);
    },
    async setNextEntry(file, entry) {
      if (entry.length === 0) throw new LiveupError('INVALID_ARGUMENT', 'next boot entry must not be empty');
      await env.set(file, { [ENV_NEXT_ENTRY]: entry });
    },
  };
  return env;
}
