import { describe, expect, it } from 'vitest';
import { chainProblem, replaySteps, restartPlan, unitOfCgroup, type ProcessInfo, type ReplayLink } from '../../agent/src/core/liveapply.js';
import { mappedFiles, scanProcesses } from '../../agent/src/adapters/procs.js';
import { describeDrift, packageDrift, parsePackageList } from '../../agent/src/adapters/dpkg.js';

const deb = (p: string) => ({ path: `debs/${p}.deb`, length: 1, sha512: 'a'.repeat(128) });
const link = (version: number, parent: number | null, changes: ReplayLink['changes']): ReplayLink => ({ version, parent, changes });

describe('replay plan', () => {
  it('groups consecutive installs/upgrades and removals per generation, in the recorded order', () => {
    const steps = replaySteps([
      link(2, 1, [
        { action: 'upgrade', package: 'a', from: '1', version: '2', deb: deb('a') },
        { action: 'install', package: 'c', version: '1', deb: deb('c') },
        { action: 'remove', package: 'b', from: '1' },
        { action: 'remove', package: 'x', from: '1' },
        { action: 'install', package: 'y', version: '1', deb: deb('y') },
      ]),
      link(3, 2, [{ action: 'install', package: 'd', version: '1', deb: deb('d') }]),
    ]);
    expect(steps.map((s) => (s.kind === 'install' ? `${s.version}:i:${s.changes.map((c) => c.package).join(',')}` : `${s.version}:r:${s.packages.join(',')}`)))
      .toEqual(['2:i:a,c', '2:r:b,x', '2:i:y', '3:i:d']);
  });

  it('the chain must start at the running generation and link by parent', () => {
    const c = [{ action: 'install' as const, package: 'a', version: '1', deb: deb('a') }];
    expect(chainProblem(1, [link(2, 1, c), link(3, 2, c)])).toBeNull();
    expect(chainProblem(1, [link(3, 2, c)])).toMatch(/built from 2, but the system runs 1/);
    expect(chainProblem(null, [link(2, 1, c)])).toMatch(/unknown/);
    expect(chainProblem(1, [link(2, 1, [])])).toMatch(/no package changes/);
  });
});

describe('restart plan', () => {
  const p = (pid: number, unit: string | null, files: string[], comm = 'x'): ProcessInfo => ({ pid, comm, unit, files });
  const changed = new Set(['/usr/lib/x86_64-linux-gnu/libssl.so.3', '/usr/sbin/nginx']);

  it('restarts services mapping a replaced file, not the others; sessions and PID 1 need a reboot; itself last', () => {
    const plan = restartPlan([
      p(1, 'init.scope', ['/usr/lib/systemd/systemd', '/usr/lib/x86_64-linux-gnu/libssl.so.3'], 'systemd'),
      p(10, 'nginx.service', ['/usr/sbin/nginx']),
      p(11, 'nginx.service', ['/usr/sbin/nginx']),
      p(20, 'cron.service', ['/usr/sbin/cron']),
      p(30, 'ssh.service', ['/usr/sbin/sshd', '/usr/lib/x86_64-linux-gnu/libssl.so.3']),
      p(40, 'session-3.scope', ['/usr/bin/curl', '/usr/lib/x86_64-linux-gnu/libssl.so.3'], 'curl'),
      p(50, 'liveup-agent.service', ['/usr/lib/x86_64-linux-gnu/libssl.so.3'], 'node'),
      p(60, 'user@1000.service', ['/usr/lib/x86_64-linux-gnu/libssl.so.3'], 'systemd'),
    ], changed, 'liveup-agent.service');
    expect(plan.restart).toEqual(['nginx.service', 'ssh.service']);
    expect(plan.restartSelf).toBe(true);
    expect(plan.needsReboot).toEqual([
      'PID 1 (systemd) uses /usr/lib/x86_64-linux-gnu/libssl.so.3',
      'curl (PID 40, session-3.scope) uses /usr/lib/x86_64-linux-gnu/libssl.so.3',
      'systemd (PID 60, user@1000.service) uses /usr/lib/x86_64-linux-gnu/libssl.so.3',
    ]);
  });

  it('reads the unit from cgroup v2 and the files from maps, deleted ones included', () => {
    expect(unitOfCgroup('0::/system.slice/nginx.service\n')).toBe('nginx.service');
    expect(unitOfCgroup('0::/user.slice/user-1000.slice/session-3.scope\n')).toBe('session-3.scope');
    expect(unitOfCgroup('0::/\n')).toBeNull();
    expect(mappedFiles([
      '55d4c0a00000-55d4c0a2e000 r--p 00000000 00:1f 1234 /usr/sbin/nginx',
      '7f0000000000-7f0000001000 r-xp 00000000 00:1f 99 /usr/lib/x86_64-linux-gnu/libssl.so.3 (deleted)',
      '7f0000002000-7f0000003000 rw-p 00000000 00:00 0 ',
      '7ffd0000-7ffd1000 rw-p 00000000 00:00 0 [stack]',
    ].join('\n'))).toEqual(['/usr/sbin/nginx', '/usr/lib/x86_64-linux-gnu/libssl.so.3']);
  });

  it('scans the real /proc: this process maps the node binary', async () => {
    const me = (await scanProcesses()).find((x) => x.pid === process.pid);
    expect(me?.files).toContain(process.execPath);
    const plan = restartPlan(me ? [me] : [], new Set([process.execPath]), 'liveup-agent.service');
    expect(plan.restart.length + plan.needsReboot.length + (plan.restartSelf ? 1 : 0)).toBe(1);
  });
});

describe('dpkg output', () => {
  it('parses dpkg-query lines and computes drift against a generation list', () => {
    const installed = parsePackageList('libc6:amd64\t2.41-12\tii \nless\t668-1\tii \nold\t1\trc \nnew\t2\tii \n');
    expect(installed[0]).toEqual({ name: 'libc6', version: '2.41-12', status: 'ii' });
    const d = packageDrift(installed, { libc6: '2.41-12', less: '661-1', curl: '8' });
    expect(d).toEqual({ missing: ['curl'], unexpected: ['new'], differing: [{ name: 'less', installed: '668-1', expected: '661-1' }] });
    expect(describeDrift(d)).toBe('missing curl; not in the generation new; other versions less 668-1 (expected 661-1)');
    expect(describeDrift(packageDrift(installed, { libc6: '2.41-12', less: '668-1', new: '2' }))).toBeNull();
    // A held package is installed too (dpkg's second letter), as the factory's package list counts it.
    expect(packageDrift(parsePackageList('grub-pc\t2.12-9\thi \n'), { 'grub-pc': '2.12-9' })).toEqual({ missing: [], unexpected: [], differing: [] });
  });
});
