/**
 * The check schedule: a cron expression (node-cron) with a random delay per
 * run, so 500 machines on the same schedule do not hit the channel server in
 * the same second. Runs never overlap; a run due while one is in progress is
 * skipped, not queued.
 */
import cron, { type ScheduledTask } from 'node-cron';
import { LiveupError } from '../channel/errors.js';

export interface Schedule {
  stop(): Promise<void>;
  /** When the next run is due (before jitter), or null when stopped. */
  nextRun(): Date | null;
}

/**
 * The expression is read in the process's local time: the daemon sets TZ to
 * the configured zone (see `applyTimeZone`). Handing node-cron a `timezone`
 * instead would run every tick through Intl, which keeps ~8 MB of ICU data
 * resident in an otherwise idle daemon.
 */
export function scheduleChecks(expression: string, opts: { jitterMs: number }, run: () => Promise<void>): Schedule {
  if (!cron.validate(expression)) throw new LiveupError('CONFIG_INVALID', `schedule: "${expression}" is not a valid cron expression`);
  const task: ScheduledTask = cron.schedule(
    expression,
    async () => {
      await run();
    },
    {
      name: 'liveup-check',
      noOverlap: true,
      maxRandomDelay: opts.jitterMs,
    },
  );
  let stopped = false;
  return {
    async stop() {
      stopped = true;
      await task.destroy();
    },
    nextRun: () => (stopped ? null : task.getNextRun()),
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
