/** `agentctl gc`: remove generations policy no longer keeps. */
import type { GcResult } from '../../dbus/api.js';
import { EXIT, type Command } from '../framework.js';
import { BUS_OPTION, withAgent } from './common.js';
import { formatBytes } from './progress.js';

export function formatGc(r: GcResult): string {
  if (r.removed.length === 0) return `nothing to remove (kept ${r.kept.join(', ') || 'none'})`;
  return `removed ${r.removed.join(', ')}, freed ${formatBytes(r.freedBytes)} (kept ${r.kept.join(', ') || 'none'})`;
}

export const gcCmd: Command = {
  path: ['gc'],
  summary: 'remove unpinned generations that policy no longer keeps (root or group liveup)',
  usage: '[--bus BUS] [--json]',
  options: { ...BUS_OPTION },
  async run({ values, io, json }) {
    return withAgent(values, async (c) => {
      if (json) io.out(await c.raw.gc());
      else io.out(formatGc(await c.gc()));
      return EXIT.OK;
    });
  },
};
