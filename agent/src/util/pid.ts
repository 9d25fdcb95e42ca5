import { readFileSync } from 'node:fs';

/**
 * Whether process `pid` is running: a lock or a directory it owns is not
 * stale. A zombie is not running (a killed owner can linger as one a moment);
 * EPERM means it runs as another user.
 */
export function pidAlive(pid: number): boolean {
  try {
    if (/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))) return false;
  } catch {
    /* no /proc entry: kill(0) decides */
  }
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
