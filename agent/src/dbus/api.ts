/**
 * The contract between liveup-agentd and its D-Bus front: `AgentApi` is what
 * the service calls (the daemon implements it), and the result types are the
 * JSON shapes carried in the `s` results of org.liveup.Agent1 (see the
 * checked-in org.liveup.Agent1.xml for why rich results are JSON).
 *
 * Adding an optional field is compatible; renaming or removing one is not —
 * clients (agentctl, scripts using `--json`) read these names.
 */
import { ERROR_CODES, errorCodeToPascal, type ErrorCode } from '../channel/errors.js';

export const BUS_NAME = 'org.liveup.Agent1';
export const OBJECT_PATH = '/org/liveup/Agent1';
export const INTERFACE_NAME = 'org.liveup.Agent1';
export const ERROR_PREFIX = `${INTERFACE_NAME}.Error.`;

/** `HASH_MISMATCH` → `org.liveup.Agent1.Error.HashMismatch`. */
export function dbusErrorName(code: ErrorCode): string {
  return ERROR_PREFIX + errorCodeToPascal(code);
}

const CODE_BY_DBUS_NAME: ReadonlyMap<string, ErrorCode> = new Map(ERROR_CODES.map((c) => [dbusErrorName(c), c]));

/** The reverse of dbusErrorName; undefined for names outside our interface. */
export function errorCodeFromDbusName(name: string): ErrorCode | undefined {
  return CODE_BY_DBUS_NAME.get(name);
}

/**
 * The agent's update state as the bus shows it. Mirrors AGENT_STATES of the
 * core state machine (core/state.ts); kept as a literal union here so the wire
 * contract does not move when the reducer's internals do.
 */
export type AgentStateName = 'idle' | 'checking' | 'downloading' | 'staging' | 'staged' | 'applying' | 'failed';

/** Lifecycle of one generation as the journal records it. */
export type GenerationState = 'staged' | 'booted' | 'good' | 'failed';

/** ISO-8601 UTC timestamp string (JSON has no date type). */
export type Timestamp = string;

export interface AgentStatus {
  state: AgentStateName;
  /** Version running now; null before the first journalled boot (e.g. an installer image). */
  bootedVersion: number | null;
  /** Version on the medium and selected for the next boot, if any. */
  stagedVersion: number | null;
  /** Newest version that passed its boot check: where an automatic fallback goes. */
  lastGoodVersion: number | null;
  /** Version the channel offers that is not staged yet (found by the last check). */
  pendingVersion: number | null;
  channel: string;
  lastCheck: { at: Timestamp; result: 'up-to-date' | 'update-available' | 'failed'; errorCode: ErrorCode | null; message?: string } | null;
  nextCheck: Timestamp | null;
  /**
   * What the agent decided to do with the pending/staged version and why,
   * e.g. `{ decision: 'wait', reason: 'outside maintenance window (02:00-04:00)' }`.
   */
  decision: string | null;
  reason: string | null;
  /** A `wait` decision: until when (then the agent decides again). */
  decisionUntil?: Timestamp | null;
  /**
   * The generation the running system is: the booted one, or a newer one a
   * live replay converged to during this boot.
   */
  runningVersion?: number | null;
  /** Set after a failed or interrupted live replay in this boot: reboot into `version`. */
  needsReboot?: { version: number; reason: string } | null;
  /** Set while a transaction runs: which one and since when. */
  transaction: { kind: string; since: Timestamp } | null;
}

export interface CheckResult {
  /** Highest version the channel offers (verified), or null if the channel is empty. */
  availableVersion: number | null;
  currentVersion: number | null;
  updateAvailable: boolean;
  channel: string;
  /** When the signed channel index expires. */
  expires: Timestamp | null;
  /** Download size of the update in bytes, when known. */
  downloadBytes?: number;
}

export interface UpdateOptions {
  /** Stop after staging; neither apply live nor reboot. */
  downloadOnly: boolean;
  /** Replay the package changes on the running system now instead of waiting for policy. */
  applyLive: boolean;
  /**
   * Carry out the decision now — live replay, soft-reboot, kexec or reboot —
   * regardless of the maintenance window, logged-in users and inhibitors:
   * an administrator's explicit order. Optional for older clients.
   */
  applyNow?: boolean;
}

export interface RollbackOptions {
  /** Switch now (kexec, or reboot) instead of at the next boot. */
  now: boolean;
  /**
   * Go back to the booted generation without a reboot, undoing this boot's
   * live replays (refused with LIVE_APPLY_REFUSED otherwise). Excludes `now`.
   * Optional for older clients.
   */
  live?: boolean;
}

export interface UpdateResult {
  /** The version the machine moves to, or null when there was nothing to do. */
  version: number | null;
  /**
   * - `up-to-date`: nothing newer;
   * - `staged`: on the medium, boots next time;
   * - `applied-live`: running now without a reboot;
   * - `reboot-scheduled` / `kexec-scheduled`: will switch at the given time;
   * - `rollback-staged`: the rollback target boots next time;
   * - `rolled-back-live`: the booted generation runs again, without a reboot.
   */
  outcome: 'up-to-date' | 'staged' | 'applied-live' | 'reboot-scheduled' | 'kexec-scheduled' | 'rollback-staged' | 'rolled-back-live';
  /** Set when the switch is scheduled rather than done. */
  at?: Timestamp | null;
  message: string;
}

export interface GenerationInfo {
  version: number;
  name: string;
  state: GenerationState;
  pinned: boolean;
  booted: boolean;
  staged: boolean;
  /** Whether the files are still on the boot medium (false after gc). */
  present: boolean;
  kernelVersion: string | null;
  /** When the publisher built it. */
  createdAt: Timestamp | null;
  /** When this machine staged it. */
  stagedAt: Timestamp | null;
  /** When this machine last booted it. */
  bootedAt: Timestamp | null;
}

export type HistoryKind = 'check' | 'update' | 'apply' | 'decision' | 'recovery' | 'rollback' | 'boot' | 'pin' | 'unpin' | 'gc';

export interface HistoryEntry {
  at: Timestamp;
  kind: HistoryKind;
  status: 'started' | 'succeeded' | 'failed';
  version: number | null;
  errorCode: ErrorCode | null;
  message: string;
}

export interface GcResult {
  removed: number[];
  kept: number[];
  freedBytes: number;
}

/** A Progress signal: `done`/`total` in the step's unit (bytes for downloads; total 0 = unknown). */
export interface ProgressEvent {
  step: string;
  done: number;
  total: number;
}

/** Properties are read synchronously by the bus library, so the daemon keeps them current. */
export interface AgentProperties {
  state: AgentStateName;
  bootedVersion: number | null;
  stagedVersion: number | null;
}

export type Unsubscribe = () => void;

/** What the service listens to, to emit Progress / StateChanged / PropertiesChanged. */
export interface AgentEvents {
  onProgress(listener: (p: ProgressEvent) => void): Unsubscribe;
  onStateChanged(listener: (props: AgentProperties) => void): Unsubscribe;
}

/**
 * Implemented by the daemon. Throw LiveupError for failures with a code; the
 * service maps it to `org.liveup.Agent1.Error.<Code>`. Authorization and the
 * one-transaction-at-a-time rule are enforced by the service before these run.
 */
export interface AgentApi {
  readonly events: AgentEvents;
  properties(): AgentProperties;
  getStatus(): Promise<AgentStatus>;
  check(): Promise<CheckResult>;
  update(opts: UpdateOptions): Promise<UpdateResult>;
  /** version null = the previous good generation. */
  rollback(version: number | null, opts: RollbackOptions): Promise<UpdateResult>;
  pin(version: number): Promise<void>;
  unpin(version: number): Promise<void>;
  listGenerations(): Promise<GenerationInfo[]>;
  /** limit null = all. */
  history(limit: number | null): Promise<HistoryEntry[]>;
  gc(): Promise<GcResult>;
  /** Queue a fleet report now and send the outbox (retries the backlog at once). */
  report(): Promise<ReportResult>;
}

export interface ReportResult {
  /** Reports the endpoint acknowledged in this call. */
  sent: number;
  /** Still in the outbox (the endpoint is down, or refused the token). */
  pending: number;
  /** Why sending stopped, or null. */
  error: string | null;
}

/** A minimal AgentEvents implementation for the daemon (and tests) to emit through. */
export class AgentEventHub implements AgentEvents {
  readonly #progress = new Set<(p: ProgressEvent) => void>();
  readonly #state = new Set<(props: AgentProperties) => void>();

  onProgress(listener: (p: ProgressEvent) => void): Unsubscribe {
    this.#progress.add(listener);
    return () => this.#progress.delete(listener);
  }

  onStateChanged(listener: (props: AgentProperties) => void): Unsubscribe {
    this.#state.add(listener);
    return () => this.#state.delete(listener);
  }

  emitProgress(p: ProgressEvent): void {
    for (const l of this.#progress) l(p);
  }

  emitStateChanged(props: AgentProperties): void {
    for (const l of this.#state) l(props);
  }
}
