/**
 * The org.liveup.Agent1 service: exports the interface described by the
 * checked-in org.liveup.Agent1.xml, forwards calls to an AgentApi, enforces
 * who may change the machine and that only one change runs at a time, and
 * turns errors into D-Bus errors (org.liveup.Agent1.Error.<Code>).
 */
import dbus from 'dbus-next';
import { LiveupError, errorCodeToPascal, toLiveupError } from '../channel/errors.js';
import { TxLock } from '../core/txlock.js';
import {
  BUS_NAME, ERROR_PREFIX, INTERFACE_NAME, OBJECT_PATH, dbusErrorName,
  type AgentApi, type AgentProperties, type RollbackOptions, type UpdateOptions,
} from './api.js';
import { groupAuthorizer, type Authorizer } from './authz.js';
import { openBus, type BusSpec, type MessageBus } from './bus.js';
import type { BootCheckResult } from '../bootcheck.js';

export interface ServiceOptions {
  bus: BusSpec;
  api: AgentApi;
  /** The daemon's one transaction lock, shared with its scheduler. A private one if omitted. */
  lock?: TxLock;
  /** Who may call mutating methods. Default: uid 0 or members of group `liveup`. */
  authorize?: Authorizer;
  /** Diagnostics: refused calls and unexpected errors (with stack). */
  log?: (line: string) => void;
  /**
   * This boot's health check, run in the daemon's process (BootCheck). Absent,
   * BootCheck answers NotSupported and liveup-boot-check.service runs the
   * check in a process of its own.
   */
  bootCheck?: () => Promise<BootCheckResult>;
}

export interface AgentService {
  readonly bus: MessageBus;
  /** Our unique connection name (":1.42"). */
  readonly uniqueName: string;
  close(): Promise<void>;
}

/** Methods that change the machine (Check too: it touches the network and the journal). */
export const MUTATING_METHODS = ['Check', 'Update', 'Rollback', 'Pin', 'Unpin', 'Gc', 'Report', 'BootCheck'] as const;
export type MutatingMethod = (typeof MUTATING_METHODS)[number];

/** A LiveupError → its D-Bus error; anything else → Internal (its stack stays in our log). */
export function toDbusError(e: unknown): InstanceType<typeof dbus.DBusError> {
  if (e instanceof LiveupError) return new dbus.DBusError(dbusErrorName(e.code), e.message);
  const err = toLiveupError(e, 'INTERNAL');
  return new dbus.DBusError(ERROR_PREFIX + errorCodeToPascal('INTERNAL'), `internal error: ${err.message}`);
}

function toVersion(v: unknown, what: string): number {
  const n = typeof v === 'bigint' ? Number(v) : typeof v === 'number' ? v : NaN;
  if (!Number.isSafeInteger(n) || n < 0) throw new LiveupError('INVALID_ARGUMENT', `${what} must be a generation version, got ${String(v)}`);
  return n;
}

/**
 * Read an a{sv} of booleans strictly: an unknown key or a wrong type is an
 * INVALID_ARGUMENT, so a typo ("apply-live") fails loudly instead of being ignored.
 */
function boolOptions<K extends string>(raw: unknown, keys: readonly K[]): Record<K, boolean> {
  const out = Object.fromEntries(keys.map((k) => [k, false])) as Record<K, boolean>;
  if (raw === null || typeof raw !== 'object') return out;
  for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
    if (!(keys as readonly string[]).includes(k)) {
      throw new LiveupError('INVALID_ARGUMENT', `unknown option "${k}" (known: ${keys.join(', ')})`);
    }
    const variant = v as { signature?: string; value?: unknown };
    if (variant.signature !== 'b' || typeof variant.value !== 'boolean') {
      throw new LiveupError('INVALID_ARGUMENT', `option "${k}" must be a boolean (b)`);
    }
    out[k as K] = variant.value;
  }
  return out;
}

interface Caller {
  sender: string;
}

/** The glue the exported Interface delegates to; kept apart so the Interface class stays a thin table. */
class Core {
  constructor(
    readonly bus: MessageBus,
    readonly api: AgentApi,
    readonly lock: TxLock,
    readonly authorize: Authorizer,
    readonly log: (line: string) => void,
    readonly bootCheck: (() => Promise<BootCheckResult>) | undefined,
  ) {}

  async uidOf(sender: string): Promise<number> {
    const reply = await this.bus.call(new dbus.Message({
      destination: 'org.freedesktop.DBus',
      path: '/org/freedesktop/DBus',
      interface: 'org.freedesktop.DBus',
      member: 'GetConnectionUnixUser',
      signature: 's',
      body: [sender],
    }));
    const uid = reply?.body[0] as unknown;
    if (typeof uid !== 'number') throw new LiveupError('INTERNAL', `bus returned no uid for ${sender}`);
    return uid;
  }

  /** Read-only methods: run, map errors. */
  async read<T>(member: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      throw this.fail(member, e);
    }
  }

  /** Mutating methods: authorize the caller, then run under the transaction lock. */
  async mutate<T>(member: MutatingMethod, caller: Caller | null, fn: () => Promise<T>): Promise<T> {
    try {
      // Fail closed: without a known sender we cannot tell who is asking.
      if (!caller) throw new LiveupError('NOT_AUTHORIZED', `${member}: caller unknown`);
      const uid = await this.uidOf(caller.sender);
      if (!(await this.authorize(uid))) {
        this.log(`refused ${member} from uid ${uid} (${caller.sender})`);
        throw new LiveupError('NOT_AUTHORIZED', `${member} needs root or membership of group "liveup" (caller uid ${uid})`, { uid, method: member });
      }
      return await this.lock.run(member.toLowerCase(), `uid ${uid}`, fn);
    } catch (e) {
      throw this.fail(member, e);
    }
  }

  fail(member: string, e: unknown): InstanceType<typeof dbus.DBusError> {
    if (!(e instanceof LiveupError)) this.log(`internal error in ${member}: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
    return toDbusError(e);
  }
}

/**
 * dbus-next does not hand the incoming message to Interface methods, but it
 * dispatches synchronously: installed method handlers run first, then the
 * Interface method, in the same tick. So a method handler records the message
 * and each method takes it as its first, synchronous act. Methods that need
 * no caller identity simply ignore it.
 */
class Agent1 extends dbus.interface.Interface {
  readonly #core: Core;
  #incoming: { sender: string } | null = null;

  constructor(core: Core) {
    super(INTERFACE_NAME);
    this.#core = core;
  }

  noteIncoming(sender: string): void {
    this.#incoming = { sender };
  }

  #caller(): Caller | null {
    const c = this.#incoming;
    this.#incoming = null;
    return c;
  }

  GetStatus(): Promise<string> {
    this.#caller();
    return this.#core.read('GetStatus', async () => JSON.stringify(await this.#core.api.getStatus()));
  }

  Check(): Promise<string> {
    return this.#core.mutate('Check', this.#caller(), async () => JSON.stringify(await this.#core.api.check()));
  }

  Update(options: unknown): Promise<string> {
    return this.#core.mutate('Update', this.#caller(), async () => {
      const o = boolOptions(options, ['download_only', 'apply_live', 'apply_now']);
      const opts: UpdateOptions = { downloadOnly: o.download_only, applyLive: o.apply_live, applyNow: o.apply_now };
      return JSON.stringify(await this.#core.api.update(opts));
    });
  }

  Rollback(version: unknown, options: unknown): Promise<string> {
    return this.#core.mutate('Rollback', this.#caller(), async () => {
      const v = toVersion(version, 'version');
      const o = boolOptions(options, ['now', 'live']);
      const opts: RollbackOptions = { now: o.now, ...(o.live ? { live: true } : {}) };
      return JSON.stringify(await this.#core.api.rollback(v === 0 ? null : v, opts));
    });
  }

  Pin(version: unknown): Promise<void> {
    return this.#core.mutate('Pin', this.#caller(), () => this.#core.api.pin(positive(version)));
  }

  Unpin(version: unknown): Promise<void> {
    return this.#core.mutate('Unpin', this.#caller(), () => this.#core.api.unpin(positive(version)));
  }

  ListGenerations(): Promise<string> {
    this.#caller();
    return this.#core.read('ListGenerations', async () => JSON.stringify(await this.#core.api.listGenerations()));
  }

  History(limit: unknown): Promise<string> {
    this.#caller();
    return this.#core.read('History', async () => {
      const n = toVersion(limit, 'limit');
      return JSON.stringify(await this.#core.api.history(n === 0 ? null : n));
    });
  }

  Gc(): Promise<string> {
    return this.#core.mutate('Gc', this.#caller(), async () => JSON.stringify(await this.#core.api.gc()));
  }

  Report(): Promise<string> {
    return this.#core.mutate('Report', this.#caller(), async () => JSON.stringify(await this.#core.api.report()));
  }

  /** The verdict typed (the unit's shell program reads it), the whole result as JSON. */
  BootCheck(): Promise<[string, string]> {
    return this.#core.mutate('BootCheck', this.#caller(), async () => {
      const run = this.#core.bootCheck;
      if (!run) throw new LiveupError('NOT_SUPPORTED', 'this agent does not run boot checks');
      const r = await run();
      return [r.verdict, JSON.stringify(r)];
    });
  }

  // Signals: the return value is the signal body (dbus-next's convention).
  Progress(step: string, done: bigint, total: bigint): [string, bigint, bigint] {
    return [step, done, total];
  }

  StateChanged(state: string): string {
    return state;
  }

  // Properties are read synchronously; the daemon keeps AgentApi.properties() current.
  get State(): string {
    return this.#core.api.properties().state;
  }

  get BootedVersion(): bigint {
    return BigInt(this.#core.api.properties().bootedVersion ?? 0);
  }

  get StagedVersion(): bigint {
    return BigInt(this.#core.api.properties().stagedVersion ?? 0);
  }
}

function positive(v: unknown): number {
  const n = toVersion(v, 'version');
  if (n === 0) throw new LiveupError('INVALID_ARGUMENT', 'version must be at least 1');
  return n;
}

Agent1.configureMembers({
  methods: {
    GetStatus: { outSignature: 's' },
    Check: { outSignature: 's' },
    Update: { inSignature: 'a{sv}', outSignature: 's' },
    Rollback: { inSignature: 'ta{sv}', outSignature: 's' },
    Pin: { inSignature: 't' },
    Unpin: { inSignature: 't' },
    ListGenerations: { outSignature: 's' },
    History: { inSignature: 'u', outSignature: 's' },
    Gc: { outSignature: 's' },
    Report: { outSignature: 's' },
    BootCheck: { outSignature: 'ss' },
  },
  signals: {
    Progress: { signature: 'stt' },
    StateChanged: { signature: 's' },
  },
  properties: {
    State: { signature: 's', access: 'read' },
    BootedVersion: { signature: 't', access: 'read' },
    StagedVersion: { signature: 't', access: 'read' },
  },
});

function propertyValues(p: AgentProperties): Record<string, string | bigint> {
  return { State: p.state, BootedVersion: BigInt(p.bootedVersion ?? 0), StagedVersion: BigInt(p.stagedVersion ?? 0) };
}

/**
 * Connect, export /org/liveup/Agent1 and take the name org.liveup.Agent1.
 * The object is exported before the name is requested so the first call
 * after the name appears already finds it.
 */
export async function startService(opts: ServiceOptions): Promise<AgentService> {
  const bus = await openBus(opts.bus);
  const log = opts.log ?? (() => {});
  const core = new Core(bus, opts.api, opts.lock ?? new TxLock(), opts.authorize ?? groupAuthorizer('liveup'), log, opts.bootCheck);
  const iface = new Agent1(core);

  const noteCaller = (msg: dbus.Message): boolean => {
    if (msg.path === OBJECT_PATH && msg.interface === INTERFACE_NAME) iface.noteIncoming(msg.sender);
    return false; // never handle: the Interface dispatch does
  };
  bus.addMethodHandler(noteCaller);
  bus.export(OBJECT_PATH, iface);

  // Signals are best effort: a lost bus connection must not throw into the
  // daemon's update code that emitted the event.
  const emit = (what: string, fn: () => void) => {
    try {
      fn();
    } catch (e) {
      log(`could not emit ${what}: ${e instanceof Error ? e.message : String(e)}`);
    }
  };
  const unsubscribe = [
    opts.api.events.onProgress((p) => emit('Progress', () => iface.Progress(p.step, BigInt(Math.max(0, Math.trunc(p.done))), BigInt(Math.max(0, Math.trunc(p.total)))))),
    opts.api.events.onStateChanged((p) => emit('StateChanged', () => {
      iface.StateChanged(p.state);
      dbus.interface.Interface.emitPropertiesChanged(iface, propertyValues(p), []);
    })),
  ];

  const cleanup = () => {
    for (const u of unsubscribe) u();
    bus.removeMethodHandler(noteCaller);
    bus.unexport(OBJECT_PATH, iface);
    bus.disconnect();
  };

  let reply: number;
  try {
    reply = await bus.requestName(BUS_NAME, dbus.NameFlag.DO_NOT_QUEUE);
  } catch (e) {
    cleanup();
    const type = (e as { type?: string }).type;
    if (type === 'org.freedesktop.DBus.Error.AccessDenied') {
      throw new LiveupError('NOT_AUTHORIZED', `not allowed to own ${BUS_NAME} (is the D-Bus policy org.liveup.Agent1.conf installed, and are we root?)`, {}, { cause: e });
    }
    throw toLiveupError(e);
  }
  if (reply !== dbus.RequestNameReply.PRIMARY_OWNER && reply !== dbus.RequestNameReply.ALREADY_OWNER) {
    cleanup();
    throw new LiveupError('INTERNAL', `${BUS_NAME} is already owned by another process: is liveup-agentd already running?`);
  }

  return {
    bus,
    // `name` is set after Hello but missing from dbus-next's typings.
    uniqueName: (bus as unknown as { name: string | null }).name ?? '',
    async close() {
      try {
        await bus.releaseName(BUS_NAME);
      } catch {
        // the bus may already be gone; disconnecting is what matters
      }
      cleanup();
    },
  };
}
