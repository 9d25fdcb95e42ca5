import { describe, expect, it } from 'vitest';
import { mkdir, rm, writeFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { tmp } from '../helpers/tmp.js';
import { loadConfig, watchConfig, hostDebianArchitecture, type AgentConfig } from '../../agent/src/config.js';
import { LiveupError } from '../../agent/src/channel/errors.js';

const BASE = { channel: 'stable', mirrors: ['https://updates.example.org/repo'], keyring: '/etc/liveup/keyring.asc' };

async function setup(main: object, dropIns: Record<string, object | string> = {}): Promise<{ mainFile: string; dropInDir: string }> {
  const d = await tmp();
  const mainFile = join(d, 'agent.json');
  const dropInDir = join(d, 'agent.d');
  await writeFile(mainFile, JSON.stringify(main));
  await mkdir(dropInDir);
  for (const [n, v] of Object.entries(dropIns)) await writeFile(join(dropInDir, n), typeof v === 'string' ? v : JSON.stringify(v));
  return { mainFile, dropInDir };
}

async function loadError(loc: { mainFile: string; dropInDir: string }): Promise<LiveupError> {
  const e: unknown = await loadConfig(loc).then(
    () => null,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(LiveupError);
  expect((e as LiveupError).code).toBe('CONFIG_INVALID');
  return e as LiveupError;
}

/** Poll until `cond` holds; short steps so the test waits only as long as the watcher needs. */
async function waitFor(cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting for condition');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('loadConfig', () => {
  it('applies defaults', async () => {
    const loc = await setup(BASE);
    const { config, files } = await loadConfig(loc);
    expect(files).toEqual([loc.mainFile]);
    expect(config).toMatchObject({
      channel: 'stable',
      mirrors: ['https://updates.example.org/repo'],
      keyring: '/etc/liveup/keyring.asc',
      threshold: 1,
      architecture: hostDebianArchitecture(),
      schedule: '0 */4 * * *',
      jitterSeconds: 600,
      maintenanceWindows: [],
      rebootStrategy: 'live',
      keep: 3,
      bootDir: '/run/liveup/boot',
      stateDir: '/var/lib/liveup',
      inboxDir: '/var/lib/liveup/inbox',
      freeSpaceReserveMB: 64,
      prewarmMB: 512,
      fetch: { deadlineSeconds: 3600, minBytesPerSecond: 1024, retries: 5, backoffSeconds: 30 },
      dbus: 'system',
      grubEditenv: 'grub-editenv',
      liveLowerDir: null,
    });
    expect(config.credentials).toBeUndefined();
    expect(typeof config.timeZone).toBe('string');
  });

  it('merges drop-ins in name order over the main file', async () => {
    const loc = await setup(
      { ...BASE, fetch: { retries: 2, backoffSeconds: 5 }, stateDir: '/srv/state' },
      {
        '20-late.json': { keep: 5, mirrors: ['file:///media/usb/repo'] },
        '10-early.json': { keep: 4, fetch: { retries: 9 }, timeZone: 'Europe/Berlin' },
        'ignored.txt': { keep: 99 },
      },
    );
    const { config, files } = await loadConfig(loc);
    expect(files).toEqual([loc.mainFile, join(loc.dropInDir, '10-early.json'), join(loc.dropInDir, '20-late.json')]);
    expect(config.keep).toBe(5);
    expect(config.mirrors).toEqual(['file:///media/usb/repo']); // lists replace
    expect(config.fetch).toEqual({ deadlineSeconds: 3600, minBytesPerSecond: 1024, retries: 9, backoffSeconds: 5 }); // objects merge
    expect(config.timeZone).toBe('Europe/Berlin');
    expect(config.inboxDir).toBe('/srv/state/inbox'); // derived from the merged stateDir
  });

  it('names the drop-in and key of an unknown key', async () => {
    const loc = await setup(BASE, { '10-ok.json': { keep: 4 }, '50-typo.json': { fetch: { retrys: 3 } } });
    const e = await loadError(loc);
    expect(e.details.file).toBe(join(loc.dropInDir, '50-typo.json'));
    expect(e.details.key).toBe('fetch.retrys');
    expect(e.message).toContain('50-typo.json');
    expect(e.message).toContain('unknown key "retrys"');
    expect(e.message).toContain('deadlineSeconds, minBytesPerSecond, retries, backoffSeconds');
  });

  it('names the file that set a bad value even when another file set its parent', async () => {
    const loc = await setup({ ...BASE, fetch: { retries: 1 } }, { '10-x.json': { fetch: { backoffSeconds: -1 } } });
    const e = await loadError(loc);
    expect(e.details).toMatchObject({ file: join(loc.dropInDir, '10-x.json'), key: 'fetch.backoffSeconds' });
  });

  it('refuses a bad cron expression', async () => {
    const loc = await setup(BASE, { '10-s.json': { schedule: '61 * * * *' } });
    const e = await loadError(loc);
    expect(e.details).toMatchObject({ file: join(loc.dropInDir, '10-s.json'), key: 'schedule' });
    expect(e.message).toContain('cron');
  });

  it('refuses a bad time zone', async () => {
    const loc = await setup({ ...BASE, timeZone: 'Mars/Olympus_Mons' });
    const e = await loadError(loc);
    expect(e.details).toMatchObject({ file: loc.mainFile, key: 'timeZone' });
    expect(e.message).toContain('IANA');
  });

  it('lists the allowed reboot strategies', async () => {
    const loc = await setup({ ...BASE, rebootStrategy: 'yolo' });
    const e = await loadError(loc);
    expect(e.details.key).toBe('rebootStrategy');
    for (const s of ['live', 'kexec', 'reboot', 'stage-only']) expect(e.message).toContain(`"${s}"`);
  });

  it('validates maintenance windows, mirrors, credentials and paths', async () => {
    const cases: [object, string][] = [
      [{ maintenanceWindows: [{ days: ['mon', 'funday'], start: '01:00', end: '03:00' }] }, 'maintenanceWindows[0].days[1]'],
      [{ maintenanceWindows: [{ days: ['mon'], start: '25:00', end: '03:00' }] }, 'maintenanceWindows[0].start'],
      [{ mirrors: ['ftp://x.example/'] }, 'mirrors[0]'],
      [{ mirrors: [] }, 'mirrors'],
      [{ credentials: { bearerToken: 't', bearerTokenFile: '/t' } }, 'credentials.bearerTokenFile'],
      [{ credentials: { clientCert: '/c.pem' } }, 'credentials.clientCert'],
      [{ stateDir: 'relative/dir' }, 'stateDir'],
      [{ keep: 1 }, 'keep'],
      [{ threshold: 0 }, 'threshold'],
      [{ dbus: 'nonsense' }, 'dbus'],
      [{ prewarmMB: -1 }, 'prewarmMB'],
      [{ prewarmMB: '512' }, 'prewarmMB'],
    ];
    for (const [extra, key] of cases) {
      const e = await loadError(await setup({ ...BASE, ...extra }));
      expect(e.details.key, JSON.stringify(extra)).toBe(key);
    }
    const ok = await setup({
      ...BASE,
      maintenanceWindows: [{ days: ['sat', 'sun'], start: '22:00', end: '04:00' }],
      credentials: { bearerTokenFile: '/etc/liveup/token', clientCert: '/c.pem', clientKey: '/k.pem', ca: '/ca.pem' },
      dbus: 'unix:path=/tmp/bus',
      prewarmMB: 0,
    });
    const { config } = await loadConfig(ok);
    expect(config.prewarmMB).toBe(0); // off
    expect(config.maintenanceWindows[0]).toEqual({ days: ['sat', 'sun'], start: '22:00', end: '04:00' });
    expect(config.credentials?.clientKey).toBe('/k.pem');
    expect(config.dbus).toBe('unix:path=/tmp/bus');
  });

  it('names the main file when a required key is missing, and a drop-in with bad JSON', async () => {
    const e1 = await loadError(await setup({ channel: 'stable', keyring: '/k.asc' }));
    expect(e1.details.key).toBe('mirrors');
    const loc = await setup(BASE, { '10-broken.json': '{"keep": ' });
    const e2 = await loadError(loc);
    expect(e2.details.file).toBe(join(loc.dropInDir, '10-broken.json'));
  });
});

describe('watchConfig', () => {
  it('applies a valid change, refuses a bad one and keeps the old config', async () => {
    const loc = await setup(BASE);
    const changes: AgentConfig[] = [];
    const errors: LiveupError[] = [];
    const w = await watchConfig({ ...loc, debounceMs: 20 }, (c) => changes.push(c), (e) => errors.push(e));
    try {
      // A new drop-in is picked up.
      await writeFile(join(loc.dropInDir, '10-keep.json'), JSON.stringify({ keep: 7 }));
      await waitFor(() => changes.length === 1);
      expect(changes[0]?.keep).toBe(7);

      // A bad edit (written by rename, as editors do) is refused; the old config stays.
      const tmpName = join(loc.dropInDir, '.10-keep.json.tmp');
      await writeFile(tmpName, JSON.stringify({ keep: 7, rebootStrategy: 'whenever' }));
      await rename(tmpName, join(loc.dropInDir, '10-keep.json'));
      await waitFor(() => errors.length >= 1);
      expect(errors[0]?.code).toBe('CONFIG_INVALID');
      expect(errors[0]?.details.key).toBe('rebootStrategy');
      expect(w.current().keep).toBe(7);
      expect(changes).toHaveLength(1);

      // Removing the drop-in and editing the main file both reload.
      await rm(join(loc.dropInDir, '10-keep.json'));
      await waitFor(() => changes.length === 2);
      expect(changes[1]?.keep).toBe(3);
      await writeFile(loc.mainFile, JSON.stringify({ ...BASE, channel: 'beta' }));
      await waitFor(() => changes.length === 3);
      expect(changes[2]?.channel).toBe('beta');
      expect(w.current().channel).toBe('beta');
    } finally {
      await w.close();
    }
  });
});

describe('watchConfig without a drop-in directory', () => {
  it('notices the directory when it is created later', async () => {
    const d = await tmp();
    const loc = { mainFile: join(d, 'agent.json'), dropInDir: join(d, 'agent.d') };
    await writeFile(loc.mainFile, JSON.stringify(BASE));
    const changes: AgentConfig[] = [];
    const w = await watchConfig({ ...loc, debounceMs: 20 }, (c) => changes.push(c), (e) => {
      throw e;
    });
    try {
      await mkdir(loc.dropInDir);
      await writeFile(join(loc.dropInDir, '10-a.json'), JSON.stringify({ jitterSeconds: 0 }));
      await waitFor(() => changes.some((c) => c.jitterSeconds === 0));
    } finally {
      await w.close();
    }
  });
});
