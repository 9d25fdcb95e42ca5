/**
 * Facts about the running host that the decision engine weighs: this boot's
 * id, whether kexec and soft-reboot can be used, who is logged in and which
 * shutdown inhibitor locks are held. Each answers with a reason rather than
 * failing: a host without logind simply has no sessions, one without
 * kexec-tools simply cannot kexec.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import dbus from 'dbus-next';
import { callMethod, openBus, type BusSpec } from '../dbus/bus.js';
import { createSystemd } from './systemd.js';
import { onPath } from '../util/path.js';
import { SOFT_REBOOT_ID } from './nextroot.js';
import { unescapeMount } from '../util/mountinfo.js';

/**
 * This userspace boot's id: the kernel's boot_id, plus the id liveup wrote at
 * its last soft-reboot (nextroot.ts), which keeps the kernel and so its
 * boot_id — a live replay tied to the old userspace must not carry over.
 */
export async function bootId(path = '/proc/sys/kernel/random/boot_id', softRebootIdFile = join('/run/liveup', SOFT_REBOOT_ID)): Promise<string> {
  const kernel = (await readFile(path, 'utf8').catch(() => 'unknown')).trim();
  const soft = (await readFile(softRebootIdFile, 'utf8').catch(() => '')).trim();
  return soft ? `${kernel}+${soft}` : kernel;
}

/** null when `kexec -l` can work here, else why not. `sys` is /sys and /proc's parent for tests. */
export async function kexecUnavailable(sys = { sysfs: '/sys', procfs: '/proc' }): Promise<string | null> {
  if (!(await onPath('kexec'))) return 'kexec-tools is not installed';
  const disabled = await readFile(join(sys.procfs, 'sys/kernel/kexec_load_disabled'), 'utf8').catch(() => '0');
  if (disabled.trim() === '1') return 'kexec is disabled (kernel.kexec_load_disabled=1)';
  const lockdown = await readFile(join(sys.sysfs, 'kernel/security/lockdown'), 'utf8').catch(() => '');
  // "none [integrity] confidentiality": unsigned kernels cannot be kexec'ed under lockdown.
  const mode = /\[(\w+)\]/.exec(lockdown)?.[1];
  if (mode && mode !== 'none') return `the kernel is locked down (${mode})`;
  return null;
}

/** null when systemd can soft-reboot (version 254 or later), else why not. */
export async function softRebootUnavailable(bus: BusSpec = 'system'): Promise<string | null> {
  try {
    const v = await createSystemd(bus).version();
    return v >= 254 ? null : `systemd ${v} cannot soft-reboot (254 or later needed)`;
  } catch (e) {
    return `systemd is not reachable on D-Bus (${(e as Error).message})`;
  }
}

export interface Sessions {
  readonly users: readonly string[];
  readonly inhibitors: readonly string[];
}

/** Users with a session and block-mode shutdown inhibitors, from logind; none when logind is absent. */
export async function sessions(bus: BusSpec = 'system'): Promise<Sessions> {
  let conn: dbus.MessageBus | null = null;
  try {
    conn = await openBus(bus, { timeoutMs: 3_000 });
    const call = (member: string) => callMethod(conn!, { destination: 'org.freedesktop.login1', path: '/org/freedesktop/login1', interface: 'org.freedesktop.login1.Manager', member });
    const [list] = (await call('ListSessions')) as [[string, number, string, string, string][]];
    const users = [...new Set(list.map(([, , user]) => user))].sort();
    const [inh] = (await call('ListInhibitors')) as [[string, string, string, string, number, number][]];
    const inhibitors = inh.filter(([what, , , mode]) => mode === 'block' && /shutdown/.test(what)).map(([, who, why]) => `${who}: ${why}`);
    return { users, inhibitors };
  } catch {
    return { users: [], inhibitors: [] };
  } finally {
    conn?.disconnect();
  }
}

/**
 * The topmost lower layer of the overlay mounted on `/` (the read-only image
 * the running system started from), or null when `/` is not an overlay.
 * Read from mountinfo's super options; the last mount on `/` is the visible one.
 */
export async function rootLowerDir(mountinfo = '/proc/self/mountinfo'): Promise<string | null> {
  const text = await readFile(mountinfo, 'utf8').catch(() => '');
  let lower: string | null = null;
  for (const line of text.split('\n')) {
    const [pre, post] = line.split(' - ');
    if (!pre || !post) continue;
    if (pre.split(' ')[4] !== '/') continue;
    const [fstype, , superOpts] = post.split(' ');
    if (fstype !== 'overlay') { lower = null; continue; }
    const m = /(?:^|,)lowerdir=([^,]*)/.exec(superOpts ?? '');
    // Several lower layers are ':'-separated, topmost first; a literal ':' is escaped as '\:'.
    lower = m ? unescapeMount(m[1]!.split(/(?<!\\):/)[0]!).replace(/\\:/g, ':') : null;
  }
  return lower;
}
