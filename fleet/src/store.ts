/**
 * The fleet endpoint's store, one interface over two databases:
 * SQLite (`sqlite:PATH`, embedded, the default: store-sqlite.ts) and
 * PostgreSQL (`postgres://…`, for endpoints that outgrow one file or want
 * several endpoint processes: store-pg.ts). Both keep the same rows under the
 * same migrations, and the integration tests run against both.
 *
 * Every write is one transaction, so a report, a lock slot, a token or a
 * rollout change is there whole or not at all. Tokens are stored as SHA-256
 * digests: the database never holds a usable credential, and `token create`
 * shows the secret once.
 */
import { createHash, randomBytes } from 'node:crypto';
import { LiveupError } from '../../agent/src/channel/errors.js';
import type { FleetReport } from './report.js';
import type { FleetRollout, RolloutChange, WaveStats } from './rollout.js';

export interface MachineRow {
  readonly id: string;
  readonly hostname: string;
  readonly channel: string;
  readonly firstSeen: string;
  readonly lastSeen: string;
  readonly lastSeq: number;
  readonly report: FleetReport;
}

/**
 * `agent`: what a machine needs — post its reports, take and give back a
 * FleetLock slot, read its channel's rollout. `admin`: everything, including
 * the inventory (dashboard) and rollout control. Machines get agent tokens,
 * so one compromised machine can neither read the fleet nor stop a rollout.
 */
export type TokenRole = 'agent' | 'admin';
export const TOKEN_ROLES: readonly TokenRole[] = ['agent', 'admin'];

export interface TokenRow {
  readonly name: string;
  readonly role: TokenRole;
  readonly createdAt: string;
  readonly revokedAt: string | null;
}

export interface MachineHistory {
  readonly machine: MachineRow;
  readonly history: { seq: number; receivedAt: string; report: FleetReport }[];
}

export interface FleetStore {
  /** `sqlite` or `postgres`, for messages and the bench. */
  readonly kind: 'sqlite' | 'postgres';
  /**
   * Store reports once per (machine, seq), in one transaction (one fsync for
   * all: the endpoint groups the reports that arrive while a commit runs). A
   * repeat — the agent did not see our answer and sent again — is
   * acknowledged without a second row; a machine's current view moves only
   * forward in seq.
   */
  saveReports(reports: readonly FleetReport[]): Promise<('stored' | 'duplicate')[]>;
  machines(): Promise<MachineRow[]>;
  machine(id: string, historyLimit?: number): Promise<MachineHistory | null>;
  reportCount(machineId: string): Promise<number>;

  /** A new bearer token named `name`; the secret is returned once and stored only as its digest. */
  createToken(name: string, role: TokenRole): Promise<string>;
  revokeToken(name: string): Promise<void>;
  tokens(): Promise<TokenRow[]>;
  /** The active token with this secret, or null. */
  token(secret: string): Promise<{ name: string; role: TokenRole } | null>;

  /**
   * FleetLock: take a reboot slot in `group` (at most `slots` machines at
   * once). A machine that already holds one gets it again: a retry after a
   * lost answer must not count twice.
   */
  lock(group: string, machineId: string, slots: number): Promise<{ granted: boolean; holders: string[] }>;
  /** Give the slot back (steady state); releasing one not held is fine. */
  unlock(group: string, machineId: string): Promise<void>;

  rollout(channel: string): Promise<FleetRollout | null>;
  rollouts(): Promise<FleetRollout[]>;
  /** Change a channel's rollout (rollout.ts decides the new row), atomically. */
  setRollout(channel: string, change: RolloutChange): Promise<FleetRollout>;
  /** Machines of `channel` that tried `version`, and those that failed its boot check. */
  wave(channel: string, version: number): Promise<WaveStats>;

  close(): Promise<void>;
}

export const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex');

export function newTokenSecret(name: string): { secret: string; digest: string } {
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(name)) throw new LiveupError('INVALID_ARGUMENT', `token name "${name}": use letters, digits, ".", "_", "-" (up to 64)`);
  const secret = `lut_${randomBytes(24).toString('base64url')}`;
  return { secret, digest: sha256(secret) };
}

export const tokenExists = (name: string): LiveupError =>
  new LiveupError('ALREADY_EXISTS', `a token named "${name}" exists; revoke it first or pick another name`);
export const noActiveToken = (name: string): LiveupError => new LiveupError('NOT_FOUND', `no active token named "${name}"`);

/** The columns the wave query reads, kept beside the report so no JSON is parsed to count. */
export function reportColumns(r: FleetReport): { bootedVersion: number | null; failedVersion: number | null; health: string } {
  return { bootedVersion: r.bootedVersion, failedVersion: r.failedVersion ?? null, health: r.health };
}

/**
 * The latest report per machine in a batch: a machine's row is written once
 * per batch (PostgreSQL cannot upsert one row twice in a statement, and a
 * lower seq never moves the view back anyway).
 */
export function newestPerMachine(reports: readonly FleetReport[]): FleetReport[] {
  const by = new Map<string, FleetReport>();
  for (const r of reports) {
    const had = by.get(r.machineId);
    if (!had || r.seq > had.seq) by.set(r.machineId, r);
  }
  return [...by.values()];
}

/**
 * `sqlite:PATH` (or a bare path) or `postgres://…`. PostgreSQL is loaded only
 * when asked for, so an SQLite endpoint never pays for `pg`.
 */
export async function openFleetStore(db: string, now: () => Date = () => new Date()): Promise<FleetStore> {
  if (/^postgres(ql)?:\/\//.test(db)) {
    const { PgFleetStore } = await import('./store-pg.js');
    return PgFleetStore.open(db, now);
  }
  const { SqliteFleetStore } = await import('./store-sqlite.js');
  return SqliteFleetStore.open(db.replace(/^sqlite:/, ''), now);
}
