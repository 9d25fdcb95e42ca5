/** `agentctl history`: the journal of checks, updates, boots and rollbacks. */
import type { HistoryEntry } from '../../dbus/api.js';
import { EXIT, optInt, optString, type Command } from '../framework.js';
import { BUS_OPTION, formatTime, parseVersion, table, withAgent } from './common.js';

export function formatHistory(entries: readonly HistoryEntry[]): string[] {
  if (entries.length === 0) return ['no history'];
  return table([
    ['TIME', 'KIND', 'STATUS', 'VERSION', 'MESSAGE'],
    ...entries.map((e) => [formatTime(e.at), e.kind, e.status, e.version === null ? '-' : String(e.version), `${e.errorCode ? `${e.errorCode}: ` : ''}${e.message}`]),
  ]);
}

export const historyCmd: Command = {
  path: ['history'],
  summary: 'show the update journal, newest first',
  usage: '[--limit N] [--version V] [--bus BUS] [--json]',
  description: 'With --version the whole journal is read and filtered here (the D-Bus method takes only a limit),\nthen cut to --limit.',
  options: {
    limit: { type: 'string', description: 'at most N entries', default: '20', valueName: 'N' },
    version: { type: 'string', description: 'only entries about generation V', valueName: 'V' },
    ...BUS_OPTION,
  },
  async run({ values, io, json }) {
    const limit = optInt(values, 'limit', { min: 1 }) ?? 20;
    const v = optString(values, 'version');
    const version = v === undefined ? null : parseVersion(v, '--version');
    return withAgent(values, async (c) => {
      if (json && version === null) {
        io.out(await c.raw.history(limit));
        return EXIT.OK;
      }
      let entries = await c.history(version === null ? limit : null);
      if (version !== null) entries = entries.filter((e) => e.version === version).slice(0, limit);
      if (json) io.out(JSON.stringify(entries));
      else for (const l of formatHistory(entries)) io.out(l);
      return EXIT.OK;
    });
  },
};
