/**
 * `liveup fleet serve`: the fleet endpoint over plain node:http.
 *
 *   POST /v1/reports            an agent's report (bearer token; idempotent on machine + seq)
 *   GET  /v1/machines           every machine's latest report, with `stale`
 *   GET  /v1/machines/:id       one machine with its report history
 *   POST /v1/pre-reboot         FleetLock (Zincati's protocol): take a reboot slot
 *   POST /v1/steady-state       FleetLock: give it back
 *   GET  /v1/rollouts           every channel's rollout control (admin)
 *   GET  /v1/rollouts/:channel  one channel's (agents read theirs before taking a version)
 *   POST /v1/rollouts/:channel  change it: {version?, percent?, paused?, autoPauseRatio?, autoPauseMin?} (admin)
 *   GET  /                      the dashboard (fleet/src/dashboard.ts)
 *
 * Every API call needs `Authorization: Bearer <token>` (`liveup fleet token
 * create`): the inventory of a fleet is not public, and a machine's (agent)
 * token reaches only what a machine needs (store.ts, TokenRole). Bad input
 * gets a 4xx with a JSON `{ error: { code, message } }` naming the problem,
 * and nothing is written.
 *
 * After each commit of reports the rollouts of the channels they came from
 * are checked: a wave whose boot-check failures pass the rollout's threshold
 * is paused on the spot (rollout.ts), before more machines take it.
 */
import http from 'node:http';
import { LiveupError, toLiveupError } from '../../agent/src/channel/errors.js';
import { Reader } from '../../agent/src/util/validate.js';
import { MAX_REPORT_BYTES, parseReport, type FleetReport } from './report.js';
import type { FleetStore, TokenRole } from './store.js';
import { DASHBOARD_HTML } from './dashboard.js';
import { autoPauseReason, CHANNEL_RE, type RolloutChange } from './rollout.js';

export interface FleetServerOptions {
  readonly store: FleetStore;
  readonly host: string;
  readonly port: number;
  /** Reboot slots per FleetLock group; `default` for groups not named (default 1). */
  readonly slots?: Readonly<Record<string, number>>;
  /** A machine not heard from for this long is flagged stale (default 2 × the agents' 4 h schedule). */
  readonly staleAfterMs?: number;
  readonly log?: (line: string) => void;
  readonly now?: () => Date;
}

export interface RunningFleetServer {
  readonly url: string;
  close(): Promise<void>;
}

class HttpError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

function send(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}

/** The body, refused with 413 past `max` bytes without reading the rest. */
function readBody(req: http.IncomingMessage, max: number): Promise<string> {
  const declared = Number(req.headers['content-length'] ?? NaN);
  if (declared > max) return Promise.reject(new HttpError(413, 'TOO_LARGE', `body of ${declared} bytes is over the ${max}-byte limit`));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    req.on('data', (c: Buffer) => {
      n += c.length;
      if (n > max) {
        reject(new HttpError(413, 'TOO_LARGE', `body is over the ${max}-byte limit`));
        req.destroy();
      } else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

/** A JSON body read strictly by `read`; any problem is a 400 naming it. */
function parseBody<T>(text: string, what: string, read: (r: Reader, raw: unknown) => T): T {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new HttpError(400, 'INVALID_ARGUMENT', `not valid JSON (${(e as Error).message})`);
  }
  try {
    return read(new Reader(what, 'INVALID_ARGUMENT'), raw);
  } catch (e) {
    throw new HttpError(400, 'INVALID_ARGUMENT', toLiveupError(e).message);
  }
}

/** FleetLock body: `{"client_params": {"id": "...", "group": "..."}}`. */
function parseLockBody(text: string): { id: string; group: string } {
  return parseBody(text, 'fleetlock', (r, raw) => {
    const o = r.object(raw, '', ['client_params']);
    const p = r.object(o.client_params, 'client_params', ['id', 'group']);
    return {
      id: r.string(p, 'id', 'client_params', { max: 128, pattern: /^[A-Za-z0-9._:-]+$/, what: 'a machine id' }),
      group: r.string(p, 'group', 'client_params', { max: 64, pattern: /^[A-Za-z0-9._-]+$/, what: 'a group name' }),
    };
  });
}

/** A rollout change: `{version?, percent?, paused?, autoPauseRatio?, autoPauseMin?}`. */
function parseRolloutChange(text: string): RolloutChange {
  return parseBody(text, 'rollout', (r, raw) => {
    const o = r.object(raw, '', ['version', 'percent', 'paused', 'autoPauseRatio', 'autoPauseMin']);
    const num = (k: string, min: number, max: number): number | undefined => {
      if (o[k] === undefined) return undefined;
      if (typeof o[k] !== 'number' || !(o[k] >= min && o[k] <= max)) r.fail(k, `expected a number from ${min} to ${max}`);
      return o[k] as number;
    };
    const change: { -readonly [K in keyof RolloutChange]: RolloutChange[K] } = {};
    const version = r.optInt(o, 'version', '', { min: 1 });
    if (version !== undefined) change.version = version;
    const percent = num('percent', 0, 100);
    if (percent !== undefined) change.percent = percent;
    const paused = r.optBool(o, 'paused', '');
    if (paused !== undefined) change.paused = paused;
    const ratio = num('autoPauseRatio', 0, 1);
    if (ratio !== undefined) change.autoPauseRatio = ratio;
    const min = r.optInt(o, 'autoPauseMin', '', { min: 1 });
    if (min !== undefined) change.autoPauseMin = min;
    return change;
  });
}

const TOKEN_CACHE_MS = 5000;

export async function serveFleet(o: FleetServerOptions): Promise<RunningFleetServer> {
  const now = o.now ?? (() => new Date());
  const staleAfter = o.staleAfterMs ?? 8 * 3600e3;
  const slotsFor = (group: string): number => o.slots?.[group] ?? o.slots?.default ?? 1;

  // Group commit: reports arriving while a commit runs go into the next one,
  // so one fsync covers many; each is answered only after its commit.
  // SQLite commits one at a time (it is synchronous anyway); PostgreSQL runs
  // a few batches at once, whose commits its WAL flushes together.
  const maxInFlight = o.store.kind === 'postgres' ? 4 : 1;
  let batch: { report: FleetReport; done: (r: 'stored' | 'duplicate' | Error) => void }[] = [];
  let inFlight = 0;
  let scheduled = false;
  const commit = async (): Promise<void> => {
    scheduled = false;
    inFlight++;
    while (batch.length > 0) {
      const now_ = batch;
      batch = [];
      try {
        const results = await o.store.saveReports(now_.map((b) => b.report));
        // Before the answers: a machine told "stored" may next read its channel's rollout, which must already say paused.
        await checkWaves(new Set(now_.map((b) => b.report.channel)));
        now_.forEach((b, i) => b.done(results[i]!));
      } catch (e) {
        for (const b of now_) b.done(e as Error);
      }
    }
    inFlight--;
  };
  const save = (report: FleetReport): Promise<'stored' | 'duplicate'> =>
    new Promise((resolve, reject) => {
      batch.push({ report, done: (r) => (r instanceof Error ? reject(r) : resolve(r)) });
      if (!scheduled && inFlight < maxInFlight) {
        scheduled = true;
        setImmediate(() => void commit());
      }
    });

  // Channels with an active rollout, re-read at most once a second: the
  // report path must not ask the database about rollouts on every batch.
  let active: { at: number; channels: Set<string> } = { at: 0, channels: new Set() };
  const activeChannels = async (): Promise<Set<string>> => {
    if (Date.now() - active.at > 1000) {
      const rs = await o.store.rollouts();
      active = { at: Date.now(), channels: new Set(rs.filter((r) => !r.paused && r.autoPauseRatio > 0).map((r) => r.channel)) };
    }
    return active.channels;
  };

  // Auto-pause: the rollouts of these channels, re-read (another endpoint or
  // `liveup fleet rollout` may have changed them), paused when their wave fails.
  const checkWaves = async (channels: Set<string>): Promise<void> => {
    const watched = await activeChannels().catch(() => channels);
    for (const channel of channels) {
      if (!watched.has(channel)) continue;
      try {
        const r = await o.store.rollout(channel);
        if (!r || r.paused || r.autoPauseRatio <= 0) continue;
        const why = autoPauseReason(r, await o.store.wave(channel, r.version));
        if (why) {
          await o.store.setRollout(channel, { version: r.version, paused: true, reason: why });
          o.log?.(`fleet: rollout of ${r.version} on ${channel} ${why}`);
        }
      } catch (e) {
        o.log?.(`fleet: checking the rollout of ${channel} failed: ${(e as Error).message}`);
      }
    }
  };

  // Token lookups, remembered for 5 s: one fewer database round trip per
  // report. So a revoked token is refused within 5 seconds (docs/fleet.md).
  const tokenCache = new Map<string, { t: { name: string; role: TokenRole } | null; until: number }>();
  const authorize = async (req: http.IncomingMessage): Promise<{ name: string; role: TokenRole }> => {
    const m = /^Bearer (\S+)$/.exec(req.headers.authorization ?? '');
    if (!m) throw new HttpError(401, 'NOT_AUTHORIZED', 'missing "Authorization: Bearer <token>" (liveup fleet token create)');
    const secret = m[1]!;
    let hit = tokenCache.get(secret);
    if (!hit || hit.until < Date.now()) {
      hit = { t: await o.store.token(secret), until: Date.now() + TOKEN_CACHE_MS };
      if (tokenCache.size > 10_000) tokenCache.clear();
      if (hit.t) tokenCache.set(secret, hit); // unknown ones are not kept: no memory for a guesser to fill
    }
    if (!hit.t) throw new HttpError(401, 'NOT_AUTHORIZED', 'unknown or revoked token');
    return hit.t;
  };
  const admin = (t: { name: string; role: TokenRole }): void => {
    if (t.role !== 'admin') throw new HttpError(403, 'NOT_AUTHORIZED', `token "${t.name}" is an agent token: this needs an admin token (liveup fleet token create NAME --role admin)`);
  };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://fleet.invalid');
    const route = `${req.method} ${url.pathname}`;
    if (route === 'GET /' || route === 'GET /index.html') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-security-policy': "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'" });
      res.end(DASHBOARD_HTML);
      return;
    }
    if (route === 'GET /healthz') return send(res, 200, { ok: true });
    const who = await authorize(req);
    if (route === 'POST /v1/reports') {
      if (!/^application\/json\b/.test(req.headers['content-type'] ?? '')) throw new HttpError(415, 'INVALID_ARGUMENT', 'send the report as application/json');
      const body = await readBody(req, MAX_REPORT_BYTES);
      let report;
      try {
        report = parseReport(body);
      } catch (e) {
        throw new HttpError(400, 'INVALID_ARGUMENT', toLiveupError(e).message);
      }
      const outcome = await save(report);
      return send(res, 200, { ok: true, machineId: report.machineId, seq: report.seq, duplicate: outcome === 'duplicate' });
    }
    if (route === 'GET /v1/machines') {
      admin(who);
      const t = now().getTime();
      return send(res, 200, {
        machines: (await o.store.machines()).map((m) => ({ ...m, stale: t - Date.parse(m.lastSeen) > staleAfter })),
        staleAfterSeconds: staleAfter / 1000,
      });
    }
    const one = /^GET \/v1\/machines\/([0-9a-f]{32})$/.exec(route);
    if (one) {
      admin(who);
      const m = await o.store.machine(one[1]!);
      if (!m) throw new HttpError(404, 'NOT_FOUND', `no machine ${one[1]} has reported`);
      return send(res, 200, m);
    }
    if (route === 'POST /v1/pre-reboot' || route === 'POST /v1/steady-state') {
      if (req.headers['fleet-lock-protocol'] !== 'true') throw new HttpError(400, 'INVALID_ARGUMENT', 'missing header "fleet-lock-protocol: true"');
      const p = parseLockBody(await readBody(req, 4096));
      if (route === 'POST /v1/steady-state') {
        await o.store.unlock(p.group, p.id);
        return send(res, 200, { ok: true });
      }
      const slots = slotsFor(p.group);
      const r = await o.store.lock(p.group, p.id, slots);
      if (r.granted) return send(res, 200, { ok: true, holders: r.holders.length, slots });
      // FleetLock's error shape, as Zincati reads it.
      return send(res, 409, { kind: 'failed_lock', value: `all ${slots} reboot slot(s) of group "${p.group}" are taken`, holders: r.holders });
    }
    if (route === 'GET /v1/rollouts') {
      admin(who);
      return send(res, 200, { rollouts: await o.store.rollouts() });
    }
    const ro = /^(GET|POST) \/v1\/rollouts\/([^/]+)$/.exec(route);
    if (ro) {
      const channel = decodeURIComponent(ro[2]!);
      if (!CHANNEL_RE.test(channel)) throw new HttpError(400, 'INVALID_ARGUMENT', `channel "${channel}": lower-case letters, digits, ".", "_", "-"`);
      if (ro[1] === 'GET') {
        const r = await o.store.rollout(channel);
        if (!r) throw new HttpError(404, 'NOT_FOUND', `no rollout control for channel "${channel}"`);
        return send(res, 200, r);
      }
      admin(who);
      const change = parseRolloutChange(await readBody(req, 4096));
      try {
        return send(res, 200, await o.store.setRollout(channel, { ...change, ...(change.paused ? { reason: `paused by ${who.name}` } : {}) }));
      } catch (e) {
        const le = toLiveupError(e);
        throw new HttpError(le.code === 'NOT_FOUND' ? 404 : 400, le.code, le.message);
      }
    }
    throw new HttpError(404, 'NOT_FOUND', `no route ${route}`);
  };

  const server = http.createServer((req, res) => {
    handle(req, res).catch((e: unknown) => {
      const err = e instanceof HttpError ? e : new HttpError(500, 'INTERNAL', e instanceof LiveupError ? e.message : 'internal error');
      if (err.status >= 500) o.log?.(`fleet: ${req.method} ${req.url}: ${(e as Error).stack ?? String(e)}`);
      if (!res.headersSent) send(res, err.status, { error: { code: err.code, message: err.message } });
      else res.destroy();
    });
  });
  server.requestTimeout = 30_000;
  server.headersTimeout = 10_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(new LiveupError('INVALID_ARGUMENT', `cannot listen on ${o.host}:${o.port} (${e.code ?? e.message})`)));
    server.listen(o.port, o.host, resolve);
  });
  const addr = server.address() as { port: number };
  const host = o.host.includes(':') ? `[${o.host}]` : o.host;
  return {
    url: `http://${host}:${addr.port}/`,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}
