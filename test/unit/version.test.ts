import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { main } from '../../agent/src/cli/agentctl.js';
import { AGENT_VERSION } from '../../agent/src/version.js';

// The version is found by walking up to liveup's package.json, so it holds in the
// repo, under dist/ and in the .deb's app/ alike (packaging.test.ts checks the last).
describe('the agent version', () => {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

  it('is liveup\'s package.json version, as reported to the fleet', () => {
    expect(AGENT_VERSION).toBe(pkg.version);
  });

  it('agentctl --version prints it', async () => {
    const out: string[] = [];
    const code = await main(['--version'], { out: (l) => out.push(l), err: () => undefined, isTTY: false });
    expect(code).toBe(0);
    expect(out).toEqual([`agentctl ${pkg.version}`]);
  });
});
