/** `agentctl report`: queue a fleet report and send the outbox now. */
import type { ReportResult } from '../../dbus/api.js';
import { EXIT, type Command } from '../framework.js';
import { BUS_OPTION, withAgent } from './common.js';

export function formatReport(r: ReportResult): string {
  return r.error ? `sent ${r.sent}; ${r.pending} report(s) still queued: ${r.error}` : `sent ${r.sent} report(s); none queued`;
}

export const reportCmd: Command = {
  path: ['report'],
  summary: 'send a report to the fleet endpoint now, with any queued ones (root or group liveup)',
  usage: '[--bus BUS] [--json]',
  description: 'Exit status 1 when reports stay queued (endpoint down, token refused); they are retried with backoff.',
  options: { ...BUS_OPTION },
  async run({ values, io, json }) {
    return withAgent(values, async (c) => {
      const r = await c.report();
      io.out(json ? JSON.stringify(r) : formatReport(r));
      return r.error ? EXIT.FAILED : EXIT.OK;
    });
  },
};
