/**
 * The running processes, as the restart planner needs them: executable,
 * mapped files and systemd unit, read from /proc (`procRoot` for tests).
 * Processes that exit while being read, or that we may not read, are skipped:
 * the scan is a best effort at one instant, like needrestart's.
 */
import { readdir, readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { unitOfCgroup, type ProcessInfo } from '../core/liveapply.js';

const DELETED = / \(deleted\)$/;

/** The file paths in a /proc/PID/maps text (anonymous and pseudo mappings left out). */
export function mappedFiles(maps: string): string[] {
  const out = new Set<string>();
  for (const line of maps.split('\n')) {
    // address perms offset dev inode pathname — the path is everything after the 5th field.
    const m = /^\S+\s+\S+\s+\S+\s+\S+\s+\d+\s+(\/.*)$/.exec(line);
    if (m) out.add(m[1]!.replace(DELETED, ''));
  }
  return [...out];
}

export async function scanProcesses(procRoot = '/proc'): Promise<ProcessInfo[]> {
  const out: ProcessInfo[] = [];
  for (const name of await readdir(procRoot)) {
    if (!/^\d+$/.test(name)) continue;
    const dir = join(procRoot, name);
    try {
      const [maps, cgroup, comm] = await Promise.all([
        readFile(join(dir, 'maps'), 'utf8'),
        readFile(join(dir, 'cgroup'), 'utf8').catch(() => ''),
        readFile(join(dir, 'comm'), 'utf8').catch(() => '?'),
      ]);
      const exe = await readlink(join(dir, 'exe')).then((p) => p.replace(DELETED, ''), () => null);
      const files = mappedFiles(maps);
      if (exe && !files.includes(exe)) files.unshift(exe);
      if (files.length === 0) continue; // kernel threads
      out.push({ pid: Number(name), comm: comm.trim(), unit: unitOfCgroup(cgroup), files });
    } catch {
      // gone, or not ours to read
    }
  }
  return out;
}
