import { describe, expect, it } from 'vitest';
import { run, runLean } from '../../agent/src/adapters/exec.js';
import { isLiveupError } from '../../agent/src/channel/errors.js';

async function failure(p: Promise<unknown>): Promise<{ message: string; details: Record<string, unknown> }> {
  const e = await p.then(() => null, (err: unknown) => err);
  expect(isLiveupError(e, 'COMMAND_FAILED'), String(e)).toBe(true);
  return e as { message: string; details: Record<string, unknown> };
}

// runLean (the boot check's) keeps run's contract: the same cases, both runners.
describe.each([['run', run], ['runLean', runLean]] as const)('exec.%s', (_name, run) => {
  it('captures stdout, stderr and passes stdin; no shell re-parsing', async () => {
    const r = await run('sh', ['-c', 'cat; echo err >&2; printf "%s" "$1"', 'sh', '$HOME; rm -rf /'], { input: 'in\n' });
    expect(r).toEqual({ stdout: 'in\n$HOME; rm -rf /', stderr: 'err\n', exitCode: 0 });
  });

  it('runs with LC_ALL=C unless overridden', async () => {
    expect((await run('sh', ['-c', 'echo $LC_ALL'])).stdout).toBe('C\n');
    expect((await run('sh', ['-c', 'echo $LC_ALL $X'], { env: { LC_ALL: 'C.UTF-8', X: 'y' } })).stdout).toBe('C.UTF-8 y\n');
  });

  it('a non-zero exit is COMMAND_FAILED with stderr, unless allowed', async () => {
    const e = await failure(run('sh', ['-c', 'echo boom >&2; exit 3']));
    expect(e.message).toBe('sh -c echo boom >&2; exit 3 exited with 3: boom');
    expect(e.details).toMatchObject({ exitCode: 3, stderr: 'boom\n' });
    expect((await run('sh', ['-c', 'exit 1'], { okExitCodes: [0, 1] })).exitCode).toBe(1);
  });

  it('a missing binary and a timeout are COMMAND_FAILED too', async () => {
    expect((await failure(run('/nonexistent/tool', []))).message).toMatch(/could not be started \(ENOENT\)/);
    const t = await failure(run('sleep', ['5'], { timeoutMs: 200 }));
    expect(t.message).toMatch(/timed out after 200 ms/);
    expect(t.details.timedOut).toBe(true);
  });

  it('more output than maxBuffer is COMMAND_FAILED, not a truncated success', async () => {
    expect((await failure(run('head', ['-c', '100000', '/dev/zero'], { maxBuffer: 1000 }))).message).toMatch(/produced more output than allowed/);
  });

  it('a child that ignores SIGTERM is killed, and a grandchild holding its output does not hold the call', async () => {
    const t0 = Date.now();
    const e = await failure(run('sh', ['-c', 'trap "" TERM; sleep 30 & sleep 30'], { timeoutMs: 300 }));
    expect(e.message).toMatch(/timed out after 300 ms/);
    expect(Date.now() - t0).toBeLessThan(12_000);
  }, 20_000);

  it('a child that exits leaving a background process on its output returns its result soon after', async () => {
    const t0 = Date.now();
    const r = await run('sh', ['-c', 'sleep 30 & echo started']);
    expect(r).toMatchObject({ stdout: 'started\n', exitCode: 0 });
    expect(Date.now() - t0).toBeLessThan(8_000);
  }, 20_000);

  it('an abort signal kills the child and says interrupted', async () => {
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    const e = await failure(run('sleep', ['5'], { signal: ac.signal }));
    expect(e.details.interrupted).toBe(true);
  });
});
