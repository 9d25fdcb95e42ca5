import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { tmp } from '../helpers/tmp.js';
import { Journal, SCHEMA_VERSION } from '../../agent/src/adapters/journal.js';
import { LiveupError } from '../../agent/src/channel/errors.js';

async function dbPath(): Promise<string> {
  return join(await tmp('liveup-journal-'), 'state', 'journal.db');
}

describe('Journal', () => {
  it('migrates once and reopens idempotently', async () => {
    const p = await dbPath();
    const j1 = Journal.open(p);
    expect(j1.schemaVersion()).toBe(SCHEMA_VERSION);
    j1.upsertGeneration({ version: 3, name: 'gen-3', channel: 'stable', squashfsSha512: 'a'.repeat(128) });
    j1.close();
    const j2 = Journal.open(p);
    expect(j2.schemaVersion()).toBe(SCHEMA_VERSION);
    expect(j2.getGeneration(3)?.squashfsSha512).toBe('a'.repeat(128));
    expect(j2.floor()).toMatchObject({ sequence: 0, version: 0 });
    expect(j2.integrityCheck()).toBe('ok');
    j2.close();
    Journal.open(p).close();
  });

  it('records generations, states, pins and their events', async () => {
    let t = Date.parse('2026-01-01T00:00:00Z');
    const j = Journal.open(await dbPath(), { now: () => new Date((t += 1000)) });
    try {
      j.upsertGeneration({ version: 1, name: 'g1', channel: 'stable', rebootRequired: true, rebootReasons: ['kernel'] });
      j.upsertGeneration({ version: 2, name: 'g2', channel: 'stable', parent: 1 });
      expect(j.getGeneration(1)).toMatchObject({ state: 'available', rebootRequired: true, rebootReasons: ['kernel'], pinned: false });
      j.setState(1, 'staged');
      j.setState(1, 'booted');
      j.setState(1, 'good');
      j.setState(2, 'good');
      expect(j.lastGood()?.version).toBe(2);
      expect(j.getGeneration(1)?.stagedAt).toBeTruthy();
      // Re-upserting metadata keeps state and fields not given.
      j.upsertGeneration({ version: 2, name: 'g2', channel: 'stable', cmdline: 'quiet' });
      expect(j.getGeneration(2)).toMatchObject({ state: 'good', parent: 1, cmdline: 'quiet' });
      expect(j.pin(1).pinned).toBe(true);
      expect(j.listGenerations().map((g) => g.version)).toEqual([2, 1]);
      expect(() => j.setState(9, 'good')).toThrow(expect.objectContaining({ code: 'UNKNOWN_GENERATION' }) as Error);
      const h = j.history({ version: 1 });
      expect(h.map((e) => e.kind)).toEqual(['pinned', 'state-changed', 'state-changed', 'state-changed']);
      expect(h[1]?.details).toEqual({ from: 'booted', to: 'good' });
      expect(j.history({ limit: 2 })).toHaveLength(2);
    } finally {
      j.close();
    }
  });

  it('only ever raises the floor, except by an explicit reset', async () => {
    const j = Journal.open(await dbPath());
    try {
      expect(j.raiseFloor({ sequence: 10, version: 5 })).toMatchObject({ sequence: 10, version: 5 });
      expect(j.raiseFloor({ sequence: 3, version: 7 })).toMatchObject({ sequence: 10, version: 7 });
      expect(j.raiseFloor({ sequence: 1, version: 1 })).toMatchObject({ sequence: 10, version: 7 });
      expect(j.resetFloor({ sequence: 2, version: 2 }, 'admin: re-provisioned channel')).toMatchObject({ sequence: 2, version: 2 });
      expect(j.history({ limit: 1 })[0]).toMatchObject({ kind: 'floor-reset', message: 'admin: re-provisioned channel' });
    } finally {
      j.close();
    }
  });

  it('lists a step begun and not ended after reopening, until it is ended', async () => {
    const p = await dbPath();
    const j1 = Journal.open(p);
    const done = j1.beginStep('check');
    j1.endStep(done, 'ok', null, null, { sequence: 4 });
    const open1 = j1.beginStep('stage', 4, { bytes: 10 });
    j1.close();
    const j2 = Journal.open(p);
    try {
      const pending = j2.inProgress();
      expect(pending).toHaveLength(1);
      expect(pending[0]).toMatchObject({ id: open1, kind: 'stage', version: 4, status: 'started', endedAt: null });
      j2.endStep(open1, 'failed', 'INTERNAL', 'interrupted by a restart');
      expect(j2.inProgress()).toEqual([]);
      expect(j2.history({ limit: 1 })[0]).toMatchObject({ status: 'failed', errorCode: 'INTERNAL', details: { bytes: 10 } });
      expect(() => j2.endStep(open1, 'ok')).toThrow(LiveupError);
      // Notes go to steps in progress only, merged over what they hold.
      const open2 = j2.beginStep('kexec', 5, { bytes: 1 });
      j2.noteStep(open2, { timeline: 'check 0.40 s' });
      j2.noteStep(open1, { timeline: 'too late' });
      expect(j2.inProgress()[0]).toMatchObject({ id: open2, details: { bytes: 1, timeline: 'check 0.40 s' } });
      expect(j2.history({ version: 4, limit: 1 })[0]!.details).toEqual({ bytes: 10 });
    } finally {
      j2.close();
    }
  });

  it('keeps outbox reports until acknowledged, with sequence numbers never reused', async () => {
    let t = Date.parse('2026-01-01T00:00:00Z');
    const j = Journal.open(await dbPath(), { now: () => new Date(t) });
    try {
      const a = j.outboxEnqueue({ kind: 'status', version: 1 });
      const b = j.outboxEnqueue({ kind: 'status', version: 2 });
      expect([a.seq, b.seq]).toEqual([1, 2]);
      j.outboxDefer(a.seq, new Date(t + 60_000));
      expect(j.outboxPeek().map((e) => e.seq)).toEqual([2]);
      t += 60_000;
      expect(j.outboxPeek().map((e) => [e.seq, e.attempts])).toEqual([[1, 1], [2, 0]]);
      expect(j.outboxAck(1)).toBe(true);
      expect(j.outboxAck(2)).toBe(true);
      expect(j.outboxAck(2)).toBe(false);
      expect(j.outboxEnqueue({ kind: 'status' }).seq).toBe(3);
      expect(j.outboxSize()).toBe(1);
    } finally {
      j.close();
    }
  });

  it('survives a writer killed with SIGKILL mid-transaction', async () => {
    const p = await dbPath();
    Journal.open(p).close();
    // The child speaks SQL directly: vitest cannot hand a TS module to a plain
    // node child. It commits a step row, then dies inside a big transaction
    // whose pages spill into the WAL (tiny cache), the hardest case for recovery.
    const child = join(await tmp('liveup-child-'), 'writer.mjs');
    const betterSqlite = createRequire(import.meta.url).resolve('better-sqlite3');
    await writeFile(
      child,
      `import { createRequire } from 'node:module';
const Database = createRequire(import.meta.url)(${JSON.stringify(betterSqlite)});
const db = new Database(process.argv[2]);
db.pragma('journal_mode = WAL');
db.pragma('synchronous = FULL');
db.pragma('cache_size = 2');
const now = new Date().toISOString();
db.prepare("INSERT INTO events (at, version, kind, status, details) VALUES (?, 7, 'stage', 'started', '{}')").run(now);
db.exec('BEGIN');
db.prepare("INSERT INTO generations (version, name, channel, state, created_at, updated_at) VALUES (7, 'g7', 'stable', 'staged', ?, ?)").run(now, now);
const ins = db.prepare("INSERT INTO events (at, ended_at, version, kind, status, message, details) VALUES (?, ?, 7, 'gc-removed', 'ok', ?, '{}')");
for (let i = 0; i < 5000; i++) ins.run(now, now, 'x'.repeat(200));
process.kill(process.pid, 'SIGKILL');
`,
    );
    const r = spawnSync(process.execPath, [child, p], { encoding: 'utf8' });
    expect(r.signal, r.stderr).toBe('SIGKILL');
    // Uncommitted pages did reach the WAL, so recovery really had frames to discard.
    expect(statSync(`${p}-wal`).size).toBeGreaterThan(100_000);

    const j = Journal.open(p);
    try {
      expect(j.integrityCheck()).toBe('ok');
      expect(j.inProgress()).toEqual([expect.objectContaining({ kind: 'stage', version: 7, status: 'started' })]);
      expect(j.getGeneration(7)).toBeNull();
      expect(j.history({ limit: 10 })).toHaveLength(1);
    } finally {
      j.close();
    }
  });

  it('refuses a damaged file with JOURNAL_CORRUPT and leaves it in place', async () => {
    const p = await dbPath();
    const j = Journal.open(p);
    for (let i = 0; i < 500; i++) j.event({ kind: 'config-reloaded', message: 'y'.repeat(300) });
    j.close();
    // Scribble over a b-tree page in the middle of the file (not the header, so it still looks like SQLite).
    const fh = await open(p, 'r+');
    const { size } = await fh.stat();
    const page = 4096;
    const off = Math.floor(size / page / 2) * page;
    await fh.write(Buffer.alloc(page, 0xa5), 0, page, off);
    await fh.close();
    const before = await readFile(p);

    let err: unknown;
    try {
      Journal.open(p).close();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(LiveupError);
    expect((err as LiveupError).code).toBe('JOURNAL_CORRUPT');
    expect((err as LiveupError).message).toContain('left untouched');
    expect((err as LiveupError).message).toContain('.recover');
    expect(existsSync(p)).toBe(true);
    expect((await readFile(p)).equals(before)).toBe(true);
  });

  it('refuses a file that is not SQLite at all', async () => {
    const p = await dbPath();
    Journal.open(p).close();
    await writeFile(p, Buffer.alloc(8192, 0x42));
    expect(() => Journal.open(p)).toThrow(expect.objectContaining({ code: 'JOURNAL_CORRUPT' }) as Error);
    expect(existsSync(p)).toBe(true);
  });
});
