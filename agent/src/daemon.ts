/**
 * `liveup-agentd`: wiring only. Configuration, the journal, the adapters and
 * the Agent are made here and connected to their triggers — the D-Bus
 * service, the cron schedule, the inbox watcher and the config watcher — all
 * of which go through the one transaction lock, so a scheduled check, an
 * offline bundle and an `agentctl update` never run at the same time.
 */
import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Agent } from './agent.js';
import { readBootedVersion } from './adapters/booted.js';
import { FleetReporter } from './adapters/fleet.js';
import { toLiveupError } from './channel/errors.js';
import { createGrubEnv } from './adapters/grubenv.js';
import { Journal } from './adapters/journal.js';
import { watchInbox, type InboxWatcher } from './adapters/inbox.js';
import { applyTimeZone, scheduleChecks, type Schedule } from './adapters/scheduler.js';
import { DEFAULT_DROP_IN_DIR, DEFAULT_LOCAL_DROP_IN_DIR, DEFAULT_MAIN_FILE, loadConfig, watchConfig, type ConfigWatcher, type FleetConfig } from './config.js';
import { startService, type AgentService } from './dbus/service.js';
import { TxLock } from './core/txlock.js';
import { EXIT, optString, runCli, type Command } from './cli/framework.js';
import { createLogger, type Logger } from './util/log.js';
import { bootCheck, loadBootCheckConfig, type BootCheckResult } from './bootcheck.js';
import { refreshStartupSnapshots } from './adapters/snapshots.js';

export interface RunningDaemon {
  readonly agent: Agent;
  stop(): Promise<void>;
}

export async function startDaemon(opts: {
  mainFile: string; dropInDir: string; localDropInDir?: string; runDir: string; bus?: string; log?: Logger;
  /** How often queued fleet reports and a held reboot slot are retried (default 30 s; tests shorten it). */
  fleetTickMs?: number;
  /** When the startup snapshots are checked and built after the start (default 20 s). */
  snapshotDelayMs?: number;
}): Promise<RunningDaemon> {
  const log = opts.log ?? createLogger();
  const where = { mainFile: opts.mainFile, dropInDir: opts.dropInDir, localDropInDir: opts.localDropInDir ?? DEFAULT_LOCAL_DROP_IN_DIR };
  const { config, files } = await loadConfig(where);
  log.info({ files, channel: config.channel, mirrors: config.mirrors }, 'configuration loaded');
  await mkdir(config.stateDir, { recursive: true, mode: 0o750 });
  await mkdir(config.inboxDir, { recursive: true, mode: 0o770 });
  const journal = Journal.open(join(config.stateDir, 'journal.db'));
  const lock = new TxLock();
  let schedule: Schedule | null = null;
  // One pending wake-up for a `wait` decision; a later decision replaces it.
  let wake: NodeJS.Timeout | null = null;
  const scheduledUpdate = (): Promise<void> =>
    guarded('scheduled-update', 'scheduler', () => agent.update({ downloadOnly: false, applyLive: false }, { scheduled: true }));
  const reporter: FleetReporter = new FleetReporter({ journal, config: (): FleetConfig | undefined => agent.config.fleet, log });
  const agent: Agent = new Agent({
    config,
    journal,
    reporter,
    grubenv: createGrubEnv({ editenv: config.grubEditenv }),
    log,
    bootedVersion: () => readBootedVersion(opts.runDir),
    nextCheck: () => schedule?.nextRun() ?? null,
    wakeAt: (at) => {
      if (wake) clearTimeout(wake);
      // setTimeout's limit is ~24.8 days; a longer wait is re-armed by the next scheduled check.
      const ms = Math.min(Math.max(at.getTime() - Date.now(), 0) + 1_000, 2 ** 31 - 1);
      wake = setTimeout(() => { wake = null; void scheduledUpdate(); }, ms);
      wake.unref();
    },
  });
  await agent.start();
  // Fleet reports: one on every state change and every reportIntervalMinutes,
  // all through the outbox; a sender tick retries what is queued.
  const queueReport = async (): Promise<void> => {
    if (!agent.config.fleet) return;
    try {
      reporter.queue(await agent.reportBody());
      await reporter.flush();
    } catch (e) {
      log.warn({ err: (e as Error).message }, 'fleet report not queued');
    }
  };
  const unsubscribeReports = agent.events.onStateChanged(() => void queueReport());
  let lastPeriodic = 0;
  const fleetTick = setInterval(() => {
    const f = agent.config.fleet;
    if (!f) return;
    // A reboot slot taken before a switch is released once the new generation is good.
    // The boot check marks it good after this daemon started (and the endpoint may not be
    // reachable yet), so the release is retried here until it is granted, not tried once.
    if (agent.holdsFleetLock()) void agent.releaseFleetLock();
    if (Date.now() - lastPeriodic >= f.reportIntervalMinutes * 60_000) {
      lastPeriodic = Date.now();
      void queueReport();
    } else if (journal.outboxSize() > 0) {
      void reporter.flush().catch(() => undefined);
    }
  }, opts.fleetTickMs ?? 30_000);
  fleetTick.unref();
  void agent.releaseFleetLock();
  // startup: "snapshot" when the launcher ran the program from its V8 startup
  // snapshot (packaging/snapshot.mjs marks it), else "modules".
  const startup = (globalThis as { __liveupStartup?: string }).__liveupStartup ?? 'modules';
  log.info({ booted: agent.properties().bootedVersion, startup }, 'agent started');

  /** Run under the lock; a busy lock means someone else is already doing it. */
  const guarded = async (kind: string, owner: string, fn: () => Promise<unknown>): Promise<void> => {
    try {
      await lock.run(kind, owner, async () => {
        agent.setTransaction({ kind, since: new Date().toISOString() });
        try {
          await fn();
        } finally {
          agent.setTransaction(null);
        }
      });
    } catch (e) {
      const err = toLiveupError(e);
      log.warn({ code: err.code, err: err.message, kind }, err.code === 'UPDATE_IN_PROGRESS' ? 'skipped: busy' : 'operation failed');
    }
  };

  /**
   * liveup-boot-check.service's check, in this process: the unit runs after
   * multi-user.target, so this daemon is up, and a second Node.js start is
   * what the standalone liveup-boot-check cost every boot (~6 s of a boot
   * under QEMU TCG, bench/live). Its checks.d/ and boot-check.json sit beside
   * the main configuration file (/etc/liveup/), where the standalone looks.
   */
  const runBootCheck = async (): Promise<BootCheckResult> => {
    const etc = dirname(opts.mainFile);
    const c = agent.config;
    const r = await bootCheck({
      stateDir: c.stateDir, bootDir: c.bootDir, runDir: opts.runDir, checksDir: join(etc, 'checks.d'),
      config: await loadBootCheckConfig(join(etc, 'boot-check.json')),
      // Only a machine reboots into its last good generation (as the switches: liveRoot = /).
      reboot: c.liveRoot === '/',
      journal, editenv: c.grubEditenv,
      log: (line) => log.info({ bootCheck: line }, 'boot check'),
    });
    log.info({ version: r.version, verdict: r.verdict, rebooting: r.rebooting }, 'boot check done');
    return r;
  };

  const service: AgentService = await startService({
    bus: opts.bus ?? config.dbus,
    api: agent,
    lock,
    log: (line) => log.info({ dbus: line }, 'dbus'),
    bootCheck: runBootCheck,
  });
  log.info({ bus: opts.bus ?? config.dbus }, 'serving org.liveup.Agent1');

  // The startup snapshots this machine's next starts use (adapters/snapshots.ts):
  // built here, after the boot check has had its seconds, at the background CPU weight.
  const snapshots = setTimeout(() => {
    refreshStartupSnapshots().then(
      (rs) => {
        for (const r of rs) {
          if (r.outcome === 'failed') log.warn({ program: r.program, detail: r.detail }, 'startup snapshot not built');
          else log.info({ program: r.program, outcome: r.outcome }, 'startup snapshot');
        }
      },
      (e: unknown) => log.warn({ err: toLiveupError(e).message }, 'startup snapshots not refreshed'),
    );
  }, opts.snapshotDelayMs ?? 20_000);
  snapshots.unref();

  const scheduleFrom = (c = agent.config): Schedule => {
    applyTimeZone(c.timeZone);
    return scheduleChecks(c.schedule, { jitterMs: c.jitterSeconds * 1000 }, () =>
      scheduledUpdate());
  };
  schedule = scheduleFrom();

  let inbox: InboxWatcher = watchInbox(config.inboxDir, (dir) => void guarded('inbox', 'inbox', () => agent.importBundle(dir)));
  for (const dir of await inbox.scan()) await guarded('inbox', 'inbox', () => agent.importBundle(dir));

  const configWatcher: ConfigWatcher = await watchConfig(
    { ...where, initial: config },
    (next) => {
      agent.setConfig(next);
      void schedule?.stop();
      schedule = scheduleFrom(next);
      if (next.inboxDir !== config.inboxDir) {
        void inbox.close();
        inbox = watchInbox(next.inboxDir, (dir) => void guarded('inbox', 'inbox', () => agent.importBundle(dir)));
      }
      journal.event({ kind: 'config-reloaded', message: 'configuration reloaded' });
      log.info({ channel: next.channel }, 'configuration reloaded');
    },
    (err) => log.error({ code: err.code, err: err.message }, 'new configuration refused; the previous one stays in force'),
  );

  return {
    agent,
    async stop() {
      await configWatcher.close();
      await inbox.close();
      await schedule?.stop();
      if (wake) clearTimeout(wake);
      clearTimeout(snapshots);
      clearInterval(fleetTick);
      unsubscribeReports();
      await service.close();
      journal.close();
      log.info({}, 'stopped');
    },
  };
}

const daemonCmd: Command = {
  path: [],
  summary: 'run the liveup agent (normally started by systemd as liveup-agent.service)',
  usage: '[--config FILE] [--config-dir DIR] [--local-config-dir DIR] [--run-dir DIR] [--bus system|session|ADDRESS]',
  options: {
    config: { type: 'string', description: 'main configuration file', default: DEFAULT_MAIN_FILE, valueName: 'FILE' },
    'config-dir': { type: 'string', description: 'drop-in directory (the image\'s)', default: DEFAULT_DROP_IN_DIR, valueName: 'DIR' },
    'local-config-dir': { type: 'string', description: 'the machine\'s own drop-ins, merged last (on the data partition)', default: DEFAULT_LOCAL_DROP_IN_DIR, valueName: 'DIR' },
    'run-dir': { type: 'string', description: 'runtime directory (the boot side records the booted generation there)', default: '/run/liveup', valueName: 'DIR' },
    bus: { type: 'string', description: 'D-Bus to serve on (overrides the configuration)', valueName: 'BUS' },
  },
  async run({ values }) {
    const d = await startDaemon({
      mainFile: optString(values, 'config') ?? DEFAULT_MAIN_FILE,
      dropInDir: optString(values, 'config-dir') ?? DEFAULT_DROP_IN_DIR,
      localDropInDir: optString(values, 'local-config-dir') ?? DEFAULT_LOCAL_DROP_IN_DIR,
      runDir: optString(values, 'run-dir') ?? '/run/liveup',
      ...(optString(values, 'bus') ? { bus: optString(values, 'bus')! } : {}),
    });
    await new Promise<void>((resolve) => {
      const stop = () => void d.stop().then(resolve, resolve);
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
    });
    return EXIT.OK;
  },
};

export async function main(argv: readonly string[]): Promise<number> {
  // The daemon has no verbs: route everything to the one command, keeping --help.
  return runCli('liveup-agentd', 'liveup-agentd: the on-host liveup agent.', [daemonCmd], argv.length ? argv : ['--config', DEFAULT_MAIN_FILE]);
}

