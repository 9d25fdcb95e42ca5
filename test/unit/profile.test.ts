/** The build profile parser: defaults, package specs, and errors that name the key. */
import { describe, expect, it } from 'vitest';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ROOT } from '../helpers/cli.js';
import { DEFAULT_KEYRING, DEFAULT_MIRROR, basePackages, parsePackageSpec, parseProfile } from '../../publisher/src/factory/profile.js';
import { mksquashfsArgs } from '../../publisher/src/factory/image.js';
import { dpkgOrder, storedDebName } from '../../publisher/src/factory/derive.js';

const minimal = { format: 1, name: 'kiosk', version: '1.0' };
const parse = (o: Record<string, unknown>) => parseProfile(JSON.stringify(o), 'p.json', '/profiles');

function fails(o: Record<string, unknown>, key: string, text?: RegExp): void {
  let err: unknown;
  try {
    parse(o);
  } catch (e) {
    err = e;
  }
  expect(err, `expected a failure at ${key}`).toMatchObject({ code: 'PROFILE_INVALID', details: { key } });
  if (text) expect((err as Error).message).toMatch(text);
}

describe('parseProfile', () => {
  it('fills defaults: trixie, amd64, Debian mirror with the archive keyring, virtual, zstd-15 1M', () => {
    const p = parse(minimal);
    expect(p).toMatchObject({
      suite: 'trixie', architecture: 'amd64', machine: 'virtual', factory: false, insecureNoCheckGpg: false,
      compression: { algorithm: 'zstd', level: 15, blockSize: 1048576 },
      packages: [], debs: [], hooks: [], persistent: [],
    });
    expect(p.sources).toEqual([{ uri: DEFAULT_MIRROR, suite: 'trixie', components: ['main', 'non-free-firmware'], keyring: DEFAULT_KEYRING }]);
  });

  it('reads the checked-in example profile and resolves paths against the profile directory', async () => {
    const file = join(ROOT, 'profiles/example.json');
    const p = parseProfile(await readFile(file, 'utf8'), file);
    expect(p.name).toBe('kiosk');
    expect(p.hooks).toEqual([join(ROOT, 'profiles/hooks/10-motd.sh')]);
    expect(p.packages.map((s) => s.name)).toEqual(['less', 'curl']);
    expect(p.packages[1]!.constraint).toEqual({ op: '>=', version: '8.0' });
  });

  it('reads the YAML example as the same profile as the JSON one', async () => {
    const json = join(ROOT, 'profiles/example.json');
    const yaml = join(ROOT, 'profiles/example.yaml');
    expect(parseProfile(await readFile(yaml, 'utf8'), yaml)).toEqual(parseProfile(await readFile(json, 'utf8'), json));
  });

  it('YAML errors name the line, the key, or the quoting trap', () => {
    const y = (text: string) => () => parseProfile(text, 'p.yaml', '/profiles');
    expect(y('format: 1\nname: [unclosed\n')).toThrow(/p\.yaml: not valid YAML at line \d+/);
    expect(y('format: 1\nname: a\nname: b\nversion: "1"\n')).toThrow(/not valid YAML.*(unique|duplicate)/i);
    expect(y('format: 1\nname: kiosk\nversion: 2026.10\n')).toThrow(/version: 2026\.10 is a number in YAML; quote it \(version: "2026\.10"\)/);
    expect(y('format: 1\nname: kiosk\nversion: "1"\npackges: [less]\n')).toThrow(expect.objectContaining({ code: 'PROFILE_INVALID', message: expect.stringMatching(/packges/) }));
    // YAML 1.2 core: `no` is a string, so a boolean field refuses it instead of reading false.
    expect(y('format: 1\nname: kiosk\nversion: "1"\nfactory: no\n')).toThrow(/factory/);
  });

  it('parses package specs: bare, pinned, floating', () => {
    expect(parsePackageSpec('less')).toEqual({ name: 'less', text: 'less' });
    expect(parsePackageSpec('openssl=3.5.4-1')?.constraint).toEqual({ op: '=', version: '3.5.4-1' });
    expect(parsePackageSpec('libc6>=2.41')?.constraint).toEqual({ op: '>=', version: '2.41' });
    expect(parsePackageSpec('xy<<1:2.0~rc1')?.constraint).toEqual({ op: '<<', version: '1:2.0~rc1' });
    expect(parsePackageSpec('Bad Name')).toBeUndefined();
    expect(parsePackageSpec('less>')).toBeUndefined();
  });

  it('resolves relative hook, deb and keyring paths against the profile directory', () => {
    const p = parse({ ...minimal, hooks: ['h/1.sh'], debs: ['../debs/a.deb'], sources: [{ uri: 'http://m/debian', keyring: 'k.gpg' }] });
    expect(p.hooks).toEqual(['/profiles/h/1.sh']);
    expect(p.debs).toEqual(['/debs/a.deb']);
    expect(p.sources[0]).toEqual({ uri: 'http://m/debian', suite: 'trixie', components: ['main'], keyring: '/profiles/k.gpg' });
  });

  it('gives the base package set per machine type', () => {
    expect(basePackages('container')).not.toContain('linux-image-amd64');
    expect(basePackages('virtual')).toEqual(expect.arrayContaining(['linux-image-amd64', 'live-boot', 'kmod', 'udev', 'systemd-sysv']));
    expect(basePackages('virtual')).not.toContain('intel-microcode');
    expect(basePackages('physical')).toEqual(expect.arrayContaining(['firmware-linux-free', 'intel-microcode', 'amd64-microcode']));
  });

  it('rejects bad keys, naming them', () => {
    fails({ ...minimal, pacakges: ['less'] }, 'pacakges', /unknown key "pacakges"/);
    fails({ name: 'x', version: '1' }, 'format');
    fails({ ...minimal, format: 2 }, 'format', /not supported/);
    fails({ ...minimal, name: 'Kiosk Image' }, 'name');
    fails({ ...minimal, version: '' }, 'version');
    fails({ ...minimal, machine: 'laptop' }, 'machine', /"physical", "virtual", "container"/);
    fails({ ...minimal, packages: ['less', 'curl>'] }, 'packages[1]');
    fails({ ...minimal, packages: ['less', 'less=1'] }, 'packages[1]', /twice/);
    fails({ ...minimal, packages: 'less' }, 'packages', /expected a list/);
    fails({ ...minimal, debs: ['x.rpm'] }, 'debs[0]');
    fails({ ...minimal, hooks: [3] }, 'hooks[0]');
    fails({ ...minimal, persistent: ['etc/ssh'] }, 'persistent[0]', /absolute/);
    fails({ ...minimal, persistent: ['/etc/../ssh'] }, 'persistent[0]');
    fails({ ...minimal, persistent: ['/proc/x'] }, 'persistent[0]', /\/proc/);
    fails({ ...minimal, persistent: ['/var/lib'] }, 'persistent[0]', /\/var\/lib\/liveup/);
    fails({ ...minimal, persistent: ['/etc', '/etc/ssh'] }, 'persistent[1]', /inside/);
    fails({ ...minimal, sources: [] }, 'sources');
    fails({ ...minimal, sources: [{ uri: 'ftp://x' }] }, 'sources[0].uri');
    fails({ ...minimal, sources: [{ uri: 'http://x/debian' }] }, 'sources[0].keyring', /insecureNoCheckGpg/);
    fails({ ...minimal, sources: [{ uri: 'http://x/debian', keyring: 'k', mirror: 1 }] }, 'sources[0].mirror');
    fails({ ...minimal, compression: { algorithm: 'brotli' } }, 'compression.algorithm');
    fails({ ...minimal, compression: { algorithm: 'xz', level: 5 } }, 'compression.level', /takes no level/);
    fails({ ...minimal, compression: { level: 30 } }, 'compression.level', /maximum 22/);
    fails({ ...minimal, compression: { blockSize: 3000 } }, 'compression.blockSize');
    fails({ ...minimal, compression: { blockSize: '2M' } }, 'compression.blockSize');
    fails({ ...minimal, factory: 'yes' }, 'factory');
    fails({ ...minimal, insecureNoCheckGpg: 1 }, 'insecureNoCheckGpg');
  });

  it('allows an unsigned source only with insecureNoCheckGpg', () => {
    const p = parse({ ...minimal, insecureNoCheckGpg: true, sources: [{ uri: 'http://x/debian' }] });
    expect(p.sources[0]!.keyring).toBeUndefined();
  });

  it('refuses a physical machine whose sources lack non-free-firmware (its microcode lives there)', () => {
    fails({ ...minimal, machine: 'physical', insecureNoCheckGpg: true, sources: [{ uri: 'http://x/debian', components: ['main'] }] }, 'sources', /non-free-firmware/);
    expect(parse({ ...minimal, machine: 'physical', insecureNoCheckGpg: true, sources: [{ uri: 'http://x/debian', components: ['main', 'non-free-firmware'] }] }).machine).toBe('physical');
    expect(parse({ ...minimal, machine: 'physical' }).sources[0]!.components).toContain('non-free-firmware');
  });

  it('reports invalid JSON as PROFILE_INVALID', () => {
    expect(() => parseProfile('{"format":1,', 'p.json')).toThrow(expect.objectContaining({ code: 'PROFILE_INVALID' }));
  });
});

describe('factory helpers', () => {
  it('puts mksquashfs -e last, with reproducible options and the compressor level', () => {
    const a = mksquashfsArgs('/r', '/o.sqfs', { algorithm: 'zstd', level: 3, blockSize: 131072 });
    expect(a.slice(a.indexOf('-e'))).toEqual(['-e', 'proc/*', 'sys/*', 'dev/*', 'run/*', 'tmp/*']);
    expect(a).toEqual(expect.arrayContaining(['-reproducible', '-no-fragments', '-Xcompression-level', '3']));
    expect(a.join(' ')).toContain('-mkfs-time 0 -all-time 0');
    expect(mksquashfsArgs('/r', '/o', { algorithm: 'xz', blockSize: 1 << 20 })).not.toContain('-Xcompression-level');
  });

  it("names a recorded .deb as Debian's pool does: no epoch (apt's %3a is not a safe path or URL)", () => {
    expect(storedDebName('libdevmapper-event1.02.1_2%3a1.02.205-2_amd64.deb')).toBe('libdevmapper-event1.02.1_1.02.205-2_amd64.deb');
    expect(storedDebName('hello_2.10-5_amd64.deb')).toBe('hello_2.10-5_amd64.deb');
    expect(storedDebName('tzdata_2025b-4_all.deb')).toBe('tzdata_2025b-4_all.deb');
  });

  it('orders changes as dpkg.log shows them', () => {
    const log = [
      '2026-01-01 10:00:00 startup archives unpack',
      '2026-01-01 10:00:00 remove less:amd64 668-1 <none>',
      '2026-01-01 10:00:01 install libfoo1:amd64 <none> 1.0-1',
      '2026-01-01 10:00:01 status half-installed libfoo1:amd64 1.0-1',
      '2026-01-01 10:00:02 upgrade bar:all 1.0 2.0',
      '2026-01-01 10:00:03 configure libfoo1:amd64 1.0-1 <none>',
      '2026-01-01 10:00:04 install libfoo1:amd64 <none> 1.0-1',
    ].join('\n');
    expect(dpkgOrder(log)).toEqual(['less', 'libfoo1', 'bar']);
  });
});
