/**
 * The check schedule: a cron expression with a random delay per run, so 500
 * machines on the same schedule do not hit the channel server in the same
 * second. Runs never overlap; a run due while one is in progress is skipped,
 * not queued.
 *
 * node-cron reads and validates the expression; the next run is found by
 * core/cron.ts with plain Date getters in the process's local time (the
 * daemon sets TZ to the configured zone, see `applyTimeZone`), and armed
 * with one timer. node-cron's own scheduler walks candidates through
 * Intl.DateTimeFormat, which keeps ~8 MB of ICU data resident in a daemon
 * idle almost all the time (bench/agent: idle RSS).
 */
import cron from 'node-cron';
import { LiveupError } from '../channel/errors.js';
import { nextCronRun, type CronFields } from '../core/cron.js';

export interface Schedule {
  stop(): Promise<void>;
  /** When the next run is due (before jitter), or null when stopped. */
  nextRun(): Date | null;
}

/** Longest single timer Node allows (~24.8 days); longer waits are chained. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export function parseSchedule(expression: string): CronFields {
  try {
    return cron.parse(expression);
  } catch (e) {
    throw new LiveupError('CONFIG_INVALID', `schedule: "${expression}" is not a valid cron expression (${(e as Error).message})`);
  }
}

export function scheduleChecks(expression: string, opts: { jitterMs: number; now?: () => Date }, run: () => Promise<void>): Schedule {
  const fields = parseSchedule(expression);
  const now = opts.now ?? (() => new Date());
  let stopped = false;
  let running: Promise<void> | null = null;
  let timer: NodeJS.Timeout | null = null;
  let next: Date | null = null;

  const arm = (from: Date): void => {
    if (stopped) return;
    next = nextCronRun(fields, from);
    if (!next) return; // an expression that never fires again (a date in the past)
    const due = next;
    const jitter = Math.floor(Math.random() * opts.jitterMs);
    const wait = (): void => {
      const left = due.getTime() + jitter - now().getTime();
      if (left > 0) {
        // Re-measured on every wake: a long wait is chained, and a wall clock set back is noticed.
        timer = setTimeout(wait, Math.min(left, MAX_TIMER_MS));
        return;
      }
      fire(due);
    };
    wait();
  };

  const fire = (due: Date): void => {
    arm(new Date(Math.max(due.getTime(), now().getTime())));
    if (running) return; // the one before is still at work: skip, never queue
    running = run().catch(() => undefined).finally(() => { running = null; });
  };

  arm(now());
  return {
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      next = null;
      await running;
    },
    nextRun: () => (stopped ? null : next),
  };
}

/**
 * Makes `zone` the process's local time (Node re-reads TZ when it is
 * assigned): cron expressions and maintenance windows then use plain Date
 * getters, without Intl.
 */
export function applyTimeZone(zone: string): void {
  if (process.env.TZ !== zone) process.env.TZ = zone;
}
