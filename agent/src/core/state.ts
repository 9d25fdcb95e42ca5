/**
 * The agent's update state machine as a pure reducer.
 *
 * The daemon holds one AgentState, feeds it events as work progresses, and
 * publishes every new state as a D-Bus property change. A transition missing
 * from the table is a bug or a second caller: the latter gets
 * UPDATE_IN_PROGRESS (the rpm-ostree rule: one change at a time).
 */
import { type ErrorCode, LiveupError } from '../channel/errors.js';

export const AGENT_STATES = ['idle', 'checking', 'downloading', 'staging', 'staged', 'applying', 'failed'] as const;
export type AgentStateName = (typeof AGENT_STATES)[number];

export type AgentEvent =
  | { readonly type: 'check' }
  | { readonly type: 'up-to-date' }
  | { readonly type: 'update-found'; readonly version: number }
  /** The check found the target already on the medium: straight to staged. */
  | { readonly type: 'already-staged'; readonly version: number }
  | { readonly type: 'downloaded' }
  | { readonly type: 'staged' }
  | { readonly type: 'apply' }
  | { readonly type: 'applied' }
  | { readonly type: 'fail'; readonly error: { readonly code: ErrorCode; readonly message: string } }
  | { readonly type: 'reset' };

export type AgentEventType = AgentEvent['type'];

export interface AgentState {
  readonly state: AgentStateName;
  /** The version being worked on (downloading…applying), else null. */
  readonly version: number | null;
  /** Set in `failed`: why. */
  readonly error: { readonly code: ErrorCode; readonly message: string } | null;
}

export const INITIAL_STATE: AgentState = { state: 'idle', version: null, error: null };

/** The transition table (also the source of the state diagram in docs/architecture.md). */
export const TRANSITIONS: { readonly [S in AgentStateName]: Readonly<Partial<Record<AgentEventType, AgentStateName>>> } = {
  idle: { check: 'checking' },
  checking: { 'up-to-date': 'idle', 'update-found': 'downloading', 'already-staged': 'staged', fail: 'failed' },
  downloading: { downloaded: 'staging', fail: 'failed' },
  staging: { staged: 'staged', fail: 'failed' },
  // A check while staged may find a newer version; the staged one stays on the medium.
  staged: { check: 'checking', apply: 'applying' },
  applying: { applied: 'idle', fail: 'failed' },
  failed: { check: 'checking', reset: 'idle' },
};

const BUSY: ReadonlySet<AgentStateName> = new Set(['checking', 'downloading', 'staging', 'applying']);
const STARTS: ReadonlySet<AgentEventType> = new Set(['check', 'apply']);

export function transition(s: AgentState, e: AgentEvent): AgentState {
  const next = TRANSITIONS[s.state][e.type];
  if (next === undefined) {
    if (BUSY.has(s.state) && STARTS.has(e.type)) {
      throw new LiveupError('UPDATE_IN_PROGRESS', `an update is in progress (${s.state}${s.version !== null ? ` ${s.version}` : ''}); try again when it ends`, {
        state: s.state,
        event: e.type,
      });
    }
    throw new LiveupError('INTERNAL', `illegal agent state transition: ${s.state} --${e.type}-->`, { state: s.state, event: e.type });
  }
  switch (e.type) {
    case 'update-found':
    case 'already-staged':
      return { state: next, version: e.version, error: null };
    case 'fail':
      return { state: next, version: s.version, error: { code: e.error.code, message: e.error.message } };
    case 'check':
    case 'up-to-date':
    case 'applied':
    case 'reset':
      return { state: next, version: null, error: null };
    case 'downloaded':
    case 'staged':
    case 'apply':
      return { state: next, version: s.version, error: null };
  }
}
