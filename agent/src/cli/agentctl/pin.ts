/** `agentctl pin` / `agentctl unpin`: keep a generation from garbage collection, or let it go. */
import { EXIT, type Command } from '../framework.js';
import { BUS_OPTION, parseVersion, withAgent } from './common.js';

function pinCommand(verb: 'pin' | 'unpin'): Command {
  return {
    path: [verb],
    summary: verb === 'pin' ? 'keep a generation from garbage collection (root or group liveup)' : 'allow garbage collection of a pinned generation (root or group liveup)',
    usage: 'VERSION [--bus BUS] [--json]',
    positionals: { min: 1, max: 1 },
    options: { ...BUS_OPTION },
    async run({ values, positionals, io, json }) {
      const version = parseVersion(positionals[0]!);
      return withAgent(values, async (c) => {
        await (verb === 'pin' ? c.pin(version) : c.unpin(version));
        io.out(json ? JSON.stringify({ ok: true, version, pinned: verb === 'pin' }) : `${verb === 'pin' ? 'pinned' : 'unpinned'} generation ${version}`);
        return EXIT.OK;
      });
    },
  };
}

export const pinCmd = pinCommand('pin');
export const unpinCmd = pinCommand('unpin');
