import { describe, expect, it } from 'vitest';
import { inverseChanges, liveRollbackRefusal, ownershipClashes, unresolvableClashes } from '../../agent/src/core/liveundo.js';
import { conffilesOf, controlOf, fieldOf, installedStanza, parseStanzas } from '../../agent/src/adapters/repack.js';

describe('inverse change set (booted image vs installed now)', () => {
  const booted = { keep: '1.0', upgraded: '1.0', downgraded: '3.0', removed: '2.1', 'epoch-pkg': '1:2.0' };
  const installed = { keep: '1.0', upgraded: '2.0', downgraded: '2.5', 'new-dep': '0.9', 'epoch-pkg': '1:2.0', 'another-new': '5' };

  it.each([
    ['installed by the replay', 'new-dep', 'remove'],
    ['installed by the replay (second)', 'another-new', 'remove'],
    ['upgraded', 'upgraded', 'reinstall 1.0 (was 2.0)'],
    ['downgraded', 'downgraded', 'reinstall 3.0 (was 2.5)'],
    ['removed by the replay', 'removed', 'reinstall 2.1 (was not installed)'],
    ['unchanged', 'keep', 'nothing'],
    ['unchanged, with an epoch', 'epoch-pkg', 'nothing'],
  ])('%s: %s → %s', (_what, pkg, want) => {
    const c = inverseChanges(booted, installed);
    const r = c.reinstall.find((x) => x.package === pkg);
    const got = c.remove.includes(pkg) ? 'remove' : r ? `reinstall ${r.version} (was ${r.installed ?? 'not installed'})` : 'nothing';
    expect(got).toBe(want);
  });

  it('sorted, and empty when the system is the booted image', () => {
    const c = inverseChanges(booted, installed);
    expect(c.remove).toEqual(['another-new', 'new-dep']);
    expect(c.reinstall.map((r) => r.package)).toEqual(['downgraded', 'removed', 'upgraded']);
    expect(inverseChanges(booted, { ...booted })).toEqual({ remove: [], reinstall: [] });
  });

  it('a package named like an Object.prototype member is a package, not a property', () => {
    expect(inverseChanges({}, { constructor: '1' }).remove).toEqual(['constructor']);
    expect(inverseChanges({ toString: '1' }, {}).reinstall).toEqual([{ package: 'toString', version: '1', installed: null }]);
  });
});

describe('when rollback --live is refused', () => {
  it.each([
    [{ booted: 1, running: 3, failedReplay: null, requested: null }, null],
    [{ booted: 1, running: 3, failedReplay: null, requested: 1 }, null],
    // A failed replay left the system between 1 and its target: undoing it live is allowed.
    [{ booted: 1, running: 1, failedReplay: 2, requested: null }, null],
    [{ booted: 1, running: 3, failedReplay: null, requested: 2 }, /only to the booted generation 1, not 2; use `agentctl rollback 2` to roll back with a reboot/],
    [{ booted: 2, running: 2, failedReplay: null, requested: null }, /nothing was applied live in this boot: the system runs the booted generation 2; use `agentctl rollback`/],
    [{ booted: null, running: null, failedReplay: null, requested: null }, /not a liveup generation/],
  ] as const)('%o → %s', (s, want) => {
    const r = liveRollbackRefusal(s);
    if (want === null) expect(r).toBeNull();
    else expect(r).toMatch(want);
  });
});

describe('files a reinstalled package takes back', () => {
  const files = new Map([['demo-f', ['/usr/bin/demo-f', '/usr/share/demo-f/data', '/etc/shared']]]);
  const booted = new Map([['/usr/bin/demo-f', ['demo-f']], ['/usr/share/demo-f/data', ['demo-f']], ['/etc/shared', ['demo-f', 'demo-g']]]);

  it('a file another package owns now, and did not in the booted image, is a clash; its own and shared-in-the-image ones are not', () => {
    const now = new Map([['/usr/bin/demo-f', ['demo-f']], ['/usr/share/demo-f/data', ['demo-f-data']], ['/etc/shared', ['demo-g']]]);
    expect(ownershipClashes(files, now, booted)).toEqual([{ path: '/usr/share/demo-f/data', package: 'demo-f', owners: ['demo-f-data'] }]);
    expect(ownershipClashes(files, booted, booted)).toEqual([]);
  });

  it('a clash with a package the rollback removes is resolved (taken over); with one that stays, it is not', () => {
    const clashes = [{ path: '/usr/share/demo-f/data', package: 'demo-f', owners: ['demo-f-data'] }];
    expect(unresolvableClashes(clashes, { remove: ['demo-f-data'], reinstall: [] })).toEqual([]);
    expect(unresolvableClashes(clashes, { remove: [], reinstall: [] })).toEqual(clashes);
  });
});

describe('repacking from a dpkg status file', () => {
  const status = [
    'Package: other', 'Status: install ok installed', 'Version: 1', '',
    'Package: demo', 'Status: deinstall ok config-files', 'Version: 0.5', 'Conffiles:', ' /etc/demo.conf 0123 obsolete', '',
    'Package: demo', 'Status: install ok installed', 'Priority: optional', 'Installed-Size: 12', 'Architecture: amd64', 'Version: 1.0-1',
    'Depends: libc6 (>= 2.36)', 'Conffiles:', ' /etc/demo.conf d41d8cd98f00b204e9800998ecf8427e', ' /etc/demo.old 0123 obsolete',
    ' /etc/demo.gone newconffile remove-on-upgrade',
    'Config-Version: 0.9', 'Description: a demo', ' with a long description', ' .', ' and a paragraph', '',
  ].join('\n');

  it('finds the installed stanza (not a config-files leftover of the same name)', () => {
    const s = installedStanza(parseStanzas(status), 'demo')!;
    expect(fieldOf(s, 'version')).toBe('1.0-1');
    expect(installedStanza(parseStanzas(status), 'missing')).toBeUndefined();
  });

  it('control: status-only fields dropped, continuation lines kept', () => {
    const s = installedStanza(parseStanzas(status), 'demo')!;
    expect(controlOf(s)).toBe([
      'Package: demo', 'Priority: optional', 'Installed-Size: 12', 'Architecture: amd64', 'Version: 1.0-1', 'Depends: libc6 (>= 2.36)',
      'Description: a demo', ' with a long description', ' .', ' and a paragraph', '',
    ].join('\n'));
  });

  it('conffiles: the live ones only (obsolete and remove-on-upgrade are not shipped)', () => {
    expect(conffilesOf(installedStanza(parseStanzas(status), 'demo')!)).toEqual(['/etc/demo.conf']);
    expect(conffilesOf(installedStanza(parseStanzas(status), 'other')!)).toEqual([]);
  });
});
