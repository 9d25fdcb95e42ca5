/**
 * Opening a bus connection with dbus-next, the same way for the service and
 * the client: `system`, `session` or a literal D-Bus address.
 *
 * Unix socket paths always go through node's `net`, never dbus-next's optional
 * native `usocket` module: dbus-next picks usocket for `unix:path=` when it
 * happens to load, and its presence depends on whether the package was built
 * with native scripts allowed. We only need plain stream sockets (no fd
 * passing), so we rewrite `unix:path=P` to dbus-next's `unix:socket=P`, which
 * uses `net.createConnection` unconditionally. Abstract sockets need usocket and
 * are refused with a clear error instead.
 */
import dbus from 'dbus-next';
import { LiveupError } from '../channel/errors.js';

export type MessageBus = dbus.MessageBus;

/** `system`, `session`, or a D-Bus address such as `unix:path=/run/dbus/system_bus_socket`. */
export type BusSpec = 'system' | 'session' | (string & {});

export const DEFAULT_SYSTEM_BUS = 'unix:path=/run/dbus/system_bus_socket';

export function resolveBusAddress(bus: BusSpec, env: NodeJS.ProcessEnv = process.env): string {
  if (bus === 'system') return env.DBUS_SYSTEM_BUS_ADDRESS || DEFAULT_SYSTEM_BUS;
  if (bus === 'session') {
    const a = env.DBUS_SESSION_BUS_ADDRESS;
    if (!a) throw new LiveupError('DAEMON_UNAVAILABLE', 'no session bus: DBUS_SESSION_BUS_ADDRESS is not set');
    return a;
  }
  if (!/^[a-z]+:/.test(bus)) throw new LiveupError('INVALID_ARGUMENT', `--bus must be "system", "session" or a D-Bus address like unix:path=/run/dbus/system_bus_socket, got "${bus}"`);
  return bus;
}

/** Human name of a bus for messages: "the system bus", "the bus at unix:path=…". */
export function describeBus(bus: BusSpec): string {
  return bus === 'system' || bus === 'session' ? `the ${bus} bus` : `the bus at ${bus}`;
}

function unescapeValue(v: string): string {
  return v.replace(/%([0-9a-fA-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
}

/**
 * Rewrite an address list for dbus-next without usocket: `unix:path=` →
 * `unix:socket=` (plain net socket), values unescaped (dbus-next does not), and
 * keys dbus-next does not understand dropped. Throws for abstract sockets.
 */
export function toNetAddress(address: string): string {
  const out: string[] = [];
  for (const entry of address.split(';').filter((e) => e !== '')) {
    const colon = entry.indexOf(':');
    if (colon < 0) throw new LiveupError('INVALID_ARGUMENT', `not a D-Bus address: "${entry}"`);
    const family = entry.slice(0, colon);
    const params = new Map(
      entry.slice(colon + 1).split(',').filter(Boolean).map((kv) => {
        const eq = kv.indexOf('=');
        return [kv.slice(0, eq), unescapeValue(kv.slice(eq + 1))] as const;
      }),
    );
    if (family === 'unix') {
      const path = params.get('path') ?? params.get('socket');
      if (path === undefined) {
        // Skip (not fail) so a later usable entry in the list still works.
        continue;
      }
      // dbus-next splits on "," and "=" without unescaping: such paths cannot pass through it.
      if (/[,;=]/.test(path)) throw new LiveupError('INVALID_ARGUMENT', `unsupported character in D-Bus socket path "${path}"`);
      out.push(`unix:socket=${path}`);
    } else if (family === 'tcp') {
      out.push(entry);
    }
  }
  if (out.length === 0) {
    throw new LiveupError('INVALID_ARGUMENT', `no usable transport in D-Bus address "${address}" (supported: unix:path=, tcp:; abstract sockets are not)`);
  }
  return out.join(';');
}

const SOCKET_GONE = new Set(['ENOENT', 'ECONNREFUSED', 'ENOTDIR', 'EACCES', 'EPERM', 'ECONNRESET', 'EPIPE']);

/**
 * Connect and complete the Hello handshake. Any failure to reach the bus
 * becomes DAEMON_UNAVAILABLE naming the bus (a missing system bus socket means
 * no daemon can be reached either) — never a raw socket error.
 */
export async function openBus(bus: BusSpec, opts: { timeoutMs?: number } = {}): Promise<MessageBus> {
  const address = toNetAddress(resolveBusAddress(bus));
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const conn = dbus.sessionBus({ busAddress: address });
  return await new Promise<MessageBus>((resolve, reject) => {
    const fail = (e: unknown) => {
      clearTimeout(timer);
      conn.removeListener('connect', ok);
      try {
        conn.disconnect();
      } catch {
        // already closed
      }
      const code = (e as NodeJS.ErrnoException | null)?.code;
      const why = code && SOCKET_GONE.has(code) ? `${code === 'EACCES' || code === 'EPERM' ? 'permission denied' : 'no bus listening'} (${code})` : (e as Error)?.message ?? String(e);
      reject(new LiveupError('DAEMON_UNAVAILABLE', `cannot connect to ${describeBus(bus)}: ${why}`, { bus: String(bus) }, { cause: e }));
    };
    const ok = () => {
      clearTimeout(timer);
      conn.removeListener('error', fail);
      // Later stream errors (bus restarted, socket closed) must not crash the process
      // as an unhandled 'error' event; pending calls are failed by their owners.
      conn.on('error', () => {});
      resolve(conn);
    };
    const timer = setTimeout(() => fail(new Error(`no answer from the bus within ${timeoutMs} ms`)), timeoutMs);
    conn.once('connect', ok);
    conn.once('error', fail);
  });
}

export interface MethodCall {
  readonly destination: string;
  readonly path: string;
  readonly interface: string;
  readonly member: string;
  readonly signature?: string;
  readonly body?: readonly unknown[];
}

/**
 * One method call without a proxy object. `getProxyObject` first introspects
 * the remote object: systemd's manager answers with ~60 KB of XML that
 * dbus-next parses before the call goes out, hundreds of milliseconds under
 * emulation, on the path of every switch. An error reply rejects (DBusError).
 */
export async function callMethod(conn: MessageBus, m: MethodCall): Promise<unknown[]> {
  const reply = await conn.call(new dbus.Message({
    destination: m.destination, path: m.path, interface: m.interface, member: m.member,
    ...(m.signature ? { signature: m.signature, body: [...(m.body ?? [])] } : {}),
  }));
  return (reply?.body ?? []) as unknown[];
}
