/**
 * The next time a cron expression fires, in the process's local time (the
 * daemon sets TZ to the configured zone). node-cron parses the expression —
 * its language, names, ranges, steps, nicknames and the L / W / # tokens —
 * and this walks the calendar with plain Date getters. node-cron's own walker
 * formats every candidate with Intl.DateTimeFormat, which keeps ~8 MB of ICU
 * data resident in a daemon that is idle almost all the time (bench/agent);
 * the semantics here are node-cron's (test/unit/cron.test.ts compares the two
 * on many expressions): day of month AND day of week must both match.
 * Pure.
 */
export type CronValue = number | string;

export interface CronFields {
  readonly second: readonly CronValue[];
  readonly minute: readonly CronValue[];
  readonly hour: readonly CronValue[];
  readonly dayOfMonth: readonly CronValue[];
  readonly month: readonly CronValue[];
  readonly dayOfWeek: readonly CronValue[];
}

const lastDay = (year: number, month: number): number => new Date(Date.UTC(year, month, 0)).getUTCDate();
const weekdayOf = (year: number, month: number, day: number): number => new Date(Date.UTC(year, month - 1, day)).getUTCDay();

/** `15W`: the weekday nearest the 15th, within the month. */
function nearestWeekday(year: number, month: number, target: number): number {
  const last = lastDay(year, month);
  if (target < 1 || target > last) return -1;
  const wd = weekdayOf(year, month, target);
  if (wd === 6) return target === 1 ? target + 2 : target - 1;
  if (wd === 0) return target === last ? target - 2 : target + 1;
  return target;
}

function dayOfMonthMatches(field: readonly CronValue[], year: number, month: number, day: number): boolean {
  for (const v of field) {
    if (v === day) return true;
    if (typeof v !== 'string') continue;
    if (v === 'L' && day === lastDay(year, month)) return true;
    const w = /^(\d{1,2}|L)W$/.exec(v);
    if (w && nearestWeekday(year, month, w[1] === 'L' ? lastDay(year, month) : Number(w[1])) === day) return true;
    const off = /^L-(\d{1,2})$/.exec(v);
    if (off && lastDay(year, month) - Number(off[1]) === day) return true;
  }
  return false;
}

function dayOfWeekMatches(field: readonly CronValue[], year: number, month: number, day: number): boolean {
  const wd = weekdayOf(year, month, day);
  for (const v of field) {
    if (v === wd) return true;
    if (typeof v !== 'string') continue;
    const nth = /^([0-7])#([1-5])$/.exec(v);
    if (nth) {
      if (Number(nth[1]) % 7 === wd && Math.floor((day - 1) / 7) + 1 === Number(nth[2])) return true;
      continue;
    }
    const last = /^([0-7])L$/i.exec(v);
    if (last && Number(last[1]) % 7 === wd && day + 7 > lastDay(year, month)) return true;
  }
  return false;
}

const numbers = (f: readonly CronValue[]): number[] => f.filter((v): v is number => typeof v === 'number').sort((a, b) => a - b);

/** The first time strictly after `after` (to the second) that `fields` match, or null within 100 years. */
export function nextCronRun(fields: CronFields, after: Date): Date | null {
  const seconds = numbers(fields.second);
  const minutes = numbers(fields.minute);
  const hours = numbers(fields.hour);
  const months = new Set(numbers(fields.month));
  const base = Math.floor(after.getTime() / 1000) * 1000;
  const start = new Date(base);
  let y = start.getFullYear();
  let mo = start.getMonth() + 1;
  let d = start.getDate();
  for (let i = 0; i < 366 * 100; i++) {
    if (months.has(mo) && dayOfMonthMatches(fields.dayOfMonth, y, mo, d) && dayOfWeekMatches(fields.dayOfWeek, y, mo, d)) {
      for (const h of hours) {
        for (const mi of minutes) {
          for (const s of seconds) {
            const t = new Date(y, mo - 1, d, h, mi, s);
            // A local time that does not exist (the hour skipped at a DST change) is not a match.
            if (t.getHours() !== h || t.getMinutes() !== mi || t.getDate() !== d) continue;
            if (t.getTime() > base) return t;
          }
        }
      }
    }
    const n = new Date(Date.UTC(y, mo - 1, d + 1));
    y = n.getUTCFullYear();
    mo = n.getUTCMonth() + 1;
    d = n.getUTCDate();
  }
  return null;
}
