/** Reading /proc/PID/mountinfo (proc(5)): one mount a line, the mount point in field 5. */

/** mountinfo's octal escapes (\040 for a space, …) decoded. */
export function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** The mount points a mountinfo text lists. */
export function mountPoints(mountinfo: string): Set<string> {
  return new Set(mountinfo.split('\n').map((l) => l.split(' ')[4]).filter((m): m is string => !!m).map(unescapeMount));
}
