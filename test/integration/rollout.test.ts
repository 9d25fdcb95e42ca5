/** Rollout waves as a publisher steers them and a machine follows them: `liveup publish --rollout`, `liveup rollout`, the real daemon. */
import { afterEach, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmp } from '../helpers/tmp.js';
import { makeGendir, makeKey } from '../helpers/fixtures.js';
import { agentWorld } from '../helpers/machine.js';
import { bin, collect, runCli } from '../helpers/cli.js';
import { rolloutBucket } from '../../agent/src/core/rollout.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  while (cleanups.length) await Promise.resolve(cleanups.pop()!()).catch(() => undefined);
});

describe('rollout waves', () => {
  it('a version at 0% waits for its wave, is taken at 100%, and a pause holds it', async () => {
    const dir = await tmp();
    const key = await makeKey(join(dir, 'keys'));
    const repo = join(dir, 'repo');
    const pub = (g: string, extra: string[] = []) => runCli('liveup', ['publish', '--repo', repo, '--channel', 'stable', '--key', key.privPath, ...extra, g]);
    expect((await pub(await makeGendir(join(dir, 'g1')))).code).toBe(0);
    const p2 = await pub(await makeGendir(join(dir, 'g2'), { marker: 'two' }), ['--rollout', '0%']);
    expect(p2.code, p2.stderr).toBe(0);
    // A machine whose bucket for version 2 is known, so "in" and "out" are exact.
    const id = Array.from({ length: 200 }, (_, i) => i.toString(16).padStart(32, 'a')).find((x) => rolloutBucket(x, 2) > 50)!;
    await writeFile(join(dir, 'machine-id'), `${id}\n`);
    const w = await agentWorld(dir, repo, key.pubPath, cleanups, { machineIdFile: join(dir, 'machine-id') });
    const d = spawn(bin('liveup-agentd'), ['--config', w.configFile, '--config-dir', join(dir, 'agent.d'), '--run-dir', w.runDir], { stdio: 'ignore' });
    cleanups.push(() => { d.kill('SIGKILL'); });
    const ctl = (args: string[]) => collect(spawn(bin('agentctl'), ['--bus', w.bus.address, ...args], { stdio: ['ignore', 'pipe', 'pipe'] }));
    for (let i = 0; i < 200 && (await ctl(['status'])).code !== 0; i++) await new Promise((r) => setTimeout(r, 100));
    const check = async () => JSON.parse((await ctl(['check', '--json'])).stdout) as { updateAvailable: boolean; availableVersion: number };

    expect(await check()).toMatchObject({ updateAvailable: false, availableVersion: 2 });
    const status = JSON.parse((await ctl(['status', '--json'])).stdout) as { lastCheck: { message: string } };
    expect(status.lastCheck.message).toMatch(/rollout of 2 at 0\.0%: not this machine's turn yet/);

    // Half the fleet: this machine (bucket > 50) still waits; then the pause freezes it there.
    expect((await runCli('liveup', ['rollout', '--repo', repo, '--channel', 'stable', '--key', key.privPath, '--percent', '50'])).code).toBe(0);
    expect((await check()).updateAvailable).toBe(false);
    const paused = await runCli('liveup', ['rollout', '--repo', repo, '--channel', 'stable', '--key', key.privPath, '--pause']);
    expect(paused.stdout).toMatch(/rollout of 2: 50% \(paused\)/);
    expect((await check()).updateAvailable).toBe(false);
    const done = await runCli('liveup', ['rollout', '--repo', repo, '--channel', 'stable', '--key', key.privPath, '--done']);
    expect(done.stdout).toMatch(/rollout ended/);
    expect(await check()).toMatchObject({ updateAvailable: true, availableVersion: 2 });

    // Bad input names the problem and re-signs nothing.
    const bad = await runCli('liveup', ['rollout', '--repo', repo, '--channel', 'stable', '--key', key.privPath, '--percent', '150']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/--percent must be 0 to 100/);
    expect((await runCli('liveup', ['rollout', '--repo', repo, '--channel', 'stable', '--key', key.privPath])).stderr).toMatch(/exactly one of/);
    expect((await runCli('liveup', ['rollout', '--repo', repo, '--channel', 'stable', '--key', key.privPath, '--resume'])).stderr).toMatch(/no rollout to resume/);
    const badPublish = await pub(await makeGendir(join(dir, 'g3'), { marker: 'three' }), ['--rollout', '150%']);
    expect(badPublish.stderr).toMatch(/a share is 0% to 100%/);
  });
});
