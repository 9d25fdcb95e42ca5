import { describe, expect, it } from 'vitest';
import { decide, switchAhead, RECHECK_MS, type Decision, type DecideInput, type PendingGeneration } from '../../agent/src/core/decide.js';
import { windowState } from '../../agent/src/core/window.js';
import type { MaintenanceWindow } from '../../agent/src/config.js';

const NOW = new Date('2026-11-23T10:00:00Z'); // a Monday
const K = '6.12.57+deb13-amd64';
const gen = (version: number, o: Partial<PendingGeneration> = {}): PendingGeneration => ({
  version, parent: version - 1, changes: 3, kernelVersion: K, rebootReasons: [], ...o,
});
const base: DecideInput = {
  running: { version: 1, kernelVersion: K },
  pending: [],
  policy: 'live',
  window: { open: true, nextOpen: null, label: null },
  now: NOW,
  users: [],
  inhibitors: [],
  kexecUnavailable: null,
  softRebootUnavailable: null,
  fleetLock: 'none',
};

describe('decide: one row per rule', () => {
  const rows: [string, Partial<DecideInput>, { action: string; then?: string; chain?: number[]; reason: RegExp }][] = [
    ['nothing staged', {}, { action: 'nothing', reason: /no staged generation/ }],
    ['packages only, policy live', { pending: [gen(2)] }, { action: 'live-apply', chain: [2], reason: /packages only/ }],
    ['a chain N → N+1 → N+2 replays in order', { pending: [gen(3), gen(2)] }, { action: 'live-apply', chain: [2, 3], reason: /2 → 3/ }],
    ['a chain with a gap: no replay, soft-reboot', { pending: [gen(3)] }, { action: 'soft-reboot', reason: /built from 2, not from 1/ }],
    ['libc6 changed: soft-reboot', { pending: [gen(2, { rebootReasons: ['package:libc6'] })] }, { action: 'soft-reboot', reason: /package:libc6.*soft-reboot/ }],
    ['a full image, same kernel: soft-reboot', { pending: [gen(2, { changes: 0, rebootReasons: ['full-image'] })] }, { action: 'soft-reboot', reason: /full image/ }],
    ['kernel changed: kexec', { pending: [gen(2, { kernelVersion: '6.12.60+deb13-amd64', rebootReasons: ['kernel'] })] }, { action: 'kexec', reason: /kernel changed; kexec/ }],
    ['initrd changed: kexec', { pending: [gen(2, { rebootReasons: ['initrd'] })] }, { action: 'kexec', reason: /initrd changed/ }],
    ['kernel changed, kexec locked down: reboot', { pending: [gen(2, { rebootReasons: ['kernel'] })], kexecUnavailable: 'kernel lockdown' }, { action: 'reboot', reason: /kexec is not possible \(kernel lockdown\)/ }],
    ['libc6 without soft-reboot (old systemd): kexec', { pending: [gen(2, { rebootReasons: ['package:libc6'] })], softRebootUnavailable: 'systemd 252' }, { action: 'kexec', reason: /soft-reboot is not possible \(systemd 252\)/ }],
    ['policy kexec: packages only still kexec', { policy: 'kexec', pending: [gen(2)] }, { action: 'kexec', reason: /policy is kexec/ }],
    ['policy reboot', { policy: 'reboot', pending: [gen(2)] }, { action: 'reboot', reason: /policy is to reboot/ }],
    ['policy stage-only', { policy: 'stage-only', pending: [gen(2, { rebootReasons: ['kernel'] })] }, { action: 'stage-only', reason: /next boot/ }],
    ['unknown running generation: no replay', { running: null, pending: [gen(2)] }, { action: 'kexec', reason: /running generation is unknown/ }],
    ['outside the window: wait for it', { pending: [gen(2, { rebootReasons: ['kernel'] })], window: { open: false, nextOpen: new Date('2026-11-24T02:00:00Z'), label: 'tue 02:00-04:00' } }, { action: 'wait', then: 'kexec', reason: /outside the maintenance window, next tue 02:00-04:00 at 2026-11-24T02:00/ }],
    ['a live replay ignores the window (not disruptive)', { pending: [gen(2)], window: { open: false, nextOpen: new Date('2026-11-24T02:00:00Z'), label: 'tue 02:00-04:00' } }, { action: 'live-apply', chain: [2], reason: /packages only/ }],
    ['a shutdown inhibitor: wait', { pending: [gen(2, { rebootReasons: ['kernel'] })], inhibitors: ['backup: nightly dump'] }, { action: 'wait', then: 'kexec', reason: /inhibited by backup: nightly dump/ }],
    ['users logged in: wait', { pending: [gen(2, { rebootReasons: ['package:systemd'] })], users: ['alice'] }, { action: 'wait', then: 'soft-reboot', reason: /1 user\(s\) logged in \(alice\)/ }],
    ['no fleet slot: wait', { pending: [gen(2, { rebootReasons: ['kernel'] })], fleetLock: 'denied' }, { action: 'wait', then: 'kexec', reason: /no free reboot slot/ }],
    ['fleet slot granted: go', { pending: [gen(2, { rebootReasons: ['kernel'] })], fleetLock: 'granted' }, { action: 'kexec', reason: /kexec skips/ }],
  ];
  for (const [name, over, want] of rows) {
    it(name, () => {
      const d = decide({ ...base, ...over });
      expect(d.action).toBe(want.action);
      expect(d.reason).toMatch(want.reason);
      if (want.then) expect(d.then).toBe(want.then);
      if (want.chain) expect(d.chain).toEqual(want.chain);
      if (want.action !== 'nothing') expect(d.target).toBe(Math.max(...(over.pending ?? []).map((g) => g.version)));
    });
  }

  it('waits on people for a fixed recheck interval, on a window until it opens', () => {
    const people = decide({ ...base, pending: [gen(2, { rebootReasons: ['kernel'] })], users: ['bob'] });
    expect(people.until?.getTime()).toBe(NOW.getTime() + RECHECK_MS);
    const opens = new Date('2026-11-24T02:00:00Z');
    const win = decide({ ...base, pending: [gen(2, { rebootReasons: ['kernel'] })], window: { open: false, nextOpen: opens, label: 'tue 02:00-04:00' } });
    expect(win.until).toEqual(opens);
  });
});

describe('windowState', () => {
  const w = (days: MaintenanceWindow['days'], start: string, end: string): MaintenanceWindow => ({ days, start, end });

  it('no windows: always open', () => {
    expect(windowState([], NOW, 'UTC')).toEqual({ open: true, nextOpen: null, label: null });
  });

  it('inside and outside a window, in the configured zone', () => {
    // 10:00 UTC is 11:00 in Berlin (CET).
    expect(windowState([w(['mon'], '11:00', '12:00')], NOW, 'Europe/Berlin').open).toBe(true);
    expect(windowState([w(['mon'], '11:00', '12:00')], NOW, 'UTC').open).toBe(false);
    const s = windowState([w(['tue', 'thu'], '02:00', '04:00')], NOW, 'UTC');
    expect(s).toEqual({ open: false, nextOpen: new Date('2026-11-24T02:00:00Z'), label: 'tue 02:00-04:00' });
  });

  it('a window crossing midnight, and Sunday night into Monday morning', () => {
    expect(windowState([w(['sun'], '23:00', '02:00')], new Date('2026-11-23T01:30:00Z'), 'UTC').open).toBe(true); // Monday 01:30
    expect(windowState([w(['sun'], '23:00', '02:00')], new Date('2026-11-23T02:00:00Z'), 'UTC').open).toBe(false); // end is exclusive
    expect(windowState([w(['sat'], '22:00', '01:00')], new Date('2026-11-22T00:30:00Z'), 'UTC').open).toBe(true); // Sunday 00:30
  });

  it('the next opening wraps to next week', () => {
    const s = windowState([w(['mon'], '09:00', '09:30')], NOW, 'UTC');
    expect(s.nextOpen).toEqual(new Date('2026-11-30T09:00:00Z'));
  });
});

describe('switchAhead: which staged switch to prepare (prewarm, kexec preload) before it runs', () => {
  const d = (o: Partial<Decision>): Decision => ({ action: 'nothing', target: 4, reason: 'r', ...o });
  const soft = { action: 'soft-reboot', version: 4 };
  const kexec = { action: 'kexec', version: 4 };
  const rows: [string, Decision, boolean, object | null][] = [
    ['a soft-reboot nobody acts on now (staged only)', d({ action: 'soft-reboot' }), false, soft],
    ['a soft-reboot carried out now: nothing to gain', d({ action: 'soft-reboot' }), true, null],
    ['a soft-reboot waiting for its window, even on a scheduled run', d({ action: 'wait', then: 'soft-reboot' }), true, soft],
    ['a kexec waiting for its window', d({ action: 'wait', then: 'kexec' }), true, kexec],
    ['a kexec nobody acts on now (staged only)', d({ action: 'kexec' }), false, kexec],
    ['a kexec carried out now: it loads the kernel itself', d({ action: 'kexec' }), true, null],
    ['a reboot, now or waiting: firmware and GRUB start from nothing', d({ action: 'wait', then: 'reboot' }), false, null],
    ['reboot', d({ action: 'reboot' }), false, null],
    ['a live replay', d({ action: 'live-apply' }), false, null],
    ['stage-only: no switch is planned', d({ action: 'stage-only' }), false, null],
    ['nothing to do', d({ action: 'nothing', target: null }), false, null],
  ];
  it.each(rows)('%s', (_, decision, actingNow, want) => {
    expect(switchAhead(decision, actingNow)).toEqual(want);
  });
});
