/**
 * The fleet store on SQLite (better-sqlite3, WAL, `synchronous=FULL`): the
 * embedded default. Schema by `PRAGMA user_version` and an append-only list
 * of migrations (store-pg.ts keeps the same list for PostgreSQL).
 * better-sqlite3 is synchronous; the methods are async only to share the
 * FleetStore interface.
 */
import Database from 'better-sqlite3';
import { LiveupError } from '../../agent/src/channel/errors.js';
import type { FleetReport } from './report.js';
import { applyRolloutChange, type FleetRollout, type RolloutChange, type WaveStats } from './rollout.js';
import { newTokenSecret, noActiveToken, reportColumns, sha256, tokenExists, type FleetStore, type MachineHistory, type MachineRow, type TokenRole, type TokenRow } from './store.js';

const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE machines (
    id         TEXT PRIMARY KEY,
    hostname   TEXT NOT NULL,
    channel    TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen  TEXT NOT NULL,
    last_seq   INTEGER NOT NULL,
    report     TEXT NOT NULL CHECK (json_valid(report))
  ) STRICT;
  CREATE TABLE reports (
    machine_id  TEXT NOT NULL REFERENCES machines(id),
    seq         INTEGER NOT NULL,
    received_at TEXT NOT NULL,
    report      TEXT NOT NULL CHECK (json_valid(report)),
    PRIMARY KEY (machine_id, seq)
  ) STRICT;
  CREATE TABLE tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL UNIQUE,
    sha256     TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
  ) STRICT;
  CREATE TABLE locks (
    grp         TEXT NOT NULL,
    machine_id  TEXT NOT NULL,
    acquired_at TEXT NOT NULL,
    PRIMARY KEY (grp, machine_id)
  ) STRICT;
  `,
  // 2: rollout control, and the columns the wave query counts.
  `
  ALTER TABLE tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'admin' CHECK (role IN ('agent', 'admin'));
  ALTER TABLE machines ADD COLUMN booted_version INTEGER;
  ALTER TABLE machines ADD COLUMN failed_version INTEGER;
  ALTER TABLE machines ADD COLUMN health TEXT NOT NULL DEFAULT 'unknown';
  UPDATE machines SET booted_version = json_extract(report, '$.bootedVersion'), health = json_extract(report, '$.health');
  CREATE INDEX machines_channel ON machines (channel);
  CREATE TABLE rollouts (
    channel          TEXT PRIMARY KEY,
    version          INTEGER NOT NULL,
    percent          REAL NOT NULL CHECK (percent BETWEEN 0 AND 100),
    paused           INTEGER NOT NULL CHECK (paused IN (0, 1)),
    reason           TEXT,
    auto_pause_ratio REAL NOT NULL,
    auto_pause_min   INTEGER NOT NULL,
    updated_at       TEXT NOT NULL
  ) STRICT;
  `,
];

/** Prepared once: the report path runs thousands of times a second (bench/fleet). */
function reportQueries(db: Database.Database) {
  return {
    known: db.prepare<[string], { last_seq: number }>('SELECT last_seq FROM machines WHERE id = ?'),
    newMachine: db.prepare(`INSERT INTO machines (id, hostname, channel, first_seen, last_seen, last_seq, report, booted_version, failed_version, health)
      VALUES (@id, @hostname, @channel, @at, @at, @seq, @body, @bootedVersion, @failedVersion, @health)`),
    report: db.prepare('INSERT OR IGNORE INTO reports (machine_id, seq, received_at, report) VALUES (?, ?, ?, ?)'),
    advance: db.prepare(`UPDATE machines SET hostname = @hostname, channel = @channel, last_seen = @at, last_seq = @seq, report = @body,
      booted_version = @bootedVersion, failed_version = @failedVersion, health = @health WHERE id = @id`),
    seen: db.prepare('UPDATE machines SET last_seen = ? WHERE id = ?'),
    token: db.prepare<[string], { name: string; role: TokenRole }>('SELECT name, role FROM tokens WHERE sha256 = ? AND revoked_at IS NULL'),
    rollout: db.prepare<[string], RolloutRecord>('SELECT * FROM rollouts WHERE channel = ?'),
    rollouts: db.prepare<[], RolloutRecord>('SELECT * FROM rollouts ORDER BY channel'),
  };
}

type RolloutRecord = { channel: string; version: number; percent: number; paused: number; reason: string | null; auto_pause_ratio: number; auto_pause_min: number; updated_at: string };

const toRollout = (r: RolloutRecord): FleetRollout => ({
  channel: r.channel, version: r.version, percent: r.percent, paused: r.paused === 1, reason: r.reason,
  autoPauseRatio: r.auto_pause_ratio, autoPauseMin: r.auto_pause_min, updatedAt: r.updated_at,
});

function toMachine(r: Record<string, string | number>): MachineRow {
  return {
    id: String(r.id), hostname: String(r.hostname), channel: String(r.channel), firstSeen: String(r.first_seen),
    lastSeen: String(r.last_seen), lastSeq: Number(r.last_seq), report: JSON.parse(String(r.report)) as FleetReport,
  };
}

export class SqliteFleetStore implements FleetStore {
  readonly kind = 'sqlite' as const;
  private readonly q: ReturnType<typeof reportQueries>;

  private constructor(private readonly db: Database.Database, private readonly now: () => Date) {
    this.q = reportQueries(db);
  }

  static open(path: string, now: () => Date = () => new Date()): SqliteFleetStore {
    let db: Database.Database;
    try {
      db = new Database(path);
    } catch (e) {
      throw new LiveupError('INVALID_ARGUMENT', `${path}: cannot open the fleet database (${(e as Error).message})`, { file: path });
    }
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = FULL');
    db.pragma('foreign_keys = ON');
    db.pragma('busy_timeout = 5000');
    const have = db.pragma('user_version', { simple: true }) as number;
    if (have > MIGRATIONS.length) {
      db.close();
      throw new LiveupError('INVALID_ARGUMENT', `${path}: schema version ${have} is newer than this liveup (${MIGRATIONS.length})`, { file: path });
    }
    for (let v = have; v < MIGRATIONS.length; v++) {
      db.transaction(() => {
        db.exec(MIGRATIONS[v]!);
        db.pragma(`user_version = ${v + 1}`);
      })();
    }
    return new SqliteFleetStore(db, now);
  }

  async close(): Promise<void> {
    this.db.close();
  }

  async saveReports(reports: readonly FleetReport[]): Promise<('stored' | 'duplicate')[]> {
    return this.db.transaction(() => reports.map((r) => this.saveOne(r)))();
  }

  private saveOne(r: FleetReport): 'stored' | 'duplicate' {
    const at = this.now().toISOString();
    const body = JSON.stringify(r);
    const row = { id: r.machineId, hostname: r.hostname, channel: r.channel, at, seq: r.seq, body, ...reportColumns(r) };
    const known = this.q.known.get(r.machineId);
    if (!known) this.q.newMachine.run(row);
    if (this.q.report.run(r.machineId, r.seq, at, body).changes === 0) return 'duplicate';
    if (known && r.seq > known.last_seq) this.q.advance.run(row);
    else if (known) this.q.seen.run(at, r.machineId);
    return 'stored';
  }

  async machines(): Promise<MachineRow[]> {
    return this.db.prepare<[], Record<string, string | number>>('SELECT * FROM machines ORDER BY hostname, id').all().map(toMachine);
  }

  async machine(id: string, historyLimit = 100): Promise<MachineHistory | null> {
    const row = this.db.prepare<[string], Record<string, string | number>>('SELECT * FROM machines WHERE id = ?').get(id);
    if (!row) return null;
    const history = this.db
      .prepare<[string, number], { seq: number; received_at: string; report: string }>('SELECT seq, received_at, report FROM reports WHERE machine_id = ? ORDER BY seq DESC LIMIT ?')
      .all(id, historyLimit)
      .map((h) => ({ seq: h.seq, receivedAt: h.received_at, report: JSON.parse(h.report) as FleetReport }));
    return { machine: toMachine(row), history };
  }

  async reportCount(machineId: string): Promise<number> {
    return this.db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM reports WHERE machine_id = ?').get(machineId)!.n;
  }

  // ---------------------------------------------------------------- tokens

  async createToken(name: string, role: TokenRole): Promise<string> {
    const { secret, digest } = newTokenSecret(name);
    try {
      this.db.prepare('INSERT INTO tokens (name, sha256, created_at, role) VALUES (?, ?, ?, ?)').run(name, digest, this.now().toISOString(), role);
    } catch (e) {
      if (/UNIQUE/.test((e as Error).message)) throw tokenExists(name);
      throw e;
    }
    return secret;
  }

  async revokeToken(name: string): Promise<void> {
    const r = this.db.prepare('UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL').run(this.now().toISOString(), name);
    if (r.changes === 0) throw noActiveToken(name);
  }

  async tokens(): Promise<TokenRow[]> {
    return this.db.prepare<[], { name: string; role: TokenRole; created_at: string; revoked_at: string | null }>('SELECT name, role, created_at, revoked_at FROM tokens ORDER BY name')
      .all().map((t) => ({ name: t.name, role: t.role, createdAt: t.created_at, revokedAt: t.revoked_at }));
  }

  async token(secret: string): Promise<{ name: string; role: TokenRole } | null> {
    return this.q.token.get(sha256(secret)) ?? null;
  }

  // ---------------------------------------------------------------- FleetLock

  async lock(group: string, machineId: string, slots: number): Promise<{ granted: boolean; holders: string[] }> {
    return this.db.transaction(() => {
      const holders = this.db.prepare<[string], { machine_id: string }>('SELECT machine_id FROM locks WHERE grp = ? ORDER BY acquired_at').all(group).map((h) => h.machine_id);
      if (holders.includes(machineId)) return { granted: true, holders };
      if (holders.length >= slots) return { granted: false, holders };
      this.db.prepare('INSERT INTO locks (grp, machine_id, acquired_at) VALUES (?, ?, ?)').run(group, machineId, this.now().toISOString());
      return { granted: true, holders: [...holders, machineId] };
    })();
  }

  async unlock(group: string, machineId: string): Promise<void> {
    this.db.prepare('DELETE FROM locks WHERE grp = ? AND machine_id = ?').run(group, machineId);
  }

  // ---------------------------------------------------------------- rollouts

  private rolloutRow(channel: string): FleetRollout | null {
    const r = this.q.rollout.get(channel);
    return r ? toRollout(r) : null;
  }

  async rollout(channel: string): Promise<FleetRollout | null> {
    return this.rolloutRow(channel);
  }

  async rollouts(): Promise<FleetRollout[]> {
    return this.q.rollouts.all().map(toRollout);
  }

  async setRollout(channel: string, change: RolloutChange): Promise<FleetRollout> {
    return this.db.transaction(() => {
      const n = applyRolloutChange(channel, this.rolloutRow(channel), change, this.now());
      this.db.prepare(`INSERT INTO rollouts (channel, version, percent, paused, reason, auto_pause_ratio, auto_pause_min, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (channel) DO UPDATE SET version = excluded.version, percent = excluded.percent, paused = excluded.paused, reason = excluded.reason,
          auto_pause_ratio = excluded.auto_pause_ratio, auto_pause_min = excluded.auto_pause_min, updated_at = excluded.updated_at`)
        .run(n.channel, n.version, n.percent, n.paused ? 1 : 0, n.reason, n.autoPauseRatio, n.autoPauseMin, n.updatedAt);
      return n;
    }).immediate();
  }

  async wave(channel: string, version: number): Promise<WaveStats> {
    const r = this.db.prepare<[{ v: number; c: string }], { attempted: number | null; failed: number | null }>(`SELECT
        sum(booted_version = @v OR failed_version = @v) AS attempted,
        sum(failed_version = @v OR (booted_version = @v AND health = 'failed')) AS failed
      FROM machines WHERE channel = @c`).get({ v: version, c: channel })!;
    return { attempted: r.attempted ?? 0, failed: r.failed ?? 0 };
  }
}
