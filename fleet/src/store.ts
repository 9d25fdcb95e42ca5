/**
 * The fleet endpoint's store: SQLite (better-sqlite3, WAL), schema by
 * `PRAGMA user_version` and an append-only list of migrations. Every write is
 * one transaction, so a report, a lock slot or a token is there whole or not
 * at all.
 *
 * Tokens are stored as SHA-256 digests: the database never holds a usable
 * credential, and `token create` shows the secret once.
 */
import Database from 'better-sqlite3';
import { createHash, randomBytes } from 'node:crypto';
import { LiveupError } from '../../agent/src/channel/errors.js';
import type { FleetReport } from './report.js';

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
];

export interface MachineRow {
  readonly id: string;
  readonly hostname: string;
  readonly channel: string;
  readonly firstSeen: string;
  readonly lastSeen: string;
  readonly lastSeq: number;
  readonly report: FleetReport;
}

export interface TokenRow {
  readonly name: string;
  readonly createdAt: string;
  readonly revokedAt: string | null;
}

const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex');

/** Prepared once: the report path runs thousands of times a second (bench/fleet). */
function reportQueries(db: Database.Database) {
  return {
    known: db.prepare<[string], { last_seq: number }>('SELECT last_seq FROM machines WHERE id = ?'),
    newMachine: db.prepare('INSERT INTO machines (id, hostname, channel, first_seen, last_seen, last_seq, report) VALUES (?, ?, ?, ?, ?, ?, ?)'),
    report: db.prepare('INSERT OR IGNORE INTO reports (machine_id, seq, received_at, report) VALUES (?, ?, ?, ?)'),
    advance: db.prepare('UPDATE machines SET hostname = ?, channel = ?, last_seen = ?, last_seq = ?, report = ? WHERE id = ?'),
    seen: db.prepare('UPDATE machines SET last_seen = ? WHERE id = ?'),
  };
}

export class FleetStore {
  private readonly q: ReturnType<typeof reportQueries>;

  private constructor(private readonly db: Database.Database, private readonly now: () => Date) {
    this.q = reportQueries(db);
  }

  static open(path: string, now: () => Date = () => new Date()): FleetStore {
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
    return new FleetStore(db, now);
  }

  close(): void {
    this.db.close();
  }

  /**
   * Store a report once per (machine, seq). A repeat — the agent did not see
   * our answer and sent again — is acknowledged without a second row.
   * The machine's current view moves only forward in seq.
   */
  saveReport(r: FleetReport): 'stored' | 'duplicate' {
    return this.saveReports([r])[0]!;
  }

  /**
   * Several reports in one transaction — one fsync for all: the endpoint
   * groups the reports that arrive while the previous commit is syncing
   * (bench/fleet). Each is acknowledged only after this returns.
   */
  saveReports(reports: readonly FleetReport[]): ('stored' | 'duplicate')[] {
    return this.db.transaction(() => reports.map((r) => this.saveOne(r)))();
  }


  private saveOne(r: FleetReport): 'stored' | 'duplicate' {
    const at = this.now().toISOString();
    const body = JSON.stringify(r);
    const known = this.q.known.get(r.machineId);
    if (!known) this.q.newMachine.run(r.machineId, r.hostname, r.channel, at, at, r.seq, body);
    if (this.q.report.run(r.machineId, r.seq, at, body).changes === 0) return 'duplicate';
    if (known && r.seq > known.last_seq) this.q.advance.run(r.hostname, r.channel, at, r.seq, body, r.machineId);
    else if (known) this.q.seen.run(at, r.machineId);
    return 'stored';
  }

  machines(): MachineRow[] {
    return this.db.prepare<[], Record<string, string | number>>('SELECT * FROM machines ORDER BY hostname, id').all().map(toMachine);
  }

  machine(id: string, historyLimit = 100): { machine: MachineRow; history: { seq: number; receivedAt: string; report: FleetReport }[] } | null {
    const row = this.db.prepare<[string], Record<string, string | number>>('SELECT * FROM machines WHERE id = ?').get(id);
    if (!row) return null;
    const history = this.db
      .prepare<[string, number], { seq: number; received_at: string; report: string }>('SELECT seq, received_at, report FROM reports WHERE machine_id = ? ORDER BY seq DESC LIMIT ?')
      .all(id, historyLimit)
      .map((h) => ({ seq: h.seq, receivedAt: h.received_at, report: JSON.parse(h.report) as FleetReport }));
    return { machine: toMachine(row), history };
  }

  reportCount(machineId: string): number {
    return this.db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM reports WHERE machine_id = ?').get(machineId)!.n;
  }

  // ---------------------------------------------------------------- tokens

  /** A new bearer token named `name`; the secret is returned once and stored only as its digest. */
  createToken(name: string): string {
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(name)) throw new LiveupError('INVALID_ARGUMENT', `token name "${name}": use letters, digits, ".", "_", "-" (up to 64)`);
    const secret = `lut_${randomBytes(24).toString('base64url')}`;
    try {
      this.db.prepare('INSERT INTO tokens (name, sha256, created_at) VALUES (?, ?, ?)').run(name, sha256(secret), this.now().toISOString());
    } catch (e) {
      if (/UNIQUE/.test((e as Error).message)) throw new LiveupError('ALREADY_EXISTS', `a token named "${name}" exists; revoke it first or pick another name`);
      throw e;
    }
    return secret;
  }

  revokeToken(name: string): void {
    const r = this.db.prepare('UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL').run(this.now().toISOString(), name);
    if (r.changes === 0) throw new LiveupError('NOT_FOUND', `no active token named "${name}"`);
  }

  tokens(): TokenRow[] {
    return this.db.prepare<[], { name: string; created_at: string; revoked_at: string | null }>('SELECT name, created_at, revoked_at FROM tokens ORDER BY name')
      .all().map((t) => ({ name: t.name, createdAt: t.created_at, revokedAt: t.revoked_at }));
  }

  /** The name of the active token with this secret, or null. */
  tokenName(secret: string): string | null {
    return this.db.prepare<[string], { name: string }>('SELECT name FROM tokens WHERE sha256 = ? AND revoked_at IS NULL').get(sha256(secret))?.name ?? null;
  }

  // ---------------------------------------------------------------- FleetLock

  /**
   * Take a reboot slot in `group` (at most `slots` machines at once). A
   * machine that already holds one gets it again: a retry after a lost answer
   * must not count twice.
   */
  lock(group: string, machineId: string, slots: number): { granted: boolean; holders: string[] } {
    return this.db.transaction(() => {
      const holders = this.db.prepare<[string], { machine_id: string }>('SELECT machine_id FROM locks WHERE grp = ? ORDER BY acquired_at').all(group).map((h) => h.machine_id);
      if (holders.includes(machineId)) return { granted: true, holders };
      if (holders.length >= slots) return { granted: false, holders };
      this.db.prepare('INSERT INTO locks (grp, machine_id, acquired_at) VALUES (?, ?, ?)').run(group, machineId, this.now().toISOString());
      return { granted: true, holders: [...holders, machineId] };
    })();
  }

  /** Give the slot back (steady state); releasing one not held is fine. */
  unlock(group: string, machineId: string): void {
    this.db.prepare('DELETE FROM locks WHERE grp = ? AND machine_id = ?').run(group, machineId);
  }
}

function toMachine(r: Record<string, string | number>): MachineRow {
  return {
    id: String(r.id), hostname: String(r.hostname), channel: String(r.channel), firstSeen: String(r.first_seen),
    lastSeen: String(r.last_seen), lastSeq: Number(r.last_seq), report: JSON.parse(String(r.report)) as FleetReport,
  };
}
