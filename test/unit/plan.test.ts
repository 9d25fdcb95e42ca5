import { describe, expect, it } from 'vitest';
import { type CurrentState, type IndexSummary, type Step, gcPlan, lastGoodOf, planUpdate } from '../../agent/src/core/plan.js';
import type { GenerationInfo, GenerationState } from '../../agent/src/core/generation.js';
import { type ErrorCode, isLiveupError } from '../../agent/src/channel/errors.js';

const g = (version: number, state: GenerationState): GenerationInfo => ({ version, state });
const idx = (...vs: Array<number | [number, string]>): IndexSummary => ({
  versions: vs.map((v) => (Array.isArray(v) ? { version: v[0], architecture: v[1] } : { version: v, architecture: 'amd64' })),
});
const policy = { keep: 2, architecture: 'amd64' };
const state = (o: Partial<CurrentState> = {}): CurrentState => ({
  booted: 3,
  staged: [2, 3],
  generations: [g(2, 'good'), g(3, 'good')],
  floor: 3,
  pinned: [],
  tryVersion: null,
  ...o,
});

describe('planUpdate', () => {
  const cases: Array<[string, CurrentState, IndexSummary, Step[] | RegExp]> = [
    ['up to date', state(), idx(1, 2, 3), /up to date: booted generation 3/],
    ['booted newer than the index', state({ booted: 5, floor: 5, staged: [5], generations: [g(5, 'good')] }), idx(3, 4), /no version for amd64 at or above 5/],
    ['empty index', state(), idx(), /no version for amd64/],
    [
      'new version: fetch, stage, write menu, gc',
      state(),
      idx(1, 2, 3, 4),
      [
        { kind: 'fetch', version: 4 },
        { kind: 'stage', version: 4 },
        { kind: 'write-menu', tryVersion: 4, entries: [4, 3] },
        { kind: 'gc', versions: [2] },
      ],
    ],
    [
      'highest version for our architecture only',
      state(),
      idx(4, [5, 'arm64'], [6, 'riscv64']),
      [
        { kind: 'fetch', version: 4 },
        { kind: 'stage', version: 4 },
        { kind: 'write-menu', tryVersion: 4, entries: [4, 3] },
        { kind: 'gc', versions: [2] },
      ],
    ],
    [
      'never re-fetches a staged version',
      state({ staged: [2, 3, 4], generations: [g(2, 'good'), g(3, 'good'), g(4, 'staged')] }),
      idx(4),
      [
        { kind: 'write-menu', tryVersion: 4, entries: [4, 3] },
        { kind: 'gc', versions: [2] },
      ],
    ],
    ['staged and already on trial', state({ staged: [3, 4], tryVersion: 4 }), idx(4), /4 is staged and will be tried/],
    [
      'skips a failed version for the next lower one',
      state({ generations: [g(2, 'good'), g(3, 'good'), g(5, 'failed')] }),
      idx(4, 5),
      [
        { kind: 'fetch', version: 4 },
        { kind: 'stage', version: 4 },
        { kind: 'write-menu', tryVersion: 4, entries: [4, 3] },
        { kind: 'gc', versions: [2] },
      ],
    ],
    ['only failed versions left', state({ generations: [g(3, 'good'), g(4, 'failed')] }), idx(4), /failed before: 4/],
    ['respects the floor', state({ booted: 2, floor: 5 }), idx(3, 4), /at or above 5/],
    [
      'pinned and booted are kept even beyond keep',
      state({ booted: 3, staged: [1, 2, 3, 4], generations: [g(1, 'good'), g(2, 'good'), g(3, 'good'), g(4, 'good')], floor: 4, pinned: [1] }),
      idx(5),
      [
        { kind: 'fetch', version: 5 },
        { kind: 'stage', version: 5 },
        { kind: 'write-menu', tryVersion: 5, entries: [5, 4, 3, 1] },
        { kind: 'gc', versions: [2] },
      ],
    ],
    [
      'no booted generation (installer): updates to the newest',
      state({ booted: null, staged: [], generations: [], floor: 0 }),
      idx(1, 2),
      [
        { kind: 'fetch', version: 2 },
        { kind: 'stage', version: 2 },
        { kind: 'write-menu', tryVersion: 2, entries: [2] },
      ],
    ],
  ];
  it.each(cases)('%s', (_name, current, index, expected) => {
    const steps = planUpdate(current, index, policy);
    if (expected instanceof RegExp) {
      expect(steps).toHaveLength(1);
      expect(steps[0]!.kind).toBe('none');
      expect((steps[0] as { reason: string }).reason).toMatch(expected);
    } else {
      expect(steps).toEqual(expected);
    }
  });

  it('an explicit request may target a failed version', () => {
    const steps = planUpdate(state({ generations: [g(2, 'good'), g(3, 'good'), g(5, 'failed')] }), idx(4, 5), policy, { version: 5 });
    expect(steps[0]).toEqual({ kind: 'fetch', version: 5 });
  });

  const errors: Array<[string, number, IndexSummary, ErrorCode, RegExp]> = [
    ['not in the index', 9, idx(4), 'NOT_FOUND', /9 is not in the channel index/],
    ['other architecture', 4, idx([4, 'arm64']), 'WRONG_ARCHITECTURE', /not published for amd64/],
    ['below the floor', 2, idx(2, 4), 'VERSION_ROLLBACK', /below the floor 3; use rollback/],
    ['not a version', 0, idx(4), 'INVALID_ARGUMENT', /positive integer/],
  ];
  it.each(errors)('explicit request: %s', (_n, version, index, code, msg) => {
    try {
      planUpdate(state(), index, policy, { version });
      expect.unreachable();
    } catch (e) {
      expect(isLiveupError(e, code), String(e)).toBe(true);
      expect((e as Error).message).toMatch(msg);
    }
  });

  it('an explicit request for the booted version is a no-op', () => {
    expect(planUpdate(state(), idx(3), policy, { version: 3 })).toEqual([{ kind: 'none', reason: 'generation 3 is already booted' }]);
  });

  it('rejects a nonsensical keep', () => {
    expect(() => planUpdate(state(), idx(4), { ...policy, keep: -1 })).toThrow(/keep must be/);
  });
});

describe('gcPlan', () => {
  const gens = [g(1, 'good'), g(2, 'failed'), g(3, 'good'), g(4, 'good'), g(5, 'failed'), g(6, 'staged')];
  const cases: Array<[string, Parameters<typeof gcPlan>[1], number[]]> = [
    ['keeps the N newest usable, booted and last good', { booted: 4, lastGood: 4, pinned: [], keep: 2 }, [1, 2, 3, 5]],
    ['keep 0 keeps only protected ones', { booted: 4, lastGood: 3, pinned: [], keep: 0 }, [1, 2, 5, 6]],
    ['pinned survive, failed ones too when pinned', { booted: 4, lastGood: 4, pinned: [1, 5], keep: 1 }, [2, 3]],
    ['the booted one is never removed, even if failed', { booted: 5, lastGood: 4, pinned: [], keep: 1 }, [1, 2, 3]],
    ['the trial is never removed', { booted: 3, lastGood: 3, pinned: [], keep: 0, trial: 6 }, [1, 2, 4, 5]],
    ['large keep removes only failed', { booted: 4, lastGood: 4, pinned: [], keep: 10 }, [2, 5]],
    ['nothing booted', { booted: null, lastGood: null, pinned: [], keep: 1 }, [1, 2, 3, 4, 5]],
  ];
  it.each(cases)('%s', (_n, opts, removed) => {
    expect(gcPlan(gens, opts)).toEqual(removed);
    if (opts.booted !== null) expect(gcPlan(gens, opts)).not.toContain(opts.booted);
  });

  it('lastGoodOf only counts generations still on the medium', () => {
    expect(lastGoodOf(gens, [1, 3, 6])).toBe(3);
    expect(lastGoodOf(gens, [2, 6])).toBeNull();
  });
});
