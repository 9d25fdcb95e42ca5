/** `agentctl update`: check, download, stage and (by policy or --apply-live) apply, with progress. */
import type { UpdateResult } from '../../dbus/api.js';
import { EXIT, type Command } from '../framework.js';
import { BUS_OPTION, formatTime, withAgent } from './common.js';
import { ProgressView } from './progress.js';

export function formatUpdate(r: UpdateResult): string {
  return r.at ? `${r.message} (at ${formatTime(r.at)})` : r.message;
}

export const updateCmd: Command = {
  path: ['update'],
  summary: 'download, stage and apply the newest generation (root or group liveup)',
  usage: '[--download-only] [--apply-live | --now] [--bus BUS] [--json]',
  description: 'Returns when the daemon is done; progress is shown from its Progress signals\n(a bar on a terminal, plain lines otherwise, nothing with --json).',
  options: {
    'download-only': { type: 'boolean', description: 'stop after staging: no live apply, no reboot' },
    'apply-live': { type: 'boolean', description: 'replay the package changes on the running system now' },
    now: { type: 'boolean', description: 'carry out the decision now (live replay, soft-reboot, kexec or reboot), even outside the maintenance window' },
    ...BUS_OPTION,
  },
  async run({ values, io, json }) {
    return withAgent(values, async (c) => {
      const opts = { downloadOnly: values['download-only'] === true, applyLive: values['apply-live'] === true, applyNow: values.now === true };
      const view = json ? null : new ProgressView({ tty: io.isTTY, write: (s) => process.stderr.write(s), line: (l) => io.err(l) });
      // Subscribe before calling so the first signals are not missed.
      const unsubscribe = view ? await c.onProgress((p) => view.update(p)) : () => {};
      try {
        if (json) io.out(await c.raw.update(opts));
        else {
          const r = await c.update(opts);
          view?.finish();
          io.out(formatUpdate(r));
        }
      } finally {
        view?.finish();
        unsubscribe();
      }
      return EXIT.OK;
    });
  },
};
