/**
 * Reporting to the fleet endpoint, never losing a report: each one is first
 * written to the journal's outbox (SQLite, in the same file as everything
 * else the agent knows), which gives it its sequence number; a sender posts
 * the outbox in sequence order and deletes an entry only when the endpoint
 * acknowledged it. Offline for days, restarted or killed: the outbox is still
 * there, and a report sent twice (the answer was lost) carries the same
 * sequence, which the endpoint stores once.
 *
 * Also the FleetLock client (Zincati's protocol) for reboot slots.
 */
import { readFile } from 'node:fs/promises';
import { LiveupError } from '../channel/errors.js';
import { clientFor } from './http.js';
import type { FleetConfig } from '../config.js';
import type { Journal, JsonObject } from './journal.js';
import type { Logger } from '../util/log.js';

export interface PostResult {
  readonly status: number;
  readonly body: string;
}

/** One JSON request with a timeout; network failures reject. */
async function requestJson(method: 'GET' | 'POST', url: string, body: unknown, headers: Record<string, string>, timeoutMs: number): Promise<PostResult> {
  const u = new URL(url);
  const text = body === undefined ? '' : JSON.stringify(body);
  const lib = clientFor(u);
  if (!lib) throw new LiveupError('INVALID_ARGUMENT', `unsupported URL scheme in ${url}`);
  return new Promise((resolve, reject) => {
    const req = lib.request(u, {
      method,
      headers: body === undefined ? headers : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers },
      timeout: timeoutMs,
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => { if (chunks.length < 64) chunks.push(c); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(text);
  });
}

/** One JSON POST with a timeout; network failures reject. */
export function postJson(url: string, body: unknown, headers: Record<string, string>, timeoutMs = 15_000): Promise<PostResult> {
  return requestJson('POST', url, body, headers, timeoutMs);
}

/** One GET with a timeout; network failures reject. */
export function getJson(url: string, headers: Record<string, string>, timeoutMs = 15_000): Promise<PostResult> {
  return requestJson('GET', url, undefined, headers, timeoutMs);
}

/**
 * The endpoint's cap on a channel's rollout (fleet/src/rollout.ts): agents
 * take the smaller of it and the signed index's own rollout.
 */
export interface FleetRolloutLimit {
  readonly version: number;
  readonly percent: number;
  readonly paused: boolean;
  readonly reason: string | null;
}

async function token(cfg: FleetConfig): Promise<string> {
  try {
    return (await readFile(cfg.tokenFile, 'utf8')).trim();
  } catch (e) {
    throw new LiveupError('CONFIG_INVALID', `fleet token ${cfg.tokenFile} cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); run agentctl enroll`, { file: cfg.tokenFile });
  }
}

/** Retry delay after `attempts` failures: 30 s doubling, at most an hour. */
export function backoffMs(attempts: number): number {
  return Math.min(30_000 * 2 ** Math.max(0, attempts), 3600_000);
}

export interface FlushResult {
  readonly sent: number;
  readonly pending: number;
  /** Why sending stopped early (endpoint down, token refused), if it did. */
  readonly error: string | null;
}

export class FleetReporter {
  #flushing: Promise<unknown> = Promise.resolve();

  constructor(private readonly deps: {
    readonly journal: Journal;
    readonly config: () => FleetConfig | undefined;
    readonly log: Logger;
    readonly now?: () => Date;
    readonly post?: typeof postJson;
    readonly get?: typeof getJson;
  }) {}

  /** Queue a report (its body without seq/sentAt, which sending adds). */
  queue(body: JsonObject): number {
    return this.deps.journal.outboxEnqueue(body).seq;
  }

  /**
   * Send what is due, oldest first; stops at the first failure so order
   * holds. Flushes run one after another (never two senders on one outbox),
   * and each starts after the one before ended, so it sees what was queued
   * meanwhile.
   */
  flush(opts: { all?: boolean } = {}): Promise<FlushResult> {
    const run = this.#flushing.then(() => this.#flush(opts));
    this.#flushing = run.catch(() => undefined);
    return run;
  }

  async #flush(opts: { all?: boolean }): Promise<FlushResult> {
    const cfg = this.deps.config();
    const j = this.deps.journal;
    if (!cfg) return { sent: 0, pending: j.outboxSize(), error: 'no fleet endpoint is configured' };
    const now = this.deps.now ?? (() => new Date());
    const post = this.deps.post ?? postJson;
    let sent = 0;
    let bearer: string;
    try {
      bearer = await token(cfg);
    } catch (e) {
      return { sent, pending: j.outboxSize(), error: (e as Error).message };
    }
    for (;;) {
      // `all`: an explicit `agentctl report` does not wait for the backoff.
      const due = j.outboxPeek({ limit: 20, now: opts.all ? new Date('9999-12-31T23:59:59.999Z') : now() });
      if (due.length === 0) return { sent, pending: j.outboxSize(), error: null };
      for (const e of due) {
        const body = { ...(e.payload as JsonObject), seq: e.seq, sentAt: now().toISOString() };
        let problem: string;
        try {
          const r = await post(new URL('v1/reports', cfg.url).toString(), body, { authorization: `Bearer ${bearer}` });
          if (r.status === 200) {
            j.outboxAck(e.seq);
            sent++;
            continue;
          }
          if (r.status === 400 || r.status === 413) {
            // The endpoint will never take this one; keeping it would block every later report.
            this.deps.log.error({ seq: e.seq, status: r.status, answer: r.body.slice(0, 500) }, 'fleet refused a report; dropped');
            j.outboxAck(e.seq);
            continue;
          }
          problem = `fleet endpoint answered ${r.status}: ${r.body.slice(0, 200)}`;
        } catch (err) {
          problem = `fleet endpoint unreachable: ${(err as Error).message}`;
        }
        j.outboxDefer(e.seq, new Date(now().getTime() + backoffMs(e.attempts)));
        this.deps.log.warn({ seq: e.seq, attempts: e.attempts + 1, err: problem }, 'fleet report not sent; will retry');
        return { sent, pending: j.outboxSize(), error: problem };
      }
    }
  }

  /**
   * The endpoint's rollout control for `channel`: null when there is none.
   * Kept in the journal, so an endpoint that cannot be reached holds the
   * machine to the last answer it gave (a pause stays a pause); never asked
   * and unreachable, there is no cap — the signed index's rollout still holds.
   */
  async rolloutLimit(channel: string): Promise<FleetRolloutLimit | null> {
    const cfg = this.deps.config();
    if (!cfg) return null;
    const j = this.deps.journal;
    const key = `fleet-rollout:${channel}`;
    const cached = (): FleetRolloutLimit | null => {
      const raw = j.getSetting(key);
      return raw ? (JSON.parse(raw) as FleetRolloutLimit | null) : null;
    };
    const get = this.deps.get ?? getJson;
    try {
      const r = await get(new URL(`v1/rollouts/${encodeURIComponent(channel)}`, cfg.url).toString(), { authorization: `Bearer ${await token(cfg)}` }, 5_000);
      if (r.status === 404) {
        j.setSetting(key, 'null');
        return null;
      }
      if (r.status !== 200) throw new Error(`answered ${r.status}: ${r.body.slice(0, 200)}`);
      const o = JSON.parse(r.body) as Record<string, unknown>;
      if (typeof o.version !== 'number' || typeof o.percent !== 'number' || typeof o.paused !== 'boolean') throw new Error('an answer without version, percent and paused');
      const limit: FleetRolloutLimit = { version: o.version, percent: o.percent, paused: o.paused, reason: typeof o.reason === 'string' ? o.reason : null };
      j.setSetting(key, JSON.stringify(limit));
      return limit;
    } catch (e) {
      this.deps.log.warn({ err: (e as Error).message, channel }, 'fleet rollout control not read; using the last known');
      return cached();
    }
  }

  /** FleetLock: take a reboot slot for this machine's group. */
  async preReboot(machineId: string): Promise<{ granted: boolean; reason: string }> {
    return this.#lock('v1/pre-reboot', machineId);
  }

  /** FleetLock: give the slot back once the new generation passed its boot check. */
  async steadyState(machineId: string): Promise<{ granted: boolean; reason: string }> {
    return this.#lock('v1/steady-state', machineId);
  }

  async #lock(path: string, machineId: string): Promise<{ granted: boolean; reason: string }> {
    const cfg = this.deps.config();
    if (!cfg) return { granted: true, reason: 'no fleet endpoint: no lock to take' };
    const post = this.deps.post ?? postJson;
    try {
      const r = await post(new URL(path, cfg.url).toString(), { client_params: { id: machineId, group: cfg.group } }, {
        authorization: `Bearer ${await token(cfg)}`, 'fleet-lock-protocol': 'true',
      });
      if (r.status === 200) return { granted: true, reason: `fleet lock ${path.endsWith('pre-reboot') ? 'granted' : 'released'} (group ${cfg.group})` };
      return { granted: false, reason: `fleet lock refused (${r.status}): ${r.body.slice(0, 200)}` };
    } catch (e) {
      return { granted: false, reason: `fleet lock unreachable: ${(e as Error).message}` };
    }
  }
}
