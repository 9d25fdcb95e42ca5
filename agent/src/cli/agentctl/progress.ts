/**
 * Progress display for long agentctl verbs, fed by the daemon's Progress
 * signals: on a terminal one redrawn line with a bar, bytes, rate and ETA; in
 * a log or pipe plain lines at step changes and every 10 %, so CI output stays
 * readable and short.
 */
import type { ProgressEvent } from '../../dbus/api.js';

/** Steps whose done/total count bytes (others count items, e.g. packages). */
const BYTE_STEPS = new Set(['download', 'verify', 'stage']);

export function formatBytes(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let v = n;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

export interface ProgressViewOptions {
  /** Redraw one line (TTY) or print lines. */
  tty: boolean;
  /** Raw write, used on a TTY (no newline added). */
  write: (s: string) => void;
  /** Whole line, used off a TTY. */
  line: (s: string) => void;
  now?: () => number;
  width?: number;
}

/** Rate over a sliding window: a whole-run average hides stalls, an instant rate jitters. */
const WINDOW_MS = 5_000;

export class ProgressView {
  readonly #o: Required<ProgressViewOptions>;
  #step = '';
  #samples: Array<{ t: number; done: number }> = [];
  #lastDecile = -1;
  #lastDraw = 0;
  #drawn = false;

  constructor(o: ProgressViewOptions) {
    this.#o = { now: () => Date.now(), width: 80, ...o };
  }

  /** Bytes per second over the window, or null before two samples. */
  rate(): number | null {
    const s = this.#samples;
    if (s.length < 2) return null;
    const a = s[0]!;
    const b = s[s.length - 1]!;
    const dt = (b.t - a.t) / 1000;
    return dt > 0 ? (b.done - a.done) / dt : null;
  }

  render(p: ProgressEvent): string {
    const bytes = BYTE_STEPS.has(p.step);
    const fmt = (n: number) => (bytes ? formatBytes(n) : String(n));
    const rate = this.rate();
    const parts = [p.step.padEnd(8)];
    if (p.total > 0) {
      const frac = Math.min(1, p.done / p.total);
      const barWidth = Math.max(10, Math.min(30, this.#o.width - 60));
      const filled = Math.round(frac * barWidth);
      parts.push(`[${'#'.repeat(filled)}${'-'.repeat(barWidth - filled)}]`, `${Math.floor(frac * 100)}%`.padStart(4), `${fmt(p.done)}/${fmt(p.total)}`);
    } else {
      parts.push(fmt(p.done));
    }
    if (rate !== null && rate > 0) {
      parts.push(bytes ? `${formatBytes(rate)}/s` : `${rate.toFixed(1)}/s`);
      if (p.total > 0) parts.push(`ETA ${formatDuration((p.total - p.done) / rate)}`);
    }
    return parts.join(' ');
  }

  update(p: ProgressEvent): void {
    const t = this.#o.now();
    if (p.step !== this.#step) {
      if (this.#drawn && this.#o.tty) this.#o.write('\n');
      this.#step = p.step;
      this.#samples = [];
      this.#lastDecile = -1;
      this.#drawn = false;
    }
    this.#samples.push({ t, done: p.done });
    while (this.#samples.length > 2 && t - this.#samples[0]!.t > WINDOW_MS) this.#samples.shift();

    if (this.#o.tty) {
      const final = p.total > 0 && p.done >= p.total;
      // ~10 redraws a second is smooth enough and keeps slow terminals (serial consoles) usable.
      if (!final && this.#drawn && t - this.#lastDraw < 100) return;
      this.#lastDraw = t;
      this.#drawn = true;
      this.#o.write(`\r\x1b[K${this.render(p)}`);
    } else {
      const decile = p.total > 0 ? Math.floor((Math.min(1, p.done / p.total)) * 10) : 0;
      if (decile === this.#lastDecile) return;
      this.#lastDecile = decile;
      this.#o.line(this.render(p));
    }
  }

  /** End the redrawn line so later output starts on its own line. */
  finish(): void {
    if (this.#o.tty && this.#drawn) this.#o.write('\n');
    this.#drawn = false;
  }
}
