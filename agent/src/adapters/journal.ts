/**
 * The journal: the agent's memory in SQLite (`<stateDir>/journal.db`).
 *
 * Decisions:
 * - WAL + synchronous=FULL: a committed row survives a power cut; a killed
 *   writer leaves only uncommitted WAL frames, which SQLite discards.
 * - Schema by `PRAGMA user_version` and an append-only list of migrations, each
 *   in one IMMEDIATE transaction with its version bump, so two processes can't
 *   both apply one. STRICT tables and CHECKs make the DB refuse bad states itself.
 * - `quick_check` at open; failure is JOURNAL_CORRUPT and the file is left alone:
 *   deleting it would lose the rollback floor, the one thing an attacker wants.
 * - Steps are rows in `events` with status `started`, updated in place to
 *   ok/failed; a row marks each step before it starts, so `inProgress()` after a
 *   crash lists what to reconcile. Instantaneous events are born ok/failed.
 * - The floor only rises (enforced by a trigger too); `resetFloor` is the one
 *   admin escape hatch and it is journalled. No SQL leaves this file.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import type Database from 'better-sqlite3';
import { LiveupError, isErrorCode, type ErrorCode } from '../channel/errors.js';

/**
 * better-sqlite3, loaded when the first journal opens rather than with this
 * module: a native addon cannot be in the agent's startup snapshot
 * (packaging/snapshot.mjs), which holds this module already evaluated.
 */
let sqlite: typeof Database | undefined;
function openDatabase(path: string, opts?: Database.Options): Database.Database {
  if (!sqlite) {
    // Spelled `require('better-sqlite3')`: packaging/bundle.mjs finds the package by it.
    const require = createRequire(import.meta.url);
    sqlite = require('better-sqlite3') as typeof Database;
  }
  return new sqlite(path, opts);
}

export const GENERATION_STATES = ['available', 'downloading', 'staged', 'booted', 'good', 'failed', 'removed'] as const;
export type GenerationState = (typeof GENERATION_STATES)[number];

/** Steps: begun with `beginStep`, closed with `endStep`. */
export const STEP_KINDS = ['check', 'fetch', 'stage', 'menu-write', 'live-replay', 'live-rollback', 'kexec', 'reboot', 'rollback', 'gc', 'boot-check', 'report'] as const;
export type StepKind = (typeof STEP_KINDS)[number];
/** Instantaneous events, recorded with `event`. */
export const POINT_KINDS = ['state-changed', 'pinned', 'unpinned', 'floor-reset', 'gc-removed', 'config-reloaded', 'reconciled', 'decision', 'error'] as const;
export type PointKind = (typeof POINT_KINDS)[number];
export type EventKind = StepKind | PointKind;
export type EventStatus = 'started' | 'ok' | 'failed';

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

export interface Generation {
  readonly version: number;
  readonly name: string;
  readonly channel: string;
  readonly state: GenerationState;
  /** Pinned generations are never garbage-collected. */
  readonly pinned: boolean;
  readonly manifestSha512: string | null;
  readonly squashfsSha512: string | null;
  readonly kernelVersion: string | null;
  readonly cmdline: string | null;
  readonly parent: number | null;
  readonly rebootRequired: boolean;
  readonly rebootReasons: readonly string[];
  /** ISO-8601 UTC instants; `createdAt` is when the journal first saw it. */
  readonly createdAt: string;
  readonly stagedAt: string | null;
  readonly bootedAt: string | null;
  readonly goodAt: string | null;
  readonly failedAt: string | null;
  readonly updatedAt: string;
}

/** What `upsertGeneration` takes: identity and metadata; a new row starts `available`. */
export interface GenerationInput {
  readonly version: number;
  readonly name: string;
  readonly channel: string;
  /** Set the state too (and its timestamp); omitted, an existing row keeps its state. */
  readonly state?: GenerationState;
  readonly manifestSha512?: string | null;
  readonly squashfsSha512?: string | null;
  readonly kernelVersion?: string | null;
  readonly cmdline?: string | null;
  readonly parent?: number | null;
  readonly rebootRequired?: boolean;
  readonly rebootReasons?: readonly string[];
}

export interface JournalEvent {
  readonly id: number;
  /** When it happened, or for a step when it started. */
  readonly at: string;
  /** When a step ended; equals `at` for instantaneous events; null while in progress. */
  readonly endedAt: string | null;
  readonly version: number | null;
  /** A kind written by a newer liveup passes through as is, matching no case. */
  readonly kind: EventKind;
  readonly status: EventStatus;
  readonly errorCode: ErrorCode | null;
  readonly message: string | null;
  readonly details: JsonObject;
}

/** The highest index sequence and generation version trusted so far (anti-rollback). */
export interface Floor {
  readonly sequence: number;
  readonly version: number;
  readonly updatedAt: string;
}

export interface OutboxEntry {
  readonly id: number;
  /** Per-host report number, never reused, so the fleet can drop duplicates. */
  readonly seq: number;
  readonly payload: JsonObject;
  readonly createdAt: string;
  readonly attempts: number;
  readonly nextAttemptAt: string;
}

export interface JournalOptions {
  /** Clock, for tests (default: the real one). */
  readonly now?: () => Date;
  /** How long to wait for another process's write lock (default 5000 ms). */
  readonly busyTimeoutMs?: number;
}

/**
 * Append-only: never edit a shipped entry, add a new one. Index i brings the
 * schema to user_version i+1.
 */
const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE generations (
    version         INTEGER PRIMARY KEY CHECK (version >= 0),
    name            TEXT NOT NULL,
    channel         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('available','downloading','staged','booted','good','failed','removed')),
    pinned          INTEGER NOT NULL DEFAULT 0 CHECK (pinned IN (0, 1)),
    manifest_sha512 TEXT,
    squashfs_sha512 TEXT,
    kernel_version  TEXT,
    cmdline         TEXT,
    parent          INTEGER,
    reboot_required INTEGER NOT NULL DEFAULT 0 CHECK (reboot_required IN (0, 1)),
    reboot_reasons  TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(reboot_reasons) AND json_type(reboot_reasons) = 'array'),
    created_at      TEXT NOT NULL,
    staged_at       TEXT,
    booted_at       TEXT,
    good_at         TEXT,
    failed_at       TEXT,
    updated_at      TEXT NOT NULL
  ) STRICT;

  -- No foreign key to generations: an error about a version we never recorded
  -- (say, its manifest failed verification) must still be journalled.
  CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         TEXT NOT NULL,
    ended_at   TEXT,
    version    INTEGER,
    kind       TEXT NOT NULL CHECK (kind GLOB '[a-z]*'),
    status     TEXT NOT NULL CHECK (status IN ('started','ok','failed')),
    error_code TEXT,
    message    TEXT,
    details    TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(details) AND json_type(details) = 'object'),
    CHECK ((status = 'started') = (ended_at IS NULL))
  ) STRICT;
  CREATE INDEX events_version ON events(version, id);
  CREATE INDEX events_started ON events(id) WHERE status = 'started';

  CREATE TABLE floor (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    index_sequence INTEGER NOT NULL CHECK (index_sequence >= 0),
    version        INTEGER NOT NULL CHECK (version >= 0),
    updated_at     TEXT NOT NULL
  ) STRICT;
  INSERT INTO floor (id, index_sequence, version, updated_at) VALUES (1, 0, 0, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
  -- Belt and braces: even a bug in this file cannot lower the floor by UPDATE.
  -- resetFloor replaces the row (DELETE + INSERT), deliberately and journalled.
  CREATE TRIGGER floor_only_rises BEFORE UPDATE ON floor
    WHEN NEW.index_sequence < OLD.index_sequence OR NEW.version < OLD.version
    BEGIN SELECT RAISE(ABORT, 'the floor only rises'); END;

  CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    seq             INTEGER NOT NULL UNIQUE,
    payload         TEXT NOT NULL CHECK (json_valid(payload)),
    created_at      TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL
  ) STRICT;
  CREATE INDEX outbox_due ON outbox(next_attempt_at, seq);
  -- The outbox empties when acknowledged, so its report counter lives apart.
  CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
  INSERT INTO counters (name, value) VALUES ('outbox_seq', 0);
  `,
  `
  -- Small durable decisions of the agent, e.g. the hold a rollback leaves so
  -- scheduled checks do not re-stage what the operator just rolled back from.
  CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at TEXT NOT NULL) STRICT;
  `,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

interface GenerationRow {
  version: number; name: string; channel: string; state: string; pinned: number;
  manifest_sha512: string | null; squashfs_sha512: string | null; kernel_version: string | null; cmdline: string | null;
  parent: number | null; reboot_required: number; reboot_reasons: string;
  created_at: string; staged_at: string | null; booted_at: string | null; good_at: string | null; failed_at: string | null; updated_at: string;
}
interface EventRow {
  id: number; at: string; ended_at: string | null; version: number | null; kind: string; status: string;
  error_code: string | null; message: string | null; details: string;
}
interface OutboxRow { id: number; seq: number; payload: string; created_at: string; attempts: number; next_attempt_at: string }

/** The timestamp column each state sets when entered. */
const STATE_STAMP: Partial<Record<GenerationState, string>> = {
  staged: 'staged_at', booted: 'booted_at', good: 'good_at', failed: 'failed_at',
};

function corrupt(path: string, problem: string): LiveupError {
  return new LiveupError(
    'JOURNAL_CORRUPT',
    `journal ${path} is damaged (${problem}). It was left untouched. Stop liveup-agent, copy ${path} ` +
      `and any ${path}-wal/-shm aside, then either recover it (sqlite3 ${path} .recover | sqlite3 ${path}.recovered, ` +
      `check it, and move it into place) or move it away to start an empty journal — that loses history and pins, ` +
      `and the anti-rollback floor restarts at 0 until the next check.`,
    { file: path, problem },
  );
}

function isSqliteCorruption(e: unknown): boolean {
  const code = (e as { code?: unknown }).code;
  return typeof code === 'string' && /^SQLITE_(CORRUPT|NOTADB)/.test(code);
}

export class Journal {
  private readonly now: () => Date;

  private constructor(
    private readonly db: Database.Database,
    readonly path: string,
    opts: JournalOptions,
  ) {
    this.now = opts.now ?? (() => new Date());
  }

  /**
   * Open (creating the file and its directory if needed) and migrate.
   * JOURNAL_CORRUPT if the file fails quick_check or has a newer schema.
   */
  static open(path: string, opts: JournalOptions = {}): Journal {
    mkdirSync(dirname(path), { recursive: true });
    if (existsSync(path)) precheck(path);
    let db: Database.Database;
    try {
      db = openDatabase(path);
    } catch (e) {
      if (isSqliteCorruption(e)) throw corrupt(path, (e as Error).message);
      throw new LiveupError('INTERNAL', `cannot open journal ${path}: ${(e as Error).message}`, { file: path }, { cause: e });
    }
    try {
      db.pragma(`busy_timeout = ${Math.max(0, Math.trunc(opts.busyTimeoutMs ?? 5000))}`);
      // Again on this connection: the read-only precheck may have been impossible.
      const problems = checkRows(db, 'quick_check');
      if (problems !== 'ok') throw corrupt(path, problems);
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      db.pragma('foreign_keys = ON');
      migrate(db, path);
      return new Journal(db, path, opts);
    } catch (e) {
      db.close();
      if (e instanceof LiveupError) throw e;
      if (isSqliteCorruption(e)) throw corrupt(path, (e as Error).message);
      throw new LiveupError('INTERNAL', `cannot open journal ${path}: ${(e as Error).message}`, { file: path }, { cause: e });
    }
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  /** `PRAGMA integrity_check`: 'ok', or the problems found, one per line. */
  integrityCheck(): string {
    return checkRows(this.db, 'integrity_check');
  }

  schemaVersion(): number {
    return this.db.pragma('user_version', { simple: true }) as number;
  }

  private stamp(): string {
    return this.now().toISOString();
  }

  // ------------------------------------------------------------ generations

  /** Insert or update a generation's metadata; returns the row as stored. */
  upsertGeneration(g: GenerationInput): Generation {
    return this.db.transaction((): Generation => {
      const at = this.stamp();
      const old = this.getGeneration(g.version);
      const row = {
        version: g.version,
        name: g.name,
        channel: g.channel,
        state: g.state ?? old?.state ?? 'available',
        manifest_sha512: g.manifestSha512 !== undefined ? g.manifestSha512 : old?.manifestSha512 ?? null,
        squashfs_sha512: g.squashfsSha512 !== undefined ? g.squashfsSha512 : old?.squashfsSha512 ?? null,
        kernel_version: g.kernelVersion !== undefined ? g.kernelVersion : old?.kernelVersion ?? null,
        cmdline: g.cmdline !== undefined ? g.cmdline : old?.cmdline ?? null,
        parent: g.parent !== undefined ? g.parent : old?.parent ?? null,
        reboot_required: (g.rebootRequired ?? old?.rebootRequired ?? false) ? 1 : 0,
        reboot_reasons: JSON.stringify(g.rebootReasons ?? old?.rebootReasons ?? []),
        at,
      };
      this.db
        .prepare(
          `INSERT INTO generations (version, name, channel, state, manifest_sha512, squashfs_sha512, kernel_version, cmdline,
             parent, reboot_required, reboot_reasons, created_at, updated_at)
           VALUES (@version, @name, @channel, @state, @manifest_sha512, @squashfs_sha512, @kernel_version, @cmdline,
             @parent, @reboot_required, @reboot_reasons, @at, @at)
           ON CONFLICT (version) DO UPDATE SET name = excluded.name, channel = excluded.channel, state = excluded.state,
             manifest_sha512 = excluded.manifest_sha512, squashfs_sha512 = excluded.squashfs_sha512,
             kernel_version = excluded.kernel_version, cmdline = excluded.cmdline, parent = excluded.parent,
             reboot_required = excluded.reboot_required, reboot_reasons = excluded.reboot_reasons, updated_at = excluded.updated_at`,
        )
        .run(row);
      if (g.state !== undefined && g.state !== old?.state) this.stampState(g.version, g.state, old?.state ?? null, at);
      return this.mustGet(g.version);
    })();
  }

  /** Move a generation to `state`, stamp the matching `*_at`, and journal the change, together. */
  setState(version: number, state: GenerationState): Generation {
    return this.db.transaction((): Generation => {
      const old = this.mustGet(version);
      if (old.state === state) return old;
      const at = this.stamp();
      this.db.prepare('UPDATE generations SET state = ?, updated_at = ? WHERE version = ?').run(state, at, version);
      this.stampState(version, state, old.state, at);
      return this.mustGet(version);
    })();
  }

  private stampState(version: number, state: GenerationState, from: GenerationState | null, at: string): void {
    const col = STATE_STAMP[state];
    if (col) this.db.prepare(`UPDATE generations SET ${col} = ? WHERE version = ?`).run(at, version);
    this.insertEvent({ at, endedAt: at, version, kind: 'state-changed', status: 'ok', details: { from, to: state } });
  }

  getGeneration(version: number): Generation | null {
    const r = this.db.prepare<[number], GenerationRow>('SELECT * FROM generations WHERE version = ?').get(version);
    return r ? toGeneration(r) : null;
  }

  private mustGet(version: number): Generation {
    const g = this.getGeneration(version);
    if (!g) throw new LiveupError('UNKNOWN_GENERATION', `generation ${version} is not in the journal`, { version });
    return g;
  }

  /** Newest (highest version) first. */
  listGenerations(): Generation[] {
    return this.db.prepare<[], GenerationRow>('SELECT * FROM generations ORDER BY version DESC').all().map(toGeneration);
  }

  /** The generation most recently confirmed good, or null. */
  lastGood(): Generation | null {
    const r = this.db
      .prepare<[], GenerationRow>("SELECT * FROM generations WHERE state = 'good' ORDER BY good_at DESC, version DESC LIMIT 1")
      .get();
    return r ? toGeneration(r) : null;
  }

  pin(version: number): Generation {
    return this.setPinned(version, true);
  }

  unpin(version: number): Generation {
    return this.setPinned(version, false);
  }

  private setPinned(version: number, pinned: boolean): Generation {
    return this.db.transaction((): Generation => {
      const old = this.mustGet(version);
      if (old.pinned === pinned) return old;
      const at = this.stamp();
      this.db.prepare('UPDATE generations SET pinned = ?, updated_at = ? WHERE version = ?').run(pinned ? 1 : 0, at, version);
      this.insertEvent({ at, endedAt: at, version, kind: pinned ? 'pinned' : 'unpinned', status: 'ok', details: {} });
      return this.mustGet(version);
    })();
  }

  // ------------------------------------------------------------ steps and events

  /** Journal a step *before* doing it; returns the id for `endStep`. */
  beginStep(kind: StepKind, version?: number | null, details: JsonObject = {}): number {
    return this.insertEvent({ at: this.stamp(), endedAt: null, version: version ?? null, kind, status: 'started', details });
  }

  /**
   * Close a step. Details given here are merged over those given at the start
   * (a JSON merge patch: a null value removes that key).
   * Ending a step that is not in progress is an INTERNAL error: it is a bug.
   */
  endStep(id: number, status: 'ok' | 'failed', errorCode?: ErrorCode | null, message?: string | null, details: JsonObject = {}): void {
    const res = this.db
      .prepare(
        `UPDATE events SET status = ?, ended_at = ?, error_code = ?, message = coalesce(?, message), details = json_patch(details, ?)
         WHERE id = ? AND status = 'started'`,
      )
      .run(status, this.stamp(), errorCode ?? null, message ?? null, JSON.stringify(details), id);
    if (res.changes !== 1) throw new LiveupError('INTERNAL', `journal step ${id} is not in progress`, { id });
  }

  /**
   * Merge details into a step still in progress: what it did so far, kept
   * if the step is cut off (a switch whose userspace goes down with it).
   */
  noteStep(id: number, details: JsonObject): void {
    this.db.prepare(`UPDATE events SET details = json_patch(details, ?) WHERE id = ? AND status = 'started'`).run(JSON.stringify(details), id);
  }

  /** An instantaneous event. Returns its id. */
  event(e: { kind: PointKind; version?: number | null; status?: 'ok' | 'failed'; errorCode?: ErrorCode | null; message?: string | null; details?: JsonObject }): number {
    const at = this.stamp();
    return this.insertEvent({
      at, endedAt: at, version: e.version ?? null, kind: e.kind, status: e.status ?? (e.errorCode ? 'failed' : 'ok'),
      errorCode: e.errorCode ?? null, message: e.message ?? null, details: e.details ?? {},
    });
  }

  private insertEvent(e: {
    at: string; endedAt: string | null; version: number | null; kind: EventKind; status: EventStatus;
    errorCode?: ErrorCode | null; message?: string | null; details: JsonObject;
  }): number {
    const r = this.db
      .prepare('INSERT INTO events (at, ended_at, version, kind, status, error_code, message, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?)')
      .run(e.at, e.endedAt, e.version, e.kind, e.status, e.errorCode ?? null, e.message ?? null, JSON.stringify(e.details));
    return Number(r.lastInsertRowid);
  }

  /** Events newest first, optionally about one generation. */
  history(opts: { limit?: number; version?: number } = {}): JournalEvent[] {
    const limit = Math.max(1, Math.trunc(opts.limit ?? 100));
    const rows = opts.version === undefined
      ? this.db.prepare<[number], EventRow>('SELECT * FROM events ORDER BY id DESC LIMIT ?').all(limit)
      : this.db.prepare<[number, number], EventRow>('SELECT * FROM events WHERE version = ? ORDER BY id DESC LIMIT ?').all(opts.version, limit);
    return rows.map(toEvent);
  }

  /** Steps begun and never ended, oldest first: after a crash, what the daemon must reconcile. */
  inProgress(): JournalEvent[] {
    return this.db.prepare<[], EventRow>("SELECT * FROM events WHERE status = 'started' ORDER BY id").all().map(toEvent);
  }

  // ------------------------------------------------------------ settings

  getSetting(name: string): string | null {
    return this.db.prepare<[string], { value: string }>('SELECT value FROM settings WHERE name = ?').get(name)?.value ?? null;
  }

  /** `null` removes the setting. */
  setSetting(name: string, value: string | null): void {
    if (value === null) this.db.prepare('DELETE FROM settings WHERE name = ?').run(name);
    else {
      this.db
        .prepare('INSERT INTO settings (name, value, updated_at) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at')
        .run(name, value, this.stamp());
    }
  }

  // ------------------------------------------------------------ floor

  floor(): Floor {
    const r = this.db
      .prepare<[], { index_sequence: number; version: number; updated_at: string }>('SELECT index_sequence, version, updated_at FROM floor WHERE id = 1')
      .get();
    if (!r) throw corrupt(this.path, 'the floor row is missing');
    return { sequence: r.index_sequence, version: r.version, updatedAt: r.updated_at };
  }

  /**
   * Raise each part of the floor to at least the given value; a lower value
   * leaves that part as it is (it never lowers). Returns the floor after.
   */
  raiseFloor(to: { sequence?: number; version?: number }): Floor {
    return this.db.transaction((): Floor => {
      const f = this.floor();
      const sequence = Math.max(f.sequence, to.sequence ?? 0);
      const version = Math.max(f.version, to.version ?? 0);
      if (sequence === f.sequence && version === f.version) return f;
      this.db.prepare('UPDATE floor SET index_sequence = ?, version = ?, updated_at = ? WHERE id = 1').run(sequence, version, this.stamp());
      return this.floor();
    })();
  }

  /** Explicit admin action only: set the floor to any value, journalled with who/why in `reason`. */
  resetFloor(to: { sequence: number; version: number }, reason: string): Floor {
    return this.db.transaction((): Floor => {
      const before = this.floor();
      const at = this.stamp();
      this.db.prepare('DELETE FROM floor WHERE id = 1').run();
      this.db.prepare('INSERT INTO floor (id, index_sequence, version, updated_at) VALUES (1, ?, ?, ?)').run(to.sequence, to.version, at);
      this.insertEvent({
        at, endedAt: at, version: null, kind: 'floor-reset', status: 'ok', message: reason,
        details: { fromSequence: before.sequence, fromVersion: before.version, toSequence: to.sequence, toVersion: to.version },
      });
      return this.floor();
    })();
  }

  // ------------------------------------------------------------ outbox

  /** Queue a fleet report; it stays until `outboxAck` of its seq. */
  outboxEnqueue(payload: JsonObject): OutboxEntry {
    return this.db.transaction((): OutboxEntry => {
      const at = this.stamp();
      const seq = (this.db.prepare<[], { value: number }>("UPDATE counters SET value = value + 1 WHERE name = 'outbox_seq' RETURNING value").get())!.value;
      const r = this.db
        .prepare('INSERT INTO outbox (seq, payload, created_at, attempts, next_attempt_at) VALUES (?, ?, ?, 0, ?)')
        .run(seq, JSON.stringify(payload), at, at);
      return toOutbox(this.db.prepare<[number], OutboxRow>('SELECT * FROM outbox WHERE id = ?').get(Number(r.lastInsertRowid))!);
    })();
  }

  /** Reports due at `now` (default: the clock), lowest seq first. */
  outboxPeek(opts: { limit?: number; now?: Date } = {}): OutboxEntry[] {
    const now = (opts.now ?? this.now()).toISOString();
    return this.db
      .prepare<[string, number], OutboxRow>('SELECT * FROM outbox WHERE next_attempt_at <= ? ORDER BY seq LIMIT ?')
      .all(now, Math.max(1, Math.trunc(opts.limit ?? 50)))
      .map(toOutbox);
  }

  /** The fleet acknowledged `seq`: drop it. Returns false if it was already gone. */
  outboxAck(seq: number): boolean {
    return this.db.prepare('DELETE FROM outbox WHERE seq = ?').run(seq).changes === 1;
  }

  /** A send failed: count the attempt and retry no earlier than `nextAttemptAt`. */
  outboxDefer(seq: number, nextAttemptAt: Date): void {
    this.db.prepare('UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ? WHERE seq = ?').run(nextAttemptAt.toISOString(), seq);
  }

  outboxSize(): number {
    return this.db.prepare<[], { n: number }>('SELECT count(*) AS n FROM outbox').get()!.n;
  }
}

/**
 * quick_check on a read-only connection first: a read-write one checkpoints
 * the WAL into the file when it closes, and a damaged file must stay exactly
 * as we found it, for whoever investigates.
 */
function precheck(path: string): void {
  let ro: Database.Database;
  try {
    ro = openDatabase(path, { readonly: true, fileMustExist: true });
  } catch (e) {
    if (isSqliteCorruption(e)) throw corrupt(path, (e as Error).message);
    return; // e.g. no write access for the -shm: the read-write open reports it
  }
  try {
    const problems = checkRows(ro, 'quick_check');
    if (problems !== 'ok') throw corrupt(path, problems);
  } catch (e) {
    if (e instanceof LiveupError) throw e;
    if (isSqliteCorruption(e)) throw corrupt(path, (e as Error).message);
    // Anything else (a read-only WAL open refused): the read-write open checks again.
  } finally {
    ro.close();
  }
}

function checkRows(db: Database.Database, pragma: 'quick_check' | 'integrity_check'): string {
  const rows = db.pragma(pragma) as Record<string, unknown>[];
  const lines = rows.map((r) => String(Object.values(r)[0]));
  return lines.length === 1 && lines[0] === 'ok' ? 'ok' : lines.join('\n');
}

function migrate(db: Database.Database, path: string): void {
  const current = (): number => db.pragma('user_version', { simple: true }) as number;
  if (current() > MIGRATIONS.length) {
    throw new LiveupError(
      'JOURNAL_CORRUPT',
      `journal ${path} has schema ${current()}, newer than this liveup knows (${MIGRATIONS.length}); it was left untouched — run the newer liveup-agent, or move the file aside to start an empty journal`,
      { file: path, schema: current(), known: MIGRATIONS.length },
    );
  }
  for (let v = current(); v < MIGRATIONS.length; v = current()) {
    // IMMEDIATE takes the write lock first, so the re-read below sees any
    // migration another process finished meanwhile.
    db.transaction(() => {
      const at = current();
      if (at !== v) return;
      db.exec(MIGRATIONS[at]!);
      db.pragma(`user_version = ${at + 1}`);
    }).immediate();
  }
}

function toGeneration(r: GenerationRow): Generation {
  return {
    version: r.version,
    name: r.name,
    channel: r.channel,
    state: r.state as GenerationState, // the CHECK constraint guarantees it
    pinned: r.pinned === 1,
    manifestSha512: r.manifest_sha512,
    squashfsSha512: r.squashfs_sha512,
    kernelVersion: r.kernel_version,
    cmdline: r.cmdline,
    parent: r.parent,
    rebootRequired: r.reboot_required === 1,
    rebootReasons: JSON.parse(r.reboot_reasons) as string[],
    createdAt: r.created_at,
    stagedAt: r.staged_at,
    bootedAt: r.booted_at,
    goodAt: r.good_at,
    failedAt: r.failed_at,
    updatedAt: r.updated_at,
  };
}

function toEvent(r: EventRow): JournalEvent {
  return {
    id: r.id,
    at: r.at,
    endedAt: r.ended_at,
    version: r.version,
    kind: r.kind as EventKind,
    status: r.status as EventStatus,
    // A code from a newer liveup (after a downgrade) reads as INTERNAL rather than lying about its type.
    errorCode: r.error_code === null ? null : isErrorCode(r.error_code) ? r.error_code : 'INTERNAL',
    message: r.message,
    details: JSON.parse(r.details) as JsonObject,
  };
}

function toOutbox(r: OutboxRow): OutboxEntry {
  return {
    id: r.id,
    seq: r.seq,
    payload: JSON.parse(r.payload) as JsonObject,
    createdAt: r.created_at,
    attempts: r.attempts,
    nextAttemptAt: r.next_attempt_at,
  };
}
