import { describe, expect, it } from 'vitest';
import { ERROR_CODES } from '../../agent/src/channel/errors.js';
import { hoistGlobalOptions } from '../../agent/src/cli/agentctl.js';
import { formatGenerations } from '../../agent/src/cli/agentctl/list.js';
import { ProgressView, formatBytes, formatDuration } from '../../agent/src/cli/agentctl/progress.js';
import { formatStatus } from '../../agent/src/cli/agentctl/status.js';
import { dbusErrorName, errorCodeFromDbusName, type AgentStatus } from '../../agent/src/dbus/api.js';
import { isMember, parseGroupLine, parsePasswdLine } from '../../agent/src/dbus/authz.js';
import { resolveBusAddress, toNetAddress } from '../../agent/src/dbus/bus.js';

describe('D-Bus error names', () => {
  it('are 1:1 with error codes', () => {
    expect(dbusErrorName('HASH_MISMATCH')).toBe('org.liveup.Agent1.Error.HashMismatch');
    const names = ERROR_CODES.map(dbusErrorName);
    expect(new Set(names).size).toBe(ERROR_CODES.length);
    for (const c of ERROR_CODES) expect(errorCodeFromDbusName(dbusErrorName(c))).toBe(c);
    expect(errorCodeFromDbusName('org.liveup.Agent1.Error.NoSuchThing')).toBeUndefined();
  });
});

describe('bus addresses', () => {
  it('resolves system/session/literal', () => {
    expect(resolveBusAddress('system', {})).toBe('unix:path=/run/dbus/system_bus_socket');
    expect(resolveBusAddress('system', { DBUS_SYSTEM_BUS_ADDRESS: 'unix:path=/x' })).toBe('unix:path=/x');
    expect(resolveBusAddress('session', { DBUS_SESSION_BUS_ADDRESS: 'unix:path=/s' })).toBe('unix:path=/s');
    expect(() => resolveBusAddress('session', {})).toThrow(/DBUS_SESSION_BUS_ADDRESS/);
    expect(() => resolveBusAddress('/run/dbus/sock')).toThrow(/--bus must be/);
  });

  it('routes unix paths through net (never usocket), unescaped, and refuses abstract-only addresses', () => {
    expect(toNetAddress('unix:path=/tmp/a%20b/bus,guid=abc')).toBe('unix:socket=/tmp/a b/bus');
    expect(toNetAddress('unix:abstract=/x;unix:path=/run/bus')).toBe('unix:socket=/run/bus');
    expect(toNetAddress('tcp:host=127.0.0.1,port=1234')).toBe('tcp:host=127.0.0.1,port=1234');
    expect(() => toNetAddress('unix:abstract=/tmp/dbus-x')).toThrow(/abstract sockets are not/);
  });
});

describe('group membership', () => {
  const grp = parseGroupLine('liveup:x:990:alice,bob')!;
  it('parses getent lines', () => {
    expect(grp).toEqual({ name: 'liveup', gid: 990, members: ['alice', 'bob'] });
    expect(parseGroupLine('liveup:x:990:')).toEqual({ name: 'liveup', gid: 990, members: [] });
    expect(parsePasswdLine('nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin')).toEqual({ name: 'nobody', uid: 65534, gid: 65534 });
    expect(parsePasswdLine('garbage')).toBeNull();
  });
  it('counts supplementary and primary membership', () => {
    expect(isMember({ name: 'bob', uid: 1001, gid: 100 }, grp)).toBe(true);
    expect(isMember({ name: 'carol', uid: 1002, gid: 990 }, grp)).toBe(true);
    expect(isMember({ name: 'nobody', uid: 65534, gid: 65534 }, grp)).toBe(false);
  });
});

describe('agentctl', () => {
  it('moves a leading global --bus after the verb', () => {
    expect(hoistGlobalOptions(['--bus', 'session', 'status', '--json'])).toEqual(['status', '--bus', 'session', '--json']);
    expect(hoistGlobalOptions(['--bus=unix:path=/x', 'pin', '3'])).toEqual(['pin', '--bus=unix:path=/x', '3']);
    expect(hoistGlobalOptions(['status', '--bus', 'session'])).toEqual(['status', '--bus', 'session']);
    expect(hoistGlobalOptions(['--help'])).toEqual(['--help']);
  });

  it('formats status like rpm-ostree: one line per role, ● on the booted one', () => {
    const s: AgentStatus = {
      state: 'downloading', bootedVersion: 12, stagedVersion: null, lastGoodVersion: 12, pendingVersion: 14, channel: 'stable',
      lastCheck: { at: '2030-01-02T03:04:05.000Z', result: 'failed', errorCode: 'FETCH_FAILED', message: 'timeout' },
      nextCheck: null, decision: null, reason: null, transaction: { kind: 'update', since: '2030-01-02T03:05:00.000Z' },
    };
    expect(formatStatus(s, [])).toEqual([
      'State:       downloading (update since 2030-01-02 03:05 UTC)',
      'Channel:     stable',
      'Generations:',
      '● 12 (booted, last good, not in the journal)',
      'Pending:     14 (offered by the channel, not staged yet)',
      'Last check:  2030-01-02 03:04 UTC: failed (FETCH_FAILED: timeout)',
      'Next check:  not scheduled',
    ]);
  });

  it('lists generations as a table, newest first', () => {
    const lines = formatGenerations([
      { version: 1, name: 'a', state: 'good', pinned: true, booted: true, staged: false, present: true, kernelVersion: null, createdAt: null, stagedAt: null, bootedAt: null },
      { version: 2, name: 'b', state: 'staged', pinned: false, booted: false, staged: true, present: true, kernelVersion: '6.1', createdAt: null, stagedAt: null, bootedAt: null },
    ]);
    expect(lines[1]).toMatch(/^ {3}2 +b +staged +next-boot +6\.1 +-$/);
    expect(lines[2]).toMatch(/^● +1 +a +good +pinned/);
  });
});

describe('ProgressView', () => {
  it('formats sizes and durations', () => {
    expect(formatBytes(999)).toBe('999 B');
    expect(formatBytes(1_500_000)).toBe('1.5 MB');
    expect(formatDuration(3725)).toBe('1:02:05');
    expect(formatDuration(65)).toBe('1:05');
    expect(formatDuration(Infinity)).toBe('--:--');
  });

  it('on a TTY redraws one line with bar, bytes, rate and ETA, throttled', () => {
    let t = 0;
    const writes: string[] = [];
    const v = new ProgressView({ tty: true, write: (s) => writes.push(s), line: () => { throw new Error('no lines on a TTY'); }, now: () => t, width: 80 });
    v.update({ step: 'download', done: 0, total: 100e6 });
    t = 50;
    v.update({ step: 'download', done: 1e6, total: 100e6 }); // throttled
    t = 1000;
    v.update({ step: 'download', done: 10e6, total: 100e6 });
    v.finish();
    expect(writes).toHaveLength(3);
    expect(writes[1]).toBe('\r\x1b[Kdownload [##------------------]  10% 10.0 MB/100.0 MB 10.0 MB/s ETA 0:09');
    expect(writes[2]).toBe('\n');
  });

  it('off a TTY prints a line per step change and per 10 %', () => {
    const lines: string[] = [];
    const v = new ProgressView({ tty: false, write: () => { throw new Error('no raw writes off a TTY'); }, line: (l) => lines.push(l), now: () => 0 });
    for (let i = 0; i <= 100; i += 1) v.update({ step: 'download', done: i, total: 100 });
    v.update({ step: 'apply', done: 1, total: 3 });
    expect(lines).toHaveLength(12);
    expect(lines.at(-1)).toBe('apply    [#######-------------]  33% 1/3');
  });
});
