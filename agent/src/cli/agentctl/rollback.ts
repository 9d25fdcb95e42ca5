/** `agentctl rollback`: go back to a generation the machine has seen. */
import { EXIT, type Command } from '../framework.js';
import { BUS_OPTION, parseVersion, withAgent } from './common.js';
import { formatUpdate } from './update.js';

export const rollbackCmd: Command = {
  path: ['rollback'],
  summary: 'boot a previous generation (default: the previous good one) (root or group liveup)',
  usage: '[VERSION] [--now] [--bus BUS] [--json]',
  description: 'Without --now the generation becomes the next boot; with --now the switch happens at once (kexec or reboot).',
  positionals: { min: 0, max: 1 },
  options: {
    now: { type: 'boolean', description: 'switch now instead of at the next boot' },
    ...BUS_OPTION,
  },
  async run({ values, positionals, io, json }) {
    const version = positionals[0] === undefined ? null : parseVersion(positionals[0]);
    return withAgent(values, async (c) => {
      const opts = { now: values.now === true };
      if (json) io.out(await c.raw.rollback(version, opts));
      else io.out(formatUpdate(await c.rollback(version, opts)));
      return EXIT.OK;
    });
  },
};
