/**
 * Maintenance windows: when may a disruptive step (soft-reboot, kexec,
 * reboot) run? A pure function of the configured weekly windows, a time zone
 * and "now", so the decision engine can be tested as a table.
 *
 * Whether now is inside a window is decided on the zone's local fields
 * (weekday, minutes since midnight), so a DST change moves the window with
 * the wall clock, as an administrator who wrote "02:00-04:00" expects.
 */
import type { MaintenanceWindow, Weekday } from '../config.js';

export interface WindowState {
  /** True when no windows are configured (any time) or now is inside one. */
  readonly open: boolean;
  /** When the next window opens (null when open, or when none is configured). */
  readonly nextOpen: Date | null;
  /** The window now is in, or the next one, as "mon 02:00-04:00" for messages. */
  readonly label: string | null;
}

const DAY_INDEX: Record<Weekday, number> = { mon: 0, tue: 1, wed: 2, thu: 3, fri: 4, sat: 5, sun: 6 };
const SHORT_TO_DAY: Record<string, Weekday> = { Mon: 'mon', Tue: 'tue', Wed: 'wed', Thu: 'thu', Fri: 'fri', Sat: 'sat', Sun: 'sun' };
const WEEK = 7 * 24 * 60;

function minutes(hhmm: string): number {
  const [h, m] = hhmm.split(':').map(Number);
  return h! * 60 + m!;
}

const formatters = new Map<string, Intl.DateTimeFormat>();

/** Minute of the week (Monday 00:00 = 0) of `at` in `timeZone`. */
export function minuteOfWeek(at: Date, timeZone: string): number {
  let f = formatters.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', { timeZone, weekday: 'short', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
    formatters.set(timeZone, f);
  }
  const parts = Object.fromEntries(f.formatToParts(at).map((p) => [p.type, p.value]));
  const day = SHORT_TO_DAY[parts.weekday ?? ''];
  if (day === undefined) throw new Error(`unexpected weekday ${parts.weekday}`);
  return DAY_INDEX[day] * 24 * 60 + Number(parts.hour) * 60 + Number(parts.minute);
}

/** The windows as [start, end) intervals in minutes of the week; one crossing midnight ends the next day. */
function intervals(windows: readonly MaintenanceWindow[]): { start: number; end: number; label: string }[] {
  return windows.flatMap((w) =>
    w.days.map((d) => {
      const start = DAY_INDEX[d] * 24 * 60 + minutes(w.start);
      let end = DAY_INDEX[d] * 24 * 60 + minutes(w.end);
      if (end <= start) end += 24 * 60;
      return { start, end, label: `${d} ${w.start}-${w.end}` };
    }),
  );
}

function inside(m: number, iv: { start: number; end: number }): boolean {
  // Sunday's window crossing midnight wraps to Monday morning.
  return (m >= iv.start && m < iv.end) || (iv.end > WEEK && m < iv.end - WEEK);
}

export function windowState(windows: readonly MaintenanceWindow[], now: Date, timeZone: string): WindowState {
  if (windows.length === 0) return { open: true, nextOpen: null, label: null };
  const ivs = intervals(windows);
  const m = minuteOfWeek(now, timeZone);
  const current = ivs.find((iv) => inside(m, iv));
  if (current) return { open: true, nextOpen: null, label: current.label };
  // The nearest start, counted in wall-clock minutes from this minute. Across
  // a DST change in between the result is off by the shift; the agent
  // re-decides when it wakes, so it then waits the remaining hour.
  const base = Math.floor(now.getTime() / 60_000) * 60_000;
  let best: { delta: number; label: string } | null = null;
  for (const iv of ivs) {
    const delta = (((iv.start % WEEK) - m) % WEEK + WEEK) % WEEK;
    if (best === null || delta < best.delta) best = { delta, label: iv.label };
  }
  return { open: false, nextOpen: new Date(base + best!.delta * 60_000), label: best!.label };
}
