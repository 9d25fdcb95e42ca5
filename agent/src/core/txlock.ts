/**
 * One change at a time (the rpm-ostree rule): every mutating operation —
 * whether a D-Bus caller or the daemon's own scheduler started it — runs
 * inside the one TxLock the daemon owns. A second caller does not queue: it
 * gets UPDATE_IN_PROGRESS at once, naming what runs, because a queued
 * "update" behind a running one would act on a state its caller never saw.
 *
 * Pure: in-memory, no IO; the clock is injectable for tests.
 */
import { LiveupError } from '../channel/errors.js';

export interface Transaction {
  /** What runs, e.g. "update", "rollback", "gc", "scheduled-check". */
  readonly kind: string;
  /** Who started it, for the error message (e.g. "uid 0", "scheduler"). */
  readonly owner: string;
  readonly since: Date;
}

export class TxLock {
  #current: Transaction | null = null;
  readonly #now: () => Date;

  constructor(now: () => Date = () => new Date()) {
    this.#now = now;
  }

  get current(): Transaction | null {
    return this.#current;
  }

  /**
   * Take the lock or throw UPDATE_IN_PROGRESS. The returned release is
   * idempotent, so a `finally` and an error path may both call it.
   */
  acquire(kind: string, owner = 'unknown'): () => void {
    const held = this.#current;
    if (held) {
      throw new LiveupError(
        'UPDATE_IN_PROGRESS',
        `another operation is in progress: ${held.kind} (started by ${held.owner} at ${held.since.toISOString()}); try again when it ends`,
        { kind: held.kind, owner: held.owner, since: held.since.toISOString(), requested: kind },
      );
    }
    const tx: Transaction = { kind, owner, since: this.#now() };
    this.#current = tx;
    return () => {
      // Only the holder's release clears the lock: a stale release must not free a later transaction.
      if (this.#current === tx) this.#current = null;
    };
  }

  /** Run `fn` holding the lock; released however `fn` ends. */
  async run<T>(kind: string, owner: string, fn: () => Promise<T>): Promise<T> {
    const release = this.acquire(kind, owner);
    try {
      return await fn();
    } finally {
      release();
    }
  }
}
