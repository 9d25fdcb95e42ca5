/**
 * Which generation this boot runs. Its own module because the boot check
 * needs it too, and importing it from daemon.ts loaded the whole daemon
 * (openpgp, dbus-next, chokidar, node-cron, pino) into every boot check:
 * seconds of a soft-reboot's or kexec's critical path under QEMU TCG.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * The initramfs hook records the generation in `<runDir>/booted`; without it
 * (a machine booted some other way) the kernel command line says.
 */
export async function readBootedVersion(runDir: string, cmdlinePath = '/proc/cmdline'): Promise<number | null> {
  const fromFile = await readFile(join(runDir, 'booted'), 'utf8').then((t) => t.trim(), () => '');
  if (/^[1-9]\d*$/.test(fromFile)) return Number(fromFile);
  const cmdline = await readFile(cmdlinePath, 'utf8').catch(() => '');
  const m = /(?:^|\s)liveup\.generation=([1-9]\d*)(?:\s|$)/.exec(cmdline);
  return m ? Number(m[1]) : null;
}
