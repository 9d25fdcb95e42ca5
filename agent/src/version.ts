/**
 * The agent's version, from liveup's package.json: the nearest one above this
 * module. In the repo and under dist/ that is the checkout's; in the .deb,
 * where this module is inlined into /usr/lib/liveup/app/, it is the one the
 * package ships beside app/ (packaging/inline.mjs) — so no fixed depth.
 */
import { readFileSync } from 'node:fs';

function read(): string {
  for (let up = new URL('.', import.meta.url), i = 0; i < 6; up = new URL('..', up), i++) {
    try {
      const pkg = JSON.parse(readFileSync(new URL('package.json', up), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'liveup') return pkg.version ?? 'unknown';
    } catch {
      // none here (or unreadable): one level up
    }
  }
  return 'unknown';
}

export const AGENT_VERSION = read();
