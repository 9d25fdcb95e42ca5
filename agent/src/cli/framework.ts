/**
 * The small command-line framework shared by `liveup`, `agentctl` and
 * `liveup-agentd`: sub-commands, `--help` on every level, `--json`, and one
 * way to report errors (code + message, never a stack trace for a known
 * error) and exit codes (documented in docs/cli.md).
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { LiveupError, toLiveupError } from '../channel/errors.js';

export type OptionSpec = NonNullable<ParseArgsConfig['options']>[string] & { description: string; valueName?: string };

export interface Io {
  out(line: string): void;
  err(line: string): void;
  readonly isTTY: boolean;
}

export const processIo: Io = {
  out: (l) => process.stdout.write(l + '\n'),
  err: (l) => process.stderr.write(l + '\n'),
  // A getter, not a value taken at module load: a startup snapshot holds this
  // module evaluated on the machine that built it (packaging/snapshot.mjs).
  get isTTY() { return Boolean(process.stderr.isTTY); },
};

export type Values = Record<string, string | boolean | string[] | boolean[] | undefined>;

export interface Command {
  /** Words after the program name, e.g. `['key', 'generate']`. */
  readonly path: readonly string[];
  readonly summary: string;
  /** Usage after the command words, e.g. `--out DIR [--name NAME]`. */
  readonly usage: string;
  readonly description?: string;
  readonly options: Record<string, OptionSpec>;
  readonly positionals?: { min: number; max: number };
  run(ctx: { values: Values; positionals: string[]; io: Io; json: boolean }): Promise<number>;
}

export const EXIT = {
  OK: 0,
  /** The operation ran and failed (verification failed, update failed…). */
  FAILED: 1,
  /** Bad command line: unknown option, missing argument. */
  USAGE: 2,
  /** A dependency is missing: the daemon is not running, a tool is absent. */
  UNAVAILABLE: 3,
} as const;

const COMMON: Record<string, OptionSpec> = {
  help: { type: 'boolean', short: 'h', description: 'show this help' },
  json: { type: 'boolean', description: 'machine-readable output on stdout' },
};

function optionHelp(options: Record<string, OptionSpec>): string[] {
  const rows = Object.entries({ ...options, ...COMMON }).map(([name, o]) => {
    const flag = `${o.short ? `-${o.short}, ` : '    '}--${name}${o.type === 'string' ? ` ${o.valueName ?? name.toUpperCase()}` : ''}`;
    return [flag, o.description + (o.multiple ? ' (repeatable)' : '') + (o.default !== undefined ? ` [default: ${String(o.default)}]` : '')] as const;
  });
  const w = Math.max(...rows.map((r) => r[0].length)) + 2;
  return rows.map(([f, d]) => `  ${f.padEnd(w)}${d}`);
}

export function commandHelp(program: string, c: Command): string {
  return [
    `Usage: ${program} ${c.path.join(' ')} ${c.usage}`.trimEnd(),
    '',
    c.summary,
    ...(c.description ? ['', c.description] : []),
    '',
    'Options:',
    ...optionHelp(c.options),
  ].join('\n');
}

export function programHelp(program: string, blurb: string, commands: readonly Command[]): string {
  const w = Math.max(...commands.map((c) => c.path.join(' ').length)) + 2;
  return [
    `Usage: ${program} <command> [options]`,
    '',
    blurb,
    '',
    'Commands:',
    ...commands.map((c) => `  ${c.path.join(' ').padEnd(w)}${c.summary}`),
    '',
    `Run "${program} <command> --help" for a command's options.`,
    'Exit codes: 0 ok, 1 operation failed, 2 bad usage, 3 unavailable (daemon or tool missing).',
  ].join('\n');
}

export function reportError(io: Io, json: boolean, e: unknown): number {
  const err = toLiveupError(e);
  if (json) io.out(JSON.stringify({ ok: false, error: err.toJSON() }));
  else io.err(`error: ${err.code}: ${err.message}`);
  if (err.code === 'INTERNAL' && process.env.LIVEUP_DEBUG && e instanceof Error) io.err(e.stack ?? '');
  return err.code === 'INVALID_ARGUMENT' ? EXIT.USAGE : err.code === 'DAEMON_UNAVAILABLE' ? EXIT.UNAVAILABLE : EXIT.FAILED;
}

/**
 * `agentctl history | head -1`: the reader exits and closes the pipe. A C tool
 * dies of SIGPIPE there; node ignores SIGPIPE, so its next write fails with
 * EPIPE, an 'error' event that, unhandled, ends the program with a stack
 * trace. End as quietly, with success: the reader had what it wanted.
 */
let stdoutGuarded = false;
function endQuietlyOnClosedStdout(): void {
  if (stdoutGuarded) return;
  stdoutGuarded = true;
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(EXIT.OK);
    throw e;
  });
}

export async function runCli(
  program: string,
  blurb: string,
  commands: readonly Command[],
  argv: readonly string[],
  io: Io = processIo,
): Promise<number> {
  if (io === processIo) endQuietlyOnClosedStdout();
  const json = argv.includes('--json');
  // Longest command path that prefixes argv wins ("key generate" before "key").
  const match = [...commands]
    .sort((a, b) => b.path.length - a.path.length)
    .find((c) => c.path.every((w, i) => argv[i] === w));
  if (!match) {
    if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
      io.out(programHelp(program, blurb, commands));
      return argv.length === 0 ? EXIT.USAGE : EXIT.OK;
    }
    const group = commands.filter((c) => c.path[0] === argv[0]);
    if (group.length > 0) {
      io.err(`${program} ${argv[0]}: expected one of: ${group.map((c) => c.path.slice(1).join(' ')).join(', ')}`);
    } else {
      io.err(`${program}: unknown command "${argv[0]}". Run "${program} --help".`);
    }
    return EXIT.USAGE;
  }
  const rest = argv.slice(match.path.length);
  let values: Values;
  let positionals: string[];
  try {
    const parsed = parseArgs({
      args: [...rest],
      options: { ...match.options, ...COMMON } as ParseArgsConfig['options'],
      allowPositionals: true,
      strict: true,
    });
    values = parsed.values as Values;
    positionals = parsed.positionals;
  } catch (e) {
    io.err(`${program} ${match.path.join(' ')}: ${(e as Error).message}`);
    io.err(`Usage: ${program} ${match.path.join(' ')} ${match.usage}`);
    return EXIT.USAGE;
  }
  if (values.help) {
    io.out(commandHelp(program, match));
    return EXIT.OK;
  }
  const pos = match.positionals ?? { min: 0, max: 0 };
  if (positionals.length < pos.min || positionals.length > pos.max) {
    io.err(`${program} ${match.path.join(' ')}: expected ${pos.min === pos.max ? pos.min : `${pos.min} to ${pos.max}`} argument(s), got ${positionals.length}`);
    io.err(`Usage: ${program} ${match.path.join(' ')} ${match.usage}`);
    return EXIT.USAGE;
  }
  try {
    return await match.run({ values, positionals, io, json });
  } catch (e) {
    return reportError(io, json, e);
  }
}

export function requireString(values: Values, name: string): string {
  const v = values[name];
  if (typeof v !== 'string' || v === '') throw new LiveupError('INVALID_ARGUMENT', `--${name} is required`);
  return v;
}

export function optString(values: Values, name: string): string | undefined {
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
}

export function optInt(values: Values, name: string, opts: { min?: number } = {}): number | undefined {
  const v = optString(values, name);
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v)) throw new LiveupError('INVALID_ARGUMENT', `--${name} must be a whole number, got "${v}"`);
  const n = Number(v);
  if (opts.min !== undefined && n < opts.min) throw new LiveupError('INVALID_ARGUMENT', `--${name} must be at least ${opts.min}, got ${n}`);
  return n;
}

export function stringList(values: Values, name: string): string[] {
  const v = values[name];
  if (Array.isArray(v)) return v.filter((x): x is string => typeof x === 'string');
  return typeof v === 'string' ? [v] : [];
}

/** `30d`, `12h`, `90m`, `45s` → milliseconds. */
export function parseDuration(s: string, what: string): number {
  const m = /^(\d+)\s*([smhdw])$/.exec(s.trim());
  if (!m) throw new LiveupError('INVALID_ARGUMENT', `${what}: "${s}" is not a duration like 30d, 12h, 90m or 45s`);
  const unit = { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, w: 7 * 86400e3 }[m[2] as 's' | 'm' | 'h' | 'd' | 'w'];
  return Number(m[1]) * unit;
}
