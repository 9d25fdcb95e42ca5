/**
 * Retry delays. Exponential so a struggling server is not hammered, with
 * jitter so a fleet that failed together does not retry together.
 */

/**
 * Delay before retry number `attempt` (1 = first retry): `baseMs · 2^(attempt-1)`,
 * capped, then scaled by a random factor in [0.5, 1) ("equal jitter": never
 * less than half the nominal delay, so backoff still backs off).
 */
export function backoffDelay(attempt: number, baseMs: number, maxMs = 60_000, random: () => number = Math.random): number {
  const nominal = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(nominal * (0.5 + random() * 0.5));
}

/** Sleep `ms`, or reject with the signal's reason as soon as it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
