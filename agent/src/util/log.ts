/**
 * Structured logs: pino JSON on stdout, which journald captures under systemd.
 * Messages are fixed strings (`msg`) and the variable parts are fields, so a
 * fleet's logs can be searched by `msg` and `code` without regexes.
 */
import pino, { type Logger } from 'pino';

export type { Logger };

export function createLogger(opts: { level?: string; name?: string; destination?: NodeJS.WritableStream } = {}): Logger {
  return pino(
    {
      name: opts.name ?? 'liveup-agentd',
      level: opts.level ?? process.env.LIVEUP_LOG_LEVEL ?? 'info',
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    (opts.destination as pino.DestinationStream | undefined) ?? pino.destination({ dest: 1, sync: true }),
  );
}

/** A logger that drops everything (tests, CLI library use). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
