import { describe, expect, it } from 'vitest';
import { rolloutBucket, rolloutPercent, rolloutTurn } from '../../agent/src/core/rollout.js';
import { parseIndex } from '../../agent/src/channel/schema.js';
import { applyRolloutChange, autoPauseReason } from '../../fleet/src/rollout.js';

const ids = Array.from({ length: 1000 }, (_, i) => (i * 2654435761 >>> 0).toString(16).padStart(32, '0'));
const NOW = new Date('2026-11-23T12:00:00Z');

describe('rollout waves', () => {
  it('a rollout at 10% lets roughly 10% of 1,000 machines through, the same ones every time', () => {
    const r = { version: 7, start: NOW.toISOString(), percent: 10, paused: false };
    const lucky = ids.filter((id) => rolloutTurn(r, id, 7, NOW).allowed);
    expect(lucky.length).toBeGreaterThan(70);
    expect(lucky.length).toBeLessThan(130);
    expect(ids.filter((id) => rolloutTurn(r, id, 7, NOW).allowed)).toEqual(lucky);
    // Raising the share only adds machines: the first wave stays in.
    const wider = ids.filter((id) => rolloutTurn({ ...r, percent: 50 }, id, 7, NOW).allowed);
    expect(lucky.every((id) => wider.includes(id))).toBe(true);
    // Each version draws its own first wave.
    const next = ids.filter((id) => rolloutTurn({ ...r, version: 8 }, id, 8, NOW).allowed);
    expect(next).not.toEqual(lucky);
    // Other versions are not held back.
    expect(rolloutTurn(r, ids[0]!, 6, NOW).allowed).toBe(true);
  });

  it('a timed rollout grows from 0 to 100% over its duration; a pause holds the machines not yet in', () => {
    const start = new Date(NOW.getTime() - 6 * 3600e3).toISOString();
    const r = { version: 3, start, durationSeconds: 24 * 3600, paused: false };
    expect(rolloutPercent(r, NOW)).toBeCloseTo(25, 5);
    expect(rolloutPercent(r, new Date(NOW.getTime() + 30 * 3600e3))).toBe(100);
    expect(rolloutPercent(r, new Date(Date.parse(start) - 1000))).toBe(0);
    const out = ids.find((id) => rolloutBucket(id, 3) > 60)!;
    const paused = { version: 3, start, percent: 40, paused: true };
    expect(rolloutTurn(paused, out, 3, NOW)).toMatchObject({ allowed: false, reason: expect.stringMatching(/paused at 40\.0%/) });
    const inside = ids.find((id) => rolloutBucket(id, 3) < 10)!;
    expect(rolloutTurn(paused, inside, 3, NOW).allowed).toBe(true);
    // The fleet can cap it further.
    expect(rolloutTurn({ ...r, percent: 100 }, out, 3, NOW, { percent: 5, paused: false }).reason).toMatch(/fleet limits the rollout of 3 to 5%/);
  });

  it('the index accepts one rollout naming a listed version, with exactly one of percent and duration', () => {
    const gen = { version: 2, name: 'g', architecture: 'amd64', created: NOW.toISOString(), manifest: { path: 'generations/2/manifest.json', length: 10, sha512: 'a'.repeat(128) } };
    const index = (rollout: unknown) => JSON.stringify({
      format: 1, kind: 'liveup-index', channel: 'stable', sequence: 1, created: NOW.toISOString(), expires: NOW.toISOString(), latest: 2, generations: [gen], rollout,
    });
    expect(parseIndex(index({ version: 2, start: NOW.toISOString(), percent: 10, paused: false })).rollout).toMatchObject({ percent: 10 });
    expect(() => parseIndex(index({ version: 2, start: NOW.toISOString(), percent: 10, durationSeconds: 60, paused: false }))).toThrow(/exactly one of "percent" and "durationSeconds"/);
    expect(() => parseIndex(index({ version: 9, start: NOW.toISOString(), percent: 10, paused: false }))).toThrow(/rollout\.version.*9 is not listed/);
    expect(() => parseIndex(index({ version: 2, start: NOW.toISOString(), percent: 101, paused: false }))).toThrow(/percent/);
  });
});

describe('the endpoint rollout control (fleet/src/rollout.ts)', () => {
  const at = new Date('2026-12-02T10:00:00Z');
  it('starts a rollout only with a version; a new version starts afresh, a change keeps the rest', () => {
    expect(() => applyRolloutChange('stable', null, { percent: 10 }, at)).toThrow(/no rollout yet: name the version/);
    const r = applyRolloutChange('stable', null, { version: 5, percent: 10 }, at);
    expect(r).toMatchObject({ version: 5, percent: 10, paused: false, reason: null, autoPauseRatio: 0.2, autoPauseMin: 5 });
    const p = applyRolloutChange('stable', r, { paused: true, reason: 'by hand' }, at);
    expect(p).toMatchObject({ version: 5, percent: 10, paused: true, reason: 'by hand' });
    expect(applyRolloutChange('stable', p, { percent: 30 }, at)).toMatchObject({ percent: 30, paused: true, reason: 'by hand' });
    expect(applyRolloutChange('stable', p, { paused: false }, at)).toMatchObject({ paused: false, reason: null });
    expect(applyRolloutChange('stable', { ...p, autoPauseRatio: 0 }, { version: 6 }, at)).toMatchObject({ version: 6, percent: 0, paused: false, autoPauseRatio: 0 });
    expect(() => applyRolloutChange('Stable!', null, { version: 1 }, at)).toThrow(/channel "Stable!"/);
    expect(() => applyRolloutChange('stable', r, { percent: 101 }, at)).toThrow(/percent 101/);
    expect(() => applyRolloutChange('stable', r, { autoPauseRatio: 2 }, at)).toThrow(/auto-pause ratio 2/);
  });

  it('pauses by itself only past the threshold, with enough machines, when not paused or switched off', () => {
    const r = applyRolloutChange('stable', null, { version: 5, percent: 10, autoPauseRatio: 0.25, autoPauseMin: 4 }, at);
    expect(autoPauseReason(r, { attempted: 3, failed: 3 })).toBeNull(); // too few to say
    expect(autoPauseReason(r, { attempted: 8, failed: 1 })).toBeNull(); // 12.5%
    expect(autoPauseReason(r, { attempted: 8, failed: 2 })).toMatch(/2 of 8 machines failed the boot check of 5 \(threshold 25%\)/);
    expect(autoPauseReason({ ...r, paused: true }, { attempted: 8, failed: 8 })).toBeNull();
    expect(autoPauseReason({ ...r, autoPauseRatio: 0 }, { attempted: 8, failed: 8 })).toBeNull();
  });
});
