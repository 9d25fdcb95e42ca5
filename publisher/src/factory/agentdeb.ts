/**
 * The liveup-agent .deb the factory installs into every generation (profile
 * `"agent": true`, the default): so every machine built by liveup can update
 * itself, and the agent a generation carries is the one it was built with.
 *
 * Found, in order: `--agent-deb FILE`; LIVEUP_AGENT_DEB; the one the
 * liveup-publisher package ships in /usr/share/liveup/; in a repository
 * checkout, built with packaging/build (deterministic, ~15 s) into
 * `<cache>/agent-deb/<pid>/`, which the build removes once it is installed.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LiveupError } from '../../../agent/src/channel/errors.js';
import { run } from '../exec.js';

const SHIPPED = '/usr/share/liveup';
const REPO = fileURLToPath(new URL('../../../../', import.meta.url));

export async function agentDeb(opts: { explicit?: string; architecture: string; cacheDir: string; log: (l: string) => void }): Promise<string> {
  const given = opts.explicit ?? process.env.LIVEUP_AGENT_DEB;
  if (given) {
    if (!existsSync(given)) throw new LiveupError('PROFILE_INVALID', `agent .deb ${given} does not exist`, { file: given });
    return resolve(given);
  }
  const arch = opts.architecture;
  if (existsSync(SHIPPED)) {
    const found = readdirSync(SHIPPED).filter((f) => f.startsWith('liveup-agent_') && f.endsWith(`_${arch}.deb`)).sort();
    if (found.length) return join(SHIPPED, found[found.length - 1]!);
  }
  const script = join(REPO, 'packaging', 'build');
  if (existsSync(script) && existsSync(join(REPO, 'dist'))) {
    if (arch !== 'amd64') throw new LiveupError('PROFILE_INVALID', `no liveup-agent .deb for ${arch}: pass --agent-deb FILE, or set "agent": false`);
    // Per process: two builds at once must not write the same file.
    const out = join(opts.cacheDir, 'agent-deb', String(process.pid));
    opts.log(`  building the liveup-agent .deb from ${REPO} (packaging/build)`);
    const r = await run(script, ['--only', 'agent', '--no-tsc', '--out', out]);
    const deb = r.stdout.trim().split('\n').pop() ?? '';
    if (!deb.endsWith('.deb') || !existsSync(deb)) throw new LiveupError('BUILD_FAILED', `packaging/build did not print a .deb (${r.stdout.slice(-300)})`);
    return deb;
  }
  throw new LiveupError('PROFILE_INVALID',
    'the profile installs the liveup agent ("agent": true, the default) but no liveup-agent .deb was found: ' +
    'pass --agent-deb FILE, install liveup-publisher (it ships one), or set "agent": false');
}
