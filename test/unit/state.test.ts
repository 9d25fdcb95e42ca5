import { describe, expect, it } from 'vitest';
import { AGENT_STATES, type AgentEvent, type AgentState, type AgentStateName, INITIAL_STATE, TRANSITIONS, transition } from '../../agent/src/core/state.js';
import { type ErrorCode, isLiveupError } from '../../agent/src/channel/errors.js';

const at = (state: AgentStateName, version: number | null = null): AgentState => ({ state, version, error: null });
const fail: AgentEvent = { type: 'fail', error: { code: 'FETCH_FAILED', message: 'HTTP 503' } };

describe('agent state machine', () => {
  const legal: Array<[AgentState, AgentEvent, AgentState]> = [
    [INITIAL_STATE, { type: 'check' }, at('checking')],
    [at('checking'), { type: 'up-to-date' }, at('idle')],
    [at('checking'), { type: 'update-found', version: 7 }, at('downloading', 7)],
    [at('checking'), { type: 'already-staged', version: 7 }, at('staged', 7)],
    [at('downloading', 7), { type: 'downloaded' }, at('staging', 7)],
    [at('staging', 7), { type: 'staged' }, at('staged', 7)],
    [at('staged', 7), { type: 'apply' }, at('applying', 7)],
    [at('staged', 7), { type: 'check' }, at('checking')],
    [at('applying', 7), { type: 'applied' }, at('idle')],
    [at('downloading', 7), fail, { state: 'failed', version: 7, error: { code: 'FETCH_FAILED', message: 'HTTP 503' } }],
    [{ state: 'failed', version: 7, error: { code: 'FETCH_FAILED', message: 'x' } }, { type: 'reset' }, at('idle')],
    [{ state: 'failed', version: 7, error: { code: 'FETCH_FAILED', message: 'x' } }, { type: 'check' }, at('checking')],
  ];
  it.each(legal)('%o --%o--> %o', (from, event, to) => {
    expect(transition(from, event)).toEqual(to);
  });

  const illegal: Array<[AgentState, AgentEvent, ErrorCode]> = [
    [at('downloading', 7), { type: 'check' }, 'UPDATE_IN_PROGRESS'],
    [at('applying', 7), { type: 'apply' }, 'UPDATE_IN_PROGRESS'],
    [at('checking'), { type: 'check' }, 'UPDATE_IN_PROGRESS'],
    [at('idle'), { type: 'apply' }, 'INTERNAL'],
    [at('idle'), { type: 'staged' }, 'INTERNAL'],
    [at('idle'), fail, 'INTERNAL'],
    [at('staged', 7), { type: 'downloaded' }, 'INTERNAL'],
    [at('failed'), { type: 'apply' }, 'INTERNAL'],
  ];
  it.each(illegal)('%o --%o--> error %s', (from, event, code) => {
    try {
      transition(from, event);
      expect.unreachable();
    } catch (e) {
      expect(isLiveupError(e, code), String(e)).toBe(true);
    }
  });

  it('the table covers every state and only names known states', () => {
    expect(Object.keys(TRANSITIONS).sort()).toEqual([...AGENT_STATES].sort());
    for (const row of Object.values(TRANSITIONS)) for (const to of Object.values(row)) expect(AGENT_STATES).toContain(to);
  });

  it('a whole update runs idle → idle', () => {
    const events: AgentEvent[] = [{ type: 'check' }, { type: 'update-found', version: 9 }, { type: 'downloaded' }, { type: 'staged' }, { type: 'apply' }, { type: 'applied' }];
    const seen = events.reduce<AgentState[]>((acc, e) => [...acc, transition(acc[acc.length - 1]!, e)], [INITIAL_STATE]).map((s) => s.state);
    expect(seen).toEqual(['idle', 'checking', 'downloading', 'staging', 'staged', 'applying', 'idle']);
  });
});
