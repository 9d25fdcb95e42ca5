/**
 * Minimum-throughput watchdog for one transfer.
 *
 * A deadline alone cannot tell a large file on a slow link from a server that
 * trickles a few bytes a second to hold a connection (slowloris in reverse, or
 * a mirror that is dying). We measure the rate over a sliding window and cut
 * the transfer when it stays below the floor for a whole window. A grace
 * period at the start covers connection set-up and TCP slow start.
 *
 * The check runs on a timer, not on data, so a transfer that stalls
 * completely (no bytes at all) is caught too.
 */
export interface ThroughputOptions {
  /** Bytes per second the transfer must sustain; 0 disables the guard. */
  readonly minBytesPerSecond: number;
  readonly windowMs: number;
  readonly graceMs: number;
  /** Called once, when the rate falls below the floor. */
  readonly onTooSlow: (rate: number) => void;
  /** Test hooks: a fake clock, and `false` to drive `tick()` by hand instead of a timer. */
  readonly now?: () => number;
  readonly autoTick?: boolean;
}

export class ThroughputGuard {
  private readonly samples: { t: number; bytes: number }[] = [];
  private readonly started: number;
  private total = 0;
  private timer: NodeJS.Timeout | undefined;
  private done = false;
  private readonly now: () => number;

  constructor(private readonly opts: ThroughputOptions) {
    this.now = opts.now ?? (() => performance.now());
    this.started = this.now();
    this.samples.push({ t: this.started, bytes: 0 });
    if (opts.minBytesPerSecond > 0 && opts.autoTick !== false) {
      // A few ticks per window: fine enough to cut within ~a quarter window of the verdict.
      this.timer = setInterval(() => this.tick(), Math.max(20, Math.min(1000, opts.windowMs / 4)));
      this.timer.unref();
    }
  }

  add(bytes: number): void {
    this.total += bytes;
  }

  /** Exposed for tests with a fake clock; the interval calls it otherwise. */
  tick(): void {
    if (this.done || this.opts.minBytesPerSecond <= 0) return;
    const t = this.now();
    this.samples.push({ t, bytes: this.total });
    if (t - this.started < this.opts.graceMs) return;
    // Keep exactly one sample at or before the window start: the rate's base.
    const from = t - this.opts.windowMs;
    while (this.samples.length > 1 && this.samples[1]!.t <= from) this.samples.shift();
    const base = this.samples[0]!;
    if (base.t > from) return; // less than one full window of history yet
    const rate = ((this.total - base.bytes) * 1000) / (t - base.t);
    if (rate < this.opts.minBytesPerSecond) {
      this.stop();
      this.opts.onTooSlow(rate);
    }
  }

  stop(): void {
    this.done = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
