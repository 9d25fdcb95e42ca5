/**
 * The agent as an administrator meets it: the compiled `liveup-agentd` on a
 * private dbus-daemon, driven by the compiled `agentctl`, fetching from
 * `liveup serve` on 127.0.0.1, staging onto a temporary boot medium, writing
 * grub.cfg and a real grubenv with grub-editenv, journalling into SQLite.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import { cp, mkdir, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { tmp } from '../helpers/tmp.js';
import { makeGendir, makeKey, type TestKey } from '../helpers/fixtures.js';
import { startPrivateBus, type PrivateBus } from '../helpers/dbus.js';
import { bin, collect, copyForOtherUsers } from '../helpers/cli.js';
import { publish } from '../../publisher/src/publish.js';
import { serve, type RunningServer } from '../../publisher/src/serve.js';
import { Journal } from '../../agent/src/adapters/journal.js';

interface Machine {
  dir: string;
  key: TestKey;
  repo: string;
  boot: string;
  state: string;
  runDir: string;
  configFile: string;
  dropIns: string;
  bus: PrivateBus;
  server: RunningServer;
  daemon: ChildProcess;
  log: () => string;
  ctl(args: string[], opts?: { asNobody?: boolean }): Promise<{ code: number | null; stdout: string; stderr: string }>;
  json<T>(args: string[]): Promise<T>;
  startDaemon(): Promise<void>;
  stopDaemon(signal?: NodeJS.Signals): Promise<void>;
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
});

async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 20_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A machine running generation 1, with generation 2 published in the channel. */
async function machine(opts: {
  kernelBytes?: number; bootTmpfsBytes?: number; stateTmpfsBytes?: number; mirror?: (s: RunningServer) => string;
  /** More settings for agent.json. */
  config?: Record<string, unknown>;
} = {}): Promise<Machine> {
  const dir = await tmp();
  const key = await makeKey(join(dir, 'keys'));
  const repo = join(dir, 'repo');
  const base = { repo, channel: 'stable', keys: [key.priv], indexTtlMs: 86400e3, manifestTtlMs: 86400e3 };
  await publish({ ...base, gendir: await makeGendir(join(dir, 'g1'), { marker: 'one\n' }) });
  await publish({ ...base, gendir: await makeGendir(join(dir, 'g2'), { marker: 'two\n', kernelBytes: opts.kernelBytes ?? 256 * 1024 }) });
  const boot = join(dir, 'boot');
  await mkdir(boot);
  if (opts.bootTmpfsBytes) {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${opts.bootTmpfsBytes}`, 'liveup-test-boot', boot]);
    cleanups.push(async () => void execFileSync('umount', ['-l', boot]));
  }
  // The installed generation 1, as the installer (or an earlier update) left it.
  await mkdir(join(boot, 'live'), { recursive: true });
  await cp(join(repo, 'generations', '1'), join(boot, 'live', '1'), { recursive: true });
  const state = join(dir, 'state');
  if (opts.stateTmpfsBytes) {
    await mkdir(state);
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${opts.stateTmpfsBytes}`, 'liveup-test-state', state]);
    cleanups.push(async () => void execFileSync('umount', ['-l', state]));
  }
  const runDir = join(dir, 'run');
  await mkdir(runDir);
  await writeFile(join(runDir, 'booted'), '1\n');
  const bus = await startPrivateBus();
  cleanups.push(() => bus.stop());
  const server = await serve({ root: repo, host: '127.0.0.1', port: 0 });
  cleanups.push(() => server.close());
  const configFile = join(dir, 'agent.json');
  const dropIns = join(dir, 'agent.d');
  await writeFile(configFile, JSON.stringify({
    channel: 'stable',
    mirrors: [opts.mirror ? opts.mirror(server) : server.url],
    keyring: key.pubPath,
    architecture: 'amd64',
    schedule: '0 0 1 1 *',
    jitterSeconds: 0,
    bootDir: boot,
    stateDir: state,
    dbus: bus.address,
    fetch: { deadlineSeconds: 120, minBytesPerSecond: 0, retries: 1, backoffSeconds: 1 },
    ...opts.config,
  }, null, 2));
  let daemon!: ChildProcess;
  let log = '';
  const m: Machine = {
    dir, key, repo, boot, state, runDir, configFile, dropIns, bus, server,
    get daemon() {
      return daemon;
    },
    log: () => log,
    async ctl(args, o = {}) {
      const argv = ['--bus', bus.address, ...args];
      const child = o.asNobody
        ? spawn('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', process.execPath, join(await forOthers(), 'bin', 'agentctl'), ...argv], { stdio: ['ignore', 'pipe', 'pipe'] })
        : spawn(process.execPath, [bin('agentctl'), ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
      return collect(child);
    },
    async json<T>(args: string[]) {
      const r = await m.ctl([...args, '--json']);
      if (r.code !== 0) throw new Error(`agentctl ${args.join(' ')} failed (${r.code}): ${r.stdout}${r.stderr}`);
      return JSON.parse(r.stdout) as T;
    },
    async startDaemon() {
      daemon = spawn(bin('liveup-agentd'), ['--config', configFile, '--config-dir', dropIns, '--run-dir', runDir], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, LIVEUP_LOG_LEVEL: 'debug' },
      });
      daemon.stdout!.on('data', (d: Buffer) => (log += d.toString()));
      daemon.stderr!.on('data', (d: Buffer) => (log += d.toString()));
      const d = daemon;
      cleanups.push(async () => {
        if (d.exitCode === null && d.signalCode === null) {
          d.kill('SIGKILL');
          await new Promise((r) => d.once('close', r));
        }
      });
      await waitFor('the daemon on the bus', async () => (await m.ctl(['status'])).code === 0);
    },
    async stopDaemon(signal = 'SIGTERM') {
      const d = daemon;
      const closed = new Promise((r) => d.once('close', r));
      d.kill(signal);
      await closed;
    },
  };
  await m.startDaemon();
  return m;
}

function integrity(stateDir: string): string {
  const db = new Database(join(stateDir, 'journal.db'), { readonly: true });
  try {
    return (db.pragma('integrity_check', { simple: true }) as string);
  } finally {
    db.close();
  }
}

function grubenv(boot: string): Record<string, string> {
  const out = execFileSync('grub-editenv', [join(boot, 'grub', 'grubenv'), 'list']).toString();
  return Object.fromEntries(out.trim().split('\n').filter(Boolean).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

/** A proxy in front of `liveup serve` that sends bodies at `bytesPerSec`, and records Range headers. */
async function throttledProxy(upstream: string, bytesPerSec: number): Promise<{ url: string; ranges: string[]; close(): Promise<void> }> {
  const ranges: string[] = [];
  const server = http.createServer((req, res) => {
    if (req.headers.range) ranges.push(`${req.url} ${req.headers.range}`);
    http.get(new URL(req.url!, upstream), { headers: req.headers.range ? { range: req.headers.range } : {} }, (up) => {
      res.writeHead(up.statusCode!, up.headers);
      up.on('data', (chunk: Buffer) => {
        up.pause();
        res.write(chunk, () => setTimeout(() => up.resume(), (chunk.length / bytesPerSec) * 1000));
      });
      up.on('end', () => res.end());
    }).on('error', () => res.destroy());
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  return {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}/`,
    ranges,
    close: () => new Promise<void>((ok) => { server.closeAllConnections(); server.close(() => ok()); }),
  };
}

beforeAll(() => {
  bin('liveup-agentd'); // fails early with a clear message when dist/ is missing
});

/** The compiled agentctl where `nobody` can run it (the checkout may be root's only), made once. */
let othersCopy: Promise<string> | null = null;
const forOthers = (): Promise<string> => (othersCopy ??= copyForOtherUsers({ dist: true }));
afterAll(async () => {
  if (othersCopy) await rm(await othersCopy, { recursive: true, force: true });
});

describe('liveup-agentd and agentctl', () => {
  it('check → update stages generation 2 with a correct grub.cfg and grubenv, all journalled', async () => {
    const m = await machine();
    const status0 = await m.json<{ bootedVersion: number; state: string }>(['status']);
    expect(status0.bootedVersion).toBe(1);
    const check = await m.json<{ updateAvailable: boolean; availableVersion: number }>(['check']);
    expect(check).toMatchObject({ updateAvailable: true, availableVersion: 2 });
    const upd = await m.json<{ outcome: string; version: number }>(['update']);
    expect(upd).toMatchObject({ outcome: 'staged', version: 2 });
    expect((await readdir(join(m.boot, 'live', '2'))).sort()).toEqual(['SHA512SUMS', 'filesystem.squashfs', 'initrd.img', 'manifest.json', 'manifest.json.sig', 'vmlinuz']);
    // The staged files' signed hashes, in the format GRUB's hashsum and sha512sum -c read.
    expect(execFileSync('sha512sum', ['-c', 'SHA512SUMS'], { cwd: join(m.boot, 'live', '2') }).toString()).toMatch(/vmlinuz: OK[\s\S]*initrd.img: OK|initrd.img: OK[\s\S]*vmlinuz: OK/);
    const cfg = await readFile(join(m.boot, 'grub', 'grub.cfg'), 'utf8');
    execFileSync('grub-script-check', [join(m.boot, 'grub', 'grub.cfg')]);
    const ids = [...cfg.matchAll(/--id[= ]'?(liveup-\d+)/g)].map((x) => x[1]);
    expect(ids).toEqual(['liveup-2', 'liveup-1']);
    expect(cfg).toMatch(/linux\s+\/live\/2\/vmlinuz .*liveup\.generation=2/);
    expect(cfg).toMatch(/initrd\s+\/live\/2\/initrd\.img/);
    expect(grubenv(m.boot)).toMatchObject({ liveup_try_version: '2' });
    const list = await m.json<{ version: number; staged: boolean; booted: boolean }[]>(['list']);
    expect(list.find((g) => g.version === 2)).toMatchObject({ staged: true, booted: false });
    expect(list.find((g) => g.version === 1)).toMatchObject({ booted: true });
    const history = await m.json<{ kind: string; status: string }[]>(['history']);
    expect(history.filter((h) => h.status === 'succeeded').map((h) => h.kind)).toEqual(expect.arrayContaining(['check', 'update']));
    const again = await m.json<{ outcome: string }>(['update']);
    expect(again.outcome).toBe('up-to-date');
    const human = await m.ctl(['status']);
    expect(human.stdout).toMatch(/2/);
    expect(integrity(m.state)).toBe('ok');
    // Only pino's JSON lines: no warning from node or V8 (the launcher's flags) in the service's log.
    expect(m.log().split('\n').filter((l) => l.trim() && !l.startsWith('{'))).toEqual([]);
  });

  it('grubVerify sha512: every entry is checked by GRUB first, generations staged before get their SHA512SUMS', async () => {
    const m = await machine();
    await mkdir(m.dropIns, { recursive: true });
    await writeFile(join(m.dropIns, '50-verify.json'), JSON.stringify({ grubVerify: 'sha512' }));
    await waitFor('config reload', async () => m.log().includes('configuration reloaded'));
    expect(await m.json<{ outcome: string }>(['update'])).toMatchObject({ outcome: 'staged', version: 2 });
    const cfg = await readFile(join(m.boot, 'grub', 'grub.cfg'), 'utf8');
    execFileSync('grub-script-check', [join(m.boot, 'grub', 'grub.cfg')]);
    for (const v of [1, 2]) {
      expect(cfg).toContain(`if hashsum --hash sha512 --prefix /live/${v} --check /live/${v}/SHA512SUMS ; then`);
      // Generation 1 was installed without the list: written from its staged manifest, and right.
      execFileSync('sha512sum', ['-c', '--strict', 'SHA512SUMS'], { cwd: join(m.boot, 'live', String(v)) });
    }
    // A wrong value is refused by name and the running configuration kept.
    await writeFile(join(m.dropIns, '50-verify.json'), JSON.stringify({ grubVerify: 'md5' }));
    await waitFor("the bad drop-in refused", async () => /new configuration refused/.test(m.log()) && /50-verify\.json: expected one of \\"off\\", \\"sha512\\", \\"signature\\", got the string \\"md5\\" at \\"grubVerify\\"/.test(m.log()));
    expect(await readFile(join(m.boot, 'grub', 'grub.cfg'), 'utf8')).toBe(cfg);
  });

  it('grubVerify signature: the agent writes only its choices into grubenv and the good block, never a grub.cfg', async () => {
    const m = await machine();
    await mkdir(m.dropIns, { recursive: true });
    await writeFile(join(m.dropIns, '50-verify.json'), JSON.stringify({ grubVerify: 'signature' }));
    await waitFor('config reload', async () => m.log().includes('configuration reloaded'));
    const before = await readFile(join(m.boot, 'grub', 'grub.cfg'), 'utf8').catch(() => null);
    expect(await m.json<{ outcome: string }>(['update'])).toMatchObject({ outcome: 'staged', version: 2 });
    // The trial and the good choice, for the static menu in the signed GRUB image.
    expect(grubenv(m.boot)).toMatchObject({ liveup_default: '1', liveup_fallback: '1', liveup_try_version: '2', liveup_tries_left: '1' });
    const good = execFileSync('grub-editenv', [join(m.boot, 'grub', 'liveup-good.env'), 'list']).toString();
    expect(good.trim().split('\n').sort()).toEqual(['liveup_default=1', 'liveup_fallback=1']);
    // grub.cfg is left as it was (GRUB does not read it in this mode).
    expect(await readFile(join(m.boot, 'grub', 'grub.cfg'), 'utf8').catch(() => null)).toBe(before);
  });

  it('a switch cut off by the switch itself: closed as done when its target booted, as interrupted when not', async () => {
    const m = await machine();
    await m.stopDaemon();
    // What a kexec (or soft-reboot) leaves: its step opened, the old userspace gone before it ended.
    const j = Journal.open(join(m.state, 'journal.db'));
    // The kexec's timeline until its target started, noted in the step before the machine went down.
    j.noteStep(j.beginStep('kexec', 2), { timeline: 'check 0.40 s, decide 0.20 s, kexec-load 1.10 s' });
    j.beginStep('reboot', 3);
    j.close();
    await writeFile(join(m.runDir, 'booted'), '2\n'); // generation 2 came up
    await m.startDaemon();
    const history = await m.json<{ kind: string; status: string; version: number | null; message: string | null }[]>(['history']);
    expect(history).toContainEqual(expect.objectContaining({ kind: 'apply', version: 2, status: 'succeeded', message: 'kexec into 2 landed: generation 2 is booted [check 0.40 s, decide 0.20 s, kexec-load 1.10 s]' }));
    expect(history).toContainEqual(expect.objectContaining({ kind: 'apply', version: 3, status: 'failed', message: expect.stringMatching(/interrupted/) }));
  });

  it('kill -9 mid-download, restart, resumes from the .part with a Range request', async () => {
    const m = await machine({ kernelBytes: 24 << 20, mirror: () => 'http://127.0.0.1:1/' });
    const proxy = await throttledProxy(m.server.url, 4 << 20);
    cleanups.push(() => proxy.close());
    // Point the agent at the slow proxy (a config reload the daemon picks up).
    const cfg = JSON.parse(await readFile(m.configFile, 'utf8')) as Record<string, unknown>;
    await writeFile(m.configFile, JSON.stringify({ ...cfg, mirrors: [proxy.url] }));
    await waitFor('config reload', async () => m.log().includes('configuration reloaded'));
    const update = m.ctl(['update']);
    const part = join(m.state, 'downloads', '2', 'vmlinuz.part');
    await waitFor('a partial download', async () => (await stat(part)).size > 2 << 20, 30_000);
    await m.stopDaemon('SIGKILL');
    const first = await update;
    expect(first.code).toBe(3); // the daemon vanished: DAEMON_UNAVAILABLE, not a stack trace
    expect(first.stderr).toMatch(/DAEMON_UNAVAILABLE/);
    const partSize = (await stat(part)).size;
    expect(integrity(m.state)).toBe('ok');
    await m.startDaemon();
    const history = await m.json<{ kind: string; status: string; message: string }[]>(['history']);
    expect(history.some((h) => h.status === 'failed' && /interrupted/.test(h.message))).toBe(true);
    const upd = await m.json<{ outcome: string; version: number }>(['update']);
    expect(upd).toMatchObject({ outcome: 'staged', version: 2 });
    expect(proxy.ranges.some((r) => r.startsWith('/generations/2/vmlinuz bytes=') && Number(/bytes=(\d+)-/.exec(r)![1]) >= partSize - (1 << 20))).toBe(true);
    const k = await readFile(join(m.boot, 'live', '2', 'vmlinuz'));
    expect(k.length).toBe(24 << 20);
    expect(integrity(m.state)).toBe('ok');
  });

  it('a boot medium too small for the image: NO_SPACE, nothing left behind, generation 1 untouched', async () => {
    const m = await machine({ kernelBytes: 3 << 20, bootTmpfsBytes: 2 << 20 });
    const before = await readdir(join(m.boot, 'live', '1'));
    const r = await m.ctl(['update']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/NO_SPACE/);
    expect((await readdir(join(m.boot, 'live'))).filter((n) => !n.startsWith('.'))).toEqual(['1']);
    expect((await readdir(join(m.boot, 'live'))).filter((n) => n.startsWith('.staging'))).toEqual([]);
    expect(await readdir(join(m.boot, 'live', '1'))).toEqual(before);
    expect(integrity(m.state)).toBe('ok');
  });

  it('a state partition too small for the download: NO_SPACE before a byte is fetched, the journal still writable', async () => {
    const m = await machine({ kernelBytes: 48 << 20, stateTmpfsBytes: 40 << 20 });
    const r = await m.ctl(['update']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/NO_SPACE: .*downloads\/2: downloading generation 2 needs \d+ bytes/);
    const history = await m.json<{ kind: string; status: string; errorCode: string | null }[]>(['history']);
    expect(history).toContainEqual(expect.objectContaining({ kind: 'update', status: 'failed', errorCode: 'NO_SPACE' }));
    expect(await readdir(join(m.state, 'downloads', '2'))).toEqual([]);
    expect(integrity(m.state)).toBe('ok');
  });

  it('two concurrent updates: the second gets UPDATE_IN_PROGRESS; a non-root caller may read but not update', async () => {
    const m = await machine({ kernelBytes: 16 << 20, mirror: () => 'http://127.0.0.1:1/' });
    const proxy = await throttledProxy(m.server.url, 2 << 20);
    cleanups.push(() => proxy.close());
    const cfg = JSON.parse(await readFile(m.configFile, 'utf8')) as Record<string, unknown>;
    await writeFile(m.configFile, JSON.stringify({ ...cfg, mirrors: [proxy.url] }));
    await waitFor('config reload', async () => m.log().includes('configuration reloaded'));
    const first = m.ctl(['update']);
    await waitFor('the first update downloading', async () => (await m.json<{ state: string }>(['status'])).state === 'downloading');
    const second = await m.ctl(['update']);
    expect(second.code).toBe(1);
    expect(second.stderr).toMatch(/UPDATE_IN_PROGRESS/);
    const nobodyUpdate = await m.ctl(['update'], { asNobody: true });
    expect(nobodyUpdate.stderr).toMatch(/NOT_AUTHORIZED/);
    const nobodyStatus = await m.ctl(['status', '--json'], { asNobody: true });
    expect(nobodyStatus.code).toBe(0);
    expect((await first).code).toBe(0);
  });

  it('an offline bundle dropped into the inbox is verified and staged; a tampered one is refused', async () => {
    const m = await machine();
    const inbox = join(m.state, 'inbox');
    const bad = join(inbox, 'tampered');
    await cp(join(m.repo, 'generations', '2'), bad, { recursive: true });
    await writeFile(join(bad, 'initrd.img'), 'not the signed initrd');
    await waitFor('the tampered bundle refused', async () => (await readdir(join(inbox, '.rejected')).catch(() => [])).some((n) => n.endsWith('.reason')));
    const reason = await readFile(join(inbox, '.rejected', (await readdir(join(inbox, '.rejected'))).find((n) => n.endsWith('.reason'))!), 'utf8');
    expect(reason).toMatch(/^LENGTH_MISMATCH|^HASH_MISMATCH/);
    expect(await readdir(join(m.boot, 'live'))).not.toContain('2');
    await cp(join(m.repo, 'generations', '2'), join(inbox, 'usb-gen2'), { recursive: true });
    // The boot menu and grubenv are written after the generation lands on the medium.
    // The bundle is removed from the inbox last, once staged and armed.
    await waitFor('generation 2 staged from the inbox and armed for the next boot',
      async () => grubenv(m.boot).liveup_try_version === '2' && !(await readdir(inbox)).includes('usb-gen2'));
    expect((await readdir(join(m.boot, 'live'))).sort()).toEqual(['.liveup-boot', '1', '2']);
  });

  it('a bad config drop-in is refused and the old configuration kept', async () => {
    const m = await machine();
    await mkdir(m.dropIns, { recursive: true });
    await writeFile(join(m.dropIns, '50-typo.json'), JSON.stringify({ chanel: 'beta' }));
    await waitFor('the refusal logged', async () => m.log().includes('new configuration refused'));
    expect(m.log()).toMatch(/50-typo\.json.*chanel/);
    const check = await m.json<{ channel: string; updateAvailable: boolean }>(['check']);
    expect(check).toMatchObject({ channel: 'stable', updateAvailable: true });
  });

  it("liveup-boot-check.service's program: the agent checks the booted trial in its own process; a required failure fails it; without an agent the check runs alone", async () => {
    // liveRoot off /: this host is not the machine, so a failed check must not reboot it.
    const m = await machine({ config: { liveRoot: join(await tmp(), 'root') } });
    await m.json(['update']);
    expect(grubenv(m.boot).liveup_try_version).toBe('2');
    await m.stopDaemon();
    await writeFile(join(m.runDir, 'booted'), '2\n'); // generation 2 booted on trial
    await m.startDaemon();
    // checks.d/ beside agent.json, as /etc/liveup/checks.d beside /etc/liveup/agent.json.
    const checks = join(m.dir, 'checks.d');
    await mkdir(checks);
    await writeFile(join(checks, '10-ok'), '#!/bin/sh\necho fine\n', { mode: 0o755 });
    const unit = (args: string[] = []) => collect(spawn(bin('liveup-boot-check-via-agent'), args, {
      stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, DBUS_SYSTEM_BUS_ADDRESS: m.bus.address },
    }));

    const good = await unit();
    expect(good.code, good.stdout + good.stderr).toBe(0);
    expect(good.stdout).toMatch(/^liveup-boot-check: good \(checked by liveup-agentd/);
    expect(good.stderr).toBe(''); // no fallback
    expect(grubenv(m.boot).liveup_try_version).toBeUndefined(); // the trial won
    expect(m.log()).toMatch(/"bootCheck":"ok   required exec [^"]*10-ok"/);
    const gens = await m.json<{ version: number; state: string }[]>(['list']);
    expect(gens.find((g) => g.version === 2)?.state).toBe('good');
    const history = await m.json<{ kind: string; status: string; message: string }[]>(['history']);
    expect(history[0]).toMatchObject({ kind: 'boot', status: 'succeeded', message: 'generation 2 passed 1 checks' });

    await writeFile(join(checks, '20-broken'), '#!/bin/sh\necho "disk full" >&2\nexit 1\n', { mode: 0o755 });
    const bad = await unit();
    expect(bad.code, bad.stdout + bad.stderr).toBe(1);
    expect(bad.stdout).toMatch(/^liveup-boot-check: failed/);
    expect((await m.json<{ version: number; state: string }[]>(['list'])).find((g) => g.version === 2)?.state).toBe('failed');
    expect(m.log()).toMatch(/"bootCheck":"FAIL required exec [^"]*20-broken: disk full"/);
    expect(m.log()).toMatch(/"verdict":"failed","rebooting":false/);

    // No agent on the bus: the same check runs in a process of its own, with the unit's arguments.
    await m.stopDaemon();
    const alone = await unit(['--state-dir', m.state, '--boot-dir', m.boot, '--run-dir', m.runDir, '--checks-dir', join(m.dir, 'none'), '--no-reboot']);
    expect(alone.stderr).toMatch(/the agent did not run the check \(.+\); running it here/);
    expect(alone.code, alone.stdout + alone.stderr).toBe(0);
    expect(alone.stdout).toBe('generation 2: good\n');
    expect(integrity(m.state)).toBe('ok');
  });

  it('rollback sets the next boot and is journalled', async () => {
    const m = await machine();
    await m.json(['update']);
    // Reboot into generation 2.
    await m.stopDaemon();
    await writeFile(join(m.runDir, 'booted'), '2\n');
    await m.startDaemon();
    const r = await m.json<{ outcome: string; version: number }>(['rollback', '1']);
    expect(r).toMatchObject({ outcome: 'rollback-staged', version: 1 });
    const cfg = await readFile(join(m.boot, 'grub', 'grub.cfg'), 'utf8');
    const ids = [...cfg.matchAll(/--id[= ]'?(liveup-\d+)/g)].map((x) => x[1]);
    const def = /set default=["']?(\d+)/.exec(cfg)?.[1];
    expect(ids[Number(def)]).toBe('liveup-1');
    expect(grubenv(m.boot).liveup_try_version).toBeUndefined();
    const history = await m.json<{ kind: string; status: string; version: number }[]>(['history']);
    expect(history).toEqual(expect.arrayContaining([expect.objectContaining({ kind: 'rollback', status: 'succeeded', version: 1 })]));
    // A scheduled check does not undo the rollback.
    const check = await m.json<{ updateAvailable: boolean }>(['check']);
    expect(check.updateAvailable).toBe(false);
    expect(integrity(m.state)).toBe('ok');
  });
});

