/** `agentctl status`: what runs, what boots next, what the agent decided — in the manner of `rpm-ostree status`. */
import type { AgentStatus, GenerationInfo } from '../../dbus/api.js';
import { EXIT, type Command } from '../framework.js';
import { BUS_OPTION, formatTime, withAgent } from './common.js';

function generationLine(g: GenerationInfo | undefined, version: number, roles: string[], marker: string): string {
  const name = g ? ` ${g.name}` : '';
  // The journal state unless a role already says it ("booted, booted").
  const extra = g ? [...(roles.includes(g.state) ? [] : [g.state]), ...(g.pinned ? ['pinned'] : [])] : ['not in the journal'];
  const kernel = g?.kernelVersion ? `  kernel ${g.kernelVersion}` : '';
  return `${marker} ${version}${name} (${[...roles, ...extra].join(', ')})${kernel}`;
}

/** The human status view; pure so it can be tested without a daemon. */
export function formatStatus(s: AgentStatus, gens: readonly GenerationInfo[]): string[] {
  const byVersion = new Map(gens.map((g) => [g.version, g]));
  const lines = [`State:       ${s.state}${s.transaction ? ` (${s.transaction.kind} since ${formatTime(s.transaction.since)})` : ''}`];
  if (s.channel) lines.push(`Channel:     ${s.channel}`);
  lines.push('Generations:');
  // One line per interesting version, newest first; a version may hold several roles.
  const roles = new Map<number, string[]>();
  const add = (v: number | null, role: string) => { if (v !== null) roles.set(v, [...(roles.get(v) ?? []), role]); };
  add(s.bootedVersion, 'booted');
  add(s.stagedVersion, 'staged: next boot');
  add(s.lastGoodVersion, 'last good');
  if (roles.size === 0) lines.push('  (none recorded)');
  for (const v of [...roles.keys()].sort((a, b) => b - a)) {
    lines.push(generationLine(byVersion.get(v), v, roles.get(v)!, v === s.bootedVersion ? '●' : ' '));
  }
  if (s.pendingVersion !== null) lines.push(`Pending:     ${s.pendingVersion} (offered by the channel, not staged yet)`);
  const lc = s.lastCheck;
  lines.push(`Last check:  ${lc ? `${formatTime(lc.at)}: ${lc.result}${lc.errorCode ? ` (${lc.errorCode}${lc.message ? `: ${lc.message}` : ''})` : ''}` : 'never'}`);
  lines.push(`Next check:  ${s.nextCheck ? formatTime(s.nextCheck) : 'not scheduled'}`);
  if (s.runningVersion != null && s.runningVersion !== s.bootedVersion) lines.push(`Running:     ${s.runningVersion} (applied live in this boot; its image boots next)`);
  if (s.needsReboot) lines.push(`Needs reboot: into ${s.needsReboot.version}: ${s.needsReboot.reason}`);
  if (s.decision) lines.push(`Decision:    ${s.decision}${s.reason ? `: ${s.reason}` : ''}${s.decisionUntil ? ` (until ${formatTime(s.decisionUntil)})` : ''}`);
  return lines;
}

export const statusCmd: Command = {
  path: ['status'],
  summary: 'show the booted, staged and pending generations, the last and next check',
  usage: '[--bus BUS] [--json]',
  description: '● marks the running generation. --json prints the daemon\'s status object unchanged.',
  options: { ...BUS_OPTION },
  async run({ values, io, json }) {
    return withAgent(values, async (c) => {
      if (json) {
        io.out(await c.raw.getStatus());
        return EXIT.OK;
      }
      const [s, gens] = await Promise.all([c.getStatus(), c.listGenerations()]);
      for (const l of formatStatus(s, gens)) io.out(l);
      return EXIT.OK;
    });
  },
};
