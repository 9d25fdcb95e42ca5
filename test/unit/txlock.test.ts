import { describe, expect, it } from 'vitest';
import { isLiveupError } from '../../agent/src/channel/errors.js';
import { TxLock } from '../../agent/src/core/txlock.js';

const fixed = () => new Date('2030-01-02T03:04:05Z');

describe('TxLock', () => {
  it('refuses a second transaction with UPDATE_IN_PROGRESS naming the first', () => {
    const lock = new TxLock(fixed);
    const release = lock.acquire('update', 'uid 0');
    expect(lock.current).toMatchObject({ kind: 'update', owner: 'uid 0' });
    let err: unknown;
    try {
      lock.acquire('gc', 'uid 1000');
    } catch (e) {
      err = e;
    }
    expect(isLiveupError(err, 'UPDATE_IN_PROGRESS')).toBe(true);
    expect((err as Error).message).toContain('update (started by uid 0 at 2030-01-02T03:04:05.000Z)');
    release();
    expect(lock.current).toBeNull();
    lock.acquire('gc')();
  });

  it('a stale release does not free a later holder', () => {
    const lock = new TxLock(fixed);
    const r1 = lock.acquire('a');
    r1();
    const r2 = lock.acquire('b');
    r1();
    expect(lock.current?.kind).toBe('b');
    r2();
    expect(lock.current).toBeNull();
  });

  it('run releases on success and on failure', async () => {
    const lock = new TxLock(fixed);
    await expect(lock.run('a', 'x', async () => 7)).resolves.toBe(7);
    expect(lock.current).toBeNull();
    await expect(lock.run('a', 'x', async () => { throw new Error('boom'); })).rejects.toThrow('boom');
    expect(lock.current).toBeNull();
  });

  it('run refuses while held, without running fn', async () => {
    const lock = new TxLock(fixed);
    let finish!: () => void;
    const first = lock.run('update', 'x', () => new Promise<void>((r) => { finish = r; }));
    let ran = false;
    await expect(lock.run('pin', 'y', async () => { ran = true; })).rejects.toMatchObject({ code: 'UPDATE_IN_PROGRESS' });
    expect(ran).toBe(false);
    finish();
    await first;
    expect(lock.current).toBeNull();
  });
});
