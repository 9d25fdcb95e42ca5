/** `agentctl list`: every generation the journal knows, newest first. */
import type { GenerationInfo } from '../../dbus/api.js';
import { EXIT, type Command } from '../framework.js';
import { BUS_OPTION, formatTime, table, withAgent } from './common.js';

export function formatGenerations(gens: readonly GenerationInfo[]): string[] {
  if (gens.length === 0) return ['no generations recorded'];
  const rows = [...gens].sort((a, b) => b.version - a.version).map((g) => [
    g.booted ? '●' : ' ',
    String(g.version),
    g.name,
    g.state,
    [g.staged ? 'next-boot' : '', g.pinned ? 'pinned' : '', g.present ? '' : 'removed'].filter(Boolean).join(',') || '-',
    g.kernelVersion ?? '-',
    g.stagedAt ? formatTime(g.stagedAt) : '-',
  ]);
  return table([[' ', 'VERSION', 'NAME', 'STATE', 'FLAGS', 'KERNEL', 'STAGED'], ...rows]);
}

export const listCmd: Command = {
  path: ['list'],
  summary: 'list the generations on this machine',
  usage: '[--bus BUS] [--json]',
  description: '● marks the running generation.',
  options: { ...BUS_OPTION },
  async run({ values, io, json }) {
    return withAgent(values, async (c) => {
      if (json) io.out(await c.raw.listGenerations());
      else for (const l of formatGenerations(await c.listGenerations())) io.out(l);
      return EXIT.OK;
    });
  },
};
