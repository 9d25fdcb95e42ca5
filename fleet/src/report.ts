/**
 * The fleet report: what an agent tells the endpoint about its machine, and
 * the endpoint's strict reading of it. Shared by both sides (the agent builds
 * it from its status, the endpoint validates it), like the channel format.
 */
import { LiveupError } from '../../agent/src/channel/errors.js';
import { Reader } from '../../agent/src/util/validate.js';

export const REPORT_FORMAT = 1;
/** Bigger bodies are refused before parsing (413). */
export const MAX_REPORT_BYTES = 64 * 1024;

export interface FleetReport {
  readonly format: 1;
  /** /etc/machine-id: stable for the machine's life, not secret. */
  readonly machineId: string;
  readonly hostname: string;
  readonly channel: string;
  /** Monotonic per machine, from the agent's outbox; the endpoint stores each (machine, seq) once. */
  readonly seq: number;
  readonly sentAt: string;
  readonly agentVersion: string;
  readonly state: string;
  readonly bootedVersion: number | null;
  readonly runningVersion: number | null;
  readonly stagedVersion: number | null;
  readonly lastGoodVersion: number | null;
  /** Last result: `ok`, or the error code of the last failed step. */
  readonly lastResult: string | null;
  readonly lastError: string | null;
  /** The boot check's verdict for the booted generation, when known. */
  readonly health: 'good' | 'failed' | 'unknown';
  readonly uptimeSeconds: number;
  readonly decision: string | null;
  /**
   * The newest generation this machine marked failed (its boot check failed,
   * so it fell back): how the endpoint counts a wave's failures after the
   * machine left the failed generation. Optional: older agents omit it.
   */
  readonly failedVersion?: number | null;
}

const ID_RE = /^[0-9a-f]{32}$/;

/** Parse and validate a report body; every problem is INVALID_ARGUMENT naming the field. */
export function parseReport(body: string): FleetReport {
  let raw: unknown;
  try {
    raw = JSON.parse(body);
  } catch (e) {
    throw new LiveupError('INVALID_ARGUMENT', `report: not valid JSON (${(e as Error).message})`);
  }
  const r = new Reader('report', 'INVALID_ARGUMENT');
  const o = r.object(raw, '', [
    'format', 'machineId', 'hostname', 'channel', 'seq', 'sentAt', 'agentVersion', 'state', 'bootedVersion', 'runningVersion',
    'stagedVersion', 'lastGoodVersion', 'lastResult', 'lastError', 'health', 'uptimeSeconds', 'decision', 'failedVersion',
  ]);
  if (r.int(o, 'format', '', { min: 1 }) !== REPORT_FORMAT) r.fail('format', `only format ${REPORT_FORMAT} is understood`);
  const version = (k: string): number | null => (o[k] === null || o[k] === undefined ? null : r.int(o, k, '', { min: 1 }));
  const optText = (k: string, max: number): string | null => (o[k] === null || o[k] === undefined ? null : r.string(o, k, '', { max }));
  return {
    format: 1,
    machineId: r.string(o, 'machineId', '', { pattern: ID_RE, what: 'a machine id (32 lower-case hex digits, /etc/machine-id)' }),
    hostname: r.string(o, 'hostname', '', { max: 253 }),
    channel: r.string(o, 'channel', '', { max: 64 }),
    seq: r.int(o, 'seq', '', { min: 1 }),
    sentAt: r.string(o, 'sentAt', '', { max: 40 }),
    agentVersion: r.string(o, 'agentVersion', '', { max: 64 }),
    state: r.string(o, 'state', '', { max: 32 }),
    bootedVersion: version('bootedVersion'),
    runningVersion: version('runningVersion'),
    stagedVersion: version('stagedVersion'),
    lastGoodVersion: version('lastGoodVersion'),
    lastResult: optText('lastResult', 64),
    lastError: optText('lastError', 2000),
    health: r.oneOf(o, 'health', '', ['good', 'failed', 'unknown'] as const),
    uptimeSeconds: r.int(o, 'uptimeSeconds', '', { min: 0 }),
    decision: optText('decision', 500),
    failedVersion: version('failedVersion'),
  };
}
