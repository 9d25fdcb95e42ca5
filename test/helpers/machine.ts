/**
 * A "machine" for agent tests: generation 1 of `repo` installed on a boot
 * medium and recorded as booted, a private dbus-daemon, the channel served on
 * 127.0.0.1, and the daemon configuration pointing at all of it.
 */
import { cp, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startPrivateBus, type PrivateBus } from './dbus.js';
import { serve } from '../../publisher/src/serve.js';

export interface AgentWorld {
  readonly boot: string;
  readonly runDir: string;
  readonly state: string;
  readonly configFile: string;
  readonly bus: PrivateBus;
  readonly channelUrl: string;
}

export async function agentWorld(
  dir: string,
  repo: string,
  keyring: string,
  cleanups: (() => Promise<void> | void)[],
  extraConfig: Record<string, unknown> = {},
): Promise<AgentWorld> {
  const boot = join(dir, 'boot');
  await mkdir(join(boot, 'live'), { recursive: true });
  await cp(join(repo, 'generations', '1'), join(boot, 'live', '1'), { recursive: true });
  const runDir = join(dir, 'run');
  await mkdir(runDir, { recursive: true });
  await writeFile(join(runDir, 'booted'), '1\n');
  const bus = await startPrivateBus();
  cleanups.push(() => bus.stop());
  const server = await serve({ root: repo, host: '127.0.0.1', port: 0 });
  cleanups.push(() => server.close());
  const state = join(dir, 'state');
  const configFile = join(dir, 'agent.json');
  await writeFile(configFile, JSON.stringify({
    channel: 'stable', mirrors: [server.url], keyring, architecture: 'amd64', schedule: '0 0 1 1 *', jitterSeconds: 0,
    bootDir: boot, stateDir: state, dbus: bus.address,
    fetch: { deadlineSeconds: 120, minBytesPerSecond: 0, retries: 1, backoffSeconds: 1 },
    ...extraConfig,
  }));
  return { boot, runDir, state, configFile, bus, channelUrl: server.url };
}
