/** Shape checks of the channel format: what a signed-but-malformed document gets. */
import { describe, expect, it } from 'vitest';
import { parseIndex, parseManifest, serialize, type Manifest } from '../../agent/src/channel/schema.js';
import { errorCodeToPascal, ERROR_CODES } from '../../agent/src/channel/errors.js';

const sha = 'a'.repeat(128);
const base: Manifest = {
  format: 1,
  kind: 'liveup-manifest',
  channel: 'stable',
  architecture: 'amd64',
  version: 3,
  name: 'kiosk-3',
  parent: 2,
  created: '2026-11-01T00:00:00.000Z',
  expires: '2027-11-01T00:00:00.000Z',
  kernel: { version: '6.12.48+deb13-amd64', cmdline: 'boot=live components' },
  artifacts: [
    { role: 'squashfs', path: 'filesystem.squashfs', length: 10, sha512: sha },
    { role: 'kernel', path: 'vmlinuz', length: 10, sha512: sha },
    { role: 'initrd', path: 'initrd.img', length: 10, sha512: sha },
  ],
  changes: [{ action: 'install', package: 'htop', version: '3.4.1-5', deb: { path: 'debs/htop.deb', length: 5, sha512: sha } }],
  rebootRequired: { required: false, reasons: [] },
};

function edit(f: (m: Record<string, unknown>) => void): string {
  const m = JSON.parse(serialize(base)) as Record<string, unknown>;
  f(m);
  return JSON.stringify(m);
}

describe('parseManifest', () => {
  it('round-trips what the publisher serialises', () => {
    expect(parseManifest(serialize(base))).toEqual(base);
  });

  it.each([
    ['an unknown key', (m: Record<string, unknown>) => (m.extra = 1), /unknown key "extra"/],
    ['a path escaping the generation', (m: Record<string, unknown>) => ((m.artifacts as { path: string }[])[0]!.path = '../../etc/shadow'), /artifacts\[0\]\.path/],
    ['an absolute path', (m: Record<string, unknown>) => ((m.artifacts as { path: string }[])[1]!.path = '/boot/vmlinuz'), /artifacts\[1\]\.path/],
    ['an upper-case hash', (m: Record<string, unknown>) => ((m.artifacts as { sha512: string }[])[0]!.sha512 = 'A'.repeat(128)), /lower-case hex SHA-512/],
    ['a missing kernel artifact', (m: Record<string, unknown>) => (m.artifacts = (m.artifacts as { role: string }[]).filter((a) => a.role !== 'kernel')), /role "kernel", found 0/],
    ['changes without a parent', (m: Record<string, unknown>) => (m.parent = null), /package changes need a parent/],
    ['a parent not below the version', (m: Record<string, unknown>) => (m.parent = 3), /parent.*above the maximum 2/],
    ['a required reboot without reasons', (m: Record<string, unknown>) => (m.rebootRequired = { required: true, reasons: [] }), /must give its reasons/],
    ['a fractional version', (m: Record<string, unknown>) => (m.version = 2.5), /: version: expected an integer/],
    ['another format version', (m: Record<string, unknown>) => (m.format = 2), /format/],
    ['a non-UTC timestamp', (m: Record<string, unknown>) => (m.expires = '2027-11-01 00:00'), /ISO-8601 UTC/],
  ])('refuses %s with METADATA_INVALID naming the key', (_what, f, msg) => {
    expect(() => parseManifest(edit(f), 'generations/3/manifest.json')).toThrow(expect.objectContaining({ code: 'METADATA_INVALID', message: expect.stringMatching(msg) }));
  });

  it('signed boot: boot.cfg and the three GRUB signatures, all four or none, each once', () => {
    const signed = [
      { role: 'boot-config', path: 'boot.cfg', length: 1, sha512: sha },
      { role: 'boot-config-sig', path: 'boot.cfg.sig', length: 1, sha512: sha },
      { role: 'kernel-sig', path: 'vmlinuz.sig', length: 1, sha512: sha },
      { role: 'initrd-sig', path: 'initrd.img.sig', length: 1, sha512: sha },
    ];
    const withArtifacts = (extra: unknown[]) => edit((m) => (m.artifacts = [...(m.artifacts as unknown[]), ...extra]));
    expect(parseManifest(withArtifacts(signed)).artifacts.map((a) => a.role)).toEqual(['squashfs', 'kernel', 'initrd', 'boot-config', 'boot-config-sig', 'kernel-sig', 'initrd-sig']);
    expect(() => parseManifest(withArtifacts(signed.slice(0, 3)))).toThrow(/a signed boot needs all of .*; found only boot-config, boot-config-sig, kernel-sig/);
    expect(() => parseManifest(withArtifacts([...signed, { ...signed[2], path: 'other.sig' }]))).toThrow(/more than one artifact with role "kernel-sig"/);
    // A manifest from before signed boot is as valid as ever.
    expect(parseManifest(serialize(base)).artifacts).toHaveLength(3);
  });

  it('names the file in the error', () => {
    expect(() => parseManifest('{', 'generations/3/manifest.json')).toThrow(/^generations\/3\/manifest\.json: not valid JSON/);
  });
});

describe('parseIndex', () => {
  const index = {
    format: 1, kind: 'liveup-index', channel: 'stable', sequence: 4,
    created: '2026-11-01T00:00:00Z', expires: '2026-12-01T00:00:00Z', latest: 2,
    generations: [1, 2].map((v) => ({ version: v, name: `g${v}`, architecture: 'amd64', created: '2026-11-01T00:00:00Z', manifest: { path: `generations/${v}/manifest.json`, length: 1, sha512: sha } })),
  };
  it('accepts a well-formed index', () => {
    expect(parseIndex(JSON.stringify(index)).latest).toBe(2);
  });
  it('refuses a "latest" that is not the highest version, and a version listed twice', () => {
    expect(() => parseIndex(JSON.stringify({ ...index, latest: 1 }))).toThrow(/"latest"|latest/);
    expect(() => parseIndex(JSON.stringify({ ...index, generations: [index.generations[0], index.generations[0]], latest: 1 }))).toThrow(/listed twice/);
  });
  it('refuses a manifest passed off as an index (kind)', () => {
    expect(() => parseIndex(serialize(base))).toThrow(/unknown key|kind/);
  });
});

describe('error codes', () => {
  it('map 1:1 to distinct D-Bus error name suffixes', () => {
    const names = ERROR_CODES.map(errorCodeToPascal);
    expect(new Set(names).size).toBe(ERROR_CODES.length);
    expect(errorCodeToPascal('UPDATE_IN_PROGRESS')).toBe('UpdateInProgress');
  });
});
