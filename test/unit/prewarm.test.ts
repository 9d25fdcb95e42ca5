import { describe, expect, it } from 'vitest';
import { parseFincore, warmList } from '../../agent/src/adapters/prewarm.js';
import type { ProcessInfo } from '../../agent/src/core/liveapply.js';

const proc = (pid: number, files: string[]): ProcessInfo => ({ pid, comm: 'x', unit: null, files });

describe('warmList: what the running processes have mapped, to read in the target', () => {
  it('each image file once, early processes first; nothing of /proc, /dev, /run, /tmp or memfd', () => {
    expect(warmList([
      proc(700, ['/usr/bin/node', '/usr/lib/x86_64-linux-gnu/libnode.so.115', '/usr/lib/x86_64-linux-gnu/libc.so.6', '/memfd:doublemapper', '/dev/zero']),
      proc(1, ['/usr/lib/systemd/systemd', '/usr/lib/x86_64-linux-gnu/libc.so.6', '/run/systemd/journal/kernel-seqnum']),
      proc(350, ['/usr/bin/dbus-daemon', '/tmp/x', '/var/tmp/y', '/proc/1/maps', '/sys/fs/cgroup', '/SYSV00000000']),
      proc(800, ['relative/ignored']),
    ])).toEqual([
      '/usr/lib/systemd/systemd', '/usr/lib/x86_64-linux-gnu/libc.so.6',
      '/usr/bin/dbus-daemon',
      '/usr/bin/node', '/usr/lib/x86_64-linux-gnu/libnode.so.115',
    ]);
  });
});

describe('the resident files, after the mapped ones', () => {
  it('fincore\'s raw lines: files with pages in memory, names unescaped', () => {
    expect(parseFincore('4096 /usr/bin/kmod\n0 /usr/bin/cold\n12288 /etc/a\\x20b\n\n')).toEqual(['/usr/bin/kmod', '/etc/a b']);
  });
  it('mapped files first, then resident ones not already listed', () => {
    expect(warmList([proc(1, ['/usr/lib/systemd/systemd'])], ['/etc/fstab', '/usr/lib/systemd/systemd', '/usr/bin/kmod'])).toEqual(['/usr/lib/systemd/systemd', '/etc/fstab', '/usr/bin/kmod']);
  });
});
