/**
 * A private dbus-daemon for integration tests: its own config, a unix socket in
 * a fresh directory that every user may reach (tests run clients as `nobody`),
 * and a policy that allows everything — the uid checks under test are the
 * daemon's own, not the bus policy's.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface PrivateBus {
  /** `unix:path=…` as dbus-daemon printed it (with guid). */
  readonly address: string;
  readonly socket: string;
  stop(): Promise<void>;
}

const CONFIG = (socket: string, includes: readonly string[]) => `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=${socket}</listen>
  <auth>EXTERNAL</auth>
  <allow_anonymous/>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
${includes.map((f) => `  <include>${f}</include>`).join('\n')}
</busconfig>
`;

/** `includes`: bus policy files to add after the allow-all default (e.g. systemd/org.liveup.Agent1.conf). */
export async function startPrivateBus(opts: { includes?: readonly string[] } = {}): Promise<PrivateBus> {
  const dir = await mkdtemp(join(tmpdir(), 'liveup-dbus-'));
  // 0777 so a client dropped to `nobody` can connect to the socket inside.
  await chmod(dir, 0o777);
  const socket = join(dir, 'bus');
  const conf = join(dir, 'bus.conf');
  await writeFile(conf, CONFIG(socket, opts.includes ?? []));
  const child: ChildProcess = spawn('dbus-daemon', [`--config-file=${conf}`, '--print-address=1', '--nofork', '--nopidfile'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
  const address = await new Promise<string>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`dbus-daemon did not start: ${stderr}`)), 10_000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const nl = out.indexOf('\n');
      if (nl >= 0) {
        clearTimeout(timer);
        resolve(out.slice(0, nl).trim());
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`dbus-daemon exited with ${code}: ${stderr}`));
    });
  });
  return {
    address,
    socket,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await exited;
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}
