/** `agentctl rollback`: go back to a generation the machine has seen. */
import { LiveupError } from '../../channel/errors.js';
import { EXIT, type Command } from '../framework.js';
import { BUS_OPTION, parseVersion, withAgent } from './common.js';
import { formatUpdate } from './update.js';

export const rollbackCmd: Command = {
  path: ['rollback'],
  summary: 'boot a previous generation (default: the previous good one), or undo live replays (root or group liveup)',
  usage: '[VERSION] [--now | --live] [--bus BUS] [--json]',
  description: [
    'Without --now the generation becomes the next boot; with --now the switch happens at once (kexec or reboot).',
    'With --live the machine goes back to the generation it booted without a reboot, undoing the live replays of',
    'this boot (packages repacked from the booted image); any other target needs a reboot, and is refused.',
  ].join('\n'),
  positionals: { min: 0, max: 1 },
  options: {
    now: { type: 'boolean', description: 'switch now instead of at the next boot' },
    live: { type: 'boolean', description: 'back to the booted generation now, without a reboot (after a live replay)' },
    ...BUS_OPTION,
  },
  async run({ values, positionals, io, json }) {
    const version = positionals[0] === undefined ? null : parseVersion(positionals[0]);
    if (values.live === true && values.now === true) {
      throw new LiveupError('INVALID_ARGUMENT', '--live and --now exclude each other: --live rolls back without a reboot, --now reboots');
    }
    return withAgent(values, async (c) => {
      // `live` only when asked: a daemon older than --live refuses options it does not know.
      const opts = { now: values.now === true, ...(values.live === true ? { live: true } : {}) };
      if (json) io.out(await c.raw.rollback(version, opts));
      else io.out(formatUpdate(await c.rollback(version, opts)));
      return EXIT.OK;
    });
  },
};
