import { describe, expect, it } from 'vitest';
import { type RollbackInput, type RollbackRequest, chooseRollbackTarget } from '../../agent/src/core/rollback.js';
import { type ErrorCode, isLiveupError } from '../../agent/src/channel/errors.js';

const input: RollbackInput = {
  booted: 6,
  staged: [2, 3, 4, 5, 6, 7, 9],
  generations: [
    { version: 1, state: 'good' }, // removed from the medium
    { version: 2, state: 'good' },
    { version: 3, state: 'failed' },
    { version: 4, state: 'good' },
    { version: 5, state: 'failed' },
    { version: 6, state: 'good' },
    { version: 7, state: 'staged' },
  ], // 9: files on the medium, no journal row
};

describe('chooseRollbackTarget', () => {
  const ok: Array<[string, RollbackInput, RollbackRequest, number]> = [
    ['previous good by default, skipping failed ones', input, {}, 4],
    ['a named older good one', input, { version: 2 }, 2],
    ['a named newer one (roll forward)', input, { version: 7 }, 7],
    ['a named failed one with force', input, { version: 5, force: true }, 5],
    ['a staged one without a journal row', input, { version: 9 }, 9],
  ];
  it.each(ok)('%s', (_n, inp, req, version) => {
    expect(chooseRollbackTarget(inp, req).version).toBe(version);
  });

  const bad: Array<[string, RollbackInput, RollbackRequest, ErrorCode, RegExp]> = [
    ['no older good one on the medium', { ...input, booted: 2 }, {}, 'UNKNOWN_GENERATION', /no good generation older than the booted 2/],
    ['unknown version', input, { version: 42 }, 'UNKNOWN_GENERATION', /42 is unknown/],
    ['removed version', input, { version: 1 }, 'UNKNOWN_GENERATION', /1 was removed from the boot medium/],
    ['the booted one', input, { version: 6 }, 'INVALID_ARGUMENT', /is the one booted/],
    ['a failed one without force', input, { version: 3 }, 'INVALID_ARGUMENT', /3 is marked failed; pass --force/],
    ['not a version', input, { version: 1.5 }, 'INVALID_ARGUMENT', /positive integer/],
  ];
  it.each(bad)('%s', (_n, inp, req, code, msg) => {
    try {
      chooseRollbackTarget(inp, req);
      expect.unreachable();
    } catch (e) {
      expect(isLiveupError(e, code), String(e)).toBe(true);
      expect((e as Error).message).toMatch(msg);
    }
  });
});
