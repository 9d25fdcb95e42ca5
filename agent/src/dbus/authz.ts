/**
 * Who may change the machine through org.liveup.Agent1: uid 0 and members of
 * one group ("liveup" by default). The bus policy file says the same for the
 * system bus, but the daemon checks again itself: policy files do not apply on
 * other buses, are easy to loosen by accident, and this check is testable.
 *
 * Membership is looked up in the user database (NSS via getent, so LDAP/sssd
 * users work; /etc files when getent is absent) on every call, not cached: a
 * user removed from the group loses access at once.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';

export interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
}

export interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

/** Decides whether a uid may call mutating methods. */
export type Authorizer = (uid: number) => Promise<boolean>;

/** One line of passwd(5) format, as getent prints it. */
export function parsePasswdLine(line: string): PasswdEntry | null {
  const f = line.trim().split(':');
  if (f.length < 4 || f[0] === '') return null;
  const uid = Number(f[2]);
  const gid = Number(f[3]);
  if (!Number.isInteger(uid) || !Number.isInteger(gid)) return null;
  return { name: f[0]!, uid, gid };
}

/** One line of group(5) format. */
export function parseGroupLine(line: string): GroupEntry | null {
  const f = line.trim().split(':');
  if (f.length < 4 || f[0] === '') return null;
  const gid = Number(f[2]);
  if (!Number.isInteger(gid)) return null;
  return { name: f[0]!, gid, members: f[3]!.split(',').map((m) => m.trim()).filter(Boolean) };
}

export function isMember(user: PasswdEntry, group: GroupEntry): boolean {
  return user.gid === group.gid || group.members.includes(user.name);
}

/** `getent DB KEY` → the line, null when the key does not exist (exit 2), undefined when getent is missing. */
function getent(db: 'passwd' | 'group', key: string): Promise<string | null | undefined> {
  // A direct execFile (not the exec adapter): a fixed binary with two literal
  // arguments, and the auth path should not depend on more than it must
  // (nor load execa into an idle daemon for every mutating call: bench/agent).
  return new Promise((resolve, reject) => {
    execFile('getent', [db, key], { timeout: 5_000 }, (err, stdout) => {
      if (!err) return resolve(stdout.split('\n')[0] ?? null);
      const code = (err as { code?: unknown }).code;
      if (code === 'ENOENT') return resolve(undefined);
      if (code === 2) return resolve(null);
      reject(err);
    });
  });
}

async function fromFile(file: string, match: (line: string) => boolean): Promise<string | null> {
  const text = await readFile(file, 'utf8');
  return text.split('\n').find(match) ?? null;
}

async function lookupPasswd(uid: number): Promise<PasswdEntry | null> {
  let line = await getent('passwd', String(uid));
  if (line === undefined) line = await fromFile('/etc/passwd', (l) => l.split(':')[2] === String(uid));
  return line ? parsePasswdLine(line) : null;
}

async function lookupGroup(name: string): Promise<GroupEntry | null> {
  let line = await getent('group', name);
  if (line === undefined) line = await fromFile('/etc/group', (l) => l.split(':')[0] === name);
  return line ? parseGroupLine(line) : null;
}

/** The default policy: root, or a user whose primary or supplementary group is `group`. */
export function groupAuthorizer(group = 'liveup'): Authorizer {
  return async (uid) => {
    if (uid === 0) return true;
    const [user, grp] = await Promise.all([lookupPasswd(uid), lookupGroup(group)]);
    // A uid without a passwd entry (a bare setuid process) or a missing group: nobody qualifies.
    if (!user || !grp) return false;
    return isMember(user, grp);
  };
}
