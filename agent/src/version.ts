/** The agent's version, from package.json (beside dist/ in the repo and in the .deb alike). */
import { readFileSync } from 'node:fs';

function read(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version?: string }).version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

export const AGENT_VERSION = read();
