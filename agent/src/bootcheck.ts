/**
 * liveup-boot-check: decides whether the running generation is healthy.
 *
 * Run once per boot by liveup-boot-check.service (before boot-complete.target):
 * in the agent's process when it answers (BootCheck on org.liveup.Agent1, see
 * bin/liveup-boot-check-via-agent and daemon.ts), else as this program.
 * Checks, each with a timeout:
 * - units listed in the config (`requiredUnits`, `wantedUnits`) must be active
 *   (`systemctl is-active`);
 * - every executable in `<checksDir>/` (required) and `<checksDir>/wanted/`
 *   must exit 0.
 * A wanted check that fails is reported only.
 *
 * All required pass → the generation is `good` in the journal, the trial
 * variables are removed from grubenv, and grub.cfg is re-rendered with it as the
 * default (so the next boot is this generation even without the agent running).
 * A required failure → `failed` in the journal, grub.cfg re-rendered without it
 * as default (a failed generation is never the default or a fallback), and the
 * machine reboots (`systemctl reboot`) unless `--no-reboot`: GRUB then boots the
 * last good generation (the trial's tries count down regardless).
 *
 * Exit codes: 0 healthy (or nothing to do), 1 a required check failed, 2 usage/internal error.
 */
import { readFile, readdir, stat, access } from 'node:fs/promises';
import { constants } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Journal, type Generation } from './adapters/journal.js';
import { createGrubEnv, type GrubEnv } from './adapters/grubenv.js';
// runLean, not execa's run: this program is on every boot's critical path (adapters/exec.ts).
import { runLean as run } from './adapters/exec.js';
import { isLiveupError } from './channel/errors.js';
import { ENV_NEXT_ENTRY, ENV_TRIES_LEFT, ENV_TRY_VERSION, VERIFY_SETTING, renderBootMenu, type BootMenuGeneration } from './core/bootmenu.js';
import { signedBootEnv } from './core/signedboot.js';
import { writeSignedBootChoice } from './adapters/signedbootenv.js';
import { ensureDir, writeFileAtomic } from './util/fsatomic.js';
import { readBootedVersion } from './adapters/booted.js';

export interface BootCheckConfig {
  readonly requiredUnits: readonly string[];
  readonly wantedUnits: readonly string[];
  /** Per check (unit or executable). */
  readonly timeoutSeconds: number;
}

export interface BootCheckOptions {
  readonly stateDir: string;
  readonly bootDir: string;
  readonly checksDir: string;
  readonly runDir: string;
  readonly config: BootCheckConfig;
  readonly reboot: boolean;
  readonly systemctl?: string;
  readonly cmdlinePath?: string;
  readonly editenv?: string;
  /** Render grub.cfg after the verdict (default true when `<bootDir>/grub` exists). */
  readonly renderMenu?: boolean;
  /** The journal already open in this process (the agent's); default: opened on `<stateDir>/journal.db` and closed after. */
  readonly journal?: Journal;
  readonly log?: (line: string) => void;
}

export interface CheckResult {
  readonly name: string;
  readonly kind: 'unit' | 'exec';
  readonly required: boolean;
  readonly ok: boolean;
  readonly timedOut: boolean;
  readonly message: string;
  readonly ms: number;
}

export interface BootCheckResult {
  readonly version: number | null;
  readonly verdict: 'good' | 'failed' | 'unknown-generation';
  readonly checks: readonly CheckResult[];
  readonly rebooting: boolean;
}

export const DEFAULT_CONFIG: BootCheckConfig = { requiredUnits: [], wantedUnits: [], timeoutSeconds: 60 };

export async function loadBootCheckConfig(path: string): Promise<BootCheckConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return DEFAULT_CONFIG;
    throw e;
  }
  const o = JSON.parse(text) as Partial<Record<keyof BootCheckConfig, unknown>>;
  const list = (v: unknown, k: string): string[] => {
    if (v === undefined) return [];
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'string' && x.length > 0)) throw new Error(`${path}: ${k} must be a list of unit names`);
    return v as string[];
  };
  const t = o.timeoutSeconds ?? DEFAULT_CONFIG.timeoutSeconds;
  if (typeof t !== 'number' || !(t > 0)) throw new Error(`${path}: timeoutSeconds must be a positive number`);
  return { requiredUnits: list(o.requiredUnits, 'requiredUnits'), wantedUnits: list(o.wantedUnits, 'wantedUnits'), timeoutSeconds: t };
}

async function executables(dir: string): Promise<string[]> {
  const names = await readdir(dir).catch(() => [] as string[]);
  const out: string[] = [];
  for (const n of names.sort()) {
    if (n.startsWith('.')) continue;
    const p = join(dir, n);
    const s = await stat(p).catch(() => null);
    if (!s?.isFile()) continue;
    if (await access(p, constants.X_OK).then(() => true, () => false)) out.push(p);
  }
  return out;
}

async function runCheck(name: string, kind: CheckResult['kind'], required: boolean, cmd: string, args: string[], timeoutMs: number): Promise<CheckResult> {
  const t0 = Date.now();
  try {
    const r = await run(cmd, args, { timeoutMs });
    return { name, kind, required, ok: true, timedOut: false, message: r.stdout.trim().split('\n').slice(-1)[0] ?? '', ms: Date.now() - t0 };
  } catch (e) {
    const ms = Date.now() - t0;
    const d = isLiveupError(e) ? e.details : {};
    const timedOut = Boolean(d.timedOut) || (ms >= timeoutMs - 50 && /time/i.test(String((e as Error).message)));
    const stderr = String(d.stderr ?? '').trim();
    const message = timedOut ? `timed out after ${Math.round(timeoutMs / 1000)} s` : stderr.split('\n').slice(-1)[0] || (e as Error).message;
    return { name, kind, required, ok: false, timedOut, message, ms };
  }
}

/** Re-render grub.cfg from the journal (signed boot: grubenv): `def` becomes the default; no trial. */
async function renderMenu(journal: Journal, bootDir: string, def: number, env: GrubEnv): Promise<void> {
  const present = new Set(
    (await readdir(join(bootDir, 'live')).catch(() => [] as string[])).filter((n) => /^[1-9]\d*$/.test(n)).map(Number),
  );
  const gens: BootMenuGeneration[] = journal
    .listGenerations()
    .filter((g) => present.has(g.version))
    .map((g: Generation) => ({
      version: g.version,
      name: g.name,
      kernelVersion: g.kernelVersion ?? 'unknown',
      cmdline: g.cmdline ?? 'boot=live components',
      state: g.state === 'good' || g.state === 'failed' || g.state === 'booted' ? g.state : 'staged',
    }));
  if (!gens.some((g) => g.version === def)) return;
  if (journal.getSetting(VERIFY_SETTING) === 'signature') {
    // Signed boot: GRUB's menu is static; the new default goes into grubenv and the good block.
    await writeSignedBootChoice(env, join(bootDir, 'grub'), signedBootEnv({ generations: gens, defaultVersion: def, tryVersion: null }, 1));
    return;
  }
  // The agent's grubVerify, as it last wrote the menu (an unknown value renders without).
  const verify = journal.getSetting(VERIFY_SETTING) === 'sha512' ? 'sha512' : 'off';
  const menu = renderBootMenu({
    generations: gens,
    defaultVersion: def,
    tryVersion: null,
    root: { kind: 'file', path: '/live/.liveup-boot' },
    timeoutSeconds: 3,
    serial: true,
    verify,
  });
  await ensureDir(join(bootDir, 'grub'));
  await writeFileAtomic(join(bootDir, 'grub', 'grub.cfg'), menu.text);
}

export async function bootCheck(opts: BootCheckOptions): Promise<BootCheckResult> {
  const log = opts.log ?? (() => {});
  const systemctl = opts.systemctl ?? 'systemctl';
  const timeoutMs = opts.config.timeoutSeconds * 1000;
  const version = await readBootedVersion(opts.runDir, opts.cmdlinePath);
  const checks: CheckResult[] = [];
  for (const [units, required] of [[opts.config.requiredUnits, true], [opts.config.wantedUnits, false]] as const) {
    for (const u of units) checks.push(await runCheck(u, 'unit', required, systemctl, ['is-active', '--quiet', u], timeoutMs));
  }
  for (const p of await executables(opts.checksDir)) checks.push(await runCheck(p, 'exec', true, p, [], timeoutMs));
  for (const p of await executables(join(opts.checksDir, 'wanted'))) checks.push(await runCheck(p, 'exec', false, p, [], timeoutMs));
  for (const c of checks) log(`${c.ok ? 'ok  ' : 'FAIL'} ${c.required ? 'required' : 'wanted  '} ${c.kind} ${c.name}${c.ok ? '' : `: ${c.message}`}`);

  const healthy = checks.every((c) => c.ok || !c.required);
  if (version === null) {
    log('not booted from a liveup generation (no /run/liveup/booted, no liveup.generation= on the command line): nothing recorded');
    return { version, verdict: 'unknown-generation', checks, rebooting: false };
  }

  const journal = opts.journal ?? Journal.open(join(opts.stateDir, 'journal.db'));
  let rebooting = false;
  try {
    const details = { checks: checks.map((c) => ({ name: c.name, kind: c.kind, required: c.required, ok: c.ok, timedOut: c.timedOut, message: c.message, ms: c.ms })) };
    if (!journal.getGeneration(version)) {
      journal.upsertGeneration({ version, name: `generation-${version}`, channel: 'unknown', state: 'booted' });
    }
    const step = journal.beginStep('boot-check', version);
    const failed = checks.filter((c) => !c.ok && c.required);
    if (healthy) {
      journal.setState(version, 'good');
      journal.raiseFloor({ version });
      journal.endStep(step, 'ok', null, `generation ${version} passed ${checks.length} checks`, details);
    } else {
      journal.setState(version, 'failed');
      journal.endStep(step, 'failed', null, `generation ${version} failed: ${failed.map((c) => c.name).join(', ')}`, details);
    }
    const grubenv = join(opts.bootDir, 'grub', 'grubenv');
    const env = createGrubEnv({ runner: run, ...(opts.editenv ? { editenv: opts.editenv } : {}) });
    if (healthy) {
      // The trial is over: it won. Recreate a damaged block rather than leave a trial armed.
      await env.unset(grubenv, [ENV_TRY_VERSION, ENV_TRIES_LEFT, ENV_NEXT_ENTRY]).catch(async (e: unknown) => {
        if (isLiveupError(e) && e.code === 'BOOT_ENV_INVALID') await env.create(grubenv);
        else throw e;
      });
    } else {
      // No more tries for it: GRUB's default (the last good) boots next.
      await env.unset(grubenv, [ENV_TRY_VERSION, ENV_TRIES_LEFT, ENV_NEXT_ENTRY]).catch(() => env.create(grubenv));
    }
    const doRender = opts.renderMenu ?? (journal.getSetting(VERIFY_SETTING) === 'signature' || await stat(join(opts.bootDir, 'grub', 'grub.cfg')).then(() => true, () => false));
    if (doRender) {
      const def = healthy ? version : journal.lastGood()?.version;
      if (def !== undefined) await renderMenu(journal, opts.bootDir, def, env);
    }
    if (!healthy && opts.reboot) {
      log(`generation ${version} is unhealthy: rebooting into the last good generation`);
      // Closed at once: left `started`, the agent's next start() would report it as interrupted.
      journal.endStep(journal.beginStep('reboot', version, { reason: 'boot-check-failed' }), 'ok', null, 'reboot requested by the boot check');
      rebooting = true;
    }
  } finally {
    if (!opts.journal) journal.close();
  }
  if (rebooting) await run(systemctl, ['reboot'], { timeoutMs: 30_000 });
  return { version, verdict: healthy ? 'good' : 'failed', checks, rebooting };
}

const USAGE = `usage: liveup-boot-check [--state-dir DIR] [--boot-dir DIR] [--checks-dir DIR] [--run-dir DIR]
                         [--config FILE] [--timeout SECONDS] [--no-reboot] [--no-menu] [--json]`;

export async function main(argv: readonly string[]): Promise<number> {
  let a;
  try {
    a = parseArgs({
      args: [...argv],
      options: {
        'state-dir': { type: 'string', default: '/var/lib/liveup' },
        'boot-dir': { type: 'string', default: '/run/liveup/boot' },
        'checks-dir': { type: 'string', default: '/etc/liveup/checks.d' },
        'run-dir': { type: 'string', default: '/run/liveup' },
        config: { type: 'string', default: '/etc/liveup/boot-check.json' },
        timeout: { type: 'string' },
        'no-reboot': { type: 'boolean', default: false },
        'no-menu': { type: 'boolean', default: false },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', default: false },
      },
    }).values;
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (a.help) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  try {
    let config = await loadBootCheckConfig(a.config!);
    if (a.timeout !== undefined) {
      const t = Number(a.timeout);
      if (!(t > 0)) throw new Error('--timeout must be a positive number of seconds');
      config = { ...config, timeoutSeconds: t };
    }
    const r = await bootCheck({
      stateDir: a['state-dir']!, bootDir: a['boot-dir']!, checksDir: a['checks-dir']!, runDir: a['run-dir']!,
      config, reboot: !a['no-reboot'], ...(a['no-menu'] ? { renderMenu: false } : {}),
      log: (l) => process.stderr.write(`liveup-boot-check: ${l}\n`),
    });
    if (a.json) process.stdout.write(JSON.stringify(r) + '\n');
    else process.stdout.write(r.verdict === 'unknown-generation' ? 'not a liveup generation\n' : `generation ${r.version}: ${r.verdict}\n`);
    return r.verdict === 'failed' ? 1 : 0;
  } catch (e) {
    process.stderr.write(`liveup-boot-check: error: ${(e as Error).message}\n`);
    return 2;
  }
}
