/**
 * The fleet store on PostgreSQL (`--db postgres://user@host/db`): for an
 * endpoint whose fleet outgrows one SQLite file, or several endpoint
 * processes behind one load balancer. Same rows and meaning as
 * store-sqlite.ts; the differences are PostgreSQL's: a report batch is two
 * set-based statements (unnest) instead of a loop, FleetLock and rollout
 * changes serialise on advisory locks, schema versions live in
 * `liveup_fleet_schema` and are applied under an advisory lock so two
 * endpoints starting together migrate once.
 */
import pg from 'pg';
import { LiveupError } from '../../agent/src/channel/errors.js';
import type { FleetReport } from './report.js';
import { applyRolloutChange, type FleetRollout, type RolloutChange, type WaveStats } from './rollout.js';
import { newTokenSecret, newestPerMachine, noActiveToken, reportColumns, sha256, tokenExists, type FleetStore, type MachineHistory, type MachineRow, type TokenRole, type TokenRow } from './store.js';

const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE machines (
    id         TEXT PRIMARY KEY,
    hostname   TEXT NOT NULL,
    channel    TEXT NOT NULL,
    first_seen TIMESTAMPTZ NOT NULL,
    last_seen  TIMESTAMPTZ NOT NULL,
    last_seq   BIGINT NOT NULL,
    report     JSONB NOT NULL
  );
  CREATE TABLE reports (
    machine_id  TEXT NOT NULL REFERENCES machines(id),
    seq         BIGINT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    report      JSONB NOT NULL,
    PRIMARY KEY (machine_id, seq)
  );
  CREATE TABLE tokens (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    sha256     TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ
  );
  CREATE TABLE locks (
    grp         TEXT NOT NULL,
    machine_id  TEXT NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (grp, machine_id)
  );
  `,
  `
  ALTER TABLE tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'admin' CHECK (role IN ('agent', 'admin'));
  ALTER TABLE machines ADD COLUMN booted_version INTEGER;
  ALTER TABLE machines ADD COLUMN failed_version INTEGER;
  ALTER TABLE machines ADD COLUMN health TEXT NOT NULL DEFAULT 'unknown';
  UPDATE machines SET booted_version = (report->>'bootedVersion')::int, health = report->>'health';
  CREATE INDEX machines_channel ON machines (channel);
  CREATE TABLE rollouts (
    channel          TEXT PRIMARY KEY,
    version          INTEGER NOT NULL,
    percent          DOUBLE PRECISION NOT NULL CHECK (percent BETWEEN 0 AND 100),
    paused           BOOLEAN NOT NULL,
    reason           TEXT,
    auto_pause_ratio DOUBLE PRECISION NOT NULL,
    auto_pause_min   INTEGER NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
  );
  `,
];

const iso = (d: Date | string | null): string | null => (d === null ? null : new Date(d).toISOString());

type Row = Record<string, unknown>;

function toMachine(r: Row): MachineRow {
  return {
    id: String(r.id), hostname: String(r.hostname), channel: String(r.channel), firstSeen: iso(r.first_seen as Date)!,
    lastSeen: iso(r.last_seen as Date)!, lastSeq: Number(r.last_seq), report: r.report as FleetReport,
  };
}

const toRollout = (r: Row): FleetRollout => ({
  channel: String(r.channel), version: Number(r.version), percent: Number(r.percent), paused: r.paused === true, reason: (r.reason as string | null) ?? null,
  autoPauseRatio: Number(r.auto_pause_ratio), autoPauseMin: Number(r.auto_pause_min), updatedAt: iso(r.updated_at as Date)!,
});

/** Advisory lock keys: one namespace per purpose, hashed name inside it. */
const LOCK_MIGRATE = 0x6c697665; // "live"
const LOCK_FLEETLOCK = 1;
const LOCK_ROLLOUT = 2;

export class PgFleetStore implements FleetStore {
  readonly kind = 'postgres' as const;

  private constructor(private readonly pool: pg.Pool, private readonly now: () => Date) {}

  static async open(url: string, now: () => Date = () => new Date()): Promise<PgFleetStore> {
    const pool = new pg.Pool({ connectionString: url, max: 8 });
    // An idle client's error (server restart) must not crash the endpoint; the next query reconnects.
    pool.on('error', () => undefined);
    const store = new PgFleetStore(pool, now);
    try {
      await store.tx(async (c) => {
        await c.query('SELECT pg_advisory_xact_lock($1)', [LOCK_MIGRATE]);
        await c.query('CREATE TABLE IF NOT EXISTS liveup_fleet_schema (version INTEGER NOT NULL)');
        const r = await c.query<{ version: number }>('SELECT version FROM liveup_fleet_schema');
        const have = r.rows[0]?.version ?? 0;
        if (r.rows.length === 0) await c.query('INSERT INTO liveup_fleet_schema (version) VALUES (0)');
        if (have > MIGRATIONS.length) throw new LiveupError('INVALID_ARGUMENT', `${redact(url)}: schema version ${have} is newer than this liveup (${MIGRATIONS.length})`);
        for (let v = have; v < MIGRATIONS.length; v++) await c.query(MIGRATIONS[v]!);
        await c.query('UPDATE liveup_fleet_schema SET version = $1', [MIGRATIONS.length]);
      });
    } catch (e) {
      await pool.end().catch(() => undefined);
      if (e instanceof LiveupError) throw e;
      throw new LiveupError('INVALID_ARGUMENT', `${redact(url)}: cannot open the fleet database (${(e as Error).message})`);
    }
    return store;
  }

  async close(): Promise<void> {
    await this.pool.end();
  }

  /** `fn` in one transaction on one connection; rolled back on any error. */
  private async tx<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const c = await this.pool.connect();
    try {
      await c.query('BEGIN');
      const out = await fn(c);
      await c.query('COMMIT');
      return out;
    } catch (e) {
      await c.query('ROLLBACK').catch(() => undefined);
      throw e;
    } finally {
      c.release();
    }
  }

  async saveReports(reports: readonly FleetReport[]): Promise<('stored' | 'duplicate')[]> {
    if (reports.length === 0) return [];
    const at = this.now().toISOString();
    // Machines in id order, so two concurrent batches lock rows in the same order.
    const newest = newestPerMachine(reports).sort((a, b) => (a.machineId < b.machineId ? -1 : 1));
    const cols = newest.map(reportColumns);
    const sorted = [...reports].sort((a, b) => (a.machineId < b.machineId ? -1 : a.machineId > b.machineId ? 1 : a.seq - b.seq));
    const inserted = await this.tx(async (c) => {
      await c.query(
        `INSERT INTO machines AS m (id, hostname, channel, first_seen, last_seen, last_seq, report, booted_version, failed_version, health)
         SELECT t.id, t.hostname, t.channel, $9, $9, t.seq, t.report, t.booted, t.failed, t.health
           FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::jsonb[], $6::int[], $7::int[], $8::text[])
             AS t(id, hostname, channel, seq, report, booted, failed, health)
         ON CONFLICT (id) DO UPDATE SET
           last_seen = EXCLUDED.last_seen,
           hostname = CASE WHEN EXCLUDED.last_seq > m.last_seq THEN EXCLUDED.hostname ELSE m.hostname END,
           channel = CASE WHEN EXCLUDED.last_seq > m.last_seq THEN EXCLUDED.channel ELSE m.channel END,
           report = CASE WHEN EXCLUDED.last_seq > m.last_seq THEN EXCLUDED.report ELSE m.report END,
           booted_version = CASE WHEN EXCLUDED.last_seq > m.last_seq THEN EXCLUDED.booted_version ELSE m.booted_version END,
           failed_version = CASE WHEN EXCLUDED.last_seq > m.last_seq THEN EXCLUDED.failed_version ELSE m.failed_version END,
           health = CASE WHEN EXCLUDED.last_seq > m.last_seq THEN EXCLUDED.health ELSE m.health END,
           last_seq = GREATEST(m.last_seq, EXCLUDED.last_seq)`,
        [newest.map((r) => r.machineId), newest.map((r) => r.hostname), newest.map((r) => r.channel), newest.map((r) => r.seq),
          newest.map((r) => JSON.stringify(r)), cols.map((x) => x.bootedVersion), cols.map((x) => x.failedVersion), cols.map((x) => x.health), at],
      );
      const r = await c.query<{ machine_id: string; seq: string }>(
        `INSERT INTO reports (machine_id, seq, received_at, report)
         SELECT t.m, t.s, $3, t.r FROM unnest($1::text[], $2::bigint[], $4::jsonb[]) AS t(m, s, r)
         ON CONFLICT DO NOTHING RETURNING machine_id, seq`,
        [sorted.map((r) => r.machineId), sorted.map((r) => r.seq), at, sorted.map((r) => JSON.stringify(r))],
      );
      return new Set(r.rows.map((x) => `${x.machine_id}:${x.seq}`));
    });
    // A (machine, seq) twice in one batch was stored once: the second is the duplicate.
    const seen = new Set<string>();
    return reports.map((r) => {
      const k = `${r.machineId}:${r.seq}`;
      const first = !seen.has(k);
      seen.add(k);
      return first && inserted.has(k) ? 'stored' : 'duplicate';
    });
  }

  async machines(): Promise<MachineRow[]> {
    // COLLATE "C": the same order as SQLite's, whatever the cluster's locale.
    return (await this.pool.query('SELECT * FROM machines ORDER BY hostname COLLATE "C", id')).rows.map(toMachine);
  }

  async machine(id: string, historyLimit = 100): Promise<MachineHistory | null> {
    const row = (await this.pool.query('SELECT * FROM machines WHERE id = $1', [id])).rows[0] as Row | undefined;
    if (!row) return null;
    const h = await this.pool.query<{ seq: string; received_at: Date; report: FleetReport }>(
      'SELECT seq, received_at, report FROM reports WHERE machine_id = $1 ORDER BY seq DESC LIMIT $2', [id, historyLimit]);
    return { machine: toMachine(row), history: h.rows.map((x) => ({ seq: Number(x.seq), receivedAt: iso(x.received_at)!, report: x.report })) };
  }

  async reportCount(machineId: string): Promise<number> {
    return Number((await this.pool.query<{ n: string }>('SELECT count(*) AS n FROM reports WHERE machine_id = $1', [machineId])).rows[0]!.n);
  }

  async createToken(name: string, role: TokenRole): Promise<string> {
    const { secret, digest } = newTokenSecret(name);
    try {
      await this.pool.query('INSERT INTO tokens (name, sha256, created_at, role) VALUES ($1, $2, $3, $4)', [name, digest, this.now().toISOString(), role]);
    } catch (e) {
      if ((e as { code?: string }).code === '23505') throw tokenExists(name);
      throw e;
    }
    return secret;
  }

  async revokeToken(name: string): Promise<void> {
    const r = await this.pool.query('UPDATE tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL', [this.now().toISOString(), name]);
    if (r.rowCount === 0) throw noActiveToken(name);
  }

  async tokens(): Promise<TokenRow[]> {
    const r = await this.pool.query<{ name: string; role: TokenRole; created_at: Date; revoked_at: Date | null }>('SELECT name, role, created_at, revoked_at FROM tokens ORDER BY name COLLATE "C"');
    return r.rows.map((t) => ({ name: t.name, role: t.role, createdAt: iso(t.created_at)!, revokedAt: iso(t.revoked_at) }));
  }

  async token(secret: string): Promise<{ name: string; role: TokenRole } | null> {
    const r = await this.pool.query<{ name: string; role: TokenRole }>('SELECT name, role FROM tokens WHERE sha256 = $1 AND revoked_at IS NULL', [sha256(secret)]);
    return r.rows[0] ?? null;
  }

  async lock(group: string, machineId: string, slots: number): Promise<{ granted: boolean; holders: string[] }> {
    return this.tx(async (c) => {
      // Serialise per group: two machines must not both see the last free slot.
      await c.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [LOCK_FLEETLOCK, group]);
      const holders = (await c.query<{ machine_id: string }>('SELECT machine_id FROM locks WHERE grp = $1 ORDER BY acquired_at, machine_id', [group])).rows.map((h) => h.machine_id);
      if (holders.includes(machineId)) return { granted: true, holders };
      if (holders.length >= slots) return { granted: false, holders };
      await c.query('INSERT INTO locks (grp, machine_id, acquired_at) VALUES ($1, $2, $3)', [group, machineId, this.now().toISOString()]);
      return { granted: true, holders: [...holders, machineId] };
    });
  }

  async unlock(group: string, machineId: string): Promise<void> {
    await this.pool.query('DELETE FROM locks WHERE grp = $1 AND machine_id = $2', [group, machineId]);
  }

  async rollout(channel: string): Promise<FleetRollout | null> {
    const r = (await this.pool.query('SELECT * FROM rollouts WHERE channel = $1', [channel])).rows[0] as Row | undefined;
    return r ? toRollout(r) : null;
  }

  async rollouts(): Promise<FleetRollout[]> {
    return (await this.pool.query('SELECT * FROM rollouts ORDER BY channel COLLATE "C"')).rows.map(toRollout);
  }

  async setRollout(channel: string, change: RolloutChange): Promise<FleetRollout> {
    return this.tx(async (c) => {
      await c.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [LOCK_ROLLOUT, channel]);
      const old = (await c.query('SELECT * FROM rollouts WHERE channel = $1', [channel])).rows[0] as Row | undefined;
      const n = applyRolloutChange(channel, old ? toRollout(old) : null, change, this.now());
      await c.query(`INSERT INTO rollouts (channel, version, percent, paused, reason, auto_pause_ratio, auto_pause_min, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (channel) DO UPDATE SET version = EXCLUDED.version, percent = EXCLUDED.percent, paused = EXCLUDED.paused, reason = EXCLUDED.reason,
          auto_pause_ratio = EXCLUDED.auto_pause_ratio, auto_pause_min = EXCLUDED.auto_pause_min, updated_at = EXCLUDED.updated_at`,
        [n.channel, n.version, n.percent, n.paused, n.reason, n.autoPauseRatio, n.autoPauseMin, n.updatedAt]);
      return n;
    });
  }

  async wave(channel: string, version: number): Promise<WaveStats> {
    const r = await this.pool.query<{ attempted: string; failed: string }>(`SELECT
        count(*) FILTER (WHERE booted_version = $1 OR failed_version = $1) AS attempted,
        count(*) FILTER (WHERE failed_version = $1 OR (booted_version = $1 AND health = 'failed')) AS failed
      FROM machines WHERE channel = $2`, [version, channel]);
    return { attempted: Number(r.rows[0]!.attempted), failed: Number(r.rows[0]!.failed) };
  }
}

/** A URL without its password, for messages. */
function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return 'postgres://…';
  }
}
