/**
 * Typed client for org.liveup.Agent1 (agentctl, tests, scripts).
 *
 * Calls are plain bus messages rather than a dbus-next ProxyObject: no
 * introspection round trip, signal subscriptions that are active once their
 * promise resolves (the proxy adds match rules in the background), and one
 * place that maps every failure to a LiveupError — the code the daemon threw,
 * or DAEMON_UNAVAILABLE when nobody answers.
 */
import dbus from 'dbus-next';
import { LiveupError, type ErrorCode } from '../channel/errors.js';
import {
  BUS_NAME, ERROR_PREFIX, INTERFACE_NAME, OBJECT_PATH, errorCodeFromDbusName,
  type AgentProperties, type AgentStateName, type AgentStatus, type CheckResult, type GcResult, type ReportResult,
  type GenerationInfo, type HistoryEntry, type ProgressEvent, type RollbackOptions, type Unsubscribe,
  type UpdateOptions, type UpdateResult,
} from './api.js';
import { describeBus, openBus, type BusSpec, type MessageBus } from './bus.js';

/** The methods whose result is a JSON string, for `--json` pass-through. */
export type JsonMethod = 'GetStatus' | 'Check' | 'Update' | 'Rollback' | 'ListGenerations' | 'History' | 'Gc' | 'Report';

export interface AgentClient {
  getStatus(): Promise<AgentStatus>;
  check(): Promise<CheckResult>;
  update(opts?: Partial<UpdateOptions>): Promise<UpdateResult>;
  /** version null = the previous good generation. */
  rollback(version: number | null, opts?: Partial<RollbackOptions>): Promise<UpdateResult>;
  pin(version: number): Promise<void>;
  unpin(version: number): Promise<void>;
  listGenerations(): Promise<GenerationInfo[]>;
  /** limit null = all. */
  history(limit: number | null): Promise<HistoryEntry[]>;
  gc(): Promise<GcResult>;
  report(): Promise<ReportResult>;
  properties(): Promise<AgentProperties>;
  /** The daemon's JSON text unparsed, for `agentctl --json`. */
  raw: {
    getStatus(): Promise<string>;
    check(): Promise<string>;
    update(opts?: Partial<UpdateOptions>): Promise<string>;
    rollback(version: number | null, opts?: Partial<RollbackOptions>): Promise<string>;
    listGenerations(): Promise<string>;
    history(limit: number | null): Promise<string>;
    gc(): Promise<string>;
    report(): Promise<string>;
  };
  /** Resolves once the match rule is in place: no signal sent afterwards is missed. */
  onProgress(listener: (p: ProgressEvent) => void): Promise<Unsubscribe>;
  onStateChanged(listener: (state: AgentStateName) => void): Promise<Unsubscribe>;
  close(): void;
}

const DBUS = { destination: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus', interface: 'org.freedesktop.DBus' } as const;

function notRunning(bus: BusSpec): LiveupError {
  return new LiveupError('DAEMON_UNAVAILABLE', `liveup-agentd is not running (no owner for ${BUS_NAME} on ${describeBus(bus)})`, { bus: String(bus) });
}

/** A D-Bus error reply (or a transport failure) → the LiveupError it stands for. */
export function fromDbusError(e: unknown, bus: BusSpec, member: string): LiveupError {
  if (e instanceof LiveupError) return e;
  const type = (e as { type?: unknown }).type;
  const text = (e as { text?: unknown }).text;
  const message = typeof text === 'string' && text !== '' ? text : e instanceof Error ? e.message : String(e);
  if (typeof type !== 'string') return new LiveupError('INTERNAL', `${member}: ${message}`, {}, { cause: e });
  if (type.startsWith(ERROR_PREFIX)) {
    const code: ErrorCode = errorCodeFromDbusName(type) ?? 'INTERNAL';
    return new LiveupError(code, message, code === 'INTERNAL' && !errorCodeFromDbusName(type) ? { dbusError: type } : {}, { cause: e });
  }
  switch (type) {
    case 'org.freedesktop.DBus.Error.ServiceUnknown':
    case 'org.freedesktop.DBus.Error.NameHasNoOwner':
      return notRunning(bus);
    case 'org.freedesktop.DBus.Error.NoReply':
      return new LiveupError('DAEMON_UNAVAILABLE', `liveup-agentd did not answer ${member}: ${message}`, { bus: String(bus) }, { cause: e });
    case 'org.freedesktop.DBus.Error.AccessDenied':
      return new LiveupError('NOT_AUTHORIZED', `the bus refused ${member}: ${message}`, {}, { cause: e });
    case 'org.freedesktop.DBus.Error.UnknownMethod':
    case 'org.freedesktop.DBus.Error.UnknownObject':
    case 'org.freedesktop.DBus.Error.UnknownInterface':
      return new LiveupError('INTERNAL', `liveup-agentd does not implement ${member} (agent and agentctl versions differ?): ${message}`, { dbusError: type }, { cause: e });
    default:
      return new LiveupError('INTERNAL', `${member}: ${type}: ${message}`, { dbusError: type }, { cause: e });
  }
}

function parseJson<T>(member: string, text: string): T {
  try {
    return JSON.parse(text) as T;
  } catch (e) {
    throw new LiveupError('INTERNAL', `liveup-agentd sent invalid JSON from ${member}`, {}, { cause: e });
  }
}

function u64(n: number, what: string): bigint {
  if (!Number.isSafeInteger(n) || n < 0) throw new LiveupError('INVALID_ARGUMENT', `${what} must be a whole number ≥ 0, got ${n}`);
  return BigInt(n);
}

function boolVariants(o: Record<string, boolean | undefined>): Record<string, InstanceType<typeof dbus.Variant>> {
  const out: Record<string, InstanceType<typeof dbus.Variant>> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) out[k] = new dbus.Variant('b', v);
  return out;
}

export async function connectAgent(opts: { bus: BusSpec; connectTimeoutMs?: number }): Promise<AgentClient> {
  const busSpec = opts.bus;
  let bus: MessageBus;
  try {
    bus = await openBus(busSpec, { timeoutMs: opts.connectTimeoutMs });
  } catch (e) {
    // One message for "no daemon" whether the name or the whole bus is missing: the fix starts the same way.
    if (e instanceof LiveupError && e.code === 'DAEMON_UNAVAILABLE') {
      throw new LiveupError('DAEMON_UNAVAILABLE', `liveup-agentd is not running (${e.message})`, { ...e.details }, { cause: e });
    }
    throw e;
  }

  // A closed bus connection leaves dbus-next's pending calls waiting forever;
  // every call races this so it ends with DAEMON_UNAVAILABLE instead.
  let markLost!: (e: LiveupError) => void;
  const lost = new Promise<never>((_, reject) => { markLost = reject; });
  lost.catch(() => {});
  const onLost = (e?: unknown) => markLost(new LiveupError('DAEMON_UNAVAILABLE', `connection to ${describeBus(busSpec)} lost${e instanceof Error ? `: ${e.message}` : ''}`));
  bus.on('error', onLost);
  // `_connection` is dbus-next's stream wrapper; its 'end' is not forwarded by MessageBus.
  (bus as unknown as { _connection?: NodeJS.EventEmitter })._connection?.on('end', onLost);

  const rawCall = async (msg: ConstructorParameters<typeof dbus.Message>[0], member: string): Promise<unknown[]> => {
    try {
      const reply = await Promise.race([bus.call(new dbus.Message(msg)), lost]);
      return reply?.body ?? [];
    } catch (e) {
      throw fromDbusError(e, busSpec, member);
    }
  };

  let owner: string;
  try {
    const [o] = await rawCall({ ...DBUS, member: 'GetNameOwner', signature: 's', body: [BUS_NAME] }, 'GetNameOwner');
    owner = String(o);
  } catch (e) {
    bus.disconnect();
    throw e;
  }

  const call = (member: string, signature = '', body: unknown[] = []) =>
    rawCall({ destination: BUS_NAME, path: OBJECT_PATH, interface: INTERFACE_NAME, member, signature, body }, member);
  const callJson = async (member: JsonMethod, signature = '', body: unknown[] = []): Promise<string> => {
    const [s] = await call(member, signature, body);
    if (typeof s !== 'string') throw new LiveupError('INTERNAL', `liveup-agentd returned no result from ${member}`);
    return s;
  };

  const raw: AgentClient['raw'] = {
    getStatus: () => callJson('GetStatus'),
    check: () => callJson('Check'),
    update: (o = {}) => callJson('Update', 'a{sv}', [boolVariants({ download_only: o.downloadOnly, apply_live: o.applyLive, apply_now: o.applyNow })]),
    rollback: (v, o = {}) => callJson('Rollback', 'ta{sv}', [u64(v ?? 0, 'version'), boolVariants({ now: o.now, live: o.live })]),
    listGenerations: () => callJson('ListGenerations'),
    history: (limit) => {
      if (limit !== null && (limit > 0xffffffff || limit < 1)) throw new LiveupError('INVALID_ARGUMENT', `limit must be between 1 and ${0xffffffff}`);
      return callJson('History', 'u', [limit ?? 0]);
    },
    gc: () => callJson('Gc'),
    report: () => callJson('Report'),
  };

  const subscribe = async (member: string, handler: (body: unknown[]) => void): Promise<Unsubscribe> => {
    // sender= a well-known name matches whoever owns it (dbus-daemon resolves it).
    const rule = `type='signal',sender='${BUS_NAME}',path='${OBJECT_PATH}',interface='${INTERFACE_NAME}',member='${member}'`;
    const listener = (msg: InstanceType<typeof dbus.Message>) => {
      if (msg.type !== dbus.MessageType.SIGNAL || msg.path !== OBJECT_PATH || msg.interface !== INTERFACE_NAME || msg.member !== member) return;
      // Anyone may send us a unicast signal: only the owner of the name is believed.
      if (msg.sender !== owner) return;
      handler(msg.body);
    };
    bus.on('message', listener);
    await rawCall({ ...DBUS, member: 'AddMatch', signature: 's', body: [rule] }, 'AddMatch');
    return () => {
      bus.removeListener('message', listener);
      rawCall({ ...DBUS, member: 'RemoveMatch', signature: 's', body: [rule] }, 'RemoveMatch').catch(() => {});
    };
  };

  return {
    raw,
    getStatus: async () => parseJson<AgentStatus>('GetStatus', await raw.getStatus()),
    check: async () => parseJson<CheckResult>('Check', await raw.check()),
    update: async (o) => parseJson<UpdateResult>('Update', await raw.update(o)),
    rollback: async (v, o) => parseJson<UpdateResult>('Rollback', await raw.rollback(v, o)),
    pin: async (v) => { await call('Pin', 't', [u64(v, 'version')]); },
    unpin: async (v) => { await call('Unpin', 't', [u64(v, 'version')]); },
    listGenerations: async () => parseJson<GenerationInfo[]>('ListGenerations', await raw.listGenerations()),
    history: async (limit) => parseJson<HistoryEntry[]>('History', await raw.history(limit)),
    gc: async () => parseJson<GcResult>('Gc', await raw.gc()),
    report: async () => parseJson<ReportResult>('Report', await raw.report()),
    async properties() {
      const [all] = await rawCall({ destination: BUS_NAME, path: OBJECT_PATH, interface: 'org.freedesktop.DBus.Properties', member: 'GetAll', signature: 's', body: [INTERFACE_NAME] }, 'GetAll');
      const v = (all ?? {}) as Record<string, { value: unknown }>;
      const ver = (x: unknown) => (typeof x === 'bigint' && x > 0n ? Number(x) : null);
      return { state: String(v.State?.value) as AgentStateName, bootedVersion: ver(v.BootedVersion?.value), stagedVersion: ver(v.StagedVersion?.value) };
    },
    onProgress: (l) => subscribe('Progress', ([step, done, total]) => l({ step: String(step), done: Number(done), total: Number(total) })),
    onStateChanged: (l) => subscribe('StateChanged', ([state]) => l(String(state) as AgentStateName)),
    close() {
      bus.removeListener('error', onLost);
      bus.disconnect();
    },
  };
}
