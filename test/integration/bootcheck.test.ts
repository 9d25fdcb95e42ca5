/**
 * liveup-boot-check on the host: temp dirs, the real grub-editenv, the real
 * SQLite journal and real check scripts (pass, fail, hang past the timeout).
 * Units are checked through a stand-in `systemctl` that also records a reboot.
 */
import { describe, expect, test, beforeEach } from 'vitest';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { tmp } from '../helpers/tmp.js';
import { bootCheck, loadBootCheckConfig, type BootCheckConfig } from '../../agent/src/bootcheck.js';
import { Journal } from '../../agent/src/adapters/journal.js';
import { createGrubEnv } from '../../agent/src/adapters/grubenv.js';

async function script(path: string, body: string): Promise<void> {
  await writeFile(path, `#!/bin/sh\n${body}\n`);
  await chmod(path, 0o755);
}

interface Env {
  root: string; stateDir: string; bootDir: string; checksDir: string; runDir: string; systemctl: string; rebootLog: string;
}

async function setup(booted: number | null): Promise<Env> {
  const root = await tmp('liveup-bootcheck-');
  const e: Env = {
    root, stateDir: join(root, 'state'), bootDir: join(root, 'boot'), checksDir: join(root, 'checks.d'), runDir: join(root, 'run'),
    systemctl: join(root, 'systemctl'), rebootLog: join(root, 'reboots'),
  };
  for (const d of [e.stateDir, join(e.bootDir, 'grub'), join(e.bootDir, 'live', '1'), join(e.bootDir, 'live', '2'), join(e.checksDir, 'wanted'), e.runDir]) await mkdir(d, { recursive: true });
  // Active units: a.service and b.service; `reboot` is recorded.
  await script(e.systemctl, [
    'case "$1" in',
    `  reboot) echo reboot >> ${e.rebootLog}; exit 0 ;;`,
    '  is-active) case "$3" in a.service|b.service) exit 0 ;; *) exit 3 ;; esac ;;',
    'esac', 'exit 1',
  ].join('\n'));
  if (booted !== null) await writeFile(join(e.runDir, 'booted'), `${booted}\n`);
  const j = Journal.open(join(e.stateDir, 'journal.db'));
  j.upsertGeneration({ version: 1, name: 'kiosk', channel: 'stable', state: 'good', kernelVersion: '6.12', cmdline: 'boot=live components' });
  j.upsertGeneration({ version: 2, name: 'kiosk', channel: 'stable', state: 'booted', kernelVersion: '6.12', cmdline: 'boot=live components' });
  j.close();
  await writeFile(join(e.bootDir, 'grub', 'grub.cfg'), '# placeholder\n');
  await createGrubEnv().set(join(e.bootDir, 'grub', 'grubenv'), { liveup_try_version: '2', liveup_tries_left: '2', other: 'kept' });
  return e;
}

const cfg = (c: Partial<BootCheckConfig> = {}): BootCheckConfig => ({ requiredUnits: [], wantedUnits: [], timeoutSeconds: 2, ...c });

function state(e: Env, v: number): string | undefined {
  const j = Journal.open(join(e.stateDir, 'journal.db'));
  try { return j.getGeneration(v)?.state; } finally { j.close(); }
}

function grubenvList(e: Env): string {
  return execFileSync('grub-editenv', [join(e.bootDir, 'grub', 'grubenv'), 'list'], { encoding: 'utf8' });
}

describe('liveup-boot-check', () => {
  let e: Env;
  beforeEach(async () => { e = await setup(2); });

  test('all required checks pass: good in the journal, trial cleared in grubenv, grub.cfg defaults to it', async () => {
    await script(join(e.checksDir, '10-ok'), 'echo fine');
    await script(join(e.checksDir, 'wanted', '10-wanted-fails'), 'exit 1');
    await writeFile(join(e.checksDir, 'README'), 'not executable: ignored\n');
    const r = await bootCheck({ ...e, config: cfg({ requiredUnits: ['a.service'], wantedUnits: ['missing.service'] }), reboot: true });
    expect(r.verdict).toBe('good');
    expect(r.version).toBe(2);
    expect(r.checks.map((c) => [c.name.split('/').pop(), c.required, c.ok])).toEqual([
      ['a.service', true, true], ['missing.service', false, false], ['10-ok', true, true], ['10-wanted-fails', false, false],
    ]);
    expect(state(e, 2)).toBe('good');
    expect(state(e, 1)).toBe('good');
    const env = grubenvList(e);
    expect(env).not.toMatch(/liveup_try_version|liveup_tries_left/);
    expect(env).toMatch(/other=kept/);
    const menu = await readFile(join(e.bootDir, 'grub', 'grub.cfg'), 'utf8');
    expect(menu).toMatch(/live-media-path=\/live\/2/);
    expect(menu).toMatch(/^set default=0$/m); // entry 0 is liveup-2 (newest first)
    expect(existsSync(e.rebootLog)).toBe(false);
    const j = Journal.open(join(e.stateDir, 'journal.db'));
    const ev = j.history({ version: 2 }).find((x) => x.kind === 'boot-check');
    j.close();
    expect(ev?.status).toBe('ok');
  });

  test("the re-rendered menu keeps the agent's in-GRUB verification (its journal setting)", async () => {
    const j = Journal.open(join(e.stateDir, 'journal.db'));
    j.setSetting('boot-menu-verify', 'sha512');
    j.close();
    expect((await bootCheck({ ...e, config: cfg(), reboot: false })).verdict).toBe('good');
    const menu = await readFile(join(e.bootDir, 'grub', 'grub.cfg'), 'utf8');
    expect(menu).toContain('if hashsum --hash sha512 --prefix /live/2 --check /live/2/SHA512SUMS ; then');
    expect(menu).toContain('if hashsum --hash sha512 --prefix /live/1 --check /live/1/SHA512SUMS ; then');
  });

  test('signed boot (setting "signature"): the verdict goes into grubenv and the good block, no grub.cfg is written', async () => {
    const j = Journal.open(join(e.stateDir, 'journal.db'));
    j.setSetting('boot-menu-verify', 'signature');
    j.close();
    const { rm } = await import('node:fs/promises');
    await rm(join(e.bootDir, 'grub', 'grub.cfg')); // a signed-boot medium has none
    const good = join(e.bootDir, 'grub', 'liveup-good.env');
    await writeFile(good, 'damaged'); // recreated, not left for GRUB to skip
    expect((await bootCheck({ ...e, config: cfg(), reboot: false })).verdict).toBe('good');
    expect(grubenvList(e).trim().split('\n').sort()).toEqual(['liveup_default=2', 'liveup_fallback=1', 'other=kept']);
    expect(execFileSync('grub-editenv', [good, 'list'], { encoding: 'utf8' }).trim().split('\n').sort()).toEqual(['liveup_default=2', 'liveup_fallback=1']);
    expect(existsSync(join(e.bootDir, 'grub', 'grub.cfg'))).toBe(false);

    // The next trial fails its checks: the good generation stays the default.
    const j2 = Journal.open(join(e.stateDir, 'journal.db'));
    j2.upsertGeneration({ version: 3, name: 'kiosk', channel: 'stable', state: 'booted', kernelVersion: '6.12', cmdline: 'boot=live components' });
    j2.close();
    await mkdir(join(e.bootDir, 'live', '3'));
    await writeFile(join(e.runDir, 'booted'), '3\n');
    await script(join(e.checksDir, '20-bad'), 'exit 1');
    expect((await bootCheck({ ...e, config: cfg(), reboot: false })).verdict).toBe('failed');
    expect(grubenvList(e)).toMatch(/^liveup_default=2$/m);
    expect(execFileSync('grub-editenv', [good, 'list'], { encoding: 'utf8' })).toMatch(/^liveup_default=2$/m);
  });

  test('a required check fails: failed in the journal, reboot requested, default stays the last good', async () => {
    await script(join(e.checksDir, '10-ok'), 'exit 0');
    await script(join(e.checksDir, '20-bad'), 'echo broken >&2; exit 4');
    const r = await bootCheck({ ...e, config: cfg(), reboot: true });
    expect(r.verdict).toBe('failed');
    expect(r.rebooting).toBe(true);
    expect(r.checks.find((c) => c.name.endsWith('20-bad'))?.message).toMatch(/broken/);
    expect(state(e, 2)).toBe('failed');
    expect(await readFile(e.rebootLog, 'utf8')).toBe('reboot\n');
    expect(grubenvList(e)).not.toMatch(/liveup_try_version/);
    const menu = await readFile(join(e.bootDir, 'grub', 'grub.cfg'), 'utf8');
    expect(menu).toMatch(/^set default=1$/m); // entry 1 is liveup-1
    const j = Journal.open(join(e.stateDir, 'journal.db'));
    expect(j.inProgress()).toEqual([]);
    expect(j.history({ version: 2 }).map((x) => `${x.kind}:${x.status}`)).toEqual(expect.arrayContaining(['boot-check:failed', 'reboot:ok']));
    j.close();
  });

  test('a required unit that is not active fails the boot; --no-reboot does not reboot', async () => {
    const r = await bootCheck({ ...e, config: cfg({ requiredUnits: ['a.service', 'c.service'] }), reboot: false });
    expect(r.verdict).toBe('failed');
    expect(r.rebooting).toBe(false);
    expect(existsSync(e.rebootLog)).toBe(false);
    expect(state(e, 2)).toBe('failed');
  });

  test('a check that hangs past its timeout fails, and the run does not hang', async () => {
    await script(join(e.checksDir, '10-hang'), 'exec sleep 60');
    const t0 = Date.now();
    const r = await bootCheck({ ...e, config: cfg({ timeoutSeconds: 1 }), reboot: false });
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(r.verdict).toBe('failed');
    expect(r.checks[0]).toMatchObject({ ok: false, timedOut: true });
  });

  test('a hanging wanted check only reports', async () => {
    await script(join(e.checksDir, 'wanted', '10-hang'), 'exec sleep 60');
    const r = await bootCheck({ ...e, config: cfg({ timeoutSeconds: 1 }), reboot: true });
    expect(r.verdict).toBe('good');
    expect(r.checks[0]).toMatchObject({ ok: false, timedOut: true, required: false });
  });

  test('a damaged grubenv is recreated when the generation passes', async () => {
    await writeFile(join(e.bootDir, 'grub', 'grubenv'), 'garbage');
    const r = await bootCheck({ ...e, config: cfg(), reboot: false });
    expect(r.verdict).toBe('good');
    expect((await readFile(join(e.bootDir, 'grub', 'grubenv'))).length).toBe(1024);
  });

  test('not a liveup boot: nothing recorded', async () => {
    const e2 = await setup(null);
    await writeFile(join(e2.root, 'cmdline'), 'BOOT_IMAGE=/vmlinuz quiet\n');
    const r = await bootCheck({ ...e2, cmdlinePath: join(e2.root, 'cmdline'), config: cfg(), reboot: true });
    expect(r.verdict).toBe('unknown-generation');
    expect(state(e2, 2)).toBe('booted');
  });

  test('the config file: defaults when missing, validated when present', async () => {
    expect(await loadBootCheckConfig(join(e.root, 'none.json'))).toEqual({ requiredUnits: [], wantedUnits: [], timeoutSeconds: 60 });
    await writeFile(join(e.root, 'c.json'), JSON.stringify({ requiredUnits: ['x.service'], timeoutSeconds: 5 }));
    expect(await loadBootCheckConfig(join(e.root, 'c.json'))).toEqual({ requiredUnits: ['x.service'], wantedUnits: [], timeoutSeconds: 5 });
    await writeFile(join(e.root, 'bad.json'), JSON.stringify({ requiredUnits: 'x' }));
    await expect(loadBootCheckConfig(join(e.root, 'bad.json'))).rejects.toThrow(/requiredUnits/);
  });

  test('the command line: exit code 1 on failure, JSON out', () => {
    const out = (() => {
      try {
        return execFileSync('node', [join(import.meta.dirname, '../../bin/liveup-boot-check'), '--state-dir', e.stateDir, '--boot-dir', e.bootDir,
          '--checks-dir', e.checksDir, '--run-dir', e.runDir, '--config', join(e.root, 'none.json'), '--json', '--no-reboot'], { encoding: 'utf8' });
      } catch (err) { return `exit ${(err as { status: number }).status}`; }
    })();
    expect(JSON.parse(out)).toMatchObject({ version: 2, verdict: 'good', rebooting: false });
  });
});
