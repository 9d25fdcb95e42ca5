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

export function scheduleChecks(expression: string, opts: { jitterMs: number; timeZone?: string }, run: () => Promise<void>): Schedule {
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
      ...(opts.timeZone ? { timezone: opts.timeZone } : {}),
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
