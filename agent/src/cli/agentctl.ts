/** `agentctl`: the admin command line of liveup-agentd, over D-Bus. One file per verb in ./agentctl/. */
import { AGENT_VERSION } from '../version.js';
import { EXIT, runCli, type Command, type Io, processIo } from './framework.js';
import { checkCmd } from './agentctl/check.js';
import { gcCmd } from './agentctl/gc.js';
import { reportCmd } from './agentctl/report.js';
import { enrollCmd } from './agentctl/enroll.js';
import { historyCmd } from './agentctl/history.js';
import { listCmd } from './agentctl/list.js';
import { pinCmd, unpinCmd } from './agentctl/pin.js';
import { rollbackCmd } from './agentctl/rollback.js';
import { statusCmd } from './agentctl/status.js';
import { updateCmd } from './agentctl/update.js';

export const COMMANDS: Command[] = [statusCmd, checkCmd, updateCmd, listCmd, historyCmd, rollbackCmd, pinCmd, unpinCmd, gcCmd, reportCmd, enrollCmd];

export const BLURB = 'agentctl: control liveup-agentd, the update agent of this machine (over D-Bus, system bus by default).';

/**
 * `--bus` is global (`agentctl --bus session status`) but the framework parses
 * options per verb, so leading `--bus X` / `--bus=X` are moved after the verb.
 */
export function hoistGlobalOptions(argv: readonly string[]): string[] {
  const lead: string[] = [];
  let i = 0;
  while (i < argv.length) {
    const a = argv[i]!;
    if (a === '--bus' && i + 1 < argv.length) {
      lead.push(a, argv[i + 1]!);
      i += 2;
    } else if (a.startsWith('--bus=')) {
      lead.push(a);
      i += 1;
    } else break;
  }
  const rest = argv.slice(i);
  if (lead.length === 0 || rest.length === 0) return [...argv];
  return [rest[0]!, ...lead, ...rest.slice(1)];
}

export async function main(argv: readonly string[], io: Io = processIo): Promise<number> {
  if (argv[0] === '--version') {
    io.out(`agentctl ${AGENT_VERSION}`);
    return EXIT.OK;
  }
  return runCli('agentctl', BLURB, COMMANDS, hoistGlobalOptions(argv), io);
}
