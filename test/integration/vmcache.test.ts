/**
 * The VM cache's disk hygiene (test/vm/cache.ts): what a CI run on a shared
 * disk relies on so the VM suite does not die of ENOSPC half way.
 */
import { describe, expect, test, beforeAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmp } from '../helpers/tmp.js';

type Cache = typeof import('../vm/cache.js');
let cache: Cache;
let root = '';

beforeAll(async () => {
  root = execFileSync('mktemp', ['-d', '/tmp/liveup-vmcache-XXXXXX'], { encoding: 'utf8' }).trim();
  process.env.LIVEUP_VM_CACHE = root; // read once, when the module loads
  cache = await import('../vm/cache.js');
  return () => execFileSync('rm', ['-rf', root]);
});

/** A pid that has exited (its process is gone). */
function deadPid(): number {
  return Number(execFileSync('sh', ['-c', 'sh -c "echo \\$\\$"'], { encoding: 'utf8' }).trim());
}

function at(path: string, secondsAgo: number): void {
  const t = new Date(Date.now() - secondsAgo * 1000);
  utimesSync(path, t, t);
}

function run(name: string, owner: number, secondsAgo: number): string {
  const dir = join(root, 'runs', name);
  mkdirSync(join(dir, 'repo', 'generations'), { recursive: true });
  writeFileSync(join(dir, 'disk.img'), 'x');
  writeFileSync(join(dir, 'console.log'), 'log');
  writeFileSync(join(dir, '.owner'), String(owner));
  at(dir, secondsAgo);
  return dir;
}

describe('VM cache hygiene', () => {
  test('a dead run keeps its logs and loses its disk and channel; a live run is untouched; only the newest 40 stay', () => {
    const dead = run('live-1', deadPid(), 100);
    const mine = run('live-2', process.pid, 200);
    for (let i = 0; i < cache.RUN_LOGS_KEPT + 2; i++) run(`old-${i}`, deadPid(), 1000 + i);
    cache.pruneRuns();
    expect(readdirSync(dead).sort()).toEqual(['.owner', 'console.log']);
    expect(readdirSync(mine).sort()).toEqual(['.owner', 'console.log', 'disk.img', 'repo']);
    // 40 dead runs kept (live-1 and old-0..38); the two oldest are gone.
    expect(existsSync(join(root, 'runs', `old-${cache.RUN_LOGS_KEPT - 2}`))).toBe(true);
    expect(existsSync(join(root, 'runs', `old-${cache.RUN_LOGS_KEPT - 1}`))).toBe(false);
    expect(existsSync(join(root, 'runs', `old-${cache.RUN_LOGS_KEPT + 1}`))).toBe(false);
  });

  test('newRunDir makes a run owned by this process', () => {
    const dir = cache.newRunDir('iso');
    expect(dir).toMatch(new RegExp(`^${root}/runs/iso-\\d+$`));
    cache.pruneRuns();
    expect(existsSync(dir)).toBe(true);
    writeFileSync(join(dir, 'gen.iso'), 'x');
    cache.dropRunBulk(dir);
    expect(readdirSync(dir)).toEqual(['.owner']);
  });

  test('generation sets beyond the most recently used are dropped before a build; the key being built and other folders stay', () => {
    for (const [i, k] of ['aaaaaaaaaaaaaaa1', 'aaaaaaaaaaaaaaa2', 'aaaaaaaaaaaaaaa3', 'aaaaaaaaaaaaaaa4', 'aaaaaaaaaaaaaaa5'].entries()) {
      mkdirSync(join(root, k, 'gen'), { recursive: true });
      writeFileSync(join(root, k, 'done'), '');
      at(join(root, k, 'done'), 100 * (i + 1)); // 1 is the most recently built
    }
    cache.touchGeneration(join(root, 'aaaaaaaaaaaaaaa5')); // built long ago, used now
    mkdirSync(join(root, 'debs'), { recursive: true });
    const dropped = cache.pruneGenerations('bbbbbbbbbbbbbbbb');
    expect(dropped.sort()).toEqual(['aaaaaaaaaaaaaaa3', 'aaaaaaaaaaaaaaa4']);
    for (const kept of ['aaaaaaaaaaaaaaa5', 'aaaaaaaaaaaaaaa1', 'aaaaaaaaaaaaaaa2', 'debs', 'runs']) expect(existsSync(join(root, kept))).toBe(true);
  });

  test('a shortfall of free space is named before anything is written', async () => {
    const dir = await tmp();
    expect(() => cache.requireFreeSpace(dir, Number.MAX_SAFE_INTEGER, 'a VM run (live)'))
      .toThrow(new RegExp(`a VM run \\(live\\) needs [\\d.]+ GiB free on ${dir}, and only [\\d.]+ GiB is available`));
    expect(() => cache.requireFreeSpace(dir, 1, 'a VM run (live)')).not.toThrow();
  });
});
