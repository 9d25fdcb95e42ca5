/**
 * Transport tests of org.liveup.Agent1 on a private dbus-daemon: the service
 * in this process with a scripted AgentApi (the real daemon comes later),
 * clients in this process, as other users (setpriv) and as the compiled
 * agentctl.
 */
import { execFile, spawnSync } from 'node:child_process';
import { chmod, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ERROR_CODES, LiveupError, type ErrorCode } from '../../agent/src/channel/errors.js';
import {
  AgentEventHub, BUS_NAME, OBJECT_PATH, dbusErrorName,
  type AgentApi, type AgentProperties, type AgentStatus, type CheckResult, type GenerationInfo, type HistoryEntry,
  type RollbackOptions, type UpdateOptions, type UpdateResult,
} from '../../agent/src/dbus/api.js';
import { groupAuthorizer } from '../../agent/src/dbus/authz.js';
import { connectAgent, type AgentClient } from '../../agent/src/dbus/client.js';
import { startService, type AgentService } from '../../agent/src/dbus/service.js';
import { startPrivateBus, type PrivateBus } from '../helpers/dbus.js';
import { tmp } from '../helpers/tmp.js';
import { copyForOtherUsers } from '../helpers/cli.js';
import type { BootCheckResult } from '../../agent/src/bootcheck.js';

const ROOT = resolve(import.meta.dirname, '../..');
const isRoot = process.getuid?.() === 0;

const STATUS: AgentStatus = {
  state: 'idle',
  bootedVersion: 12,
  stagedVersion: 13,
  lastGoodVersion: 11,
  pendingVersion: 14,
  channel: 'stable',
  lastCheck: { at: '2030-01-02T03:04:05.000Z', result: 'update-available', errorCode: null },
  nextCheck: '2030-01-03T03:00:00.000Z',
  decision: 'wait',
  reason: 'outside maintenance window (02:00-04:00)',
  transaction: null,
};

const GENS: GenerationInfo[] = [13, 12, 11].map((v) => ({
  version: v,
  name: `debian-${v}`,
  state: v === 13 ? 'staged' : 'good',
  pinned: v === 11,
  booted: v === 12,
  staged: v === 13,
  present: true,
  kernelVersion: '6.1.0-18-amd64',
  createdAt: '2030-01-01T00:00:00.000Z',
  stagedAt: '2030-01-01T01:00:00.000Z',
  bootedAt: v === 12 ? '2030-01-01T02:00:00.000Z' : null,
}));

/** A scripted AgentApi: records calls; tests replace behaviour per method. */
class FakeAgent implements AgentApi {
  readonly events = new AgentEventHub();
  props: AgentProperties = { state: 'idle', bootedVersion: 12, stagedVersion: 13 };
  calls: Array<[string, ...unknown[]]> = [];
  checkImpl: () => Promise<CheckResult> = async () => ({
    availableVersion: 14, currentVersion: 12, updateAvailable: true, channel: 'stable', expires: null,
  });
  updateImpl: (o: UpdateOptions) => Promise<UpdateResult> = async () => ({ version: 14, outcome: 'staged', message: 'staged 14' });

  properties(): AgentProperties {
    return this.props;
  }
  async getStatus() {
    this.calls.push(['getStatus']);
    return STATUS;
  }
  async check() {
    this.calls.push(['check']);
    return this.checkImpl();
  }
  async update(o: UpdateOptions) {
    this.calls.push(['update', o]);
    return this.updateImpl(o);
  }
  async rollback(v: number | null, o: RollbackOptions): Promise<UpdateResult> {
    this.calls.push(['rollback', v, o]);
    return { version: v ?? 11, outcome: 'rollback-staged', message: `rollback to ${v ?? 11} at next boot` };
  }
  async pin(v: number) {
    this.calls.push(['pin', v]);
  }
  async unpin(v: number) {
    if (v === 99) throw new LiveupError('UNKNOWN_GENERATION', 'no generation 99');
    this.calls.push(['unpin', v]);
  }
  async listGenerations() {
    this.calls.push(['listGenerations']);
    return GENS;
  }
  async history(limit: number | null): Promise<HistoryEntry[]> {
    this.calls.push(['history', limit]);
    return [{ at: '2030-01-02T03:04:05.000Z', kind: 'update', status: 'failed', version: 13, errorCode: 'HASH_MISMATCH', message: 'vmlinuz: hash mismatch' }];
  }
  async gc() {
    this.calls.push(['gc']);
    return { removed: [9, 10], kept: [11, 12, 13], freedBytes: 1_500_000_000 };
  }
  async report() {
    this.calls.push(['report']);
    return { sent: 2, pending: 0, error: null };
  }
}

function deferred<T = void>() {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => { resolve = r; });
  return { promise, resolve };
}

async function caught(p: Promise<unknown>): Promise<LiveupError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(LiveupError);
    return e as LiveupError;
  }
  throw new Error('expected a rejection');
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done) => {
    execFile(cmd, args, { env: { ...process.env, ...env }, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      done({ code, stdout, stderr });
    });
  });
}

let bus: PrivateBus;
/** An isolated compiled copy of the project (dist/, bin/, package.json, node_modules) readable by every user. */
let build: string;

beforeAll(async () => {
  bus = await startPrivateBus();
  build = await copyForOtherUsers({ dist: false });
  // Not the shared dist/: other test files may read it while we compile.
  const tsc = spawnSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', join(ROOT, 'tsconfig.build.json'), '--outDir', join(build, 'dist')], { encoding: 'utf8' });
  if (tsc.status !== 0) throw new Error(`tsc failed: ${tsc.stdout}${tsc.stderr}`);
  spawnSync('chmod', ['-R', 'a+rX', join(build, 'dist')]);
});

afterAll(async () => {
  await bus?.stop();
  if (build) await rm(build, { recursive: true, force: true });
});

describe('org.liveup.Agent1 over a private bus', () => {
  let agent: FakeAgent;
  let service: AgentService | null = null;
  let client: AgentClient | null = null;

  const start = async (opts: { authorize?: (uid: number) => Promise<boolean>; bootCheck?: () => Promise<BootCheckResult> } = {}) => {
    agent = new FakeAgent();
    service = await startService({ bus: bus.address, api: agent, ...opts });
    client = await connectAgent({ bus: bus.address });
    return client;
  };

  afterEach(async () => {
    client?.close();
    client = null;
    await service?.close();
    service = null;
  });

  it('round-trips every method with typed inputs and parsed results', async () => {
    const c = await start();
    expect(await c.getStatus()).toEqual(STATUS);
    expect(await c.check()).toMatchObject({ availableVersion: 14, updateAvailable: true });
    expect(await c.update({ applyLive: true })).toEqual({ version: 14, outcome: 'staged', message: 'staged 14' });
    expect(await c.rollback(null, { now: true })).toMatchObject({ version: 11, outcome: 'rollback-staged' });
    expect(await c.rollback(11)).toMatchObject({ version: 11 });
    expect(await c.rollback(null, { live: true })).toMatchObject({ version: 11 });
    await c.pin(11);
    await c.unpin(11);
    expect(await c.listGenerations()).toEqual(GENS);
    expect(await c.history(5)).toHaveLength(1);
    expect(await c.history(null)).toHaveLength(1);
    expect(await c.gc()).toEqual({ removed: [9, 10], kept: [11, 12, 13], freedBytes: 1_500_000_000 });
    expect(await c.properties()).toEqual({ state: 'idle', bootedVersion: 12, stagedVersion: 13 });
    expect(agent.calls).toEqual([
      ['getStatus'],
      ['check'],
      ['update', { downloadOnly: false, applyLive: true, applyNow: false }],
      ['rollback', null, { now: true }],
      ['rollback', 11, { now: false }],
      ['rollback', null, { now: false, live: true }],
      ['pin', 11],
      ['unpin', 11],
      ['listGenerations'],
      ['history', 5],
      ['history', null],
      ['gc'],
    ]);
  });

  it('BootCheck, as liveup-boot-check.service calls it (busctl): the verdict typed and the result as JSON; NotSupported from a daemon without the check', async () => {
    // Asynchronous: the service answers from this process.
    const busctl = () => new Promise<{ status: number; stdout: string; stderr: string }>((ok) => {
      execFile('busctl', ['--system', '--auto-start=no', 'call', 'org.liveup.Agent1', '/org/liveup/Agent1', 'org.liveup.Agent1', 'BootCheck'],
        { encoding: 'utf8', env: { ...process.env, DBUS_SYSTEM_BUS_ADDRESS: bus.address } },
        (err, stdout, stderr) => ok({ status: err ? Number(err.code ?? 1) : 0, stdout, stderr }));
    });
    await start();
    const none = await busctl();
    expect(none.status).not.toBe(0);
    expect(none.stderr).toMatch(/this agent does not run boot checks/);
    await service!.close();
    client!.close();
    const result: BootCheckResult = { version: 3, verdict: 'failed', checks: [], rebooting: false };
    await start({ bootCheck: async () => result });
    const r = await busctl();
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe(`ss "failed" ${JSON.stringify(JSON.stringify(result))}\n`);
  });

  it('maps every LiveupError code 1:1 to org.liveup.Agent1.Error.<Pascal> and back', async () => {
    const c = await start();
    let code: ErrorCode = 'HASH_MISMATCH';
    agent.checkImpl = async () => { throw new LiveupError(code, `failed with ${code}`); };
    const e = await caught(c.check());
    expect(e.code).toBe('HASH_MISMATCH');
    expect(e.message).toBe('failed with HASH_MISMATCH');
    expect((e.cause as { type?: string }).type).toBe('org.liveup.Agent1.Error.HashMismatch');
    for (code of ERROR_CODES) {
      const err = await caught(c.check());
      expect([err.code, err.message]).toEqual([code, `failed with ${code}`]);
      expect((err.cause as { type?: string }).type).toBe(dbusErrorName(code));
    }
    expect((await caught(c.unpin(99))).code).toBe('UNKNOWN_GENERATION');
  });

  it('turns other exceptions into Internal without leaking a stack', async () => {
    const c = await start();
    agent.checkImpl = async () => { throw new TypeError('x is undefined'); };
    const e = await caught(c.check());
    expect(e.code).toBe('INTERNAL');
    expect((e.cause as { type?: string }).type).toBe('org.liveup.Agent1.Error.Internal');
    expect(e.message).toBe('internal error: x is undefined');
    expect(e.message).not.toContain(' at ');
  });

  it('rejects unknown or mistyped options with INVALID_ARGUMENT', async () => {
    const c = await start();
    const dbus = (await import('dbus-next')).default;
    const raw = (service!.bus);
    // A raw call with a typo'd option, as a hand-written busctl call might send.
    const reply = raw.call(new dbus.Message({
      destination: BUS_NAME, path: OBJECT_PATH, interface: 'org.liveup.Agent1', member: 'Update', signature: 'a{sv}',
      body: [{ 'apply-live': new dbus.Variant('b', true) }],
    }));
    await expect(reply).rejects.toMatchObject({ type: 'org.liveup.Agent1.Error.InvalidArgument' });
    expect(agent.calls).toEqual([]);
    await expect(c.pin(0)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  it('refuses a second mutating call while one runs with UPDATE_IN_PROGRESS', async () => {
    const c = await start();
    const gate = deferred();
    const started = deferred();
    agent.updateImpl = async () => {
      started.resolve();
      await gate.promise;
      return { version: 14, outcome: 'applied-live', message: 'done' };
    };
    const first = c.update();
    await started.promise;
    const second = await caught(c.update());
    expect(second.code).toBe('UPDATE_IN_PROGRESS');
    expect(second.message).toMatch(/update \(started by uid 0/);
    expect((await caught(c.gc())).code).toBe('UPDATE_IN_PROGRESS');
    // Reads are not blocked by a running transaction.
    expect(await c.getStatus()).toEqual(STATUS);
    gate.resolve();
    await expect(first).resolves.toMatchObject({ outcome: 'applied-live' });
    await expect(c.gc()).resolves.toMatchObject({ removed: [9, 10] });
  });

  it('delivers Progress and StateChanged signals and PropertiesChanged to subscribed clients', async () => {
    const c = await start();
    const progress: unknown[] = [];
    const states: string[] = [];
    const offProgress = await c.onProgress((p) => progress.push(p));
    await c.onStateChanged((s) => states.push(s));
    agent.updateImpl = async () => {
      agent.props = { ...agent.props, state: 'downloading' };
      agent.events.emitStateChanged(agent.props);
      for (const done of [0, 5_000_000, 10_000_000]) agent.events.emitProgress({ step: 'download', done, total: 10_000_000 });
      agent.props = { state: 'staged', bootedVersion: 12, stagedVersion: 14 };
      agent.events.emitStateChanged(agent.props);
      return { version: 14, outcome: 'staged', message: 'staged 14' };
    };
    await c.update({ downloadOnly: true });
    // Signals sent before the reply arrive before it (one connection, in order); a short wait covers the listener hop.
    await new Promise((r) => setTimeout(r, 50));
    expect(progress).toEqual([
      { step: 'download', done: 0, total: 10_000_000 },
      { step: 'download', done: 5_000_000, total: 10_000_000 },
      { step: 'download', done: 10_000_000, total: 10_000_000 },
    ]);
    expect(states).toEqual(['downloading', 'staged']);
    expect(await c.properties()).toEqual({ state: 'staged', bootedVersion: 12, stagedVersion: 14 });
    offProgress();
    agent.events.emitProgress({ step: 'download', done: 1, total: 1 });
    await new Promise((r) => setTimeout(r, 50));
    expect(progress).toHaveLength(3);
  });

  it('exports exactly the checked-in interface XML', async () => {
    await start();
    const dbus = (await import('dbus-next')).default;
    const reply = await service!.bus.call(new dbus.Message({
      destination: BUS_NAME, path: OBJECT_PATH, interface: 'org.freedesktop.DBus.Introspectable', member: 'Introspect',
    }));
    const live = String(reply!.body[0]);
    const file = await readFile(join(ROOT, 'agent/src/dbus/org.liveup.Agent1.xml'), 'utf8');
    expect(members(live)).toEqual(members(file));
    expect(members(file)).toContain('method Update(in a{sv}, out s)');
  });

  it('a client gets DAEMON_UNAVAILABLE when the daemon leaves mid-call', async () => {
    const c = await start();
    const started = deferred();
    agent.updateImpl = async () => {
      started.resolve();
      return new Promise<never>(() => {});
    };
    const pending = c.update();
    await started.promise;
    await service!.close();
    service = null;
    expect((await caught(pending)).code).toBe('DAEMON_UNAVAILABLE');
    const e = await caught(c.getStatus());
    expect(e.code).toBe('DAEMON_UNAVAILABLE');
    expect(e.message).toMatch(/liveup-agentd is not running \(no owner for org\.liveup\.Agent1 on the bus at unix:path=/);
  });

  describe.runIf(isRoot)('authorization by caller uid (clients run as other users)', () => {
    const suffix = `${process.pid % 100000}`;
    const group = `lvtadm${suffix}`;
    const member = `lvtusr${suffix}`;

    beforeAll(() => {
      spawnSync('userdel', [member]);
      spawnSync('groupdel', [group]);
      const g = spawnSync('groupadd', [group], { encoding: 'utf8' });
      if (g.status !== 0) throw new Error(`groupadd: ${g.stderr}`);
      const u = spawnSync('useradd', ['-M', '-N', '-g', 'nogroup', '-G', group, '-s', '/usr/sbin/nologin', member], { encoding: 'utf8' });
      if (u.status !== 0) throw new Error(`useradd: ${u.stderr}`);
    });

    afterAll(() => {
      spawnSync('userdel', [member]);
      spawnSync('groupdel', [group]);
    });

    /** Run the compiled client as `user`: GetStatus, then Update; prints what happened as JSON. */
    async function asUser(user: string): Promise<{ status: string; update: string }> {
      const dir = await tmp('liveup-dbus-client-');
      await chmod(dir, 0o755);
      const script = join(dir, 'client.mjs');
      await writeFile(script, `
import { connectAgent } from ${JSON.stringify(join(build, 'dist/agent/src/dbus/client.js'))};
const c = await connectAgent({ bus: process.argv[2] });
const out = {};
try { out.status = (await c.getStatus()).state; } catch (e) { out.status = e.code; }
try { out.update = (await c.update({})).outcome; } catch (e) { out.update = e.code + ': ' + e.message; }
c.close();
process.stdout.write(JSON.stringify(out));
`);
      await chmod(script, 0o644);
      const r = await run('setpriv', [`--reuid=${user}`, '--regid=nogroup', '--clear-groups', process.execPath, script, bus.address]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      return JSON.parse(r.stdout) as { status: string; update: string };
    }

    it('nobody may read but not update (NotAuthorized), and the API is not called', async () => {
      await start();
      const r = await asUser('nobody');
      expect(r.status).toBe('idle');
      expect(r.update).toMatch(/^NOT_AUTHORIZED: Update needs root or membership of group "liveup" \(caller uid 65534\)$/);
      expect(agent.calls).toEqual([['getStatus']]);
    });

    it('the shipped system bus policy lets nobody read but not call mutating methods or own the name', async () => {
      const policed = await startPrivateBus({ includes: [join(ROOT, 'systemd/org.liveup.Agent1.conf')] });
      const api = new FakeAgent();
      // Allow-all in the daemon: what is refused here is refused by the bus policy.
      const svc = await startService({ bus: policed.address, api, authorize: async () => true });
      try {
        const dir = await tmp('liveup-dbus-policy-');
        await chmod(dir, 0o755);
        const script = join(dir, 'policy.mjs');
        await writeFile(script, `
import dbus from ${JSON.stringify(join(build, 'node_modules/dbus-next/index.js'))};
import { connectAgent } from ${JSON.stringify(join(build, 'dist/agent/src/dbus/client.js'))};
const c = await connectAgent({ bus: process.argv[2] });
const out = {};
try { out.status = (await c.getStatus()).state; } catch (e) { out.status = e.code; }
try { out.props = (await c.properties()).state; } catch (e) { out.props = e.code; }
try { out.gc = JSON.stringify(await c.gc()); } catch (e) { out.gc = e.code + ': ' + e.message; }
c.close();
const bus = dbus.sessionBus({ busAddress: process.argv[2].replace('unix:path=', 'unix:socket=') });
try { await bus.requestName('org.liveup.Agent1', 4); out.own = 'owned'; } catch (e) { out.own = e.type; }
bus.disconnect();
process.stdout.write(JSON.stringify(out));
`);
        const r = await run('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', process.execPath, script, policed.address]);
        expect(r.stderr).toBe('');
        const out = JSON.parse(r.stdout) as Record<string, string>;
        expect(out.status).toBe('idle');
        expect(out.props).toBe('idle');
        expect(out.gc).toMatch(/^NOT_AUTHORIZED: the bus refused Gc/);
        expect(out.own).toBe('org.freedesktop.DBus.Error.AccessDenied');
        expect(api.calls.map((c) => c[0])).toEqual(['getStatus']);
        // Root passes the policy.
        const rootClient = await connectAgent({ bus: policed.address });
        await expect(rootClient.gc()).resolves.toMatchObject({ removed: [9, 10] });
        rootClient.close();
      } finally {
        await svc.close();
        await policed.stop();
      }
    });

    it('a member of the admin group may update', async () => {
      await start({ authorize: groupAuthorizer(group) });
      const r = await asUser(member);
      expect(r).toEqual({ status: 'idle', update: 'staged' });
      expect(agent.calls.map((c) => c[0])).toEqual(['getStatus', 'update']);
      // …and nobody still may not under that policy.
      expect((await asUser('nobody')).update).toMatch(/^NOT_AUTHORIZED/);
    });
  });

  describe('agentctl (compiled bin)', () => {
    const agentctl = (...args: string[]) => run(process.execPath, [join(build, 'bin/agentctl'), ...args]);

    it('without a daemon: a clear DAEMON_UNAVAILABLE and exit 3, no stack trace', async () => {
      const r = await agentctl('--bus', bus.address, 'status');
      expect(r.code).toBe(3);
      expect(r.stdout).toBe('');
      expect(r.stderr.trim()).toBe(`error: DAEMON_UNAVAILABLE: liveup-agentd is not running (no owner for org.liveup.Agent1 on the bus at ${bus.address})`);

      const gone = await agentctl('update', '--bus', `unix:path=${join(await tmp(), 'no-such-socket')}`, '--json');
      expect(gone.code).toBe(3);
      const j = JSON.parse(gone.stdout) as { ok: boolean; error: { code: string; message: string } };
      expect(j.ok).toBe(false);
      expect(j.error.code).toBe('DAEMON_UNAVAILABLE');
      expect(j.error.message).toMatch(/^liveup-agentd is not running \(cannot connect to the bus at unix:path=.*: no bus listening \(ENOENT\)\)$/);
      expect(gone.stderr).not.toMatch(/\n\s+at /);
    });

    it('status, list, history, update, pin and errors against the service', async () => {
      await start();
      const status = await agentctl('status', '--bus', bus.address);
      expect(status.code).toBe(0);
      expect(status.stdout).toContain('● 12 debian-12 (booted, good)');
      expect(status.stdout).toContain('  13 debian-13 (staged: next boot, staged)');
      expect(status.stdout).toContain('Pending:     14');
      expect(status.stdout).toContain('Decision:    wait: outside maintenance window');

      const json = await agentctl('--bus', bus.address, 'status', '--json');
      expect(JSON.parse(json.stdout)).toEqual(STATUS);

      const list = await agentctl('list', '--bus', bus.address);
      expect(list.stdout.split('\n')[0]).toMatch(/^\s+VERSION\s+NAME\s+STATE/);

      const hist = await agentctl('history', '--bus', bus.address, '--version', '13');
      expect(hist.stdout).toContain('HASH_MISMATCH: vmlinuz: hash mismatch');

      agent.updateImpl = async () => {
        for (const done of [0, 50, 100]) agent.events.emitProgress({ step: 'download', done: done * 1e6, total: 100e6 });
        return { version: 14, outcome: 'staged', message: 'staged generation 14; it boots next time' };
      };
      const up = await agentctl('update', '--download-only', '--bus', bus.address);
      expect(up.code).toBe(0);
      expect(up.stdout.trim()).toBe('staged generation 14; it boots next time');
      // Not a TTY: plain progress lines on stderr.
      expect(up.stderr).toMatch(/^download .* 100% 100.0 MB\/100.0 MB/m);
      expect(agent.calls.at(-1)).toEqual(['update', { downloadOnly: true, applyLive: false, applyNow: false }]);

      const pin = await agentctl('pin', '12', '--bus', bus.address, '--json');
      expect(JSON.parse(pin.stdout)).toEqual({ ok: true, version: 12, pinned: true });

      const bad = await agentctl('unpin', '99', '--bus', bus.address);
      expect(bad.code).toBe(1);
      expect(bad.stderr.trim()).toBe('error: UNKNOWN_GENERATION: no generation 99');

      const usage = await agentctl('pin', 'abc', '--bus', bus.address);
      expect(usage.code).toBe(2);
    });
  });
});

/** The members of org.liveup.Agent1 in an introspection document, as sorted one-line signatures. */
function members(xml: string): string[] {
  const start = xml.indexOf('<interface name="org.liveup.Agent1"');
  const body = xml.slice(start, xml.indexOf('</interface>', start));
  const out: string[] = [];
  const re = /<(method|signal|property)\s+name="(\w+)"([^>]*?)(\/>|>([\s\S]*?)<\/\1>)/g;
  for (const m of body.replace(/<!--[\s\S]*?-->/g, '').matchAll(re)) {
    const [, kind, name, attrs, , inner] = m;
    if (kind === 'property') {
      out.push(`property ${name} ${/type="([^"]+)"/.exec(attrs!)?.[1]} ${/access="([^"]+)"/.exec(attrs!)?.[1]}`);
      continue;
    }
    const args = [...(inner ?? '').matchAll(/<arg\b([^>]*)\/>/g)].map((a) => {
      const type = /type="([^"]+)"/.exec(a[1]!)?.[1];
      const dir = /direction="([^"]+)"/.exec(a[1]!)?.[1] ?? (kind === 'method' ? 'in' : undefined);
      return dir ? `${dir} ${type}` : type;
    });
    out.push(`${kind} ${name}(${args.join(', ')})`);
  }
  return out.sort();
}
