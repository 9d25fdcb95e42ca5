/** `agentctl check`: ask the daemon to look for an update now. */
import type { CheckResult } from '../../dbus/api.js';
import { EXIT, type Command } from '../framework.js';
import { formatBytes } from './progress.js';
import { BUS_OPTION, formatTime, withAgent } from './common.js';

export function formatCheck(r: CheckResult): string {
  if (!r.updateAvailable) return `up to date: version ${r.currentVersion ?? 'none'} on channel ${r.channel}`;
  const size = r.downloadBytes !== undefined ? `, ${formatBytes(r.downloadBytes)} to download` : '';
  return `update available: ${r.currentVersion ?? 'none'} → ${r.availableVersion} on channel ${r.channel}${size} (index valid until ${formatTime(r.expires)})`;
}

export const checkCmd: Command = {
  path: ['check'],
  summary: 'check the channel for a newer generation now (root or group liveup)',
  usage: '[--bus BUS] [--json]',
  options: { ...BUS_OPTION },
  async run({ values, io, json }) {
    return withAgent(values, async (c) => {
      if (json) io.out(await c.raw.check());
      else io.out(formatCheck(await c.check()));
      return EXIT.OK;
    });
  },
};
