/** Whether `cmd` is an executable in PATH: for naming the Debian package to install before anything runs. */
import { access } from 'node:fs/promises';
import { constants } from 'node:fs';
import { join } from 'node:path';

export async function onPath(cmd: string): Promise<boolean> {
  for (const d of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':')) {
    if (d && (await access(join(d, cmd), constants.X_OK).then(() => true, () => false))) return true;
  }
  return false;
}
