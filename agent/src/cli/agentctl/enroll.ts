/**
 * `agentctl enroll URL --token T [--group G]`: make this machine report to a
 * fleet endpoint. Writes the token root-only (0600) and a configuration
 * drop-in naming it; the daemon picks the drop-in up by itself (chokidar).
 * Local files, not D-Bus: enrolling works before the daemon runs.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { LiveupError } from '../../channel/errors.js';
import { DEFAULT_LOCAL_DROP_IN_DIR } from '../../configpaths.js';
import { writeFileAtomic } from '../../util/fsatomic.js';
import { EXIT, optString, requireString, type Command } from '../framework.js';

/** Beside the journal, on the persistent data partition (see DEFAULT_LOCAL_DROP_IN_DIR). */
const DEFAULT_TOKEN_FILE = '/var/lib/liveup/fleet.token';

export const enrollCmd: Command = {
  path: ['enroll'],
  summary: 'report to a fleet endpoint: store its token (root only) and point the agent at it',
  usage: 'URL --token TOKEN [--group GROUP] [--config-dir DIR] [--token-file FILE]',
  description:
    'Writes TOKEN to /var/lib/liveup/fleet.token (0600) and /var/lib/liveup/agent.d/50-fleet.json: the machine\'s own\n' +
    'settings, on the persistent data partition, so the enrollment outlives reboots and new generations.',
  positionals: { min: 1, max: 1 },
  options: {
    token: { type: 'string', description: 'bearer token from `liveup fleet token create`', valueName: 'TOKEN' },
    group: { type: 'string', description: 'FleetLock reboot group [default: default]', valueName: 'GROUP' },
    'config-dir': { type: 'string', description: 'drop-in directory', default: DEFAULT_LOCAL_DROP_IN_DIR, valueName: 'DIR' },
    'token-file': { type: 'string', description: 'where the token goes', default: DEFAULT_TOKEN_FILE, valueName: 'FILE' },
  },
  async run({ values, positionals, io, json }) {
    const url = positionals[0]!;
    let u: URL | null = null;
    try { u = new URL(url); } catch { /* below */ }
    if (!u || !['http:', 'https:'].includes(u.protocol)) throw new LiveupError('INVALID_ARGUMENT', `${url} is not an http:// or https:// URL`);
    const token = requireString(values, 'token').trim();
    if (!/^[\x21-\x7e]{8,512}$/.test(token)) throw new LiveupError('INVALID_ARGUMENT', '--token must be 8 to 512 printable characters without spaces');
    const group = optString(values, 'group') ?? 'default';
    const dir = optString(values, 'config-dir') ?? DEFAULT_LOCAL_DROP_IN_DIR;
    const tokenFile = optString(values, 'token-file') ?? DEFAULT_TOKEN_FILE;
    await mkdir(dir, { recursive: true });
    await writeFileAtomic(tokenFile, `${token}\n`, { mode: 0o600 });
    const dropIn = join(dir, '50-fleet.json');
    await writeFileAtomic(dropIn, JSON.stringify({ fleet: { url, tokenFile, group } }, null, 2) + '\n', { mode: 0o644 });
    io.out(json ? JSON.stringify({ ok: true, url, group, tokenFile, dropIn }) : `enrolled: reports go to ${url} (group ${group}); token in ${tokenFile}`);
    return EXIT.OK;
  },
};
