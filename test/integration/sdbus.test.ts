/**
 * The agent's calls to systemd and logind, made without proxy objects (no
 * introspection on a switch's path), against stand-ins on a private
 * dbus-daemon: systemd and logind cannot run as services here; the real ones
 * answer the same calls in the VM suite (soft-reboot, kexec, the window test).
 * What this proves: the calls' names, signatures and reply decoding.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import dbus from 'dbus-next';
import { startPrivateBus, type PrivateBus } from '../helpers/dbus.js';
import { openBus } from '../../agent/src/dbus/bus.js';
import { createSystemd } from '../../agent/src/adapters/systemd.js';
import { sessions, softRebootUnavailable } from '../../agent/src/adapters/host.js';

class Manager extends dbus.interface.Interface {
  started: [string, string][] = [];
  refuse = false;
  version = '257.13-1~deb13u1';
  get Version(): string {
    return this.version;
  }
  StartUnit(name: string, mode: string): string {
    if (this.refuse) throw new dbus.DBusError('org.freedesktop.systemd1.TransactionIsDestructive', `Transaction for ${name}/start is destructive`);
    this.started.push([name, mode]);
    return '/org/freedesktop/systemd1/job/42';
  }
}
Manager.configureMembers({
  methods: { StartUnit: { inSignature: 'ss', outSignature: 'o' } },
  properties: { Version: { signature: 's', access: 'read' } },
});

class Login extends dbus.interface.Interface {
  ListSessions(): [string, number, string, string, string][] {
    return [
      ['3', 1000, 'alice', 'seat0', '/org/freedesktop/login1/session/_33'],
      ['c1', 0, 'root', '', '/org/freedesktop/login1/session/c1'],
      ['4', 1000, 'alice', '', '/org/freedesktop/login1/session/_34'],
    ];
  }
  ListInhibitors(): [string, string, string, string, number, number][] {
    return [
      ['shutdown:sleep', 'backup', 'nightly dump', 'block', 0, 812],
      ['shutdown', 'NetworkManager', 'tidy up', 'delay', 0, 500],
      ['idle', 'player', 'video', 'block', 1000, 900],
    ];
  }
}
Login.configureMembers({
  methods: { ListSessions: { outSignature: 'a(susso)' }, ListInhibitors: { outSignature: 'a(ssssuu)' } },
});

describe('systemd and logind over D-Bus, without introspection', () => {
  let bus: PrivateBus;
  let conn: dbus.MessageBus;
  const manager = new Manager('org.freedesktop.systemd1.Manager');
  beforeAll(async () => {
    bus = await startPrivateBus();
    conn = await openBus(bus.address);
    conn.export('/org/freedesktop/systemd1', manager);
    conn.export('/org/freedesktop/login1', new Login('org.freedesktop.login1.Manager'));
    await conn.requestName('org.freedesktop.systemd1', 0);
    await conn.requestName('org.freedesktop.login1', 0);
  });
  afterAll(async () => {
    conn.disconnect();
    await bus.stop();
  });

  it('reads systemd\'s version and queues a target irreversibly; a refusal names the target', async () => {
    const sd = createSystemd(bus.address);
    expect(await sd.version()).toBe(257);
    expect(await softRebootUnavailable(bus.address)).toBeNull();
    manager.version = '252.30-1~deb12u2';
    expect(await softRebootUnavailable(bus.address)).toBe('systemd 252 cannot soft-reboot (254 or later needed)');

    await sd.startTarget('soft-reboot.target');
    expect(manager.started).toEqual([['soft-reboot.target', 'replace-irreversibly']]);
    manager.refuse = true;
    await expect(sd.startTarget('kexec.target')).rejects.toThrow(/systemd refused to start kexec\.target: Transaction for kexec\.target\/start is destructive/);
  });

  it('lists the users with a session and the blocking shutdown inhibitors', async () => {
    expect(await sessions(bus.address)).toEqual({ users: ['alice', 'root'], inhibitors: ['backup: nightly dump'] });
  });

  it('no systemd on the bus: soft-reboot is unavailable, saying why', async () => {
    const empty = await startPrivateBus();
    try {
      expect(await softRebootUnavailable(empty.address)).toMatch(/^systemd is not reachable on D-Bus \(.*org\.freedesktop\.systemd1/);
    } finally {
      await empty.stop();
    }
  });
});
