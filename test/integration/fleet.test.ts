/**
 * The fleet endpoint and the agent's outbox together, as an administrator
 * runs them: `liveup fleet token create`, `liveup fleet serve` (in-process
 * here, to stop and restart it), the compiled daemon enrolled with `agentctl
 * enroll`, reports through `agentctl report` and state changes.
 *
 * Every test runs twice: on SQLite and on a real PostgreSQL server started
 * from Debian's package for this file (bench/pgserver.ts).
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmp } from '../helpers/tmp.js';
import { makeGendir, makeKey } from '../helpers/fixtures.js';
import { startPrivateBus } from '../helpers/dbus.js';
import { agentWorld } from '../helpers/machine.js';
import { bin, collect, runCli } from '../helpers/cli.js';
import { publish } from '../../publisher/src/publish.js';
import { openFleetStore, type FleetStore } from '../../fleet/src/store.js';
import { serveFleet, type RunningFleetServer } from '../../fleet/src/server.js';
import { postJson } from '../../agent/src/adapters/fleet.js';
import { startPostgres, type PgServer } from '../../bench/pgserver.js';
import { chromium } from 'playwright-core';
import { Journal } from '../../agent/src/adapters/journal.js';
import { startDaemon } from '../../agent/src/daemon.js';
import { createLogger } from '../../agent/src/util/log.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  while (cleanups.length) await Promise.resolve(cleanups.pop()!()).catch(() => undefined);
});

const quiet = createLogger({ level: 'silent' });
const ID = (n: number) => n.toString(16).padStart(32, '0');
const report = (o: Record<string, unknown> = {}) => ({
  format: 1, machineId: ID(1), hostname: 'web-1', channel: 'stable', seq: 1, sentAt: new Date().toISOString(), agentVersion: '0.1.0',
  state: 'idle', bootedVersion: 3, runningVersion: 3, stagedVersion: null, lastGoodVersion: 3, lastResult: 'ok', lastError: null,
  health: 'good', uptimeSeconds: 100, decision: null, ...o,
});

type Kind = 'sqlite' | 'postgres';
let pgServer: Promise<PgServer> | null = null;
let databases = 0;
afterAll(async () => { if (pgServer) await (await pgServer).stop(); });

/** A new empty database of this kind, as `--db` takes it. */
async function database(kind: Kind, dir: string): Promise<string> {
  if (kind === 'sqlite') return `sqlite:${join(dir, 'fleet.db')}`;
  pgServer ??= startPostgres();
  return (await pgServer).database(`fleet_${process.pid}_${++databases}`);
}

async function endpoint(dir: string, kind: Kind, port = 0, slots: Record<string, number> = { default: 1 }): Promise<{ server: RunningFleetServer; store: FleetStore; db: string }> {
  const db = await database(kind, dir);
  const store = await openFleetStore(db);
  const server = await serveFleet({ store, host: '127.0.0.1', port, slots });
  cleanups.push(() => store.close());
  cleanups.push(() => server.close());
  return { server, store, db };
}

async function token(db: string, name = 'fleet', role: 'agent' | 'admin' = 'admin'): Promise<string> {
  const r = await runCli('liveup', ['fleet', 'token', 'create', name, '--role', role, '--db', db]);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout.trim();
}

async function get(url: string, bearer: string): Promise<{ status: number; body: unknown }> {
  const res = await fetch(url, { headers: { authorization: `Bearer ${bearer}` } });
  return { status: res.status, body: await res.json() };
}

describe.each(['sqlite', 'postgres'] as const)('liveup fleet serve on %s: the API', (kind) => {
  it('takes a valid report once per (machine, seq); refuses bad input with a 4xx naming the problem and writes nothing', async () => {
    const dir = await tmp();
    const { server, store, db } = await endpoint(dir, kind);
    const t = await token(db);
    const url = `${server.url}v1/reports`;
    const auth = { authorization: `Bearer ${t}` };

    expect((await postJson(url, report(), {})).status).toBe(401);
    expect((await postJson(url, report(), { authorization: 'Bearer nope' })).status).toBe(401);
    const raw = (body: string, headers: Record<string, string> = {}) =>
      fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...auth, ...headers }, body }).then(async (r) => ({ status: r.status, body: (await r.json()) as { error: { message: string } } }));
    const bad = await raw('{"format":1,');
    expect(bad.status).toBe(400);
    expect(bad.body.error.message).toMatch(/not valid JSON/);
    const unknown = await raw(JSON.stringify({ ...report(), colour: 'blue' }));
    expect(unknown.status).toBe(400);
    expect(unknown.body.error.message).toMatch(/colour/);
    const badId = await raw(JSON.stringify(report({ machineId: 'x' })));
    expect(badId.body.error.message).toMatch(/machineId.*machine id/);
    expect((await raw('x'.repeat(70_000))).status).toBe(413);
    expect((await fetch(url, { method: 'POST', headers: { ...auth, 'content-type': 'text/plain' }, body: '{}' })).status).toBe(415);
    expect(await store.machines()).toEqual([]);

    const ok = await postJson(url, report(), auth);
    expect(ok.status).toBe(200);
    const again = await postJson(url, report(), auth);
    expect(JSON.parse(again.body)).toMatchObject({ ok: true, duplicate: true });
    expect(await store.reportCount(ID(1))).toBe(1);
    await postJson(url, report({ seq: 2, state: 'staged', stagedVersion: 4 }), auth);
    const list = await get(`${server.url}v1/machines`, t);
    expect(list.body).toMatchObject({ machines: [{ id: ID(1), hostname: 'web-1', lastSeq: 2, stale: false, report: { stagedVersion: 4 } }] });
    const one = await get(`${server.url}v1/machines/${ID(1)}`, t);
    expect((one.body as { history: { seq: number }[] }).history.map((h) => h.seq)).toEqual([2, 1]);
    expect((await get(`${server.url}v1/machines/${ID(9)}`, t)).status).toBe(404);

    // A revoked token is refused within the endpoint's 5-second token cache.
    expect((await runCli('liveup', ['fleet', 'token', 'revoke', 'fleet', '--db', db])).code).toBe(0);
    await expect.poll(async () => (await postJson(url, report({ seq: 3 }), auth)).status, { timeout: 7000, interval: 500 }).toBe(401);
  });

  it('FleetLock: slots per group are respected by several machines, a holder asking again keeps its slot', async () => {
    const dir = await tmp();
    const { server, db } = await endpoint(dir, kind, 0, { default: 1, web: 2 });
    const t = await token(db);
    const lock = (path: string, id: string, group: string) =>
      postJson(`${server.url}v1/${path}`, { client_params: { id, group } }, { authorization: `Bearer ${t}`, 'fleet-lock-protocol': 'true' });
    const results = await Promise.all([1, 2, 3, 4].map((n) => lock('pre-reboot', ID(n), 'web')));
    expect(results.map((r) => r.status).sort()).toEqual([200, 200, 409, 409]);
    const holders = [1, 2, 3, 4].filter((_, i) => results[i]!.status === 200);
    const waiting = [1, 2, 3, 4].filter((_, i) => results[i]!.status !== 200);
    expect(JSON.parse(results.find((r) => r.status === 409)!.body)).toMatchObject({ kind: 'failed_lock' });
    expect((await lock('pre-reboot', ID(holders[0]!), 'web')).status).toBe(200); // idempotent
    expect((await lock('pre-reboot', ID(9), 'db')).status).toBe(200); // another group, its own slot
    expect((await lock('steady-state', ID(holders[0]!), 'web')).status).toBe(200);
    expect((await lock('pre-reboot', ID(waiting[0]!), 'web')).status).toBe(200);
    expect((await lock('pre-reboot', ID(waiting[1]!), 'web')).status).toBe(409);
    const noHeader = await postJson(`${server.url}v1/pre-reboot`, { client_params: { id: ID(5), group: 'web' } }, { authorization: `Bearer ${t}` });
    expect(noHeader.status).toBe(400);
  });

  it('an agent token posts reports and takes slots but cannot read the fleet or steer a rollout', async () => {
    const dir = await tmp();
    const { server, db } = await endpoint(dir, kind);
    const machine = await token(db, 'machines', 'agent');
    const auth = { authorization: `Bearer ${machine}` };
    expect((await postJson(`${server.url}v1/reports`, report(), auth)).status).toBe(200);
    expect((await postJson(`${server.url}v1/pre-reboot`, { client_params: { id: ID(1), group: 'web' } }, { ...auth, 'fleet-lock-protocol': 'true' })).status).toBe(200);
    const list = await get(`${server.url}v1/machines`, machine);
    expect(list.status).toBe(403);
    expect((list.body as { error: { message: string } }).error.message).toMatch(/agent token: this needs an admin token/);
    expect((await get(`${server.url}v1/rollouts/stable`, machine)).status).toBe(404); // no control yet: agents read it
    expect((await postJson(`${server.url}v1/rollouts/stable`, { version: 3, percent: 10 }, auth)).status).toBe(403);
    const listed = await runCli('liveup', ['fleet', 'token', 'list', '--db', db]);
    expect(listed.stdout).toMatch(/machines {2}agent/);
    const badRole = await runCli('liveup', ['fleet', 'token', 'create', 'x', '--role', 'root', '--db', db]);
    expect(badRole.stderr).toMatch(/--role root: expected agent or admin/);
  });

  it('rollout control: set by the administrator, read by agents, paused by itself when the wave fails its boot checks', async () => {
    const dir = await tmp();
    const { server, db } = await endpoint(dir, kind);
    const admin = await token(db);
    const machine = await token(db, 'machines', 'agent');
    const fleet = (args: string[]) => runCli('liveup', ['fleet', 'rollout', ...args, '--db', db]);

    const none = await fleet(['stable', '--percent', '10']);
    expect(none.code).not.toBe(0);
    expect(none.stderr).toMatch(/no rollout yet: name the version/);
    const set = await fleet(['stable', '--version', '5', '--percent', '10', '--auto-pause', '25%', '--auto-pause-min', '4']);
    expect(set.code, set.stderr).toBe(0);
    expect(set.stdout).toMatch(/stable: version 5 to 10% of machines; auto-pause at 25% failed boot checks once 4 machines tried it/);
    expect((await get(`${server.url}v1/rollouts/stable`, machine)).body).toMatchObject({ version: 5, percent: 10, paused: false });

    // The wave: two good, one fell back from 5 (failedVersion), then one boots 5 and fails its check.
    const auth = { authorization: `Bearer ${machine}` };
    for (const [n, o] of [[1, {}], [2, {}], [3, { bootedVersion: 4, failedVersion: 5 }]] as const) {
      expect((await postJson(`${server.url}v1/reports`, report({ machineId: ID(n), bootedVersion: 5, ...o }), auth)).status).toBe(200);
    }
    expect((await get(`${server.url}v1/rollouts/stable`, machine)).body).toMatchObject({ paused: false }); // 3 tried: under the minimum
    expect((await postJson(`${server.url}v1/reports`, report({ machineId: ID(4), bootedVersion: 5, health: 'failed' }), auth)).status).toBe(200);
    expect((await get(`${server.url}v1/rollouts/stable`, machine)).body).toMatchObject({
      version: 5, percent: 10, paused: true, reason: expect.stringMatching(/paused automatically: 2 of 4 machines failed the boot check of 5/),
    });
    expect((await fleet(['stable'])).stdout).toMatch(/PAUSED \(paused automatically: 2 of 4/);

    // Resumed by hand (say, after a fix): the endpoint does not pause it again until the wave changes… but it still counts.
    const resumed = await fleet(['stable', '--resume', '--auto-pause', 'off']);
    expect(resumed.stdout).toMatch(/version 5 to 10% of machines; auto-pause off/);
    // Over HTTP with an admin token; bad input named, nothing changed.
    const bad = await postJson(`${server.url}v1/rollouts/stable`, { percent: 150 }, { authorization: `Bearer ${admin}` });
    expect(bad.status).toBe(400);
    expect(JSON.parse(bad.body).error.message).toMatch(/percent.*0 to 100/);
    const up = await postJson(`${server.url}v1/rollouts/stable`, { percent: 50, paused: true }, { authorization: `Bearer ${admin}` });
    expect(JSON.parse(up.body)).toMatchObject({ percent: 50, paused: true, reason: 'paused by fleet' });
    expect((await get(`${server.url}v1/rollouts`, admin)).body).toMatchObject({ rollouts: [{ channel: 'stable', version: 5, percent: 50 }] });
    // A new version starts a new rollout, unpaused, at 0% unless told.
    expect((await fleet(['stable', '--version', '6'])).stdout).toMatch(/version 6 to 0% of machines; auto-pause off/);
  });
});

describe.each(['sqlite', 'postgres'] as const)('agent → fleet on %s: reports are never lost, never stored twice', (kind) => {
  async function agent(dir: string, fleetUrl: string, fleetToken: string): Promise<{ ctl(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }>; start(): Promise<void>; kill(): Promise<void> }> {
    const key = await makeKey(join(dir, 'keys'));
    const repo = join(dir, 'repo');
    await publish({ repo, channel: 'stable', gendir: await makeGendir(join(dir, 'g1')), keys: [key.priv], indexTtlMs: 86400e3, manifestTtlMs: 86400e3 });
    await publish({ repo, channel: 'stable', gendir: await makeGendir(join(dir, 'g2'), { marker: 'two' }), keys: [key.priv], indexTtlMs: 86400e3, manifestTtlMs: 86400e3 });
    await writeFile(join(dir, 'machine-id'), `${ID(42)}\n`);
    const { runDir, bus } = await agentWorld(dir, repo, key.pubPath, cleanups);
    // As an administrator enrolls a machine (the drop-in names a machine-id file for the test).
    const enroll = await runCli('agentctl', ['enroll', fleetUrl, '--token', fleetToken, '--group', 'web', '--config-dir', join(dir, 'agent.d'), '--token-file', join(dir, 'fleet.token')]);
    expect(enroll.code, enroll.stderr).toBe(0);
    const dropIn = JSON.parse(await readFile(join(dir, 'agent.d', '50-fleet.json'), 'utf8')) as { fleet: Record<string, unknown> };
    expect((await stat(join(dir, 'fleet.token'))).mode & 0o777).toBe(0o600);
    expect(dropIn.fleet).toMatchObject({ group: 'web' });
    await writeFile(join(dir, 'agent.d', '10-machine.json'), JSON.stringify({ machineIdFile: join(dir, 'machine-id') }));
    let daemon: ChildProcess | null = null;
    const m = {
      ctl: (args: string[]) => collect(spawn(bin('agentctl'), ['--bus', bus.address, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })),
      async start() {
        const d = spawn(bin('liveup-agentd'), ['--config', join(dir, 'agent.json'), '--config-dir', join(dir, 'agent.d'), '--run-dir', runDir], { stdio: 'ignore' });
        daemon = d;
        cleanups.push(() => { if (d.exitCode === null && d.signalCode === null) d.kill('SIGKILL'); });
        for (let i = 0; i < 200 && (await m.ctl(['status'])).code !== 0; i++) await new Promise((r) => setTimeout(r, 100));
      },
      async kill() {
        const d = daemon!;
        const closed = new Promise((r) => d.once('close', r));
        d.kill('SIGKILL');
        await closed;
      },
    };
    await m.start();
    return m;
  }

  it('reports flow; with the endpoint down they queue; killed and restarted, every one arrives once, in order', async () => {
    const dir = await tmp();
    let ep = await endpoint(join(dir), kind);
    const t = await token(ep.db, 'machines', 'agent');
    const port = Number(new URL(ep.server.url).port);
    const m = await agent(join(dir, 'machine'), ep.server.url, t);

    const first = await m.ctl(['report', '--json']);
    expect(first.code, first.stderr).toBe(0);
    expect(JSON.parse(first.stdout)).toMatchObject({ pending: 0, error: null });
    const seen = await ep.store.machine(ID(42));
    expect(seen?.machine).toMatchObject({ hostname: expect.any(String), channel: 'stable' });
    expect(seen?.machine.report).toMatchObject({ bootedVersion: 1, health: 'unknown' });
    // …and the administrator sees it on the dashboard (headless Chromium).
    const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
    try {
      const page = await browser.newPage();
      await page.goto(`${ep.server.url}#token=${await token(ep.db, 'admin')}`);
      const row = page.locator('#rows tr', { hasText: ID(42).slice(0, 12) });
      await expect.poll(() => row.count()).toBe(1);
      expect(await row.innerText()).toMatch(new RegExp(`${seen!.machine.hostname}[\\s\\S]*stable[\\s\\S]*\\b1\\b`));
    } finally {
      await browser.close();
    }

    // The endpoint goes away; the machine keeps working and queues.
    await ep.server.close();
    await ep.store.close();
    expect((await m.ctl(['update'])).code).toBe(0); // state changes → reports queued
    const down = await m.ctl(['report']);
    expect(down.code).toBe(1);
    expect(down.stdout).toMatch(/still queued: fleet endpoint unreachable/);
    await m.kill(); // and the agent dies with its outbox full
    await m.start();

    // The endpoint comes back on the same database and port.
    const store = await openFleetStore(ep.db);
    const server = await serveFleet({ store, host: '127.0.0.1', port });
    cleanups.push(() => store.close());
    cleanups.push(() => server.close());
    const up = await m.ctl(['report', '--json']);
    expect(JSON.parse(up.stdout)).toMatchObject({ pending: 0, error: null });
    const h = (await store.machine(ID(42)))!;
    const seqs = h.history.map((x) => x.seq).sort((a, b) => a - b);
    // Every sequence from 1 to the last arrived exactly once: nothing lost, nothing twice.
    expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, i) => i + 1));
    expect(seqs.length).toBeGreaterThan(3);
    expect(h.machine.report).toMatchObject({ stagedVersion: 2 });
    ep = { ...ep, server, store };
  });

  it("the endpoint's rollout control holds a version back, and keeps holding it while the endpoint is down", async () => {
    const dir = await tmp();
    const ep = await endpoint(join(dir), kind);
    const port = Number(new URL(ep.server.url).port);
    const m = await agent(join(dir, 'machine'), ep.server.url, await token(ep.db, 'machines', 'agent'));
    const fleet = (args: string[]) => runCli('liveup', ['fleet', 'rollout', 'stable', ...args, '--db', ep.db]);
    const check = async () => JSON.parse((await m.ctl(['check', '--json'])).stdout) as { updateAvailable: boolean; availableVersion: number };
    const lastCheck = async () => (JSON.parse((await m.ctl(['status', '--json'])).stdout) as { lastCheck: { message: string } }).lastCheck.message;

    expect(await check()).toMatchObject({ updateAvailable: true, availableVersion: 2 }); // no control: the index alone decides
    expect((await fleet(['--version', '2', '--percent', '0'])).code).toBe(0);
    expect(await check()).toMatchObject({ updateAvailable: false, availableVersion: 2 });
    expect(await lastCheck()).toMatch(/fleet limits the rollout of 2 to 0%: not this machine's turn yet/);

    await ep.server.close(); // the endpoint goes away: its last answer still holds
    expect((await check()).updateAvailable).toBe(false);
    const server = await serveFleet({ store: ep.store, host: '127.0.0.1', port });
    cleanups.push(() => server.close());
    expect((await fleet(['--percent', '100', '--pause'])).code).toBe(0); // paused at 100%: everyone's bucket is in
    expect(await check()).toMatchObject({ updateAvailable: true, availableVersion: 2 });
    const update = await m.ctl(['update', '--json']);
    expect(update.code, update.stderr).toBe(0);
  });

  it('agentctl report without enrollment says what to do', async () => {
    const dir = await tmp();
    const bus = await startPrivateBus();
    cleanups.push(() => bus.stop());
    const r = await runCli('agentctl', ['enroll', 'ftp://x', '--token', 'abcdefgh', '--config-dir', join(dir, 'd'), '--token-file', join(dir, 't')]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/INVALID_ARGUMENT: ftp:\/\/x is not an http/);
  });
});

describe('agent → fleet: the reboot slot', () => {
  it('a slot held for a switch is released only once the booted generation passed its boot check, retried until then', async () => {
    const dir = await tmp();
    const ep = await endpoint(dir, 'sqlite', 0, { web: 1 });
    const t = await token(ep.db, 'machines', 'agent');
    const key = await makeKey(join(dir, 'keys'));
    const repo = join(dir, 'repo');
    await publish({ repo, channel: 'stable', gendir: await makeGendir(join(dir, 'g1')), keys: [key.priv], indexTtlMs: 86400e3, manifestTtlMs: 86400e3 });
    const w = await agentWorld(dir, repo, key.pubPath, cleanups);
    await writeFile(join(dir, 'machine-id'), `${ID(42)}\n`);
    await writeFile(join(dir, 'fleet.token'), `${t}\n`, { mode: 0o600 });
    await mkdir(join(dir, 'agent.d'));
    await writeFile(join(dir, 'agent.d', '50-fleet.json'), JSON.stringify({
      machineIdFile: join(dir, 'machine-id'), fleet: { url: ep.server.url, tokenFile: join(dir, 'fleet.token'), group: 'web' },
    }));
    const slot = (id: string) => postJson(`${ep.server.url}v1/pre-reboot`, { client_params: { id, group: 'web' } }, { authorization: `Bearer ${t}`, 'fleet-lock-protocol': 'true' });
    // What the previous boot left: it took the group's one slot and switched to generation 1.
    expect((await slot(ID(42))).status).toBe(200);
    const journal = Journal.open(join(w.state, 'journal.db'));
    cleanups.push(() => journal.close());
    journal.setSetting('fleet-lock-held', JSON.stringify({ version: 1, machineId: ID(42) }));

    const d = await startDaemon({ mainFile: w.configFile, dropInDir: join(dir, 'agent.d'), localDropInDir: join(dir, 'local.d'), runDir: w.runDir, fleetTickMs: 100, log: quiet });
    cleanups.push(() => d.stop());
    // Booted but not yet good: the slot stays taken, another machine of the group waits.
    await new Promise((r) => setTimeout(r, 800));
    expect(d.agent.holdsFleetLock()).toBe(true);
    expect((await slot(ID(43))).status).toBe(409);
    // The boot check (its own process) marks generation 1 good; the daemon gives the slot back.
    journal.setState(1, 'good');
    await expect.poll(() => d.agent.holdsFleetLock(), { timeout: 10_000 }).toBe(false);
    expect((await slot(ID(43))).status).toBe(200);
  });
});
