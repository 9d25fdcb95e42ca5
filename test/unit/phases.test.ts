import { describe, expect, it } from 'vitest';
import { phaseTimer } from '../../agent/src/util/phases.js';

describe('phaseTimer', () => {
  it('times each phase from the previous mark and sums up in seconds', () => {
    let t = 1000;
    const p = phaseTimer(() => t);
    t += 412.4;
    p.mark('check');
    t += 5;
    p.mark('decide');
    t += 1530;
    p.mark('nextroot');
    expect(p.phases).toEqual([{ name: 'check', ms: 412 }, { name: 'decide', ms: 5 }, { name: 'nextroot', ms: 1530 }]);
    expect(p.summary()).toBe('check 0.41 s, decide 0.01 s, nextroot 1.53 s');
  });
});
