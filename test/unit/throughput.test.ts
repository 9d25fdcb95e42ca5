import { describe, expect, it } from 'vitest';
import { backoffDelay } from '../../agent/src/util/backoff.js';
import { ThroughputGuard } from '../../agent/src/util/throughput.js';

function guard(min: number, windowMs: number, graceMs: number) {
  let now = 0;
  const verdicts: number[] = [];
  const g = new ThroughputGuard({ minBytesPerSecond: min, windowMs, graceMs, onTooSlow: (r) => verdicts.push(r), now: () => now, autoTick: false });
  return { g, verdicts, at: (t: number) => { now = t; g.tick(); } };
}

describe('ThroughputGuard', () => {
  it('gives no verdict during the grace period or before a full window', () => {
    const { g, verdicts, at } = guard(1000, 1000, 2000);
    g.add(10);
    at(500);
    at(1500);
    expect(verdicts).toEqual([]);
    at(2000);
    expect(verdicts).toHaveLength(1);
  });

  it('measures over the sliding window, not since the start', () => {
    const { g, verdicts, at } = guard(1000, 1000, 0);
    g.add(100_000); // a fast start…
    at(250);
    at(500);
    at(1000);
    expect(verdicts).toEqual([]);
    at(1500); // …then nothing for a window
    at(2000);
    at(2250);
    expect(verdicts).toHaveLength(1);
    expect(verdicts[0]).toBe(0);
  });

  it('a steady transfer above the floor is never cut', () => {
    const { g, verdicts, at } = guard(1000, 1000, 0);
    for (let t = 250; t <= 10_000; t += 250) {
      g.add(500);
      at(t);
    }
    expect(verdicts).toEqual([]);
  });
});

describe('backoffDelay', () => {
  it('doubles per attempt, with jitter in [0.5, 1) of nominal, capped', () => {
    expect(backoffDelay(1, 100, 60_000, () => 0)).toBe(50);
    expect(backoffDelay(3, 100, 60_000, () => 0.999)).toBe(400);
    expect(backoffDelay(20, 100, 1000, () => 0)).toBe(500);
  });
});
