/**
 * The daemon's refresh of the startup snapshots (agent/src/adapters/snapshots.ts)
 * against launchers that answer LIVEUP_SNAPSHOT=status/build as the packaged
 * ones do (packaging/liveup-agent/launcher.sh; the packaging test runs the real
 * ones in a trixie chroot, the VM suite on a booted generation).
 */
import { describe, expect, it } from 'vitest';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { tmp } from '../helpers/tmp.js';
import { refreshStartupSnapshots } from '../../agent/src/adapters/snapshots.js';

async function lib(programs: Record<string, 'valid' | 'stale' | 'broken'>): Promise<string> {
  const dir = await tmp();
  await mkdir(join(dir, 'bin'));
  await mkdir(join(dir, 'app', 'snapshot'), { recursive: true });
  for (const [p, state] of Object.entries(programs)) {
    await writeFile(join(dir, 'app', 'snapshot', `${p}.cjs`), '');
    const status = state === 'valid' ? 'exit 0' : `[ -e "${dir}/${p}.built" ] && exit 0; exit 1`;
    const build = state === 'broken' ? 'echo "node: cannot snapshot this" >&2; exit 1' : `echo "$LIVEUP_SNAPSHOT" >> "${dir}/${p}.built"; exit 0`;
    await writeFile(join(dir, 'bin', p), `#!/bin/sh\ncase $LIVEUP_SNAPSHOT in status) ${status};; build) ${build};; esac\nexit 9\n`);
    await chmod(join(dir, 'bin', p), 0o755);
  }
  return dir;
}

describe('refreshStartupSnapshots', () => {
  it('builds the snapshots whose launcher says they do not match, and only those', async () => {
    const dir = await lib({ 'liveup-agentd': 'stale', agentctl: 'valid' });
    expect(await refreshStartupSnapshots({ libDir: dir })).toEqual([
      { program: 'liveup-agentd', outcome: 'built' },
      { program: 'agentctl', outcome: 'valid' },
    ]);
    expect(await readFile(join(dir, 'liveup-agentd.built'), 'utf8')).toBe('build\n');
    expect(existsSync(join(dir, 'agentctl.built'))).toBe(false);
    // The next start finds them valid and builds nothing.
    expect((await refreshStartupSnapshots({ libDir: dir })).map((r) => r.outcome)).toEqual(['valid', 'valid']);
  });

  it("reports a failed build with the launcher's last words and goes on to the next program", async () => {
    const dir = await lib({ 'liveup-agentd': 'broken', agentctl: 'stale' });
    expect(await refreshStartupSnapshots({ libDir: dir })).toEqual([
      { program: 'liveup-agentd', outcome: 'failed', detail: 'node: cannot snapshot this' },
      { program: 'agentctl', outcome: 'built' },
    ]);
  });

  it('does nothing where the programs have no snapshot entry (run from a checkout)', async () => {
    expect(await refreshStartupSnapshots({ libDir: await tmp() })).toEqual([]);
  });
});
