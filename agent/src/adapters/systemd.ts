/**
 * systemd over D-Bus (org.freedesktop.systemd1): restart units after a live
 * replay, and start kexec.target / soft-reboot.target / reboot.target.
 *
 * A connection of its own, opened per use and closed after: the agent's
 * service connection (org.liveup.Agent1) keeps answering while a restarted
 * unit takes its time, and a restart of dbus.service itself cannot take the
 * agent's name down with it.
 */
import dbus from 'dbus-next';
import { callMethod, openBus, type BusSpec } from '../dbus/bus.js';
import { LiveupError } from '../channel/errors.js';

const DEST = 'org.freedesktop.systemd1';
const PATH = '/org/freedesktop/systemd1';
const MANAGER = 'org.freedesktop.systemd1.Manager';

export interface JobResult {
  readonly unit: string;
  /** systemd's job result: `done`, `failed`, `timeout`, `canceled`, `dependency`, `skipped`. */
  readonly result: string;
}

export interface Systemd {
  /** Restart each unit and wait for its job; one failure does not stop the others. */
  restartUnits(units: readonly string[], timeoutMs?: number): Promise<JobResult[]>;
  /** Queue a start of `target` (`kexec.target`, `soft-reboot.target`, `reboot.target`); returns once queued. */
  startTarget(target: 'kexec.target' | 'soft-reboot.target' | 'reboot.target'): Promise<void>;
  /** systemd's version number (soft-reboot needs 254). */
  version(): Promise<number>;
}

export function createSystemd(bus: BusSpec = 'system'): Systemd {
  async function withConn<T>(f: (conn: dbus.MessageBus) => Promise<T>): Promise<T> {
    const conn = await openBus(bus, { timeoutMs: 5_000 });
    try {
      return await f(conn);
    } finally {
      conn.disconnect();
    }
  }
  // A proxy (introspection first) only where signals are needed: JobRemoved for restarts.
  const withManager = <T>(f: (m: dbus.ClientInterface) => Promise<T>): Promise<T> =>
    withConn(async (conn) => f((await conn.getProxyObject(DEST, PATH)).getInterface(MANAGER)));
  return {
    restartUnits: (units, timeoutMs = 120_000) =>
      withManager(async (m) => {
        const pending = new Map<string, (r: string) => void>();
        // Subscribe before queueing so a fast job's JobRemoved is not missed.
        await m.Subscribe!().catch(() => undefined);
        m.on('JobRemoved', (_id: number, job: string, _unit: string, result: string) => pending.get(job)?.(result));
        const results: JobResult[] = [];
        for (const unit of units) {
          try {
            const job = (await m.RestartUnit!(unit, 'replace')) as string;
            const result = await new Promise<string>((resolve) => {
              const timer = setTimeout(() => resolve('timeout'), timeoutMs);
              pending.set(job, (r) => { clearTimeout(timer); resolve(r); });
            });
            results.push({ unit, result });
          } catch (e) {
            results.push({ unit, result: `error: ${(e as Error).message}` });
          }
        }
        return results;
      }),
    // Plain calls, no proxy: see callMethod (these two are on every switch's path).
    startTarget: (target) =>
      withConn(async (conn) => {
        try {
          await callMethod(conn, { destination: DEST, path: PATH, interface: MANAGER, member: 'StartUnit', signature: 'ss', body: [target, 'replace-irreversibly'] });
        } catch (e) {
          throw new LiveupError('COMMAND_FAILED', `systemd refused to start ${target}: ${(e as Error).message}`, { unit: target }, { cause: e });
        }
      }),
    version: () =>
      withConn(async (conn) => {
        const [v] = await callMethod(conn, { destination: DEST, path: PATH, interface: 'org.freedesktop.DBus.Properties', member: 'Get', signature: 'ss', body: [MANAGER, 'Version'] });
        return Number(/^(\d+)/.exec(String((v as dbus.Variant<string> | undefined)?.value ?? ''))?.[1] ?? 0);
      }),
  };
}
